"""The ONNX node conformance suite through zoo.convert: the shipped script, its figure, and readable code."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Every case that passes, by name: any single regression fails, whatever the total. After fixing an op, add the
# cases it makes pass: python scripts/conformance.py --json out/c.json, then the names whose "passed" is true.
PASSING = [line for line in (Path(__file__).parent / "conformance_passing.txt").read_text().splitlines()
           if line and not line.startswith("#")]


def test_conformance_script_passes_every_listed_case(tmp_path):
    out = tmp_path / "conformance.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "conformance.py"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("zoo: ")
    results = json.loads(out.read_text())["results"]["zoo"]
    assert sum(r["passed"] for r in results.values()) == int(last.split()[1])
    regressed = {name: results.get(name, {}).get("reason", "case missing") for name in PASSING
                 if not results.get(name, {}).get("passed")}
    assert not regressed, regressed
    assert len(PASSING) >= 1751  # README's figure


def test_generated_code_for_ops_stays_readable(tmp_path):
    import onnx
    from onnx.backend.test.case.node import collect_testcases

    from zoo.convert import convert

    cases = {c.name: c for c in collect_testcases()}
    expectations = {
        "test_reduce_mean_keepdims_example": "torch.mean(",
        "test_einsum_batch_matmul": "torch.einsum('bij,bjk->bik'",
        "test_resize_upsample_scales_linear": "F.interpolate(",
        "test_maxpool_2d_strides": "nn.MaxPool2d(",
        "test_conv_with_strides_padding": "F.conv2d(x, W, None, stride=(2, 2), padding=(1, 1)",
    }
    for name, needle in expectations.items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(cases[name].model, str(path))
        source = convert(path, tmp_path / "out").source_path.read_text()
        assert needle in source, (name, source)


def test_uint64_division_on_int64_bits_is_exact():
    import numpy as np
    import torch

    from zoo.convert.ops.unsigned import UDIVMOD64

    scope = {"torch": torch}
    exec(UDIVMOD64, scope)  # noqa: S102 - our own helper source, as the generated file holds it
    rng = np.random.default_rng(0)
    edges = np.array([0, 1, 2, 3, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1], dtype=np.uint64)
    a = np.concatenate([rng.integers(0, 2**64, 5000, dtype=np.uint64), np.repeat(edges, len(edges))])
    b = np.concatenate([rng.integers(1, 2**64, 2500, dtype=np.uint64), rng.integers(1, 2**20, 2500, dtype=np.uint64),
                        np.tile(edges, len(edges))])
    a, b = a[b != 0], b[b != 0]
    q, r = scope["udivmod64"](torch.from_numpy(a.view(np.int64)), torch.from_numpy(b.view(np.int64)))
    assert (q.numpy().view(np.uint64) == a // b).all()
    assert (r.numpy().view(np.uint64) == a % b).all()
