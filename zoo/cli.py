"""The ``zoo`` command: list, info, predict, convert, build, finetune."""
from __future__ import annotations

import argparse
import json
import sys

from .registry import RegistryError


def _list(args) -> int:
    from .factory import list_models
    from .registry import load_registry

    registry = load_registry()
    for name in list_models(args.pattern):
        e = registry[name]
        acc = f"top-1 {e.accuracy.top1:.1f}%" if e.accuracy else ""
        print(f"{name:<16} {e.classifier:<18} {acc:<14} {e.upstream}")
    return 0


def _info(args) -> int:
    from .registry import load_registry
    from .weights import WeightsError, pin_for

    registry = load_registry()
    if args.name not in registry:
        print(f"error: unknown model {args.name!r}; zoo models: {', '.join(registry)}", file=sys.stderr)
        return 2
    info = registry[args.name].to_dict()
    try:
        pin = pin_for(args.name)
        info["published"] = {"repo": pin.repo, "revision": pin.revision, "sha256": pin.sha256, "standin": pin.standin}
    except WeightsError as exc:
        info["published"] = str(exc)
    print(json.dumps(info, indent=2, default=list))
    return 0


def _predict(args) -> int:
    import torch
    from PIL import Image

    from .factory import create_model
    from .preprocess import labels, transforms

    pretrained = True if args.weights is None else args.weights
    model = create_model(args.name, pretrained=pretrained).eval()
    preprocess, names = transforms(args.name), labels(args.name)
    if model.pretrained_cfg.get("standin"):
        print("note: these weights are stand-ins (random), not pretrained; predictions are meaningless")
    for path in args.images:
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            probs = torch.softmax(model(preprocess(image).unsqueeze(0)), dim=1)[0]
        top = torch.topk(probs, args.top)
        print(path)
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            print(f"  {p:7.2%}  {names[i]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .convert import cli as convert_cli
    from .finetune import build_parser as finetune_parser

    parser = argparse.ArgumentParser(prog="zoo", description="A PyTorch vision model zoo converted from ONNX.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the zoo's models")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'res*'")
    p.set_defaults(run=_list)
    p = sub.add_parser("info", help="a model's registry entry and published weights")
    p.add_argument("name")
    p.set_defaults(run=_info)
    p = sub.add_parser("predict", help="classify images")
    p.add_argument("name")
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--weights", help="local weights (file or folder) instead of the pinned Hub weights")
    p.set_defaults(run=_predict)
    p = sub.add_parser("convert", help="convert an ONNX file (python -m zoo.convert)")
    convert_cli.build_parser(p)
    p.set_defaults(run=convert_cli.run)
    p = sub.add_parser("build", help="build the zoo from the registry (scripts/build.py)", add_help=False)
    p.set_defaults(run=None)
    p = sub.add_parser("finetune", help="fine-tune a model with a new head (scripts/finetune.py)")
    finetune_parser(p)
    p.set_defaults(run=lambda a: 0 if __import__("zoo.finetune", fromlist=["run"]).run(a)["val_accuracy"] is not None else 1)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        from .build import main as build_main

        return build_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (RegistryError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
