"""``pretrained=True`` without a Hub: the registry pins each model's upstream ONNX file, and the committed
source was generated from exactly that graph, so its weights can always be rebuilt from the file.

The file is fetched (``$ZOO_ONNX_MIRROR`` first, then the registry's URLs; size and sha256 checked),
converted by the same code as the build, checked against the committed module's layers, and saved once
as ``$ZOO_CACHE/<name>/<sha256 of the ONNX file>/<build fingerprint>/model.safetensors`` with its own
sha256 beside it. Later loads read only that file. The fingerprint covers the converter's code, so
regenerated sources with other ``state_dict`` keys never meet stale weights.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors import safe_open

from ..registry import Entry, generated_class
from .conversion import BuildError, convert_entry, fingerprint
from .download import DownloadError, cache_root, fetch, file_sha256, is_offline, mirrored
from .errors import WeightsError

log = logging.getLogger("zoo")
WEIGHTS = "model.safetensors"
CHECKSUM = "model.safetensors.sha256"


def cache_folder(entry: Entry) -> Path:
    return cache_root() / entry.name / entry.source.sha256 / fingerprint(entry, standin=False)[:16]


def _cached(folder: Path) -> Path | None:
    """The cached weights if they are intact; an altered or half-written entry is removed."""
    weights, checksum = folder / WEIGHTS, folder / CHECKSUM
    if not weights.is_file() or not checksum.is_file():
        return None
    if file_sha256(weights) == checksum.read_text().strip():
        return weights
    log.warning("%s: the cached weights do not match their recorded sha256; rebuilding them", weights)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _check_layers(entry: Entry, weights: Path) -> None:
    """The upstream graph must still give the committed source's layers: same keys, same shapes."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in generated_class(entry.name)().state_dict().items()}
    with safe_open(str(weights), framework="pt") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for key in sorted(set(expected) | set(got)):
        if expected.get(key) != got.get(key):
            raise WeightsError(
                f"{entry.name}: the committed source and the upstream graph {entry.source.file} disagree, first at "
                f"{key!r}: source {expected.get(key, 'absent')}, converted graph {got.get(key, 'absent')}; "
                f"regenerate the source with `python scripts/build.py {entry.name}`")


def _fetch(entry: Entry) -> Path:
    urls = mirrored(entry.source.urls, entry.source.file)
    try:
        return fetch(urls, entry.source.sha256, filename=entry.source.file, size=entry.source.size,
                     offline=is_offline())
    except DownloadError as exc:  # offline or without network alike: what each place said, and what would help
        mirror = os.environ.get("ZOO_ONNX_MIRROR", "").strip()
        advice = (f"put {entry.source.file} in the mirror ZOO_ONNX_MIRROR={mirror} (it is tried first)" if mirror
                  else "set ZOO_ONNX_MIRROR to a folder or server holding it")
        raise WeightsError(f"{entry.name}: nothing cached, and {exc}\nFetch it once with network access, or "
                           f"{advice}.") from None


def _lock_path(folder: Path) -> str:
    return str(folder.parent / f".{folder.name}.lock")


def _sweep(folder: Path) -> None:
    """Remove the work folders of loads that were killed; call it holding the entry's lock (only a lock
    holder makes them, so any there now is a dead process's)."""
    for stale in folder.parent.glob(f".rebuild-{folder.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def upstream_weights(entry: Entry) -> Path:
    """The model's weights converted from its pinned ONNX file, built on first use and cached."""
    folder = cache_folder(entry)
    found = _cached(folder)
    if found is not None:
        if any(folder.parent.glob(f".rebuild-{folder.name}-*")):
            try:  # a load killed after installing the weights left its work folder; it holds no lock now
                with FileLock(_lock_path(folder), timeout=0):
                    _sweep(folder)
            except Timeout:
                pass  # another load is working there; what it leaves it removes itself
        log.info("%s: weights from the cache, %s (converted from %s)", entry.name, found, entry.source.file)
        return found
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(_lock_path(folder)):  # one download and one conversion at a time
        found = _cached(folder)
        if found is not None:
            return found
        _sweep(folder)
        log.info("%s: no published weights; fetching %s", entry.name, entry.source.file)
        onnx_path = _fetch(entry)
        log.info("%s: converting %s into the committed module's weights", entry.name, onnx_path)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".rebuild-{folder.name}-") as tmp:
            try:
                _, result = convert_entry(entry, onnx_path, Path(tmp))
            except BuildError as exc:
                raise WeightsError(str(exc)) from None
            _check_layers(entry, result.weights_path)
            staged = Path(tmp) / "staged"
            staged.mkdir()
            os.replace(result.weights_path, staged / WEIGHTS)
            (staged / CHECKSUM).write_text(file_sha256(staged / WEIGHTS) + "\n")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staged, folder)
        log.info("%s: weights cached in %s", entry.name, folder)
        return folder / WEIGHTS
