"""The offline end-to-end demo (README command 1).

1. build the registry's models from stand-ins (the ONNX model zoo's exact graphs with seeded random
   weights: never pretrained), verifying each against onnxruntime;
2. publish them to a Hugging Face Hub served on loopback (olah), pinning each revision and sha256;
3. load ``zoo.densenet121(pretrained=True)`` from that Hub through huggingface_hub;
4. classify a real photo (shipped in scikit-learn);
5. fine-tune a new 10-class head briefly on scikit-learn's real handwritten digits;
6. load the fine-tuned folder back (labels and image size come from its config.json) and predict a digit;
7. validate it on its held-out digits with `zoo validate` and predict that folder to a CSV with `zoo predict`;
8. print a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/demo", help="working folder (default: out/demo)")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    parser.add_argument("--fast", action="store_true",
                        help="every step on squeezenet1_1 alone (the lightest), one epoch: what CI runs")
    args = parser.parse_args(argv)
    name = "squeezenet1_1" if args.fast else "densenet121"
    names = [name] if args.fast else []  # [] builds the whole registry
    if args.fast:
        args.epochs = 1
    out = Path(args.out).resolve()
    # Before huggingface_hub is imported: a private cache, never the network.
    os.environ["HF_HOME"] = str(out / "hf-home")
    os.environ["ZOO_PINS"] = str(out / "published.json")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    import numpy as np
    import torch
    from PIL import Image
    from sklearn.datasets import load_sample_image

    import zoo
    from zoo.publish.build import Options, build
    from zoo.tasks.finetune import build_parser, run
    from zoo.publish.localhub import LocalHub

    summary = []
    start = time.perf_counter()
    print("1. building the zoo from stand-ins (random weights, NOT pretrained) ...")
    results = build(Options(out=out / "build", offline=True, models_dir=out / "models", jobs=2,
                            names=names))
    for r in results:
        if r.status == "no-standin":
            summary.append(f"skipped {r.name:<12} (no stand-in for an offline build)")
        else:
            summary.append(f"built {r.name:<14} worst error vs onnxruntime {r.worst_error:.1e}"
                           + (" (unchanged since the last run)" if r.status == "skipped" else ""))

    with LocalHub(out / "hub") as hub:
        print(f"2. publishing to a loopback Hub at {hub.endpoint} ...")
        os.environ["HF_ENDPOINT"] = hub.endpoint
        results = build(Options(out=out / "build", offline=True, models_dir=out / "models", push=True,
                                publisher=hub.publisher(), pins=out / "published.json", namespace="demo",
                                names=names))
        for r in results:
            if r.revision:
                summary.append(f"published {r.name:<10} revision {r.revision[:12]} as demo/{r.name}")

        print(f"3. zoo.{name}(pretrained=True) from that Hub ...")
        model = zoo.create_model(name, pretrained=True).eval()
        summary.append(f"loaded {name} from {model.pretrained_cfg['weights']} (stand-in: {model.pretrained_cfg['standin']})")

        print("4. classifying a photo ...")
        photo = Image.fromarray(load_sample_image("china.jpg"))
        with torch.no_grad():
            probs = torch.softmax(model(zoo.transforms(model)(photo).unsqueeze(0)), dim=1)[0]
        top = torch.topk(probs, 3)
        names = zoo.labels(model)
        guess = ", ".join(f"{names[i]} {p:.1%}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        summary.append(f"predicted china.jpg: {guess} (stand-in weights: meaningless by design)")

        print(f"5. fine-tuning a new 10-class head on scikit-learn's digits ({args.epochs} epochs) ...")
        ft = run(build_parser().parse_args(["--model", name, "--dataset", "digits", "--pretrained", "true",
                                            "--epochs", str(args.epochs), "--image-size", "64",
                                            "--out", str(out / "finetuned")]))
        summary.append(f"fine-tuned {name} -> {out / 'finetuned'}: val accuracy {ft['val_accuracy']:.1%} "
                       f"(chance 10%)")

        print("6. predicting a digit with the fine-tuned folder (its config.json brings labels and image size) ...")
        from zoo.tasks.finetune import DigitsDataset

        tuned = zoo.create_model(name, pretrained=out / "finetuned").eval()
        image, target = DigitsDataset(train=False)[0]
        with torch.no_grad():
            guess = zoo.labels(tuned)[int(tuned(zoo.transforms(tuned)(image).unsqueeze(0)).argmax())]
        summary.append(f"fine-tuned model: {tuned.num_classes} classes {zoo.labels(tuned)}, input "
                       f"{zoo.transforms(tuned).transforms[2].size}; a validation '{int(target)}' predicted as "
                       f"'{guess}'")

    summary += _validate_and_predict(out, name, ft["val_accuracy"])
    print("\nSummary (offline; every weight here is a stand-in: real weights come from running "
          "`python scripts/build.py --push` with network access)")
    for line in summary:
        print("  " + line)
    print(f"  took {time.perf_counter() - start:.0f} s")
    return 0 if np.isfinite(ft["val_accuracy"]) else 1


def _validate_and_predict(out: Path, name: str, tuned_accuracy: float) -> list[str]:
    """Step 7: the held-out digits as an ImageFolder (digits-val/<label>/<n>.png), then the CLI on it."""
    from PIL import Image

    from zoo.cli import main as zoo
    from zoo.tasks.finetune import DigitsDataset

    print("7. zoo validate on the held-out digits, then zoo predict of that folder to a CSV ...")
    held_out = DigitsDataset(train=False)
    for i, (image, target) in enumerate(held_out):
        path = out / "digits-val" / str(int(target)) / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    weights, data = str(out / "finetuned"), str(out / "digits-val")
    if zoo(["validate", name, "--weights", weights, "--data", data, "--json", str(out / "validate.json")]):
        raise SystemExit("zoo validate failed")
    result = json.loads((out / "validate.json").read_text())
    csv_out = out / "digits-predictions.csv"
    csv_out.unlink(missing_ok=True)  # a fresh table each run, not a resumed one
    if zoo(["predict", name, data, "--weights", weights, "--top", "3", "--out", str(csv_out)]):
        raise SystemExit("zoo predict failed")
    rows = len(csv_out.read_text().splitlines()) - 1
    return [f"zoo validate: top-1 {result['top1']:.1%} on {result['count']} held-out digits "
            f"(95% CI {result['interval'][0]:.1%}-{result['interval'][1]:.1%}, Wilson; fine-tuning measured "
            f"{tuned_accuracy:.1%} on the same digits)",
            f"zoo predict: {rows} rows (path, top-3 labels and probabilities) in {csv_out}"]


if __name__ == "__main__":
    sys.exit(main())
