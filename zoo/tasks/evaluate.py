"""Measure a model's accuracy on a labelled folder: ``zoo validate`` and :func:`evaluate`.

    zoo validate squeezenet1_1 --data /data/imagenet/val            # class folders named n01440764, ...
    zoo validate densenet121 --weights out/ft --data digits/val --per-class --json eval.json
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from ..convert.api import write_atomically
from ..modeling.preprocess import imagenet_classes, imagenet_wnids, labels, resized, transforms
from .images import batch_size_for, decode, read_image
from .running import add_model_args, check_sizes, load_model, resolve_device

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(correct: int, count: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % by default): unlike the normal approximation
    it stays inside [0, 1] and keeps its coverage near 0 % and 100 % accuracy."""
    if count == 0:
        return 0.0, 1.0
    p = correct / count
    centre = (p + z * z / (2 * count)) / (1 + z * z / count)
    half = z / (1 + z * z / count) * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count))
    return max(0.0, centre - half), min(1.0, centre + half)


def class_indices(classes: Sequence[str], names: Sequence[str], where: str = "the data") -> list[int]:
    """The model output index of each class folder: ImageNet-1k models take WordNet ids (``n01440764``) or
    their class names; any other model its own labels (a fine-tuned model's, or ``0``, ``1``, ...)."""
    imagenet = tuple(names) == tuple(imagenet_classes())
    if imagenet and classes and all(re.fullmatch(r"n\d{8}", c) for c in classes):
        by_name = {w: i for i, w in enumerate(imagenet_wnids())}
    else:
        by_name = {n: i for i, n in enumerate(names)}
    unknown = [c for c in classes if c not in by_name]
    if unknown:
        kind = "ImageNet-1k WordNet ids or class names" if imagenet else \
            f"its {len(names)} labels ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ValueError(f"{where}: class folder {unknown[0]!r}{more} is not a class of the model: expected {kind}")
    return [by_name[c] for c in classes]


@dataclass
class Tally:
    """Counts over batches of (logits, targets); targets are model output indices."""

    names: Sequence[str]
    count: int = 0
    top1: int = 0
    top5: int = 0
    per_class: Counter = field(default_factory=Counter)
    per_class_correct: Counter = field(default_factory=Counter)
    confusion: Counter = field(default_factory=Counter)

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits, targets = logits.float().cpu(), targets.cpu()
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = ranked == targets[:, None]
        self.count += len(targets)
        self.top1 += int(hit[:, 0].sum())
        self.top5 += int(hit.any(dim=1).sum())
        for t, p in zip(targets.tolist(), ranked[:, 0].tolist()):
            self.per_class[t] += 1
            self.per_class_correct[t] += t == p
            if t != p:
                self.confusion[(t, p)] += 1


@dataclass
class Evaluation:
    """What :func:`evaluate` measured; accuracies are fractions (0-1)."""

    model: str
    data: str
    count: int
    top1: float
    top5: float | None
    interval: tuple[float, float]
    interval_method: str
    images_per_s: float
    seconds: float
    preprocessing: str
    published_top1: float | None = None
    published_source: str | None = None
    standin: bool = False
    per_class: list[dict[str, Any]] = field(default_factory=list)
    confused: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)

    @property
    def published_inside(self) -> bool | None:
        """Whether the published top-1 lies inside this measurement's interval (None: nothing published)."""
        if self.published_top1 is None:
            return None
        return self.interval[0] <= self.published_top1 <= self.interval[1]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "interval": list(self.interval), "published_inside": self.published_inside}

    def report(self, per_class: bool = False) -> str:
        lines = [f"{self.model} on {self.data}: {self.count:,} images"
                 + (f" ({len(self.unreadable)} unreadable, left out)" if self.unreadable else ""),
                 f"preprocessing  {self.preprocessing}",
                 f"top-1          {self.top1:.2%}  (95% CI {self.interval[0]:.2%} - {self.interval[1]:.2%}, "
                 f"{self.interval_method})"]
        if self.top5 is not None:
            lines.append(f"top-5          {self.top5:.2%}")
        if self.published_top1 is not None:
            diff = 100 * (self.top1 - self.published_top1)
            verdict = "inside the interval" if self.published_inside else "OUTSIDE the 95% interval"
            lines.append(f"published      {self.published_top1:.2%} ({self.published_source}); difference "
                         f"{diff:+.2f} points, {verdict}"
                         + (" (stand-in weights: not comparable)" if self.standin else ""))
        lines.append(f"speed          {self.images_per_s:,.1f} images/s ({self.seconds:.1f} s end to end: "
                     "decoding, preprocessing and the model)")
        for bad in self.unreadable[:10]:
            lines.append(f"unreadable     {bad['path']}: {bad['error']}")
        if per_class:
            lines.append(f"{'class':<24} {'images':>7} {'top-1':>8}")
            lines += [f"{c['class']:<24} {c['count']:>7} {c['top1']:>8.2%}" for c in self.per_class]
            lines.append("most confused (true -> predicted: images)")
            lines += [f"  {c['true']} -> {c['predicted']}: {c['count']}" for c in self.confused] or ["  none"]
        return "\n".join(lines)


class _Labelled(Dataset):
    """(index, model input or None, error, target) for image files with targets."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable):
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        return (i, *decode(path, self.transform), target)


class _Given(Dataset):
    """A caller's dataset of (image, target): PIL images and uint8 tensors go through the transform; float
    tensors are taken as the model's input as they are."""

    def __init__(self, dataset: Dataset, transform: Callable, targets: Sequence[int] | None):
        self.dataset, self.transform, self.targets = dataset, transform, targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, target = self.dataset[i]
        if not (isinstance(image, torch.Tensor) and image.is_floating_point()):
            image = self.transform(image)
        return i, image, "", self.targets[target] if self.targets is not None else int(target)


