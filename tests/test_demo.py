"""README's main job, scripts/demo.py, end to end in its fast mode (squeezenet1_1 alone, one epoch):
build -> publish to a loopback Hub -> pretrained=True -> predict -> fine-tune -> predict with the result."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_fast_mode_runs_every_step(tmp_path):
    # The limit only catches a hang: the fast demo takes about a minute of CPU.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--fast", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=1200, env=env)  # this checkout's zoo
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.split("\nSummary", 1)[1]
    built = re.search(r"built squeezenet1_1 +worst error vs onnxruntime (\S+)", summary)
    assert built and float(built.group(1)) <= 1e-4, summary
    published = re.search(r"published squeezenet1_1 revision ([0-9a-f]{12}) as demo/squeezenet1_1", summary)
    assert published, summary
    assert re.search(rf"loaded squeezenet1_1 from hf://demo/squeezenet1_1@{published.group(1)}[0-9a-f]{{28}} "
                     r"\(stand-in: True\)", summary), summary
    assert re.search(r"predicted china\.jpg: [^,]+ \d+\.\d%, [^,]+ \d+\.\d%, [^,]+ \d+\.\d% \(stand-in", summary), summary
    tuned = re.search(r"fine-tuned squeezenet1_1 -> (.+): val accuracy (\d+\.\d)% \(chance 10%\)", summary)
    assert tuned and Path(tuned.group(1)) == tmp_path / "demo" / "finetuned", summary
    assert (tmp_path / "demo" / "finetuned" / "model.safetensors").is_file()
    assert re.search(r"fine-tuned model: 10 classes \['0', '1', .*'9'\], input \(64, 64\); "
                     r"a validation '\d' predicted as '\d'", summary), summary
    assert "built densenet121" not in summary  # fast mode builds one model
