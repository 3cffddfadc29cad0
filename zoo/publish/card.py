"""config.json and the Hub model card (README.md) for a built model."""
from __future__ import annotations

import json
from typing import Any

import yaml

from ..registry import Entry

_HUB_LICENSES = {"Apache-2.0": "apache-2.0", "BSD-3-Clause": "bsd-3-clause", "MIT": "mit", "CC-BY-4.0": "cc-by-4.0"}


def make_config(entry: Entry, *, class_name: str, standin: bool, source_sha256: str, converter_version: str,
                verification: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": entry.name,
        "architecture": entry.name,
        "class_name": class_name,
        "module": f"zoo.models.{entry.name}",
        "num_classes": entry.num_classes,
        "input_size": list(entry.input_size),
        "preprocessing": {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in entry.to_dict()["preprocessing"].items()},
        "labels": list(entry.labels) if isinstance(entry.labels, tuple) else entry.labels,
        "classifier": entry.classifier,
        "source": {"file": entry.source.file, "sha256": source_sha256, "pinned_sha256": entry.source.sha256,
                   "urls": list(entry.source.urls)},
        "license": entry.license,
        "paper": entry.paper,
        "converter_version": converter_version,
        "standin": standin,
        "verification": verification,
    }


def make_card(entry: Entry, config: dict[str, Any]) -> str:
    front = {
        "license": _HUB_LICENSES.get(entry.license, "other"),
        "library_name": "pytorch",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "pytorch", "onnx", "zoo"] + (["stand-in-weights"] if config["standin"] else []),
        "datasets": ["imagenet-1k"],
        "metrics": ["accuracy"],
    }
    pre = entry.preprocessing
    v = config["verification"]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {entry.name}", ""]
    if config["standin"]:
        lines += ["> **Stand-in weights.** These weights are seeded random numbers in the shapes of the real",
                  "> model, built offline to exercise the pipeline. They are not pretrained and classify nothing.", ""]
    lines += [entry.description, "",
              f"- Upstream: {entry.upstream or entry.source.file}",
              f"- Paper: {entry.paper or 'not given'}",
              f"- License: {entry.license or 'not given'}",
              f"- Converted by zoo.convert {config['converter_version']} from `{entry.source.file}` "
              f"(sha256 `{config['source']['sha256']}`)", "",
              "## Usage", "", "```python", "import zoo", "",
              f"model = zoo.create_model({entry.name!r}, pretrained=True).eval()",
              f"preprocess = zoo.transforms({entry.name!r})", "logits = model(preprocess(image).unsqueeze(0))",
              "```", "",
              "## Preprocessing", "",
              f"{pre.channel_order} channels, values in 0-{pre.value_range}, resize {pre.resize}, center crop "
              f"{pre.crop}, mean {list(pre.mean)}, std {list(pre.std)}.", "",
              f"Source: {pre.source}", ""]
    if pre.notes:
        lines += [f"Note: {pre.notes}", ""]
    if entry.accuracy and not config["standin"]:
        lines += ["## Accuracy", "", f"ImageNet-1k top-1 {entry.accuracy.top1}%, top-5 {entry.accuracy.top5}% "
                                     f"({entry.accuracy.source}).", ""]
    lines += ["## Verification", "",
              "The converted module against onnxruntime on the ONNX file, random inputs, logits:", "",
              "| batch | max abs error | relative to max logit |", "|---:|---:|---:|"]
    lines += [f"| {row['batch_size']} | {row['max_abs']:.3g} | {row['relative']:.3g} |" for row in v["rows"]]
    lines += ["", f"Tolerance {v['tolerance']:g}: {'passed' if v['passed'] else 'FAILED'}.", ""]
    return "\n".join(lines)


def dumps(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=False) + "\n"
