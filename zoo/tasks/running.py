"""What the batch jobs (validate, predict, embed) share: the device, and the model named on the command line."""
from __future__ import annotations

import argparse
import os

import torch

from ..modeling.factory import create_model
from ..modeling.model import ZooModel


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; a GPU that is not there is a
    one-line ValueError, not a driver traceback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a zoo model name (see `zoo list`)")
    parser.add_argument("--weights", metavar="PATH",
                        help="local weights: a model.safetensors or a folder holding one and its config.json, "
                             "e.g. a fine-tuned model (default: the model's pretrained weights)")
    parser.add_argument("--device", default="auto", help="auto (default: a GPU if there is one), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: 8 on the CPU, where it runs faster "
                                                       "than 64; 64 on a GPU)")
    parser.add_argument("--workers", type=int, default=min(4, _cpus()),
                        help="DataLoader processes decoding images in parallel (default: min(4, CPUs); 0: none)")


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_sizes(args: argparse.Namespace) -> None:
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")


def load_model(args: argparse.Namespace, **kwargs) -> ZooModel:
    """The model the command line names, in eval mode; says so when its weights are stand-ins."""
    model = create_model(args.name, pretrained=True if args.weights is None else args.weights, **kwargs).eval()
    if model.pretrained_cfg.get("standin"):
        print("note: these weights are stand-ins (random), not pretrained; predictions are meaningless")
    return model
