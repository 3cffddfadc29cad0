"""Load and validate zoo/registry.yaml: clear errors naming the entry and field; nothing unknown accepted.
Also finds each entry's generated class in zoo/models (or the models/ folder of another registry)."""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from . import models as generated_models
from .convert.naming import class_name

DEFAULT_REGISTRY = Path(__file__).with_name("registry.yaml")
PACKAGE_MODELS = Path(__file__).with_name("models")


class RegistryError(ValueError):
    """registry.yaml is malformed; the message names the file, entry and field."""


@dataclass(frozen=True)
class Source:
    file: str
    urls: tuple[str, ...]
    sha256: str
    size: int
    standin: str | None = None


@dataclass(frozen=True)
class Preprocessing:
    channel_order: str
    value_range: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int
    crop: int
    source: str
    interpolation: str = "bilinear"
    notes: str = ""


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float
    source: str


# What a registry entry says when it cannot know a fact: usable locally, refused by `build --push`.
UNKNOWN_LICENSE = "UNKNOWN"
PRESET_SOURCE = "unverified preset, check upstream"
# Fields that may be left out: zoo.weights.infer reads them from the ONNX file (None until then).
INFERABLE = ("description", "input_size", "labels", "classifier", "logits")


@dataclass(frozen=True)
class Entry:
    name: str
    source: Source
    preprocessing: Preprocessing
    description: str | None = None
    upstream: str | None = None
    paper: str | None = None
    license: str | None = None
    input_size: tuple[int, int, int] | None = None
    labels: str | tuple[str, ...] | None = None  # imagenet-1k, the class names, or None: numbered
    classifier: str | None = None
    logits: str | None = None
    accuracy: Accuracy | None = None
    global_pool: str | None = None  # None: fixed, or adaptive where the file's head pools the whole map
    num_classes: int | None = None  # not a registry field: the file's, set when the entry is completed
    inferred: tuple[str, ...] = ()  # the fields read from the file rather than from the entry
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def complete(self) -> bool:
        return all(getattr(self, k) is not None for k in ("input_size", "classifier", "logits"))

    def placeholders(self) -> list[str]:
        """The fields that say a fact is unknown (see UNKNOWN_LICENSE, PRESET_SOURCE)."""
        found = ["license"] if self.license == UNKNOWN_LICENSE else []
        return found + (["preprocessing.source"] if PRESET_SOURCE in self.preprocessing.source else [])

    def fingerprint(self) -> str:
        """Changes whenever anything that goes into the build of this entry changes."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("raw")
        return out


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise RegistryError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)

_NAME = re.compile(r"[a-z][a-z0-9_]*")
LAYER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")  # a module path: fc, classifier.1


class _Fields:
    """Reads one mapping, tracking which keys were used so unknown ones can be reported."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise RegistryError(f"{where}: expected a mapping, got {type(data).__name__}")
        self.data, self.where, self.used = data, where, set()

    def get(self, key: str, kind, *, optional: bool = False, default=None, check=None, what: str = ""):
        self.used.add(key)
        if key not in self.data:
            if optional:
                return default
            raise RegistryError(f"{self.where}: missing field {key!r}")
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise RegistryError(f"{self.where}.{key}: expected {what or '/'.join(k.__name__ for k in kinds)}, "
                                f"got {value!r}")
        if check is not None and not check(value):
            raise RegistryError(f"{self.where}.{key}: invalid value {value!r}" + (f" (expected {what})" if what else ""))
        return value

    def numbers(self, key: str, n: int, kind=(int, float)) -> tuple:
        value = self.get(key, list, what=f"a list of {n} numbers",
                         check=lambda v: len(v) == n and all(isinstance(x, kind) and not isinstance(x, bool) for x in v))
        return tuple(value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise RegistryError(f"{self.where}: unknown field(s) {', '.join(map(repr, unknown))}")


def _text(f: _Fields, key: str, **kw) -> str:
    return f.get(key, str, check=lambda v: bool(v.strip()), what="non-empty text", **kw)


def _url(url: str, base: Path) -> str:
    """Relative local paths are relative to the registry file."""
    if re.match(r"[a-z][a-z0-9+.\-]*://", url, re.I) or Path(url).expanduser().is_absolute():
        return url
    return str(base / url)


def _entry(name: str, data: Any, where: str, base: Path) -> Entry:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(f"{where}: model name {name!r} must be lower-case letters, digits and underscores")
    f = _Fields(data, f"{where}: {name}")
    s = _Fields(f.get("source", dict), f"{where}: {name}.source")
    source = Source(
        file=s.get("file", str, check=lambda v: bool(re.fullmatch(r"[\w.\-]+\.onnx", v)), what="a file name ending .onnx"),
        urls=tuple(_url(u, base) for u in s.get("urls", list, what="a list of URLs (https://, http://, file://) or local paths",
                         check=lambda v: v and all(isinstance(u, str) and u.strip() for u in v))),
        sha256=s.get("sha256", str, check=lambda v: bool(re.fullmatch(r"[0-9a-f]{64}", v)), what="64 hex digits"),
        size=s.get("size", int, check=lambda v: v > 0, what="a positive byte count"),
        standin=s.get("standin", str, optional=True),
    )
    s.finish()
    p = _Fields(f.get("preprocessing", dict), f"{where}: {name}.preprocessing")
    pre = Preprocessing(
        channel_order=p.get("channel_order", str, check=lambda v: v in ("RGB", "BGR"), what="RGB or BGR"),
        value_range=p.get("value_range", int, check=lambda v: v in (1, 255), what="1 or 255"),
        mean=p.numbers("mean", 3),
        std=p.numbers("std", 3),
        resize=p.get("resize", int, check=lambda v: v > 0),
        crop=p.get("crop", int, check=lambda v: v > 0),
        source=_text(p, "source"),
        interpolation=p.get("interpolation", str, optional=True, default="bilinear",
                            check=lambda v: v in ("bilinear", "bicubic", "nearest"), what="bilinear/bicubic/nearest"),
        notes=p.get("notes", str, optional=True, default=""),
    )
    if any(v <= 0 for v in pre.std):
        raise RegistryError(f"{where}: {name}.preprocessing.std: values must be positive")
    p.finish()
    accuracy = None
    if "accuracy" in f.data:
        a = _Fields(f.get("accuracy", dict), f"{where}: {name}.accuracy")
        accuracy = Accuracy(top1=float(a.get("top1", (int, float))), top5=float(a.get("top5", (int, float))),
                            source=_text(a, "source"))
        a.finish()
    else:
        f.used.add("accuracy")
    labels = f.get("labels", (str, list), optional=True, what="imagenet-1k or a list of class names",
                   check=lambda v: v == "imagenet-1k" or isinstance(v, list) and len(v) > 1
                   and all(isinstance(x, (str, int)) and not isinstance(x, bool) and str(x).strip() for x in v))
    entry = Entry(
        name=name,
        description=_text(f, "description", optional=True),
        upstream=_text(f, "upstream", optional=True),
        paper=_text(f, "paper", optional=True),
        license=_text(f, "license", optional=True),
        source=source,
        input_size=f.numbers("input_size", 3, kind=int) if "input_size" in f.data else f.used.add("input_size"),
        preprocessing=pre,
        labels=tuple(map(str, labels)) if isinstance(labels, list) else labels,
        classifier=f.get("classifier", str, optional=True, check=lambda v: bool(LAYER.fullmatch(v)),
                         what="a layer name of the generated module (e.g. fc, classifier.1)"),
        logits=_text(f, "logits", optional=True),
        accuracy=accuracy,
        global_pool=f.get("global_pool", str, optional=True, check=lambda v: v in ("fixed", "adaptive"),
                          what="fixed or adaptive"),
        raw=data,
    )
    f.finish()
    return entry


def parse_entry(name: str, data: Any, where: str, base: Path) -> Entry:
    """One entry as the registry file at ``base`` would hold it (relative URLs are relative to ``base``)."""
    return _entry(name, data, where, base)


class Registry(dict):
    """Valid entries by name, in file order; ``errors`` holds each broken entry's RegistryError.

    One bad entry is an error for that entry's users only: the others stay usable, and nothing that
    does not read the registry (``zoo.convert``) ever sees it.
    """

    def __init__(self, path: Path, entries: dict[str, Entry], errors: dict[str, RegistryError]):
        super().__init__(entries)
        self.path, self.errors = path, errors

    @property
    def models_dir(self) -> Path:
        """Where the generated sources of this registry's models live."""
        return models_dir(self.path)

    def entry(self, name: str) -> Entry:
        if name in self.errors:
            raise self.errors[name]
        if name not in self:
            raise RegistryError(f"unknown model {name!r}; zoo models: {', '.join(self) or 'none'} (registry {self.path})")
        return self[name]


def registry_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("ZOO_REGISTRY") or DEFAULT_REGISTRY).resolve()


