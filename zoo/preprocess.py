"""Preprocessing pipelines and labels that match each model (Caffe's BGR 0-255 conventions included)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode, v2

from .registry import Entry, load_registry

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


class ReverseChannels(torch.nn.Module):
    """RGB -> BGR (the channel dimension is third from last)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.flip(-3)


def _entry(name_or_model) -> Entry:
    registry = load_registry()
    name = name_or_model if isinstance(name_or_model, str) else getattr(name_or_model, "pretrained_cfg", {}).get("name")
    if name not in registry:
        raise ValueError(f"unknown model {name_or_model!r}; zoo models: {', '.join(registry)}")
    return registry[name]


def transforms(name_or_model, train: bool = False, *, crop: int | None = None) -> v2.Compose:
    """A torchvision.transforms.v2 pipeline from a PIL image or uint8 tensor to exactly the model's input.

    ``crop`` overrides the model's input size (and scales the resize with it), e.g. for small images.
    """
    pre = _entry(name_or_model).preprocessing
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


@lru_cache(maxsize=None)
def _imagenet() -> tuple[str, ...]:
    return tuple(Path(__file__).with_name("data").joinpath("imagenet_classes.txt").read_text().splitlines())


def labels(name_or_model) -> list[str]:
    """The class names of a model's label set (ImageNet-1k: 1,000 names)."""
    _entry(name_or_model)  # validates the name; every registry entry is labelled imagenet-1k
    return list(_imagenet())
