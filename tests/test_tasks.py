"""zoo validate / predict / embed: accuracy known by construction, the ImageNet wnid mapping, batch inference
over folders, globs and lists, the table formats, unreadable files, and resuming a killed run."""
from __future__ import annotations

import csv
import json
import math
import signal
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.cli import main
from zoo.modeling.preprocess import imagenet_classes, imagenet_wnids
from zoo.tasks.evaluate import Tally, class_indices, wilson_interval

from .helpers import TUNED_LABELS as LABELS, TUNED_SIZE as SIZE, KillRunner, changes_counted, noise, script, zoo_cli

ROOT = Path(__file__).resolve().parents[1]


def ranking(model, path: Path) -> list[int]:
    with torch.no_grad():
        logits = model(zoo.transforms(model)(Image.open(path).convert("RGB"))[None])[0].double()
    order = logits.argsort(descending=True).tolist()
    gaps = (logits[order[:-1]] - logits[order[1:]]).abs()
    return order if float(gaps.min()) > 0.05 else []  # far from a tie: batching cannot swap them


@pytest.fixture(scope="module")
def labelled(tuned, tmp_path_factory):
    """An ImageFolder whose true accuracy is set here: of 20 images, 12 are filed under the class the model
    ranks first, 4 under its third (top-5 right, top-1 wrong) and 4 under its last (both wrong)."""
    model = zoo.squeezenet1_1(pretrained=tuned).eval()
    root = tmp_path_factory.mktemp("labelled")
    scratch = root.parent / (root.name + "-scratch")
    placed, seed = 0, 0
    while placed < 20:
        image = noise(scratch / f"{seed}.png", seed)
        order = ranking(model, image)
        seed += 1
        if not order:
            continue
        rank = 0 if placed < 12 else 2 if placed < 16 else 5
        target = root / LABELS[order[rank]] / image.name
        target.parent.mkdir(exist_ok=True)
        image.rename(target)
        placed += 1
    for name in LABELS:  # ImageFolder wants every class a folder; an empty one is allowed
        (root / name).mkdir(exist_ok=True)
    return root


def test_wilson_interval_and_tally_on_hand_made_logits():
    # Known values (Wilson 1927; e.g. statsmodels proportion_confint(8, 10, method="wilson")).
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(500, 1000)[1] - 0.5 == pytest.approx(1.959964 * math.sqrt(0.25 / 1000), rel=0.01)
    names = [f"c{i}" for i in range(7)]
    tally = Tally(names)
    logits = torch.tensor([
        [9, 8, 7, 6, 5, 4, 3],   # target 0: top-1
        [9, 8, 7, 6, 5, 4, 3],   # target 4: fifth, top-5 only
        [9, 8, 7, 6, 5, 4, 3],   # target 5: sixth, neither
        [1, 2, 3, 4, 5, 6, 7],   # target 6: top-1
        [1, 2, 3, 4, 5, 6, 7],   # target 2: fifth
    ], dtype=torch.float32)
    tally.add(logits[:3], torch.tensor([0, 4, 5]))
    tally.add(logits[3:], torch.tensor([6, 2]))
    assert (tally.count, tally.top1, tally.top5) == (5, 2, 4)
    assert tally.confusion == {(4, 0): 1, (5, 0): 1, (2, 6): 1}
    assert tally.per_class == {0: 1, 4: 1, 5: 1, 6: 1, 2: 1} and tally.per_class_correct[6] == 1


def test_wnid_folders_map_onto_the_imagenet_label_order():
    wnids, names = imagenet_wnids(), imagenet_classes()
    assert len(wnids) == len(set(wnids)) == 1000 and wnids[0] == "n01440764" and names[0] == "tench"
    assert wnids[-1] == "n15075141" and names[-1] == "toilet tissue"
    assert class_indices(["n01443537", "n15075141", "n01440764"], names) == [1, 999, 0]
    assert class_indices(["goldfish", "tench"], names) == [1, 0]
    with pytest.raises(ValueError, match="class folder 'n99999999' is not a class of the model"):
        class_indices(["n01440764", "n99999999"], names, "val")
    with pytest.raises(ValueError, match=r"'cat'.*its 6 labels \(a, b, c, d, e, \.\.\.\)"):
        class_indices(["a", "cat"], LABELS)


