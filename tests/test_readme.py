import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in readme[:8] if line.startswith("python3 -m venv")]
    assert len(commands) == 2 and "scripts/demo.py" in commands[0] and "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def _blocks(section: str, language: str) -> list[str]:
    """The code blocks of one README section (up to the next heading), as written."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {section}\n")
    end = re.compile(r"\n#{2,3} ").search(text, start + 1)
    body = text[start:end.start() if end else len(text)]
    return re.findall(rf"```{language}\n(.*?)```", body, re.S)


def test_converting_a_model_runs_as_written(tmp_path):
    python = _blocks("Converting a model", "python")
    assert len(python) == 2 and "torch.onnx.export" in python[0] and "verify(" in python[1]
    done = subprocess.run([sys.executable, "-c", "\n".join(python)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "=> OK" in done.stdout and "Conv" in done.stdout
    assert (tmp_path / "out" / "resnet18.py").is_file() and (tmp_path / "out" / "resnet18.safetensors").is_file()
    shell = [line.split("#")[0].strip() for line in _blocks("Converting a model", "bash")[0].splitlines()]
    layers = next(line for line in shell if line.endswith("--layers"))
    listing = subprocess.run([sys.executable, *layers.split()[1:]], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert listing.returncode == 0 and "nodes" in listing.stdout, listing.stderr[-2000:]
