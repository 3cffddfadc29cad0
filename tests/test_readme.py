"""README as written: every code block is taken from README.md itself and run, top to bottom, the way a reader
would, in one working folder and one Python namespace (python blocks share it like a notebook; bash blocks
run in bash with ``zoo`` and ``python`` on PATH).

What this machine cannot reach is replaced through STAND_INS below and nowhere else: ``pretrained=True``
reads the demo's stand-in weights from a loopback Hub, ``/data/flowers`` is a small generated ImageFolder,
and so on. A block or command that cannot run here is marked in README, on the lines just above its fence:

    <!-- readme-test: skip: REASON -->                              the whole block
    <!-- readme-test: skip commands with "TEXT": REASON -->         the block's commands containing TEXT
    <!-- readme-test: excerpt of PATH -->                           every line (but ``...``) is in that file
    <!-- readme-test: excerpt of --flat NAME -->                    ... in NAME's stand-in converted flat
    <!-- readme-test: file PATH -->                                 the reader saves the block as PATH

and the test prints each mark with its reason. New sections are picked up on their own: any fenced block in
``python``, ``bash`` or ``yaml`` runs unless marked (``text`` blocks are output listings and are not run).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNS = ("python", "bash", "yaml")
OUTPUT = ("text", "")

# README text -> what runs here instead, and why. Keys are matched literally in python and bash blocks.
# "{work}" is the working folder; "{flowers}" a generated ImageFolder (made below).
STAND_INS = {
    # network or data only a reader has
    "/data/flowers": ("{flowers}", "no dataset here: a generated ImageFolder, 2 classes x 2 images in train/ and val/"),
    # time: CI runs each suite test in seconds, not minutes
    "python scripts/build.py --offline --out out/build": (
        "python scripts/build.py --offline --out out/build squeezenet1_1",
        "all nine stand-ins take minutes (VGG-19 alone is 548 MB); one shows the command works"),
    "python -m zoo.publish.standins onnx/": (
        "python -m zoo.publish.standins onnx/ --models squeezenet1_1 shufflenet",
        "the nine graphs hold 1.3 GB of weights; two show the command works"),
}
# The environment a reader has and this machine does not; never written into a block.
#   pretrained=True    -> HF_ENDPOINT at a loopback Hub (olah) serving densenet121 and resnet50 built from
#                         stand-ins (as scripts/demo.py does), ZOO_PINS naming their revisions
#   cat.jpg, rose.jpg  -> scikit-learn's sample photo; digit.png -> one of scikit-learn's handwritten digits
#   <from zoo hash>    -> in a saved file, the sha256 and size `zoo hash` prints for the file named beside it
#   out/ft             -> written by a skipped digits fine-tune: a 10-class densenet121 folder saved as
#                         scripts/finetune.py saves it (labels '0'..'9', 64 px preprocessing), untrained
MARK = re.compile(r"<!-- readme-test: (.*?) -->")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marks: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang})"

    def mark(self, kind: str) -> str | None:
        return next((m[len(kind):].strip() for m in self.marks if m.startswith(kind)), None)

    def skipped_commands(self) -> list[tuple[str, str]]:
        return [(m.group(1), m.group(2)) for mark in self.marks
                if (m := re.match(r'skip commands with "(.*?)": (.*)', mark))]


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of README, with the readme-test marks on the lines just above it."""
    lines = (README.read_text() if text is None else text).splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marks, k = [], i - 1
        while k >= 0 and MARK.fullmatch(lines[k].strip()):
            marks.insert(0, MARK.fullmatch(lines[k].strip()).group(1))
            k -= 1
        found.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n", marks))
        i = end + 1
    return found


def _substitute(code: str, work: Path, flowers: Path) -> str:
    for text, (replacement, _) in STAND_INS.items():
        code = code.replace(text, replacement.format(work=work, flowers=flowers))
    return code


