"""zoo predict/embed on Ray Data: a local 2-CPU cluster started here gives the single-process rows, also when
the model's actor is killed midway (Ray restarts it and retries its batch). The only Ray test module: Ray's
start-up takes seconds, so every test shares one cluster."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo.cli import main

from .helpers import noise

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
zoo_ray = pytest.importorskip("zoo.tasks.ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-images")
    for i in range(200):
        noise(root / f"d{i % 4}" / f"{i:03d}.png", 5000 + i, size=(32, 32))
    (root / "d0" / "broken.png").write_bytes(b"not a png")
    return root


def _same(rows, expected):
    assert [r["path"] for r in rows] == [r["path"] for r in expected]
    for got, want in zip(rows, expected):
        assert got["error"] == want["error"]
        assert [got[f"label_{k}"] for k in (1, 2, 3)] == [want[f"label_{k}"] for k in (1, 2, 3)]
        if not want["error"]:
            assert [got[f"prob_{k}"] for k in (1, 2, 3)] == pytest.approx([want[f"prob_{k}"] for k in (1, 2, 3)],
                                                                          abs=1e-5)


def _kill_own_process_at_batch(model, nth: int, log: Path) -> None:
    """The model's actor SIGKILLs itself as it starts its nth batch, once: deterministic, unlike a killer thread
    racing the run. ``log`` gets a line per batch started and ``killed <pid>`` once."""
    driver, log = os.getpid(), str(log)

    def hook(module, args):
        if os.getpid() == driver:
            return
        with open(log, "a") as f:
            f.write("batch\n")
        with open(log) as f:
            seen = f.read().split("\n")
        if seen.count("batch") == nth and not any(line.startswith("killed") for line in seen):
            with open(log, "a") as f:
                f.write(f"killed {os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    model.register_forward_pre_hook(hook)  # a closure: Ray pickles it by value into the actor


def test_ray_rows_equal_the_single_process_run_even_when_the_actor_is_killed(cluster, tuned, images, tmp_path):  # noqa: F811
    model = zoo.squeezenet1_1(pretrained=tuned)
    expected = zoo.predict(model, [images], top=3, batch_size=20, progress=False)
    out, log = tmp_path / "ray.parquet", tmp_path / "batches.log"
    _kill_own_process_at_batch(model, 3, log)
    rows = zoo_ray.predict(model, [images], top=3, out=out, batch_size=20, part_size=20, progress=False)
    seen = log.read_text().splitlines()
    assert sum(line.startswith("killed") for line in seen) == 1, seen
    assert seen.count("batch") >= 12, seen  # 11 batches of 20 for 201 files, and the killed one again
    assert len(rows) == 201 and len({r["path"] for r in rows}) == 201
    _same(rows, expected)
    import pyarrow.parquet as pq

    assert pq.read_table(out).to_pylist() == rows


def test_ray_embed_and_the_cli(cluster, tuned, images, tmp_path, capsys):  # noqa: F811
    model = zoo.squeezenet1_1(pretrained=tuned)
    some = sorted(images.glob("d1/*.png"))[:6] + [images / "d0" / "broken.png"]
    local = zoo.embed(model, some, batch_size=4, progress=False)
    remote = zoo_ray.embed(model, some, batch_size=4, progress=False)
    assert [r["path"] for r in remote] == [r["path"] for r in local] and remote[-1]["error"]
    for got, want in zip(remote[:-1], local[:-1]):
        np.testing.assert_allclose(got["embedding"], want["embedding"], rtol=1e-5, atol=1e-4)
    out = tmp_path / "preds.csv"
    code = main(["predict", "squeezenet1_1", *map(str, some), "--weights", str(tuned), "--top", "3",
                 "--batch-size", "4", "--out", str(out), "--ray"])
    assert code == 1 and "broken.png" in capsys.readouterr().err  # an error row: exit 1, the table written
    _same(zoo.predict(model, some, top=3, out=out, progress=False), zoo.predict(model, some, top=3, progress=False))
    default = tmp_path / "default.jsonl"  # no --batch-size: --ray keeps batches of 64 (zoo.tasks.ray.BATCH_SIZE)
    assert main(["predict", "squeezenet1_1", *map(str, some), "--weights", str(tuned), "--top", "3",
                 "--out", str(default), "--ray"]) == 1
    _same(zoo.predict(model, some, top=3, out=default, progress=False), zoo.predict(model, some, top=3, progress=False))
