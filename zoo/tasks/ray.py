"""Batch inference on Ray Data, for more images than one machine gets through: ``zoo predict/embed ... --ray``.

The paths become a Ray dataset; CPU tasks decode and preprocess them (any worker of the cluster); an actor
pool runs the model, one copy per actor loaded once (a GPU each when the cluster has GPUs); the rows stream
back to the driver, which writes the same resumable table as the single-process command, row for row.
Needs the ``ray`` extra: ``pip install 'onnx-zoo-torch[ray]'``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch

try:
    import ray
except ImportError as exc:  # an optional extra
    raise ImportError("--ray needs Ray Data: pip install 'onnx-zoo-torch[ray]'") from exc

from ..modeling.preprocess import labels, transforms
from .images import decode
from .predict import EMBEDDING, PART_SIZE, Head, features_model, run_table
from .tables import Table

DECODE_CPUS = 0.5
MAX_BLOCKS = 4096
# Unlike the in-process path, Ray Data pays for every batch (a task, a block, serializing it): on the CPU,
# batch 8 ran at 0.7x of 64 (scripts/bench_predict.py), so 64 stays the default here.
BATCH_SIZE = 64


def _decode(batch: dict[str, np.ndarray], transform: Callable) -> dict[str, np.ndarray]:
    """A Ray task: paths -> preprocessed images (zeros where a file is unreadable) and errors."""
    images, errors = [], []
    for path in batch["path"]:
        image, error = decode(str(path), transform)
        images.append(image)
        errors.append(error)
    shape = next((tuple(i.shape) for i in images if i is not None), (3, 1, 1))
    stacked = np.stack([i.numpy() if i is not None else np.zeros(shape, np.float32) for i in images])
    return {"path": batch["path"], "error": np.array(errors, dtype=object), "image": stacked}


class _Model:
    """A Ray actor: the model, loaded once, over batches of decoded images."""

    def __init__(self, model, head: Head):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.head = model.eval().to(self.device), head

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = [k for k, error in enumerate(batch["error"]) if not error]
        rows: list[dict[str, Any]] = [{} for _ in batch["path"]]
        if good:
            with torch.inference_mode():
                outputs = self.model(torch.from_numpy(np.ascontiguousarray(batch["image"][good])).to(self.device))
            for k, row in zip(good, self.head.rows(outputs)):
                rows[k] = row
        columns: dict[str, np.ndarray] = {"path": batch["path"], "error": batch["error"]}
        for name in self.head.columns[2:]:
            if name == EMBEDDING:
                dim = next((len(r[EMBEDDING]) for r in rows if r), 0)
                columns[name] = np.stack([r[EMBEDDING] if r else np.full(dim, np.nan, np.float32) for r in rows])
            elif name.startswith("prob_"):
                columns[name] = np.array([r.get(name, np.nan) for r in rows], dtype=np.float64)
            else:
                columns[name] = np.array([r.get(name, "") for r in rows], dtype=object)
        return columns


def _rows(batch: dict[str, np.ndarray], columns: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for k in range(len(batch["path"])):
        error = str(batch["error"][k]) or None
        row: dict[str, Any] = {"path": str(batch["path"][k]), "error": error}
        for name in columns[2:]:
            value = batch[name][k]
            if error:
                row[name] = None
            elif name == EMBEDDING:
                row[name] = np.asarray(value, dtype=np.float32)
            elif name.startswith("prob_"):
                row[name] = float(value)
            else:
                row[name] = str(value)
        rows.append(row)
    return rows


def _engine(model, transform: Callable, *, address: str | None, actors: int, batch_size: int, part_size: int,
            progress: bool):
    def run(paths: Sequence[str], head: Head, table: Table | None) -> list[dict[str, Any]]:
        if not ray.is_initialized():
            if address in (None, "local"):  # room for every actor and a decoding task, however few the cores
                ray.init(num_cpus=max(os.cpu_count() or 1, actors + 1), log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = progress
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        if resources.get("CPU", 0) < actors + DECODE_CPUS:
            raise ValueError(f"--actors {actors}: the Ray cluster has {resources.get('CPU', 0):g} CPUs; each actor "
                             f"takes one and decoding needs {DECODE_CPUS} more")
        # About one block per batch (at most MAX_BLOCKS): every decoding task and every actor gets work.
        blocks = max(1, min(MAX_BLOCKS, -(-len(paths) // batch_size)))
        dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        # Decoding asks for less than a whole CPU, the model for one (or a GPU): unlike resources keep Ray Data
        # from fusing the two stages, so files are decoded by tasks anywhere in the cluster, not by the actors.
        dataset = dataset.map_batches(_decode, fn_kwargs={"transform": transform}, batch_size=batch_size,
                                      batch_format="numpy", num_cpus=DECODE_CPUS)
        dataset = dataset.map_batches(_Model, fn_constructor_kwargs={"model": model, "head": head},
                                      batch_size=batch_size, batch_format="numpy",
                                      compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1, num_gpus=gpus)
        rows: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            pending += _rows(batch, head.columns)
            if table is not None and len(pending) >= part_size:
                table.write_part(pending)
                rows, pending = rows + pending, []
        if table is not None:
            table.write_part(pending)
        return rows + pending
    return run


def predict(model, inputs: Sequence[str], *, top: int = 5, out=None, address: str | None = None, actors: int = 1,
            batch_size: int = BATCH_SIZE, part_size: int = PART_SIZE, transform: Callable | None = None,
            progress: bool = True) -> list[dict[str, Any]]:
    """:func:`zoo.predict` on Ray Data: the same rows. address: a running cluster (``auto``, ``ray://host:10001``)
    or None for a local one (an already initialized Ray is used as it is); actors: model copies."""
    names = labels(model)
    head = Head(names, min(top, len(names)))
    transform = transform or transforms(model)
    engine = _engine(model, transform, address=address, actors=actors, batch_size=batch_size, part_size=part_size,
                     progress=progress)
    return run_table(model, list(map(str, inputs)), head, transform=transform, out=out, device="cpu",
                     batch_size=batch_size, workers=0, half=False, channels_last=False, part_size=part_size,
                     progress=progress, engine=engine)


def embed(model, inputs: Sequence[str], *, out=None, address: str | None = None, actors: int = 1,
          batch_size: int = BATCH_SIZE, part_size: int = PART_SIZE, transform: Callable | None = None,
          progress: bool = True) -> list[dict[str, Any]]:
    """:func:`zoo.embed` on Ray Data: the same rows."""
    transform = transform or transforms(model)
    features = features_model(model)
    engine = _engine(features, transform, address=address, actors=actors, batch_size=batch_size,
                     part_size=part_size, progress=progress)
    return run_table(features, list(map(str, inputs)), Head(None, 0), transform=transform, out=out, device="cpu",
                     batch_size=batch_size, workers=0, half=False, channels_last=False, part_size=part_size,
                     progress=progress, engine=engine)


def run(model, paths: Sequence[str], *, embedding: bool, top: int, address: str, actors: int, **options):
    """The CLI's --ray."""
    if actors < 1:
        raise ValueError(f"--actors must be at least 1, got {actors}")
    if options.get("batch_size") is None:
        options["batch_size"] = BATCH_SIZE
    if embedding:
        return embed(model, paths, address=address, actors=actors, **options)
    return predict(model, paths, top=top, address=address, actors=actors, **options)