def _excerpt_source(spec: str, work: Path) -> str:
    if spec.startswith("--flat "):
        from zoo.convert import convert
        from zoo.weights.conversion import prepare_graph
        from zoo.publish.standins import build_standin
        from zoo.registry import load_registry

        name = spec.split()[1]
        entry = load_registry()[name]
        graph = prepare_graph(build_standin(entry.source.standin, work / f"{name}-raw.onnx"), entry.logits,
                              work / f"{name}.onnx")
        return convert(graph, work / "flat", name=name, structure=False).source_path.read_text()
    return (ROOT / spec).read_text()


def _plan(work: Path, flowers: Path) -> tuple[list[dict], list[str]]:
    """The steps the runner executes, and a line per mark (what was not run as written, and why)."""
    steps, notes = [], []
    for block in blocks():
        if block.lang in OUTPUT:
            continue
        assert block.lang in RUNS or block.mark("skip:"), f"{block.where}: run it or mark it (languages: {RUNS})"
        if (reason := block.mark("skip:")) is not None:
            notes.append(f"{block.where}: skipped: {reason}")
            continue
        if (spec := block.mark("excerpt of")) is not None:
            scratch = work.parent / "excerpts"
            scratch.mkdir(exist_ok=True)
            source = {line.strip() for line in _excerpt_source(spec, scratch).splitlines()}
            missing = [line for line in block.code.splitlines() if line.strip() not in source and line.strip() != "..."]
            assert not missing, f"{block.where}: not in {spec}: {missing}"
            notes.append(f"{block.where}: checked as an excerpt of {spec}")
            continue
        code = _substitute(block.code, work, flowers)
        for text, reason in block.skipped_commands():
            kept = [line for line in code.splitlines() if text not in line]
            assert len(kept) < len(code.splitlines()), f"{block.where}: no command has {text!r}"
            notes.append(f"{block.where}: commands with {text!r} skipped: {reason}")
            code = "\n".join(kept) + "\n"
        steps.append({"where": block.where, "lang": block.lang, "code": code, "file": block.mark("file")})
        if block.lang == "yaml" and not block.mark("file"):
            import yaml

            yaml.safe_load(code)
    return steps, notes


