"""``zoo add SOURCE --name NAME``: an ONNX file (local path, file:// or http(s):// URL) becomes a registry
entry and a built model in one command. What the file says (input size, logits, classifier, labels, pooling)
is read from it; what it cannot say is written as an explicit placeholder (``license: UNKNOWN``, a preset's
``source: unverified preset, check upstream``) that ``build --push`` refuses until a person fills it in."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml

from ..convert.api import write_atomically
from ..registry import DEFAULT_REGISTRY, PRESET_SOURCE, UNKNOWN_LICENSE, RegistryError, load_registry, parse_entry, \
    registry_path
from ..weights.download import DownloadError, _http_get, default_cache, file_sha256, local_path
from ..weights.infer import complete
from ..weights.rebuild import upstream_weights
from .build import BuildError, Options, build

PRESETS = {
    "imagenet": {"channel_order": "RGB", "value_range": 1, "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"},
    "caffe-bgr": {"channel_order": "BGR", "value_range": 255, "mean": [103.939, 116.779, 123.68],
                  "std": [1.0, 1.0, 1.0], "interpolation": "bilinear"},
}
HEADER = """\
# A registry of one's own: `zoo add` appends entries; ZOO_REGISTRY=<this file> makes zoo use it.
# Generated sources go to models/ beside this file. Fields: see zoo/registry.yaml in the zoo's repository.
models:
"""


class _Dumper(yaml.SafeDumper):
    """Block style, but short lists of numbers on one line ([3, 224, 224]), as the zoo's registry writes them."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence(
    "tag:yaml.org,2002:seq", v, flow_style=all(isinstance(x, (int, float)) for x in v)))


class AddError(RuntimeError):
    """The file cannot be added; the message names the file, field or option."""


def default_registry() -> Path:
    """$ZOO_REGISTRY, else the zoo's own registry when zoo runs from a checkout (never an installed package)."""
    if os.environ.get("ZOO_REGISTRY"):
        return registry_path()
    checkout = DEFAULT_REGISTRY.parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / ".git").exists():
        return DEFAULT_REGISTRY.resolve()
    raise AddError("no registry to add to: set ZOO_REGISTRY to a registry file of your own (it is created if "
                   "missing) or pass --registry PATH; the installed package's registry is never written")


def fetched(source: str, name: str) -> tuple[Path, str, str]:
    """(the file on disk, its registry file name, the URL or path the entry pins)."""
    local = local_path(source)
    if local is not None:
        local = local.resolve()
        if not local.is_file():
            raise AddError(f"{source}: no such file")
        return local, _file_name(local.name, name), str(local)
    cache = default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".add-{uuid.uuid4().hex}.partial"
    try:
        _http_get(source, partial, None, retries=3, timeout=60.0, desc=name)
        filename = _file_name(Path(unquote(urlparse(source).path)).name, name)
        final = cache / file_sha256(partial) / filename
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)  # where the build's pinned fetch looks first: fetched once
    except DownloadError as exc:
        raise AddError(str(exc)) from None
    finally:
        partial.unlink(missing_ok=True)
    return final, filename, source


def _file_name(found: str, name: str) -> str:
    return found if re.fullmatch(r"[\w.\-]+\.onnx", found) else f"{name}.onnx"


def _size(text: str) -> list[int]:
    parts = [int(p) for p in re.split(r"[,x ]+", text.strip()) if p]
    if len(parts) == 1:
        parts = [3, parts[0], parts[0]]
    elif len(parts) == 2:
        parts = [3, *parts]
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError
    return parts


