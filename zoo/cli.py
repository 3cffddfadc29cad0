"""The ``zoo`` command: list, info, predict, convert, build, finetune."""
from __future__ import annotations

import argparse
import os
import sys

from .registry import RegistryError


def _list(args) -> int:
    """The models create_model sees (a user registry's, when ZOO_REGISTRY names one), then the built-in ones
    that registry replaces, marked: a user registry does not merge with the package's."""
    import fnmatch

    from .modeling.factory import list_models
    from .modeling.model import resolved_entry
    from .registry import DEFAULT_REGISTRY, load_registry

    registry = load_registry()
    own = registry.path != DEFAULT_REGISTRY.resolve()
    names = list_models(args.pattern)
    if not names:
        print(f"error: no model matches {args.pattern!r}; `zoo list` shows them all", file=sys.stderr)
        return 1
    print(f"{'model':<16} {'classifier':<18} {'top-1':<8} {'where':<10} upstream")
    for name in names:
        try:
            e = resolved_entry(name)
        except RegistryError:  # not built yet: what the entry says
            e = registry[name]
        acc = f"{e.accuracy.top1:.1f}%" if e.accuracy else "-"
        print(f"{name:<16} {e.classifier or '(unbuilt)':<18} {acc:<8} {'yours' if own else 'built-in':<10} "
              f"{e.upstream or e.source.file}")
    if own:
        for name, e in load_registry(DEFAULT_REGISTRY).items():
            if args.pattern is None or fnmatch.fnmatch(name, args.pattern):
                acc = f"{e.accuracy.top1:.1f}%" if e.accuracy else "-"
                print(f"{name:<16} {e.classifier:<18} {acc:<8} {'built-in*':<10} {e.upstream}")
        print(f"* built-in: not in {registry.path}; unset ZOO_REGISTRY to use them")
    return 0


def _info(args) -> int:
    from .modeling.model import resolved_entry
    from .weights.pretrained import pin_for

    e = resolved_entry(args.name)
    pre = e.preprocessing
    pin = pin_for(args.name)
    rows = [
        ("model", e.name), ("description", e.description), ("upstream", e.upstream), ("paper", e.paper),
        ("license", e.license), ("input", "x".join(map(str, e.input_size))),
        ("preprocessing", f"{pre.channel_order} 0-{pre.value_range}, resize {pre.resize}, crop {pre.crop}, "
                          f"mean {list(pre.mean)}, std {list(pre.std)}"),
        ("  source", pre.source), *([("  notes", pre.notes)] if pre.notes else []),
        ("labels", e.labels if not isinstance(e.labels, tuple) else f"{len(e.labels)} names"),
        ("classifier", e.classifier), *([("read from file", ", ".join(e.inferred))] if e.inferred else []),
        ("accuracy", f"top-1 {e.accuracy.top1}%, top-5 {e.accuracy.top5}% ({e.accuracy.source})" if e.accuracy else "-"),
        ("onnx file", f"{e.source.file}, {e.source.size:,} bytes, sha256 {e.source.sha256}"),
        ("  urls", "\n".join(e.source.urls)),
        ("weights", f"Hub {pin.repo}@{pin.revision}" + (" (stand-in)" if pin.standin else "") if pin else
                    "no Hub revision pinned: pretrained=True converts the ONNX file above once and caches it"),
    ]
    for key, value in rows:
        lines = str(value).splitlines() or [""]
        print(f"{key:<15} {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<15} {line}")
    return 0


def _hash(args) -> int:
    from .weights.download import file_sha256

    for path in args.files:
        print(f"{path}:\n  sha256: {file_sha256(path)}\n  size: {os.path.getsize(path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .convert import cli as convert_cli
    from .tasks import export as export_task
    from .publish.add import add_parser
    from .tasks import evaluate, predict_cli
    from .tasks.finetune import build_parser as finetune_parser

    parser = argparse.ArgumentParser(prog="zoo", description="A PyTorch vision model zoo converted from ONNX.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the zoo's models")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'res*'")
    p.set_defaults(run=_list)
    p = sub.add_parser("info", help="a model's registry entry and published weights")
    p.add_argument("name", help="a zoo model (see `zoo list`)")
    p.set_defaults(run=_info)
    predict_cli.add_parsers(sub)
    evaluate.add_parser(sub)
    add_parser(sub)
    p = sub.add_parser("hash", help="sha256 and size of files, as registry.yaml's source fields")
    p.add_argument("files", nargs="+", metavar="FILE", help="files to hash, e.g. an ONNX file for registry.yaml")
    p.set_defaults(run=_hash)
    p = sub.add_parser("convert", help="convert an ONNX file (python -m zoo.convert)")
    convert_cli.build_parser(p)
    p.set_defaults(run=convert_cli.run)
    p = sub.add_parser("build", help="build the zoo from the registry (scripts/build.py)", add_help=False)
    p.set_defaults(run=None)
    p = sub.add_parser("finetune", help="fine-tune a model with a new head (scripts/finetune.py)")
    finetune_parser(p)
    p.set_defaults(run=lambda a: 0 if __import__("zoo.tasks.finetune", fromlist=["run"]).run(a)["val_accuracy"] is not None else 1)
    export_task.add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        from .publish.build import main as build_main

        return build_main(argv[1:], prog="zoo build")
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # `zoo ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RegistryError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