def _run(steps: list[dict]) -> int:
    """In the runner process (cwd: the working folder): each step in order, stopping at the first failure."""
    import hashlib

    import time

    namespace: dict = {"__name__": "__readme__"}
    started = time.monotonic()
    for step in steps:
        print(f"=== {step['where']} (at {time.monotonic() - started:.0f} s)", flush=True)
        if step["lang"] == "python":
            exec(compile(step["code"], step["where"], "exec"), namespace)  # noqa: S102 - README's own code
        elif step["lang"] == "bash":
            done = subprocess.run(["bash", "-ec", "set -x\n" + step["code"]])
            if done.returncode:
                print(f"{step['where']}: exit {done.returncode}", file=sys.stderr)
                return 1
        elif step["file"]:
            text = step["code"]
            target = Path(step["file"])
            for m in re.finditer(r"file: (\S+)", text):  # the reader fills <from zoo hash> for that file
                source = target.parent / m.group(1)
                digest = hashlib.sha256(source.read_bytes()).hexdigest()
                text = text.replace("sha256: <from zoo hash>", f"sha256: {digest}")
                text = text.replace("size: <from zoo hash>", f"size: {source.stat().st_size}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        sys.stdout.flush()
    return 0


def _images(work: Path, flowers: Path) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_image

    photo = Image.fromarray(load_sample_image("china.jpg"))
    for name in ("cat.jpg", "rose.jpg"):
        photo.save(work / name)
    digit = load_digits().images[0]
    Image.fromarray((digit * 255 / 16).astype(np.uint8)).resize((64, 64)).convert("RGB").save(work / "digit.png")
    for split in ("train", "val"):
        for k, cls in enumerate(("daisy", "rose")):
            (flowers / split / cls).mkdir(parents=True)
            for i in range(2):
                photo.crop((40 * i + 100 * k, 0, 40 * i + 100 * k + 300, 300)).save(flowers / split / cls / f"{i}.jpg")


def _demo_outputs(demo: Path) -> None:
    """What `python scripts/demo.py` leaves for the Evaluating and Predicting sections: a fine-tuned
    DenseNet-121 (untrained here) and held-out digits as an ImageFolder, three per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    _finetuned_digits_folder(demo / "finetuned")
    digits = load_digits()
    for target in range(10):
        folder = demo / "digits-val" / str(target)
        folder.mkdir(parents=True)
        for n, image in enumerate(digits.images[digits.target == target][:3]):
            Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((64, 64)).convert("RGB").save(folder / f"{n:03d}.png")


def _finetuned_digits_folder(folder: Path) -> None:
    import zoo
    from zoo.modeling.preprocess import resized
    from zoo.publish.hub import save_pretrained

    model = zoo.create_model("densenet121", num_classes=10)
    model.pretrained_cfg["input_size"] = [3, 64, 64]
    model.pretrained_cfg["preprocessing"] = resized(model.pretrained_cfg["preprocessing"], 64)
    model.pretrained_cfg["labels"] = [str(i) for i in range(10)]
    save_pretrained(model, folder)


def test_ci_runs_the_readme_test_command():
    readme = README.read_text().splitlines()
    commands = [line for line in readme[:10] if line.startswith("python3 -m venv")]
    assert len(commands) == 2 and "scripts/demo.py" in commands[0] and "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_extractor_reads_marks_and_every_fence():
    text = ("# t\n\n```python\nx = 1\n```\n<!-- readme-test: skip: needs a GPU -->\n"
            '<!-- readme-test: skip commands with "--push": needs a Hub account -->\n```bash\nls\n```\n'
            "```text\nout\n```\n")
    found = blocks(text)
    assert [(b.line, b.lang, b.code) for b in found] == [(3, "python", "x = 1\n"), (8, "bash", "ls\n"),
                                                         (11, "text", "out\n")]
    assert found[1].mark("skip:") == "needs a GPU"
    assert found[1].skipped_commands() == [("--push", "needs a Hub account")]
    assert found[0].marks == [] and found[2].marks == []


@pytest.mark.slow
def test_every_readme_block_runs_as_written(tmp_path, offline_build):
    from zoo.publish.build import Options, build
    from zoo.publish.localhub import LocalHub

    work, flowers = tmp_path / "work", tmp_path / "flowers"
    work.mkdir()
    steps, notes = _plan(work, flowers)
    _images(work, flowers)
    _finetuned_digits_folder(work / "out" / "ft")
    _demo_outputs(work / "out" / "demo")
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, command in (("python", f'exec {sys.executable} "$@"'), ("zoo", f'exec {sys.executable} -m zoo "$@"')):
        (shims / name).write_text(f"#!/bin/sh\n{command}\n")
        (shims / name).chmod(0o755)
    (work / "scripts").symlink_to(ROOT / "scripts")  # README's commands run from a checkout's root
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(steps))
    with LocalHub(tmp_path / "hub") as hub:
        built, _ = offline_build  # the suite's one offline build: this only pushes two of its models
        build(Options(out=built.out, offline=True, models_dir=built.models_dir, push=True, publisher=hub.publisher(),
                      pins=tmp_path / "published.json", names=["densenet121", "resnet50"], namespace="readme"))
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "ZOO_PINS": str(tmp_path / "published.json"),
               "HF_HOME": str(tmp_path / "hf"), "ZOO_CACHE": str(tmp_path / "zoo-cache"),
               "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
        env.pop("ZOO_REGISTRY", None)
        done = subprocess.run([sys.executable, __file__, str(plan)], cwd=work, env=env, capture_output=True,
                              text=True, timeout=1200)
    print("\n".join([f"README: {len(steps)} blocks run, {len(notes)} marks (not run as written):", *notes]))
    print("\n".join(line for line in done.stdout.splitlines() if line.startswith("=== ")))
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-6000:])
    assert "OUTSIDE TOLERANCE" not in done.stdout and done.stdout.count("=> OK") >= 3, done.stdout[-4000:]
    ran = [line for line in done.stdout.splitlines() if line.startswith("=== ")]
    assert len(ran) == len(steps) >= 15, ran
    assert (work / "out" / "resnet18.py").is_file() and (work / "myzoo" / "models" / "my_mobilenet.py").is_file()  # zoo add built it


if __name__ == "__main__":
    sys.exit(_run(json.loads(Path(sys.argv[1]).read_text())))
