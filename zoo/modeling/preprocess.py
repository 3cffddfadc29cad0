"""Preprocessing pipelines and labels that match each model (Caffe's BGR 0-255 conventions included)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode, v2

from ..registry import Preprocessing
from .model import entry_config, resolved_entry

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


class ReverseChannels(torch.nn.Module):
    """RGB -> BGR (the channel dimension is third from last)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.flip(-3)


def _cfg(name_or_model) -> dict:
    """The preprocessing and labels that go with a model: what its weights' config.json said when it was
    loaded from a folder (pretrained_cfg), else the registry's."""
    if isinstance(name_or_model, str):
        return entry_config(resolved_entry(name_or_model))
    cfg = getattr(name_or_model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or "preprocessing" not in cfg:
        raise ValueError(f"expected a zoo model or a model name, got {type(name_or_model).__name__}")
    return cfg


def transforms(name_or_model, train: bool = False, *, crop: int | None = None) -> v2.Compose:
    """A torchvision.transforms.v2 pipeline from a PIL image or uint8 tensor to exactly the model's input.

    ``crop`` overrides the model's input size (and scales the resize with it), e.g. for small images.
    """
    pre = Preprocessing(**_cfg(name_or_model)["preprocessing"])
    size = crop or pre.crop
    resize = round(pre.resize * size / pre.crop)
    interpolation = _INTERPOLATION[pre.interpolation]
    steps: list = [v2.ToImage()]
    if train:
        steps += [v2.RandomResizedCrop(size, interpolation=interpolation, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps += [v2.Resize(resize, interpolation=interpolation, antialias=True), v2.CenterCrop(size)]
    steps.append(v2.ToDtype(torch.float32, scale=pre.value_range == 1))
    if pre.channel_order == "BGR":
        steps.append(ReverseChannels())
    steps.append(v2.Normalize(list(pre.mean), list(pre.std)))
    return v2.Compose(steps)


def resized(preprocessing: dict, size: int) -> dict:
    """Preprocessing for another input size: crop ``size``, the resize scaled with it."""
    return {**preprocessing, "crop": size, "resize": round(preprocessing["resize"] * size / preprocessing["crop"])}


@lru_cache(maxsize=None)
def _data_lines(name: str) -> tuple[str, ...]:
    return tuple(Path(__file__).parents[1].joinpath("data", name).read_text().splitlines())


def _imagenet() -> tuple[str, ...]:
    return _data_lines("imagenet_classes.txt")


def imagenet_classes() -> list[str]:
    """ImageNet-1k's 1,000 class names, in the models' output order."""
    return list(_imagenet())


def imagenet_wnids() -> list[str]:
    """The WordNet ids of ImageNet-1k's classes (``n01440764``, ...), in the models' output order: the class
    folder names of an ImageNet validation set (source: zoo/data/SOURCES.md)."""
    return list(_data_lines("imagenet_wnids.txt"))


def labels(name_or_model) -> list[str]:
    """The class names of a model: those its fine-tuned weights were trained on, or ImageNet-1k's 1,000.

    A fresh head (``num_classes`` other than the weights') has no names: its classes are numbered.
    """
    cfg = _cfg(name_or_model)
    names = cfg.get("labels")
    if isinstance(names, list):
        return [str(n) for n in names]
    if names == "imagenet-1k" and cfg.get("num_classes", 1000) == 1000:
        return list(_imagenet())
    return [str(i) for i in range(cfg["num_classes"])]
