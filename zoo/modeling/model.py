"""The class every zoo model is an instance of: its generated class with :class:`ZooModel` mixed in."""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from ..registry import Entry, generated_class, load_registry
from ..weights.infer import from_generated
from .backbone import FeatureInfo, adaptive_pool_would_help, forward_intermediates, new_classifier, set_head, stages, traceable
from .checkpointing import checkpointed_forward

class ZooModel(nn.Module):
    """Mixed into every generated model: classifier access, input checks and the pretrained config."""

    classifier_name: str
    pretrained_cfg: dict[str, Any]
    zoo_generated: type[nn.Module]  # the generated class beneath, whose forward traces (the mixin's checks do not)
    grad_checkpointing: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        cls.zoo_generated = mro[mro.index(ZooModel) + 1]

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for :attr:`pretrained_cfg` (the same dict)."""
        return self.pretrained_cfg

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory while training, as timm's ``set_grad_checkpointing``: the forward keeps only
        the outputs of about 2*sqrt(n) segments (cut between blocks) and recomputes the rest during backward.
        Gradients and BatchNorm statistics are those of the plain forward. See :mod:`zoo.modeling.checkpointing`."""
        if not isinstance(enable, bool):
            raise ValueError(f"enable must be True or False, got {enable!r}")
        self.grad_checkpointing = enable
        self.__dict__.pop("_zoo_checkpointed", None)

    def _checkpointed(self) -> nn.Module:
        layers = tuple(map(id, self.modules()))
        key, gm = self.__dict__.get("_zoo_checkpointed", (None, None))
        if key != layers:  # first use, or layers were replaced since (reset_classifier, set_head)
            gm = checkpointed_forward(self)
            self.__dict__["_zoo_checkpointed"] = (layers, gm)
        return gm

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(model)`` compiles the generated forward (or the graph of another global pooling);
        the input checks of :meth:`forward` are Python-only. Parameters and buffers are shared."""
        return self.__dict__.get("_zoo_forward") or traceable(self)

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier of the same kind (Linear or 1x1 Conv) with ``num_classes`` outputs; 0 removes it
        (``forward`` then returns the pooled features). global_pool: as for :func:`create_model`."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: no classifier), got {num_classes!r}")
        new = new_classifier(self, num_classes)
        parent, _, leaf = self.classifier_name.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, leaf, new)
        self.num_classes = num_classes
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}
        if global_pool is not None or self.pretrained_cfg.get("model_args"):
            set_head(self, global_pool=global_pool)  # the head options follow the new classifier

    @property
    def feature_info(self):
        """Per stage (every drop of spatial resolution, and the final features): num_chs, reduction, module."""
        found = stages(self)
        return FeatureInfo(found, range(len(found)))

    def forward_intermediates(self, x: torch.Tensor, indices=None, intermediates_only: bool = False):
        """(final feature map, [one feature map per stage in ``indices``]), as timm's forward_intermediates."""
        return forward_intermediates(self, x, indices, intermediates_only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return self._checked(x, self._checkpointed())
        return self._checked(x, self.__dict__.get("_zoo_forward"))

    def _checked(self, x: torch.Tensor, forward: nn.Module | None) -> torch.Tensor:
        if torch.jit.is_tracing():  # the checks would be recorded as constants (TracerWarnings)
            return forward(x) if forward is not None else super().forward(x)
        channels = self.pretrained_cfg["input_size"][0]
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"{self.pretrained_cfg['name']} expects input of shape (N, {channels}, H, W), "
                             f"e.g. (N, {', '.join(map(str, self.pretrained_cfg['input_size']))}); "
                             f"got {tuple(x.shape)}")
        if forward is not None:  # another global pooling (backbone.set_head) or checkpointed segments
            return forward(x)
        native = tuple(self.pretrained_cfg["native_size"])
        if self.pretrained_cfg.get("global_pool") == "adaptive" or tuple(x.shape[2:]) == native:
            return super().forward(x)
        try:
            return super().forward(x)
        except RuntimeError as exc:  # a fixed pooling window (or a flatten into a Linear) that needs the native size
            hint = (" A registry entry with `global_pool: adaptive` accepts other sizes."
                    if adaptive_pool_would_help(self) else "")
            raise ValueError(f"{self.pretrained_cfg['name']} needs {native[0]}x{native[1]} inputs (its layers assume "
                             f"that size); got {x.shape[2]}x{x.shape[3]}: resize to it (zoo.transforms(model) does)."
                             + hint) from exc

def resolved_entry(name: str) -> Entry:
    """The registry entry with what it leaves out (classifier, input size, labels...) as its build read it
    from the ONNX file and recorded in the generated source."""
    return from_generated(load_registry().entry(name), sys.modules[generated_class(name).__module__])


def entry_config(entry: Entry) -> dict[str, Any]:
    """A model's ``pretrained_cfg`` before any weights are loaded: the registry entry and its native size."""
    cfg = entry.to_dict()
    cfg["preprocessing"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg["preprocessing"].items()}
    cfg["input_size"] = list(entry.input_size)
    cfg["native_size"] = list(entry.input_size[1:])
    cfg["labels"] = list(entry.labels) if isinstance(entry.labels, tuple) else entry.labels
    cfg["inferred"] = list(entry.inferred)
    cfg["weights"] = None
    cfg["standin"] = None
    return cfg
