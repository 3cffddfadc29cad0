"""Images/s of batch prediction, side by side in one run, on the same generated JPEG files.

    python scripts/bench_predict.py [--images 256] [--model squeezenet1_1] [--batch-sizes 8 64] [--workers 2]
                                    [--repeat 3] [--no-ray] [--json out/bench_predict.json]

- "one at a time": the loop `zoo predict` ran before batching (open, preprocess, one forward per image);
- zoo.predict in this process (workers=0) and with DataLoader workers decoding in parallel, at each batch size,
  in PyTorch's default memory format and channels-last;
- zoo.tasks.ray.predict on a local Ray cluster with 1 and then 2 model actors at each batch size (skipped
  without the ray extra), whose times include starting the actors.
The model has its default (random) initialization: speed does not depend on weight values. Every path runs
once untimed on one batch first (allocator, kernels, worker start-up code paths); then --repeat rounds, each
timing every path once in a rotated order, so load that comes and goes is spread over all rows. A row's
figure is its median round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

import zoo


def _images(folder: Path, count: int) -> list[str]:
    """JPEG crops of scikit-learn's sample photos, 320x240 to 400x300: real decoding work."""
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        photo = photos[i % 2]
        w, h = int(rng.integers(320, 401)), int(rng.integers(240, 301))
        x, y = int(rng.integers(0, photo.shape[1] - w)), int(rng.integers(0, photo.shape[0] - h))
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(photo[y:y + h, x:x + w]).save(path, quality=90)
        paths.append(str(path))
    return paths


def _one_at_a_time(model, paths: list[str]) -> None:
    preprocess, names = zoo.transforms(model), zoo.labels(model)
    for path in paths:
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            probs = torch.softmax(model(preprocess(image).unsqueeze(0)), dim=1)[0]
        top = torch.topk(probs, 5)
        [names[i] for i in top.indices.tolist()]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _paths_runs(model, args) -> list[tuple[str, Callable[[list[str]], object]]]:
    """(label, run on a list of image paths) for every local path."""
    runs = [("one at a time (the old zoo predict loop)", lambda p: _one_at_a_time(model, p))]
    for batch in args.batch_sizes:
        for workers in (0, args.workers):
            for channels_last in (False, True):
                label = (f"zoo.predict, batch {batch}, {workers or 'no'} worker{'s' if workers != 1 else ''}"
                         f"{', channels-last' if channels_last else ''}")
                runs.append((label, lambda p, b=batch, w=workers, c=channels_last: zoo.predict(
                    model, p, batch_size=b, workers=w, channels_last=c, progress=False)))
    return runs


def _ray_runs(model, args) -> list[tuple[str, Callable[[list[str]], object]]]:
    try:
        import ray

        from zoo.tasks import ray as zoo_ray
    except ImportError:
        print("(no ray extra: Ray rows skipped)")
        return []
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    return [(f"Ray Data, {a} actor{'s' if a > 1 else ''}, batch {b}",
             lambda p, a=a, b=b: zoo_ray.predict(model, p, batch_size=b, actors=a, progress=False))
            for b in args.batch_sizes for a in (1, 2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench_predict.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default="squeezenet1_1")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds, each in a rotated order")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    model = zoo.create_model(args.model).eval()
    with tempfile.TemporaryDirectory(prefix="zoo-bench-predict-") as tmp:
        paths = _images(Path(tmp), args.images)
        runs = _paths_runs(model, args) + ([] if args.no_ray else _ray_runs(model, args))
        for _, fn in runs:
            fn(paths[:max(args.batch_sizes)])
        seconds: dict[str, list[float]] = {label: [] for label, _ in runs}
        for round_ in range(args.repeat):
            shift = round_ % len(runs)
            for label, fn in runs[shift:] + runs[:shift]:
                seconds[label].append(_timed(lambda: fn(paths)))
                print(f"round {round_ + 1}: {label:<56} {args.images / seconds[label][-1]:7.1f} images/s",
                      flush=True)
    results = [{"run": label, "seconds": statistics.median(s), "images_per_s": args.images / statistics.median(s),
                "rounds": s} for label, s in seconds.items()]
    base = results[0]["images_per_s"]
    print(f"\n{args.model}, {args.images} JPEG images, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, median of {args.repeat} rotated rounds:")
    print(f"  {'run':<58} {'images/s':>8}  vs. one at a time")
    for r in results:
        print(f"  {r['run']:<58} {r['images_per_s']:8.1f}  {r['images_per_s'] / base:5.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": args.model, "images": args.images, "repeat": args.repeat,
                                               "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
