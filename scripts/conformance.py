"""ONNX backend node conformance: every node test case of the installed onnx package through zoo.convert.

    python scripts/conformance.py [--peer onnx2torch --peer onnx2pytorch --peer onnxruntime]
                                  [--json out/conformance.json] [-k PATTERN] [--failures]

Cases are regenerated with onnx.backend.test.case.node.collect_testcases(); outputs are compared with the
case's own tolerances (rtol 1e-3, atol 1e-7 by default), exactly for integer and bool outputs, and shapes
must match. Prints a per-op table and one total line per converter.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch

warnings.filterwarnings("ignore")


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


_ML_DTYPES = {"bfloat16": torch.bfloat16, "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2,
              "float8_e4m3fnuz": torch.float8_e4m3fnuz, "float8_e5m2fnuz": torch.float8_e5m2fnuz}


def _to_torch(x):
    """numpy (including ml_dtypes' bfloat16 and float8) to torch, bit for bit."""
    if isinstance(x, onnx.TensorProto):
        x = onnx.numpy_helper.to_array(x)
    if isinstance(x, list):  # an ONNX sequence (or an optional holding one)
        return [_to_torch(e) for e in x]
    if isinstance(x, np.generic):
        x = np.array(x)
    if not isinstance(x, np.ndarray):
        return x
    name = x.dtype.name
    if name in _ML_DTYPES:
        # (ascontiguousarray makes a 0-d array 1-d: keep the case's shape)
        bits = np.ascontiguousarray(x).view(np.uint16 if x.dtype.itemsize == 2 else np.uint8).reshape(x.shape)
        return torch.from_numpy(bits.copy()).view(_ML_DTYPES[name])
    return torch.from_numpy(np.array(x))


def _to_numpy(x):
    if isinstance(x, onnx.TensorProto):
        return onnx.numpy_helper.to_array(x)
    return np.array(x) if isinstance(x, np.generic) else x


def _compare(expected, got, rtol, atol) -> str:
    """'' when equal enough, else why not. Sequences compare element by element; an empty optional is None."""
    if expected is None or got is None:
        return "" if expected is None and got is None else f"got {type(got).__name__}, expected {expected!r:.40}"
    if isinstance(expected, list):
        if not isinstance(got, list):
            return f"got {type(got).__name__}, expected a sequence"
        if len(got) != len(expected):
            return f"sequence of {len(got)}, expected {len(expected)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            why = _compare(e, g, rtol, atol)
            if why:
                return f"sequence element {i}: {why}"
        return ""
    if isinstance(got, torch.Tensor):
        got = got.detach().cpu()
        got = got.float().numpy() if got.dtype in _ML_DTYPES.values() else got.numpy()
    if isinstance(expected, onnx.TensorProto):
        expected = onnx.numpy_helper.to_array(expected)
    expected = np.asarray(expected)
    if expected.dtype.name in _ML_DTYPES:
        expected = expected.astype(np.float32)
    got = np.asarray(got)
    if expected.dtype == object or expected.dtype.kind in "SU":
        return "string or object output"
    if got.shape != expected.shape:
        return f"shape {got.shape} != {expected.shape}"
    if expected.dtype.kind in "biu":
        if got.dtype.kind not in "biu":
            return f"dtype {got.dtype}, expected {expected.dtype}"
        return "" if np.array_equal(got.astype(expected.dtype), expected) else "integer values differ"
    if expected.dtype.kind == "c":
        ok = np.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
        return "" if ok else "complex values differ"
    try:
        np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol)
    except AssertionError:
        return "values differ"
    return ""


def _first_line(exc: BaseException) -> str:
    """An exception's first line, whole: --failures lists reasons as they are, not cut mid-word."""
    return (str(exc).splitlines() or [""])[0]


def _run_case(case, loader, workdir: Path) -> tuple[bool, str]:
    path = workdir / f"{case.name}.onnx"
    onnx.save(case.model, str(path))
    try:
        module = loader(path)
    except Exception as exc:  # noqa: BLE001 - the converter's verdict
        return False, f"convert: {type(exc).__name__}: {_first_line(exc)}"
    for inputs, outputs in case.data_sets:
        try:
            args = [_to_numpy(x) if getattr(module, "numpy_inputs", False) else _to_torch(x) for x in inputs]
            with torch.no_grad():
                got = module(*args)
        except Exception as exc:  # noqa: BLE001
            return False, f"run: {type(exc).__name__}: {_first_line(exc)}"
        got = list(got) if isinstance(got, tuple) else [got]  # a list is one sequence output
        if len(got) != len(outputs):
            return False, f"{len(got)} outputs, expected {len(outputs)}"
        for g, e in zip(got, outputs):
            why = _compare(e, g, case.rtol, case.atol)
            if why:
                return False, why
    return True, ""