def test_evaluate_measures_the_accuracy_set_by_construction(tuned, labelled):
    model = zoo.squeezenet1_1(pretrained=tuned)
    result = zoo.evaluate(model, labelled, batch_size=7, progress=False)
    assert result.count == 20 and result.top1 == 12 / 20 and result.top5 == 16 / 20
    assert result.interval == wilson_interval(12, 20) and result.interval_method == "Wilson score"
    assert result.preprocessing.startswith("zoo.transforms(model), the model's own: BGR 0-255, resize 37, crop 32")
    assert sum(c["count"] for c in result.per_class) == 20
    assert sum(c["count"] for c in result.confused) == 8
    assert result.published_top1 is None and result.images_per_s > 0
    limited = zoo.evaluate(model, labelled, limit=5, progress=False)
    assert limited.count == 5
    from torchvision.datasets import ImageFolder

    given = zoo.evaluate(model, ImageFolder(str(labelled), allow_empty=True), batch_size=20, progress=False)
    assert (given.count, given.top1, given.top5) == (20, 0.6, 0.8)  # a Dataset: its classes map by name


def test_validate_cli_with_a_published_figure_and_an_unreadable_file(tuned, labelled, tmp_path):
    folder = tmp_path / "data"
    for path in labelled.rglob("*.png"):
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / path.parent.name / path.name).write_bytes(path.read_bytes())
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    config = json.loads((tuned / "config.json").read_text())
    config["accuracy"] = {"top1": 95.0, "top5": 99.0, "source": "a made-up card"}
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps(config))
    (weights / "model.safetensors").write_bytes((tuned / "model.safetensors").read_bytes())
    done = zoo_cli("validate", "squeezenet1_1", "--weights", weights, "--data", folder, "--batch-size", 8,
                   "--workers", 1, "--per-class", "--json", tmp_path / "eval.json")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "20 images (1 unreadable, left out)" in out and "top-1          60.00%" in out
    assert "top-5          80.00%" in out and "Wilson score" in out
    assert "published      95.00% (a made-up card); difference -35.00 points, OUTSIDE the 95% interval" in out
    assert f"unreadable     {folder / 'a' / 'broken.png'}: UnidentifiedImageError" in out
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["top1"] == 0.6 and saved["count"] == 20 and saved["published_inside"] is False
    assert len(saved["per_class"]) == len({p.parent.name for p in labelled.rglob("*.png")})
    wrong = zoo_cli("validate", "squeezenet1_1", "--data", tmp_path / "nothing")
    assert wrong.returncode == 2 and "not a folder" in wrong.stderr and "Traceback" not in wrong.stderr


def test_validate_imagenet_wnid_folders(tmp_path):
    """A 1000-class model over folders named by WordNet id: each image lands on its class index."""
    model = zoo.squeezenet1_1().eval()
    root = tmp_path / "val"
    wnids = imagenet_wnids()
    for seed, wnid in enumerate(["n01440764", "n01443537", "n15075141"]):
        noise(root / wnid / "x.png", seed)
    result = zoo.evaluate(model, root, crop=32, progress=False)
    assert result.count == 3
    assert {c["class"] for c in result.per_class} == {"tench", "goldfish", "toilet tissue"}
    expected = 0
    for wnid in ("n01440764", "n01443537", "n15075141"):
        image = zoo.transforms(model, crop=32)(Image.open(root / wnid / "x.png").convert("RGB"))
        with torch.no_grad():
            expected += int(model(image[None]).argmax()) == wnids.index(wnid)
    assert result.top1 == expected / 3
    assert result.published_top1 == pytest.approx(0.56502)


# ---- predict / embed ----

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Nested folders of 12 small images, a corrupt .jpg and a text file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(12):
        noise(root / ("deep/er" if i % 3 == 0 else "top") / f"img{i:02d}.png", 100 + i, size=(30 + i, 28))
    (root / "top" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "notes.txt").write_text("not an image\n")
    return root


def _by_path(rows):
    return {row["path"]: row for row in rows}