def models_dir(registry: str | os.PathLike | None = None) -> Path:
    """The packaged registry's models are in zoo/models; any other registry's in ``models/`` beside it."""
    path = registry_path(registry)
    return PACKAGE_MODELS if path == DEFAULT_REGISTRY.resolve() else path.parent / "models"


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Entries by name, in file order. ``path`` defaults to ``$ZOO_REGISTRY`` or the packaged registry.

    A file that cannot be read or parsed raises RegistryError; a malformed entry is kept in ``errors``.
    """
    path = registry_path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read ({exc.strerror})") from exc
    return _parse(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _parse(path: Path, mtime_ns: int, size: int) -> Registry:
    """One parse per version of the file (it is read on every model construction)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except RegistryError as exc:
        raise RegistryError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from exc
    top = _Fields(data, str(path))
    models = top.get("models", dict)
    top.finish()
    if not models:
        raise RegistryError(f"{path}: no models")
    entries, errors = {}, {}
    for name, body in models.items():
        try:
            entries[name] = _entry(name, body, str(path), path.parent)
        except RegistryError as exc:
            errors[str(name)] = exc
    return Registry(path, entries, errors)


def generated_class(name: str) -> type[nn.Module]:
    """The class a registry model's generated source defines (``zoo.models.<name>``), without the model API."""
    registry = load_registry()
    registry.entry(name)
    path = registry.models_dir / f"{name}.py"
    if not path.is_file():
        hint = "" if registry.models_dir == PACKAGE_MODELS else f" --registry {registry.path}"
        raise RegistryError(f"{name}: no generated source {path}; build it with `python scripts/build.py {name}{hint}`")
    add_models_dir(registry.models_dir)
    module_name = f"zoo.models.{name}"
    module = sys.modules.get(module_name)
    if module is None or Path(module.__file__).resolve() != path.resolve():
        # Another registry's model of the same name may be imported already: this registry's file wins.
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    generated = getattr(module, class_name(name), None)
    if not (inspect.isclass(generated) and issubclass(generated, nn.Module)):
        raise RegistryError(f"{path} should define class {class_name(name)}; run scripts/build.py {name}")
    return generated


def add_models_dir(folder: Path) -> None:
    """Generated sources of another registry (``ZOO_REGISTRY``) import as ``zoo.models.<name>`` too."""
    where = str(folder)
    if where not in generated_models.__path__:
        generated_models.__path__.insert(0, where)