def zoo_loader(path: Path):
    from zoo.convert import load

    return load(path)


def _outputs_as_tuple(module):
    """Peers return several outputs as a list, which this harness reads as one sequence output."""
    def run(*args):
        got = module(*args)
        return tuple(got) if isinstance(got, list) else got

    return run


def onnx2torch_loader(path: Path):
    from onnx2torch import convert

    return _outputs_as_tuple(convert(str(path)).eval())


def onnx2pytorch_loader(path: Path):
    from onnx2pytorch import ConvertModel

    return _outputs_as_tuple(ConvertModel(onnx.load(str(path))).eval())


def onnxruntime_loader(path: Path):
    """The reference executor in the same harness: what a faithful conversion could reach at best."""
    from zoo.convert import reference

    session = reference.session(path)
    names = [i.name for i in session.get_inputs()]

    def run(*args):
        return tuple(session.run(None, dict(zip(names, args))))  # outputs; a list would be one sequence

    run.numpy_inputs = True  # the case's own arrays, bfloat16 and float8 included
    return run


LOADERS = {"zoo": zoo_loader, "onnx2torch": onnx2torch_loader, "onnx2pytorch": onnx2pytorch_loader,
           "onnxruntime": onnxruntime_loader}
FULL_RUN_JSON = Path("out/conformance.json")
PACKAGES = {"onnx2torch": "onnx2torch", "onnx2pytorch": "onnx2pytorch", "onnxruntime": "onnxruntime"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/conformance.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", action="append", default=[], choices=sorted(PACKAGES),
                        help="also run this converter (or onnxruntime, the reference executor)")
    parser.add_argument("--json", type=Path, help=f"per-case results (default: {FULL_RUN_JSON} for a full run; "
                                                  "a -k slice writes only where --json says)")
    parser.add_argument("-k", dest="pattern", help="only cases whose name contains this")
    parser.add_argument("--timeout", type=int, default=30, help="seconds per case")
    parser.add_argument("--failures", action="store_true", help="list every failing case with its reason")
    args = parser.parse_args(argv)
    if args.json is None and not args.pattern:
        args.json = FULL_RUN_JSON

    from onnx.backend.test.case.node import collect_testcases

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cases = [c for c in collect_testcases() if c.kind == "node" and (not args.pattern or args.pattern in c.name)]
    if not cases:
        print(f"error: no node test case of onnx {onnx.__version__} has {args.pattern!r} in its name", file=sys.stderr)
        return 1
    signal.signal(signal.SIGALRM, _alarm)
    results: dict[str, dict[str, dict]] = {}
    totals = {}
    with tempfile.TemporaryDirectory() as tmp:
        for converter in ["zoo", *args.peer]:
            try:
                LOADERS[converter]  # noqa: B018
                if converter != "zoo":
                    __import__(PACKAGES[converter])
            except ImportError:
                print(f"{converter}: not installed (pip install {converter}); skipped")
                continue
            start = time.perf_counter()
            per_case = {}
            for case in cases:
                signal.alarm(args.timeout)
                try:
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        ok, why = _run_case(case, LOADERS[converter], Path(tmp))
                except CaseTimeout:
                    ok, why = False, f"timeout after {args.timeout} s"
                except Exception as exc:  # noqa: BLE001
                    ok, why = False, f"crash: {type(exc).__name__}: {_first_line(exc)}"
                finally:
                    signal.alarm(0)
                op = case.model.graph.node[0].op_type if case.model.graph.node else "?"
                per_case[case.name] = {"op": op, "passed": ok, "reason": why}
            results[converter] = per_case
            totals[converter] = (sum(r["passed"] for r in per_case.values()), len(per_case), time.perf_counter() - start)

    by_op: dict[str, dict[str, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
    for converter, per_case in results.items():
        for r in per_case.values():
            cell = by_op[r["op"]][converter]
            cell[0] += r["passed"]
            cell[1] += 1
    names = list(results)
    print(f"{'op':<36}" + "".join(f"{n:>14}" for n in names))
    for op in sorted(by_op):
        print(f"{op:<36}" + "".join(f"{by_op[op][n][0]:>8}/{by_op[op][n][1]:<5}" for n in names))
    if args.failures:
        for converter, per_case in results.items():
            for name, r in sorted(per_case.items()):
                if not r["passed"]:
                    print(f"FAIL {converter} {name} ({r['op']}): {r['reason']}")
    for converter, (passed, total, seconds) in totals.items():
        print(f"{converter}: {passed} passed, {total - passed} failed ({total} cases, onnx {onnx.__version__}, "
              f"{seconds:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"onnx": onnx.__version__, "results": results}, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