def test_predict_folder_glob_and_list_inputs(tuned, photos, tmp_path):
    model = zoo.squeezenet1_1(pretrained=tuned)
    rows = zoo.predict(model, [photos], top=3, batch_size=5, progress=False)
    assert len(rows) == 13 and [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    bad = [r for r in rows if r["error"]]
    assert [Path(r["path"]).name for r in bad] == ["corrupt.jpg"] and bad[0]["label_1"] is None
    good = [r for r in rows if not r["error"]]
    for row in good[:3]:  # each row is the model's own top-3 for that file alone
        with torch.no_grad():
            probs = torch.softmax(model.eval()(zoo.transforms(model)(Image.open(row["path"]).convert("RGB"))[None]), 1)[0]
        top = probs.topk(3)
        assert [row[f"label_{k}"] for k in (1, 2, 3)] == [LABELS[i] for i in top.indices]
        assert [row[f"prob_{k}"] for k in (1, 2, 3)] == pytest.approx(top.values.tolist(), abs=1e-5)
    globbed = zoo.predict(model, [str(photos / "**" / "img0*.png")], top=3, progress=False)
    assert len(globbed) == 10 and not any(r["error"] for r in globbed)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good[0]['path']}\n\n{photos / 'notes.txt'}\n{photos / 'gone.png'}\n")
    listed = zoo.predict(model, [listing], top=3, progress=False)
    assert [Path(r["path"]).name for r in listed] == [Path(good[0]["path"]).name, "notes.txt", "gone.png"]
    assert listed[0]["label_1"] == good[0]["label_1"] and "UnidentifiedImageError" in listed[1]["error"]
    assert listed[2]["error"].startswith("FileNotFoundError")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_predict_tables_read_back(tuned, photos, tmp_path, suffix):
    model = zoo.squeezenet1_1(pretrained=tuned)
    out = tmp_path / f"preds{suffix}"
    rows = zoo.predict(model, [photos], top=2, out=out, batch_size=4, part_size=5, progress=False)
    assert out.is_file() and not (tmp_path / f"preds{suffix}.parts").exists()
    if suffix == ".csv":
        with open(out, newline="") as f:
            back = list(csv.DictReader(f))
        assert list(back[0]) == ["path", "error", "label_1", "prob_1", "label_2", "prob_2"]
        back = [{k: (None if v == "" else float(v) if k.startswith("prob") else v) for k, v in r.items()} for r in back]
    elif suffix == ".jsonl":
        back = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        import pyarrow.parquet as pq

        back = pq.read_table(out).to_pylist()
    assert back == rows and len(back) == 13
    again = zoo.predict(model, [photos], top=2, out=out, progress=False)  # all done: nothing recomputed
    assert again == rows
    with pytest.raises(ValueError, match="differ from this run's"):
        zoo.predict(model, [photos], top=3, out=out, progress=False)


