"""Pretrained weights: where they come from (the pinned Hub revision, else the registry's pinned ONNX file,
converted once and cached), sha256 checks, safetensors only (never pickle), and fitting them to a model."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..registry import Entry, load_registry
from .download import file_sha256
from .errors import WeightsError
from .rebuild import upstream_weights

log = logging.getLogger("zoo")


@dataclass(frozen=True)
class Pin:
    repo: str
    revision: str
    sha256: str
    standin: bool = False


def pins_path() -> Path:
    """``$ZOO_PINS``, else published.json beside the registry's generated sources."""
    return Path(os.environ.get("ZOO_PINS") or load_registry().models_dir / "published.json")


def pin_for(name: str) -> Pin | None:
    """The Hub revision ``build.py --push`` pinned for a model, or None."""
    path = pins_path()
    try:
        pins = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable pins ({exc})") from exc
    if name not in pins:
        return None
    p = pins[name]
    return Pin(p["repo"], p["revision"], p["sha256"], bool(p.get("standin", False)))


@dataclass(frozen=True)
class Found:
    """Pretrained weights on disk and where they came from."""

    path: Path
    uri: str
    description: str
    standin: bool


def resolve_pretrained(entry: Entry) -> Found:
    """``pretrained=True``: the pinned Hub revision if there is one, else the weights of the registry's
    pinned ONNX file (downloaded, converted and cached once). Each step is logged at INFO."""
    pin = pin_for(entry.name)
    hub_problem = None
    if pin is not None:
        try:
            path = download(entry.name, pin)
            log.info("%s: weights from the Hub, %s@%s (sha256 checked)", entry.name, pin.repo, pin.revision[:12])
            return Found(path, f"hf://{pin.repo}@{pin.revision}", f"{pin.repo}@{pin.revision[:12]}", pin.standin)
        except WeightsError as exc:
            hub_problem = exc
            log.warning("%s; trying the pinned ONNX file instead", exc)
    try:
        path = upstream_weights(entry)
    except WeightsError as exc:
        if hub_problem is None:
            raise
        raise WeightsError(f"{hub_problem}\nand from the pinned ONNX file: {exc}") from None
    return Found(path, f"onnx://{entry.source.file}@sha256:{entry.source.sha256}",
                 f"converted from {entry.source.file}, cached in {path.parent}", False)


def _discard(path: Path) -> None:
    """Remove a bad download from the Hub cache (the snapshot link and the blob it points to)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _what_is_missing(pin: Pin, endpoint: str | None) -> str:
    """Tell a missing repository from a missing revision or file (servers answer all three alike)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi(endpoint=endpoint).model_info(pin.repo, revision=pin.revision)
    except RepositoryNotFoundError:
        return f"repository {pin.repo!r} not found at {endpoint or 'huggingface.co'}"
    except RevisionNotFoundError:
        return f"revision {pin.revision} not found in {pin.repo}"
    except Exception:  # the server cannot tell us more
        return f"{pin.repo}@{pin.revision} or its model.safetensors not found at {endpoint or 'huggingface.co'}"
    return f"{pin.repo}@{pin.revision} has no model.safetensors"


def download(name: str, pin: Pin) -> Path:
    """The pinned model.safetensors of a zoo model, from the Hub cache or the Hub."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = f"{pin.repo}@{pin.revision[:12]} on {endpoint or 'the Hugging Face Hub'}"
    try:
        path = Path(hf_hub_download(pin.repo, "model.safetensors", revision=pin.revision, endpoint=endpoint))
    # LocalEntryNotFoundError subclasses EntryNotFoundError in recent huggingface_hub: catch it first.
    except LocalEntryNotFoundError:
        raise WeightsError(f"{name}: the weights are not in the local Hub cache and {where} could not be reached "
                           "(offline via HF_HUB_OFFLINE, no network, or a missing revision)") from None
    except RepositoryNotFoundError:
        raise WeightsError(f"{name}: repository {pin.repo!r} not found at {endpoint or 'huggingface.co'}") from None
    except (RevisionNotFoundError, EntryNotFoundError):
        raise WeightsError(f"{name}: {_what_is_missing(pin, endpoint)}") from None
    actual = file_sha256(path)
    if actual != pin.sha256:
        _discard(path)
        raise WeightsError(f"{name}: sha256 of {where}/model.safetensors is {actual}, the pin says {pin.sha256}; "
                           "the file was removed from the cache")
    return path


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder")
    if path.is_dir():
        path = path / "model.safetensors"
        if not path.is_file():
            raise WeightsError(f"{path.parent}: the folder holds no model.safetensors")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: only .safetensors weights are read (never pickle)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_config(weights: str | os.PathLike) -> dict[str, Any]:
    """The config.json beside a weights file (or in a weights folder), or {} when there is none."""
    path = Path(weights)
    config = (path if path.is_dir() else path.parent) / "config.json"
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{config}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{config}: expected a JSON object")
    return data


def fit(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model`` exactly: every tensor present, same shapes and dtypes, nothing extra."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} (model: {tuple(expected[k].shape)})" for k in expected
              if k in state and state[k].shape != expected[k].shape]
    dtypes = [f"{k} {state[k].dtype} (model: {expected[k].dtype})" for k in expected
              if k in state and state[k].shape == expected[k].shape and state[k].dtype != expected[k].dtype]
    problems = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes), ("wrong dtype", dtypes)):
        if items:
            problems.append(f"{label}: {', '.join(items[:6])}" + (f" and {len(items) - 6} more" if len(items) > 6 else ""))
    if problems:
        raise WeightsError(f"{where}: weights do not fit the model; " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)  # assign: the model may be built on the meta device
