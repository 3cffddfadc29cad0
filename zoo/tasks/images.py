"""Image files for the jobs that read many of them: finding them (files, folders, globs, lists of paths),
decoding them in DataLoader workers, and turning an unreadable file into an error instead of a crash."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

# What decoding a bad file raises: PIL's UnidentifiedImageError is an OSError, a truncated file an OSError,
# a broken PNG chunk a SyntaxError, a too-large image a DecompressionBombError, a degenerate one a ValueError.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError)
LIST_SUFFIXES = (".txt", ".lst")


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)


def _folder_images(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if _is_image(f)]
    return found


def _expand(item: str, *, lists: bool) -> list[str] | None:
    if os.path.isdir(item):
        return _folder_images(item)
    if os.path.isfile(item):
        if lists and item.lower().endswith(LIST_SUFFIXES):
            lines = [line.strip() for line in Path(item).read_text().splitlines()]
            found: list[str] = []
            for line in filter(None, lines):
                found += _expand(line, lists=False) or [line]  # a listed file that is missing: an error row
            return found
        return [item]
    if glob.has_magic(item):
        matches = sorted(glob.glob(item, recursive=True))
        found = []
        for match in matches:
            found += _folder_images(match) if os.path.isdir(match) else [match] if _is_image(match) else []
        return found or None
    return None


def find_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """(image paths, inputs that matched nothing) for files, folders (searched recursively for image files),
    globs (``'photos/**/*.jpg'``) and text files listing one path per line (``.txt``/``.lst``).

    A file named explicitly is kept whatever it holds (a non-image becomes an error row); a folder or a glob
    yields only files with an image suffix. Each path appears once, in the order first found."""
    paths, missing, seen = [], [], set()
    for item in map(str, inputs):
        found = _expand(item, lists=True)
        if found is None:
            missing.append(item)
            continue
        for path in found:
            if path not in seen:
                seen.add(path)
                paths.append(path)
    return paths, missing


def read_image(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")  # decodes the whole file: a truncated one fails here, not later


def decode(path: str, transform: Callable) -> tuple[torch.Tensor | None, str]:
    """(the model's input for one file, "") or (None, the reason it could not be read)."""
    try:
        return transform(read_image(path)), ""
    except DECODE_ERRORS as exc:
        return None, f"{type(exc).__name__}: {exc}"


class ImageFiles(Dataset):
    """Decoded, preprocessed images by index; a file that cannot be read gives its error message instead."""

    def __init__(self, paths: Sequence[str], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return (i, *decode(self.paths[i], self.transform))


def collate(items):
    """(indices, stacked images of the readable files, their positions in the batch, error per item)."""
    indices = [i for i, _, _ in items]
    good = [k for k, (_, image, _) in enumerate(items) if image is not None]
    images = torch.stack([items[k][1] for k in good]) if good else None
    return indices, images, good, [error for _, _, error in items]


# On a CPU a batch of 8 224x224 images runs faster per image than 64, whose activations outgrow the caches
# (scripts/bench_predict.py, 2 cores: SqueezeNet 1.3x, ResNet-50 1.5x). A GPU keeps the usual large batch.
CPU_BATCH_SIZE, GPU_BATCH_SIZE = 8, 64


def batch_size_for(device: torch.device, batch_size: int | None = None) -> int:
    """``batch_size``, or the default for ``device`` when it is None."""
    if batch_size is None:
        return CPU_BATCH_SIZE if device.type == "cpu" else GPU_BATCH_SIZE
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return batch_size


def loader(paths: Sequence[str], transform: Callable, *, batch_size: int, workers: int,
           pin_memory: bool = False) -> DataLoader:
    """Batches in order, decoded by ``workers`` processes (0: in this one)."""
    return DataLoader(ImageFiles(paths, transform), batch_size=batch_size, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if workers else None)