def _collate(items):
    good = [item for item in items if item[1] is not None]
    images = torch.stack([item[1] for item in good]) if good else None
    targets = torch.tensor([item[3] for item in good], dtype=torch.long)
    return images, targets, [(item[0], item[2]) for item in items if item[1] is None]


def _describe(model, transform, crop: int | None) -> str:
    if transform is not None:
        return "given by the caller: " + " ".join(repr(transform).split())
    pre = resized(model.pretrained_cfg["preprocessing"], crop) if crop else model.pretrained_cfg["preprocessing"]
    return (f"zoo.transforms(model{f', crop={crop}' if crop else ''}), the model's own: {pre['channel_order']} "
            f"0-{pre['value_range']}, resize {pre['resize']}, crop {pre['crop']}, mean {list(pre['mean'])}, "
            f"std {list(pre['std'])}")


def _subset(count: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over the data (so every class folder is represented), or all of them."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, limit).round().astype(int).tolist()))


def evaluate(model, data: str | Path | Dataset, *, transform: Callable | None = None, crop: int | None = None,
             batch_size: int | None = None, workers: int = 0, limit: int | None = None,
             device: str | torch.device = "cpu", confused: int = 10, progress: bool = True) -> Evaluation:
    """Top-1 and top-5 accuracy of a zoo model over labelled images.

    data: an ImageFolder root (one folder per class: WordNet ids or class names for ImageNet-1k models, the
        model's own labels for a fine-tuned one), or a Dataset of (image, target) whose ``classes`` attribute,
        if any, names its targets (else targets are the model's output indices).
    transform: default ``zoo.transforms(model, crop=crop)``, the model's own preprocessing (``crop``: another
        input size, the resize scaled with it).
    limit: evaluate this many images, spread evenly over the data. Unreadable files are left out and listed.
    batch_size: default 8 on the CPU (faster there than 64: scripts/bench_predict.py), 64 on a GPU.
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    names = labels(model)
    preprocess = transform or transforms(model, crop=crop)
    if isinstance(data, Dataset):
        where = type(data).__name__
        classes = getattr(data, "classes", None)
        targets = class_indices(classes, names, where) if classes is not None else None
        dataset: Dataset = _Given(data, preprocess, targets)
    else:
        where = str(data)
        if not Path(data).is_dir():
            raise ValueError(f"{data}: not a folder (expected an ImageFolder: one subfolder of images per class)")
        try:
            folder = ImageFolder(str(data), loader=read_image, allow_empty=True)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"{data}: {exc}") from None
        targets = class_indices(folder.classes, names, where)
        dataset = _Labelled([(path, targets[t]) for path, t in folder.samples], preprocess)
    dataset = torch.utils.data.Subset(dataset, _subset(len(dataset), limit))
    batches = DataLoader(dataset, batch_size=batch_size_for(device, batch_size), num_workers=workers,
                         collate_fn=_collate)
    model = model.eval().to(device)
    tally, unreadable = Tally(names), []
    start = time.perf_counter()
    with torch.inference_mode():
        for images, batch_targets, bad in tqdm(batches, desc="validate", unit="batch", disable=not progress,
                                               leave=False):
            unreadable += bad
            if images is not None:
                tally.add(model(images.to(device)), batch_targets)
    seconds = time.perf_counter() - start
    if tally.count == 0:
        raise ValueError(f"{where}: no readable images to evaluate")
    paths = getattr(dataset.dataset, "samples", None)
    accuracy = model.pretrained_cfg.get("accuracy") or {}
    return Evaluation(
        model=model.pretrained_cfg["name"], data=where, count=tally.count, top1=tally.top1 / tally.count,
        top5=tally.top5 / tally.count if len(names) >= 5 else None,
        interval=wilson_interval(tally.top1, tally.count), interval_method="Wilson score",
        images_per_s=tally.count / seconds, seconds=seconds, preprocessing=_describe(model, transform, crop),
        published_top1=accuracy["top1"] / 100 if accuracy.get("top1") is not None else None,
        published_source=accuracy.get("source"), standin=bool(model.pretrained_cfg.get("standin")),
        per_class=[{"class": names[t], "count": n, "top1": tally.per_class_correct[t] / n}
                   for t, n in sorted(tally.per_class.items())],
        confused=[{"true": names[t], "predicted": names[p], "count": n}
                  for (t, p), n in tally.confusion.most_common(confused)],
        unreadable=[{"path": paths[i][0] if paths else str(i), "error": e} for i, e in unreadable])


def _run(args: argparse.Namespace) -> int:
    check_sizes(args)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data}: not a folder (expected one subfolder of images per class)")
    device = resolve_device(args.device)
    model = load_model(args)
    result = evaluate(model, args.data, crop=args.crop, batch_size=args.batch_size, workers=args.workers,
                      limit=args.limit, device=device)
    print(result.report(per_class=args.per_class))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, lambda tmp: tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n"))
        print(f"wrote {out}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("validate", help="measure a model's accuracy on a labelled image folder",
                                   description="Top-1/top-5 accuracy of a model on an ImageFolder (one subfolder "
                                               "per class; ImageNet-1k models take WordNet-id folders).")
    add_model_args(parser)
    parser.add_argument("--data", required=True, metavar="DIR", help="the labelled folder: DIR/<class>/<image>")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate N images spread evenly over the folder")
    parser.add_argument("--crop", type=int, metavar="PX",
                        help="another input size for the model's own preprocessing (its resize scales with it)")
    parser.add_argument("--per-class", action="store_true", help="also print per-class accuracy and the most "
                                                                 "confused pairs")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    parser.set_defaults(run=_run)
    return parser
