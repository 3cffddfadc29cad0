"""Stage 1: read an ONNX file from disk, check it, and keep external data inside the model's folder."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import external_data_helper

from .errors import ConversionError


@dataclass(frozen=True)
class LoadedModel:
    proto: onnx.ModelProto
    path: Path
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_external_locations(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external-data locations that escape the model's folder (.., absolute paths, symlinks)."""
    base = path.parent.resolve()
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        location = info.location
        if not location or os.path.isabs(location) or Path(location).drive:
            raise ConversionError(f"{path}: tensor {tensor.name!r} has external data at an absolute or empty location")
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise ConversionError(f"{path}: tensor {tensor.name!r} has external data outside the model's folder")
        if not target.is_file():
            raise ConversionError(f"{path}: external data file for tensor {tensor.name!r} is missing")


def load_model(onnx_path: str | os.PathLike) -> LoadedModel:
    path = Path(onnx_path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ConversionError(f"{path}: the file is empty")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ConversionError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not proto.graph.node and not proto.graph.output:
        raise ConversionError(f"{path}: not an ONNX model (no graph)")
    _check_external_locations(proto, path)
    try:
        external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ConversionError(f"{path}: cannot read external data ({exc})") from exc
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ConversionError(f"{path}: fails onnx.checker: {exc}") from exc
    return LoadedModel(proto=proto, path=path, sha256=sha256_of(path))