def test_embed_to_parquet_and_npy(tuned, photos, tmp_path):
    model = zoo.squeezenet1_1(pretrained=tuned)
    rows = zoo.embed(model, [photos], batch_size=4, progress=False)
    assert model.num_classes == 6  # the caller's model keeps its classifier
    good = [r for r in rows if not r["error"]]
    assert len(rows) == 13 and len(good) == 12 and good[0]["embedding"].shape == (512,)
    parquet = zoo.embed(model, [photos], out=tmp_path / "feats.parquet", progress=False)
    assert [r["path"] for r in parquet] == [r["path"] for r in rows]
    for mine, back in zip(rows, parquet):
        assert mine["error"] == back["error"]
        if not mine["error"]:
            np.testing.assert_allclose(back["embedding"], mine["embedding"], rtol=1e-5, atol=1e-4)
    zoo.embed(model, [photos], out=tmp_path / "feats.npy", part_size=5, progress=False)
    matrix = np.load(tmp_path / "feats.npy")
    with open(tmp_path / "feats.index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert matrix.shape == (13, 512) and [r["path"] for r in index] == [r["path"] for r in rows]
    for i, row in enumerate(rows):
        if row["error"]:
            assert np.isnan(matrix[i]).all() and index[i]["error"]
        else:
            np.testing.assert_allclose(matrix[i], row["embedding"], rtol=1e-5, atol=1e-4)


def test_embedding_is_the_model_without_its_classifier(tuned, photos):
    model = zoo.squeezenet1_1(pretrained=tuned).eval()
    path = next(photos.rglob("img00.png"))
    row = zoo.embed(model, [path], progress=False)[0]
    features = zoo.squeezenet1_1(pretrained=tuned)
    features.reset_classifier(0)
    with torch.no_grad():
        expected = features.eval()(zoo.transforms(model)(Image.open(path).convert("RGB"))[None])[0]
    np.testing.assert_allclose(row["embedding"], expected.numpy(), rtol=1e-5, atol=1e-4)


def test_predict_cli_prints_reports_missing_files_and_goes_on(tuned, photos, tmp_path, capsys):
    image = next(photos.rglob("img01.png"))
    code = main(["predict", "squeezenet1_1", str(tmp_path / "missing.png"), str(image), str(tmp_path / "gone.jpg"),
                 "--weights", str(tuned), "--top", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    assert f"error: {tmp_path / 'missing.png'}: no such file" in err and f"error: {tmp_path / 'gone.jpg'}: no such file" in err
    lines = out.splitlines()
    assert lines[0] == str(image) and len(lines) == 3 and all("%" in line for line in lines[1:])
    # nothing to classify: refused before the model is loaded (these weights do not exist)
    assert main(["predict", "squeezenet1_1", str(tmp_path / "missing.png"), "--weights", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "no images to classify" in err and "none" not in err
    assert main(["predict", "squeezenet1_1", str(image), "--weights", str(tuned), "--out", str(tmp_path / "x.txt")]) == 2
    assert "expected a file ending in .csv, .jsonl, .parquet" in capsys.readouterr().err
    assert main(["predict", "squeezenet1_1", str(image), "--weights", str(tuned), "--device", "cpu", "--half"]) == 2
    assert "--half needs a CUDA device" in capsys.readouterr().err
    assert main(["embed", "squeezenet1_1", str(image), "--weights", str(tuned), "--out", str(tmp_path / "e.csv")]) == 2
    assert "expected a file ending in .parquet, .npy, .jsonl" in capsys.readouterr().err


def _stem_batches(run) -> list[int]:
    """The batch sizes the models' first convolution (3 input channels) saw while ``run()`` ran."""
    seen: list[int] = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[0])
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3 else None)
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_every_batch_job_defaults_to_batch_8_on_the_cpu(tuned, labelled, tmp_path, capsys):
    """scripts/bench_predict.py measured batch 8 faster per image than 64 on the CPU: the API and the CLI's
    validate, predict and embed all default to it there, and an explicit size still wins."""
    model = zoo.squeezenet1_1(pretrained=tuned).eval()
    weights = ["--weights", str(tuned), "--device", "cpu", "--workers", "0"]
    runs = {
        "zoo.evaluate": lambda: zoo.evaluate(model, labelled, progress=False),
        "zoo.predict": lambda: zoo.predict(model, [labelled], progress=False),
        "zoo.embed": lambda: zoo.embed(model, [labelled], progress=False),
        "zoo validate": lambda: main(["validate", "squeezenet1_1", "--data", str(labelled), *weights]),
        "zoo predict": lambda: main(["predict", "squeezenet1_1", str(labelled), *weights,
                                     "--out", str(tmp_path / "p.csv")]),
        "zoo embed": lambda: main(["embed", "squeezenet1_1", str(labelled), *weights,
                                   "--out", str(tmp_path / "e.parquet")]),
    }
    for name, run in runs.items():
        assert _stem_batches(run) == [8, 8, 4], name  # the 20 labelled images
    assert _stem_batches(lambda: zoo.predict(model, [labelled], batch_size=20, progress=False)) == [20]
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        zoo.predict(model, [labelled], batch_size=0, progress=False)
    assert main(["predict", "squeezenet1_1", str(labelled), *weights, "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err


def test_bench_predict_times_every_path_in_rotated_rounds(tmp_path):
    """The script README's prediction-speed table comes from: every path, each round, order rotated."""
    out = tmp_path / "bench.json"
    assert script("bench_predict").main(["--images", "6", "--batch-sizes", "2", "4", "--repeat", "2", "--no-ray",
                                         "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert len(results) == 1 + 2 * 2 * 2  # one at a time, then batch x workers x memory format
    assert results[0]["run"].startswith("one at a time") and "batch 4, 2 workers, channels-last" in results[-1]["run"]
    for r in results:
        assert len(r["rounds"]) == 2 and r["images_per_s"] == pytest.approx(6 / statistics.median(r["rounds"]))


PREDICT_JOB = """
import sys
from zoo.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_predict_killed_at_chosen_steps_then_rerun_equals_one_clean_run(tuned, tmp_path):
    """SIGKILL just before a chosen change to the table's files (the first, two in the middle of the parts, the
    last three: the merge); the table is never half there, and the rerun redoes only what was not done: the
    same table."""
    images = tmp_path / "many"
    for i in range(24):
        noise(images / f"{i:03d}.png", 1000 + i, size=(SIZE, SIZE))
    args = ["predict", "squeezenet1_1", str(images), "--weights", str(tuned),
            "--batch-size", "2", "--part-size", "2", "--workers", "0", "--top", "3"]

    with KillRunner(PREDICT_JOB, [tmp_path / "table-"]) as runner:  # a prefix: every table below and its parts
        clean = runner.run(0, *args, "--out", tmp_path / "table-clean.csv")
        assert clean.returncode == 0, clean.stderr
        changes = changes_counted(clean.stderr)
        table = (tmp_path / "table-clean.csv").read_text()
        assert len(table.splitlines()) == 25 and changes > 12  # 12 parts at least, each a change
        for kill_at in sorted({1, changes // 2, changes // 2 + 1, changes - 2, changes - 1, changes}):
            out = tmp_path / f"table-killed-{kill_at}.csv"
            killed = runner.run(kill_at, *args, "--out", out)
            assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
            assert not out.exists() or out.read_text() == table, f"kill {kill_at}: a half-written table"
            rerun = runner.run(0, *args, "--out", out)
            assert rerun.returncode == 0, (kill_at, rerun.stderr)
            redone = changes_counted(rerun.stderr)
            # What was done before the kill is not done again: at most the interrupted part (mkdir, write, rename).
            assert redone <= changes - (kill_at - 1) + 3, (kill_at, redone, changes)
            assert out.read_text() == table, kill_at
            assert not out.with_name(out.name + ".parts").exists(), kill_at
