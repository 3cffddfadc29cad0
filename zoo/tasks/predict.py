"""Batch inference over many images: ``zoo predict`` / ``zoo embed`` and :func:`predict` / :func:`embed`.

    zoo predict squeezenet1_1 photos/ --top 5 --out preds.csv        # a folder, searched recursively
    zoo embed squeezenet1_1 'photos/**/*.jpg' --out feats.parquet     # pooled features (num_classes=0)
    zoo predict squeezenet1_1 photos/ --out preds.parquet --ray       # on a Ray cluster (zoo.tasks.ray)

Images are decoded by DataLoader workers in parallel and batched; an unreadable file becomes a row with an
``error``; with ``--out`` the table is written in parts, so a rerun after a crash skips what is done.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from ..modeling.preprocess import labels, transforms
from .images import batch_size_for, find_images, loader
from .tables import EMBEDDING, Table, sort_rows

PART_SIZE = 4096


def prediction_columns(top: int) -> list[str]:
    return ["path", "error"] + [f"{kind}_{k}" for k in range(1, top + 1) for kind in ("label", "prob")]


EMBEDDING_COLUMNS = ["path", "error", EMBEDDING]


class Head:
    """Turns a batch of model outputs into table rows: the top-K classes, or the embedding."""

    def __init__(self, names: Sequence[str] | None, top: int):
        self.names, self.top = names, top
        self.columns = prediction_columns(top) if names is not None else EMBEDDING_COLUMNS

    def rows(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        outputs = outputs.float().cpu()
        if self.names is None:
            return [{EMBEDDING: vector} for vector in outputs.flatten(1).numpy()]
        probs, indices = torch.softmax(outputs, dim=1).topk(self.top, dim=1)
        return [{key: value for k, (p, i) in enumerate(zip(ps, ix), 1)
                 for key, value in ((f"label_{k}", self.names[i]), (f"prob_{k}", p))}
                for ps, ix in zip(probs.tolist(), indices.tolist())]

    def error_row(self, path: str, error: str) -> dict[str, Any]:
        return {**dict.fromkeys(self.columns), "path": path, "error": error}

    def complete(self, path: str, row: dict[str, Any]) -> dict[str, Any]:
        return {"path": path, "error": None, **row}


def features_model(model):
    """The model without its classifier (``forward`` returns pooled features): a copy, the caller's is kept."""
    if model.num_classes == 0:
        return model
    features = copy.deepcopy(model)
    features.reset_classifier(0)
    return features


