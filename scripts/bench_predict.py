"""Images/s of batch prediction, side by side in one run, on the same generated JPEG files.

    python scripts/bench_predict.py [--images 64] [--model squeezenet1_1] [--batch-size 32] [--workers 2]
                                    [--no-ray] [--json out/bench_predict.json]

- "one at a time": the loop `zoo predict` ran before batching (open, preprocess, one forward per image);
- zoo.predict in this process (workers=0), then with DataLoader workers decoding in parallel;
- zoo.tasks.ray.predict on a local Ray cluster with 1 and then 2 model actors (skipped without the ray extra).
The model has its default (random) initialization: speed does not depend on weight values. Each row is one
run; the first forward of each path is not timed apart, so small --images favour the one-at-a-time loop.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench_predict.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--model", default="squeezenet1_1")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    model = zoo.create_model(args.model).eval()
    results = []
    with tempfile.TemporaryDirectory(prefix="zoo-bench-predict-") as tmp:
        paths = _images(Path(tmp), args.images)
        runs = [("one at a time (the old zoo predict loop)", lambda: _one_at_a_time(model, paths)),
                (f"zoo.predict, batch {args.batch_size}, no workers",
                 lambda: zoo.predict(model, paths, batch_size=args.batch_size, workers=0, progress=False)),
                (f"zoo.predict, batch {args.batch_size}, {args.workers} workers",
                 lambda: zoo.predict(model, paths, batch_size=args.batch_size, workers=args.workers,
                                     progress=False))]
        if not args.no_ray:
            try:
                import ray

                from zoo.tasks import ray as zoo_ray
            except ImportError:
                print("(no ray extra: Ray rows skipped)")
            else:
                ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
                for actors in (1, 2):
                    runs.append((f"Ray Data, {actors} actor{'s' if actors > 1 else ''}, batch {args.batch_size}",
                                 lambda a=actors: zoo_ray.predict(model, paths, batch_size=args.batch_size, actors=a,
                                                                  progress=False)))
        for label, fn in runs:
            seconds = _timed(fn)
            results.append({"run": label, "seconds": seconds, "images_per_s": args.images / seconds})
            print(f"{label:<48} {args.images / seconds:8.1f} images/s ({seconds:.1f} s)", flush=True)
    base = results[0]["images_per_s"]
    print(f"\n{args.model}, {args.images} JPEG images, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}; relative to one at a time:")
    for r in results:
        print(f"  {r['run']:<46} {r['images_per_s'] / base:5.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": args.model, "images": args.images, "results": results},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
