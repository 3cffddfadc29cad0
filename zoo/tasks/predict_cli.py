"""``zoo predict`` and ``zoo embed``: the command line over :mod:`zoo.tasks.predict` and, with ``--ray``,
:mod:`zoo.tasks.ray` (imported only then: Ray is an optional extra)."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import torch

from .images import find_images
from .predict import PART_SIZE, embed, predict
from .running import add_model_args, check_sizes, load_model, resolve_device
from .tables import format_of


def _print_rows(rows: Sequence[dict[str, Any]], standin: bool) -> None:
    for row in rows:
        if row["error"]:
            continue
        print(row["path"] + (" (stand-in weights)" if standin else ""))
        k = 1
        while f"label_{k}" in row:
            print(f"  {row[f'prob_{k}']:7.2%}  {row[f'label_{k}']}")
            k += 1


def _run(args: argparse.Namespace) -> int:
    embedding = args.command == "embed"
    check_sizes(args)
    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    if args.out:
        format_of(args.out, embedding=embedding)
    device = resolve_device(args.device) if args.ray is None else torch.device("cpu")
    if args.half and device.type != "cuda":
        raise ValueError(f"--half needs a CUDA device, not {device.type}")
    paths, missing = find_images(args.inputs)
    for item in missing:
        print(f"error: {item}: no such file, folder or matching glob", file=sys.stderr)
    if not paths:
        print("error: no images to " + ("embed" if embedding else "classify"), file=sys.stderr)
        return 1
    model = load_model(args)
    options = dict(out=args.out, batch_size=args.batch_size, part_size=args.part_size, progress=True)
    if args.ray is not None:
        from . import ray as zoo_ray  # optional extra: only with --ray

        rows = zoo_ray.run(model, paths, embedding=embedding, top=args.top, address=args.ray, actors=args.actors,
                           **options)
    elif embedding:
        rows = embed(model, paths, device=device, workers=args.workers, half=args.half,
                     channels_last=args.channels_last, **options)
    else:
        rows = predict(model, paths, top=args.top, device=device, workers=args.workers, half=args.half,
                       channels_last=args.channels_last, **options)
    errors = [row for row in rows if row["error"]]
    if args.out:
        print(f"wrote {len(rows):,} rows to {args.out}" + (f" ({len(errors):,} with an error)" if errors else ""))
    else:
        _print_rows(rows, bool(model.pretrained_cfg.get("standin")))
    for row in errors[:20]:
        print(f"error: {row['path']}: {row['error']}", file=sys.stderr)
    if len(errors) > 20:
        print(f"error: ... and {len(errors) - 20:,} more unreadable files (see the error column)", file=sys.stderr)
    return 1 if missing or errors else 0


def _parser(subparsers, command: str, help: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(command, help=help, description=help[0].upper() + help[1:] + ".")
    add_model_args(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively), globs ('photos/**/*.jpg'), or .txt "
                             "files listing one path per line")
    parser.add_argument("--out", required=command == "embed", metavar="FILE",
                        help=("the table to write: " + (".parquet, .npy (with FILE.index.csv) or .jsonl"
                                                        if command == "embed" else ".csv, .jsonl or .parquet")
                              + "; written in parts, and a rerun with the same --out skips what is done"))
    parser.add_argument("--half", action="store_true", help="float16 on a CUDA device")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--part-size", type=int, default=PART_SIZE, metavar="ROWS",
                        help=f"rows per part file of --out (default {PART_SIZE}): a killed run loses at most one")
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run on Ray Data: a cluster's ADDRESS (e.g. ray://head:10001 or auto), or none to "
                             "start a local one; batches of 64 unless --batch-size says otherwise; needs "
                             "pip install 'onnx-zoo-torch[ray]'")
    parser.add_argument("--actors", type=int, default=1, help="with --ray: model copies (actors) (default 1)")
    parser.set_defaults(run=_run, top=5)
    return parser


def add_parsers(subparsers) -> None:
    p = _parser(subparsers, "predict", "classify images")
    p.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    _parser(subparsers, "embed", "pooled features of images (the model without its classifier)")