def preprocessing(spec: str, size: list[int]) -> dict:
    if spec in PRESETS:
        crop = size[1]
        return {**PRESETS[spec], "resize": round(crop * 256 / 224), "crop": crop,
                "source": f"{PRESET_SOURCE} (zoo add --preprocessing {spec})"}
    path = Path(spec)
    if not path.is_file():
        raise AddError(f"--preprocessing {spec}: neither a preset ({', '.join(PRESETS)}) nor a file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AddError(f"{path}: not valid YAML: {exc}") from None
    return data.get("preprocessing", data) if isinstance(data, dict) else data


def labels(spec: str | None) -> str | list[str] | None:
    if spec in (None, "imagenet-1k"):
        return spec
    path = Path(spec)
    if not path.is_file():
        raise AddError(f"--labels {spec}: neither imagenet-1k nor a file of class names (one a line)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) < 2:
        raise AddError(f"{path}: expected one class name a line, found {len(names)}")
    return names


def entry_text(name: str, body: dict, inferred: tuple[str, ...], numbered: int | None) -> str:
    """The entry as YAML under ``models:``, each field read from the file marked so."""
    lines = []
    for key, value in body.items():
        dumped = yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False, width=100, default_flow_style=False).rstrip()
        first, *rest = dumped.splitlines()
        note = "  # read from the file" if key in inferred else ""
        if key == "license" and value == UNKNOWN_LICENSE:
            note = "  # placeholder: the file does not say; build --push refuses it until you give an SPDX id"
        lines.append(f"    {first}{note}")
        lines += [f"    {line}" for line in rest]
        if key == "preprocessing" and PRESET_SOURCE in str(value.get("source", "")):
            lines.append("    # placeholder: a preset, not the model's own; check upstream, then replace source")
    if numbered:
        lines.append(f"    # labels: the file's {numbered} classes are numbered 0-{numbered - 1}; give names as a list")
    return f"  {name}:\n" + "\n".join(lines) + "\n"


def _registry_text(path: Path) -> str:
    if not path.exists():
        return HEADER
    text = path.read_text(encoding="utf-8")
    return text if text.endswith("\n") else text + "\n"


def add(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", args.name):
        raise AddError(f"--name {args.name!r}: lower-case letters, digits and underscores, starting with a letter")
    registry = Path(args.registry).resolve() if args.registry else default_registry()
    given_registry = registry_path() if os.environ.get("ZOO_REGISTRY") else None
    text = _registry_text(registry)
    if registry.exists():
        existing = load_registry(registry)
        if args.name in existing or args.name in existing.errors:
            raise AddError(f"{registry}: already has a model {args.name!r}; choose another --name")
    try:
        size = _size(args.input_size) if args.input_size else None
    except ValueError:
        raise AddError(f"--input-size {args.input_size!r}: expected C,H,W (e.g. 3,224,224) or H,W or one size") from None
    path, filename, pinned = fetched(args.source, args.name)
    body = {"description": None, "upstream": args.upstream or pinned, "license": args.license or UNKNOWN_LICENSE,
            "source": {"file": filename, "urls": [pinned], "sha256": file_sha256(path), "size": path.stat().st_size},
            "input_size": size, "preprocessing": None, "labels": labels(args.labels), "classifier": None,
            "logits": args.logits, "global_pool": None}
    given = {k: v for k, v in body.items() if v is not None}
    given["preprocessing"] = preprocessing(args.preprocessing, size or [3, 224, 224])
    with tempfile.TemporaryDirectory(prefix="zoo-add-") as tmp:
        entry = complete(parse_entry(args.name, given, f"zoo add {args.source}", registry.parent), path, Path(tmp))
    size = list(entry.input_size)
    if args.preprocessing in PRESETS:
        given["preprocessing"] = preprocessing(args.preprocessing, size)  # the crop follows the file's size
    body.update(given, description=entry.description, input_size=size, classifier=entry.classifier,
                logits=entry.logits, global_pool=entry.global_pool,
                labels=given.get("labels") or (list(entry.labels) if isinstance(entry.labels, tuple) else entry.labels))
    body = {k: v for k, v in body.items() if v is not None}
    new_text = text + entry_text(args.name, body, entry.inferred, entry.num_classes if entry.labels is None else None)
    # Build from the new registry written beside the old one (same models/ folder, same relative URLs), and
    # only then put it in place: a file that fails to build leaves the registry as it was.
    staged = registry.with_name(f".{registry.name}.{uuid.uuid4().hex[:8]}.adding")
    registry.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(staged, lambda tmp: tmp.write_text(new_text, encoding="utf-8"))
    quiet = logging.getLogger("zoo")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the build's placeholder warning names the staged file; said below instead
    try:
        result, = build(Options(out=default_cache().parent / "builds", names=[args.name], registry=staged,
                                models_dir=registry.parent / "models"))
        os.replace(staged, registry)
    finally:
        quiet.setLevel(level)
        staged.unlink(missing_ok=True)
    os.environ["ZOO_REGISTRY"] = str(registry)  # the rest of this process uses the registry added to
    built = load_registry(registry).entry(args.name)
    weights = upstream_weights(built)  # converted once into the cache: the first pretrained=True just reads it
    print(f"added {args.name} to {registry}")
    print(f"  {filename}: {body['source']['size']:,} bytes, sha256 {body['source']['sha256']}")
    print(f"  input {'x'.join(map(str, size))}, {entry.num_classes:,} classes "
          f"({'imagenet-1k' if entry.labels == 'imagenet-1k' else 'named' if entry.labels else 'numbered'}), "
          f"classifier {entry.classifier}, global_pool {entry.global_pool}"
          + (f"; read from the file: {', '.join(entry.inferred)}" if entry.inferred else ""))
    print(f"  verified against onnxruntime: worst relative error {result.worst_error:.1e}")
    print(f"  source {registry.parent / 'models' / (args.name + '.py')}, weights {weights}")
    unknown = [f for f in ("license", "preprocessing.source") if f == "license" and body["license"] == UNKNOWN_LICENSE
               or f == "preprocessing.source" and PRESET_SOURCE in body["preprocessing"]["source"]]
    if unknown:
        print(f"  to fill in before publishing: {', '.join(unknown)}")
    use = "" if registry in (given_registry, DEFAULT_REGISTRY.resolve()) else f"ZOO_REGISTRY={registry} "
    print(f"use it: {use}python -c 'import zoo; zoo.create_model(\"{args.name}\", pretrained=True)'")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return add(args)
    except (AddError, BuildError, RegistryError) as exc:
        print(f"zoo add: {exc}", file=sys.stderr)
        return 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("add", help="add an ONNX classifier to your registry and build it",
                              description=__doc__.splitlines()[0])
    p.add_argument("source", help="the ONNX file: a local path, file:// or http(s):// URL")
    p.add_argument("--name", required=True, help="the model's name (lower-case letters, digits, underscores)")
    p.add_argument("--labels", help="imagenet-1k, or a file of class names one a line (default: imagenet-1k for "
                                    "1,000 outputs, else numbered)")
    p.add_argument("--preprocessing", default="imagenet",
                   help="a preset (imagenet: RGB 0-1 with ImageNet mean/std; caffe-bgr: BGR 0-255 minus means) or a "
                        "YAML file with the registry's preprocessing fields (default: imagenet)")
    p.add_argument("--input-size", help="C,H,W when the file leaves its input size free (e.g. 3,224,224)")
    p.add_argument("--logits", help="the tensor holding the class scores, when the file has several outputs")
    p.add_argument("--license", help=f"SPDX id of the weights' license (default: {UNKNOWN_LICENSE}, a placeholder)")
    p.add_argument("--upstream", help="what the source calls the model (default: the path or URL)")
    p.add_argument("--registry", help="the registry file to add to (default: $ZOO_REGISTRY; created if missing)")
    p.set_defaults(run=run)
    return p


__all__ = ["add", "add_parser", "run", "AddError", "PRESETS"]
