"""Memory that gradient checkpointing saves in one training step of a zoo model.

    python scripts/grad_checkpointing_memory.py resnet50 --batch 32            # bytes kept for backward (meta)
    python scripts/grad_checkpointing_memory.py resnet50 --batch 8 --rss       # peak RSS of real steps on CPU

The first counts the bytes of every tensor autograd keeps between forward and backward (the activation memory
that checkpointing trades for recomputation) on the meta device: exact, no memory used, any batch size. The
second runs a real forward and backward on the CPU in a fresh process per mode and reports each one's peak
resident memory above what the process held before the step.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

import zoo


def saved_bytes(name: str, batch: int, checkpointing: bool) -> int:
    with torch.device("meta"):
        model = zoo.create_model(name).train()
        x = torch.empty(batch, *model.pretrained_cfg["input_size"])
    model.set_grad_checkpointing(checkpointing)
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(kept)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_step_mib(name: str, batch: int, checkpointing: bool) -> float:
    """In this process: peak RSS of one forward and backward above the RSS before it (MiB)."""
    torch.manual_seed(0)
    model = zoo.create_model(name).train()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(batch, *model.pretrained_cfg["input_size"])
    before = _rss_mib()
    model(x).square().mean().backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/grad_checkpointing_memory.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rss", action="store_true", help="real steps on the CPU, peak resident memory")
    parser.add_argument("--one", choices=["plain", "checkpointed"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(peak_step_mib(args.name, args.batch, args.one == "checkpointed")))
        return 0
    results = {}
    for mode in ("plain", "checkpointed"):
        if args.rss:
            out = subprocess.run([sys.executable, __file__, args.name, "--batch", str(args.batch), "--one", mode],
                                 check=True, capture_output=True, text=True).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
        else:
            results[mode] = saved_bytes(args.name, args.batch, mode == "checkpointed") / 2**20
    what = "peak RSS of one step above the model's" if args.rss else "activations kept for backward"
    print(f"{args.name}, batch {args.batch}, {what}: plain {results['plain']:,.0f} MiB, "
          f"checkpointed {results['checkpointed']:,.0f} MiB "
          f"({1 - results['checkpointed'] / results['plain']:.0%} less)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