def prepare(model, device: torch.device, *, half: bool = False, channels_last: bool = False):
    """The model on ``device`` in eval mode, optionally in float16 (CUDA only) and channels-last memory."""
    if half and device.type != "cuda":
        raise ValueError(f"--half needs a CUDA device (float16 convolutions are slow or missing on {device.type})")
    model = model.eval().to(device)
    if half:
        model = model.half()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _infer(model, paths: Sequence[str], head: Head, transform: Callable, *, device: torch.device, batch_size: int,
           workers: int, half: bool, channels_last: bool, table: Table | None, part_size: int,
           progress: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    workers = min(workers, math.ceil(len(paths) / batch_size))
    batches = loader(paths, transform, batch_size=batch_size, workers=workers, pin_memory=device.type == "cuda")
    bar = tqdm(total=len(paths), unit="img", disable=not progress or not paths, leave=False,
               desc="embed" if head.names is None else "predict")
    with torch.inference_mode():
        for indices, images, good, errors in batches:
            outputs: list[dict[str, Any]] = []
            if images is not None:
                images = images.to(device, non_blocking=True)
                if half:
                    images = images.half()
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                outputs = head.rows(model(images))
            by_position = dict(zip(good, outputs))
            for k, (i, error) in enumerate(zip(indices, errors)):
                row = head.complete(paths[i], by_position[k]) if k in by_position else head.error_row(paths[i], error)
                (pending if table is not None else rows).append(row)
            if table is not None and len(pending) >= part_size:
                table.write_part(pending)
                rows += pending
                pending = []
            bar.update(len(indices))
    bar.close()
    if table is not None:
        table.write_part(pending)
        rows += pending
    return rows


def run_table(model, inputs: Sequence[str], head: Head, *, transform: Callable | None, out, device,
              batch_size: int | None, workers: int, half: bool, channels_last: bool, part_size: int, progress: bool,
              engine: Callable | None = None) -> list[dict[str, Any]]:
    """Rows for every input path (missing ones as error rows), skipping those ``out`` already has."""
    paths, missing = find_images(inputs)
    device = torch.device(device) if not isinstance(device, torch.device) else device
    batch_size = batch_size_for(device, batch_size)
    table = Table(out, head.columns, embedding=head.names is None) if out is not None else None
    done = {row["path"] for row in table.done()} if table is not None else set()
    todo = [p for p in paths if p not in done]
    if table is not None and missing:
        table.write_part([head.error_row(m, "FileNotFoundError: no such file, folder or matching glob")
                          for m in missing if m not in done])
    if todo:
        if engine is not None:  # Ray: decoding and the model run on the cluster; rows come back here
            rows = engine(todo, head, table)
        else:
            model = prepare(model, device, half=half, channels_last=channels_last)
            rows = _infer(model, todo, head, transform, device=device, batch_size=batch_size, workers=workers,
                          half=half, channels_last=channels_last, table=table, part_size=part_size,
                          progress=progress)
    else:
        rows = []
    if table is not None:
        return table.finish([*paths, *missing])
    missing_rows = [head.error_row(m, "FileNotFoundError: no such file, folder or matching glob") for m in missing]
    return sort_rows(rows + missing_rows, [*paths, *missing])


def predict(model, inputs: Sequence[str | Path], *, top: int = 5, out: str | Path | None = None,
            transform: Callable | None = None, device: str | torch.device = "cpu", batch_size: int | None = None,
            workers: int = 0, half: bool = False, channels_last: bool = False, part_size: int = PART_SIZE,
            progress: bool = True) -> list[dict[str, Any]]:
    """Classify images: one row per image, ``{"path", "error", "label_1", "prob_1", ..., "label_K", "prob_K"}``
    in input order (``pandas.DataFrame(rows)`` makes a data frame of them).

    inputs: image files, folders (searched recursively), globs, or .txt/.lst files listing paths. A file that
        cannot be read, or an input that does not exist, gives a row whose ``error`` says why.
    out: also write the table to a .csv, .jsonl or .parquet file, in parts: a rerun with the same ``out`` skips
        the images it already holds (resuming a killed run) and returns the whole table.
    transform: default ``zoo.transforms(model)``. half/channels_last: float16 (CUDA) and channels-last memory.
    batch_size: default 8 on the CPU (faster there than 64: scripts/bench_predict.py), 64 on a GPU.
    """
    names = labels(model)
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    head = Head(names, min(top, len(names)))
    return run_table(model, [str(i) for i in inputs], head, transform=transform or transforms(model), out=out,
                     device=device, batch_size=batch_size, workers=workers, half=half, channels_last=channels_last,
                     part_size=part_size, progress=progress)


def embed(model, inputs: Sequence[str | Path], *, out: str | Path | None = None, transform: Callable | None = None,
          device: str | torch.device = "cpu", batch_size: int | None = None, workers: int = 0, half: bool = False,
          channels_last: bool = False, part_size: int = PART_SIZE, progress: bool = True) -> list[dict[str, Any]]:
    """Pooled features (the model with ``num_classes=0``): one row per image, ``{"path", "error", "embedding"}``
    with a float32 vector (None for an unreadable file). out: .parquet, .jsonl, or .npy (one row per image, NaN
    for errors) with ``NAME.index.csv`` beside it; written in parts and resumable as for :func:`predict`."""
    return run_table(features_model(model), [str(i) for i in inputs], Head(None, 0),
                     transform=transform or transforms(model), out=out, device=device, batch_size=batch_size,
                     workers=workers, half=half, channels_last=channels_last, part_size=part_size, progress=progress)


# ---- command line ----
