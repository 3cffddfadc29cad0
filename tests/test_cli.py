"""Every command-line entry point, driven with the inputs users get wrong: a one-line error, exit 2 for usage
(arguments that name nothing usable) or 1 for a failure, and never a traceback.

Cases run in-process (``main(argv)`` with capsys): starting torch costs ~2 s a process. A few run as real
subprocesses, to cover the ``python -m`` and script wrappers themselves. A new subcommand or script is one
line in ENTRY_POINTS (its --help is then checked) plus its rows in CASES.
"""
from __future__ import annotations

import functools
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .helpers import script

ROOT = Path(__file__).resolve().parents[1]

# entry point -> (how to reach its main(argv), the prog its usage line shows)
ENTRY_POINTS = {
    "zoo": ("zoo.cli", "zoo"),
    "python -m zoo.convert": ("zoo.convert.cli", "python -m zoo.convert"),
    "python -m zoo.modeling.backbone": ("zoo.modeling.backbone", "python -m zoo.modeling.backbone"),
    "python -m zoo.publish.standins": ("zoo.publish.standins", "python -m zoo.publish.standins"),
    **{f"scripts/{p.name}": (p, None) for p in sorted((ROOT / "scripts").glob("*.py"))},
}

# (entry point, argv, exit code, text the one error line holds). In argv: {missing} a path that does not
# exist, {folder} a directory, {text} a text file, {fake_onnx} a text file named .onnx, {fake_png} one named .png.
# "--device cuda" rows run with CUDA hidden, as on a machine without a GPU.
CASES = [
    ("zoo", ["nosuch"], 2, "invalid choice: 'nosuch'"),
    ("zoo", ["list", "nothing*"], 1, "no model matches 'nothing*'"),
    ("zoo", ["info", "nosuch"], 2, "unknown model 'nosuch'"),
    ("zoo", ["info"], 2, "the following arguments are required: name"),
    ("zoo", ["hash", "{missing}"], 2, "{missing}"),
    ("zoo", ["hash", "{folder}"], 2, "{folder}"),
    ("zoo", ["predict", "nosuch", "{fake_png}"], 2, "unknown model 'nosuch'"),
    ("zoo", ["convert", "{missing}", "-o", "{folder}"], 2, "{missing}"),
    ("zoo", ["convert", "{folder}", "-o", "{folder}"], 2, "{folder}"),
    ("zoo", ["convert", "{fake_onnx}", "--layers"], 2, "{fake_onnx}"),
    ("zoo", ["convert", "{text}", "--layers", "--plugin", "no_such_module"], 2, "--plugin no_such_module"),
    ("zoo", ["build", "nosuch", "--offline", "--out", "{folder}"], 1, "unknown model(s) nosuch"),
    ("zoo", ["build", "--source", "{missing}", "--out", "{folder}", "squeezenet1_1"], 1, "{missing}"),
    ("zoo", ["finetune", "--model", "nosuch", "--dataset", "digits"], 2, "unknown model 'nosuch'"),
    ("zoo", ["finetune", "--model", "squeezenet1_1", "--data", "{missing}", "--pretrained", "none"], 2, "{missing}"),
    ("zoo", ["finetune", "--model", "squeezenet1_1", "--data", "{text}", "--pretrained", "none"], 2, "{text}"),
    ("zoo", ["finetune", "--model", "squeezenet1_1", "--dataset", "digits", "--device", "cuda"], 2, "no CUDA GPU"),
    ("zoo", ["finetune", "--model", "squeezenet1_1", "--dataset", "digits", "--pretrained", "{missing}"], 2,
     "{missing}"),
    ("python -m zoo.convert", ["{missing}", "-o", "{folder}"], 2, "{missing}"),
    ("python -m zoo.convert", ["{fake_onnx}", "-o", "{folder}"], 2, "{fake_onnx}"),
    ("python -m zoo.convert", ["{text}", "--layers"], 2, "{text}"),
    ("python -m zoo.convert", ["{folder}", "--layers"], 2, "{folder}"),
    ("python -m zoo.convert", ["{fake_onnx}"], 2, "-o/--out is required"),
    ("python -m zoo.modeling.backbone", ["nosuch"], 2, "unknown model 'nosuch'"),
    ("python -m zoo.publish.standins", ["{text}"], 2, "{text}"),
    ("python -m zoo.publish.standins", ["{folder}", "--models", "nosuch"], 2, "invalid choice: 'nosuch'"),
    ("scripts/bench.py", ["--device", "cuda"], 2, "no CUDA GPU"),
    ("scripts/bench.py", ["--models", "nosuch"], 2, "invalid choice: 'nosuch'"),
    ("scripts/bench_pretrained.py", ["--models", "nosuch"], 2, "invalid choice: 'nosuch'"),
    ("scripts/quantized.py", ["--models", "nosuch"], 2, "invalid choice: 'nosuch'"),
    ("scripts/build.py", ["nosuch", "--offline", "--out", "{folder}"], 1, "unknown model(s) nosuch"),
    ("scripts/finetune.py", ["--model", "nosuch", "--dataset", "digits"], 2, "unknown model 'nosuch'"),
    ("scripts/finetune.py", ["--model", "squeezenet1_1", "--dataset", "digits", "--device", "cuda"], 2,
     "no CUDA GPU"),
    ("scripts/corpus.py", ["-k", "nosuch"], 1, "no corpus file has 'nosuch'"),
    ("scripts/corpus.py", ["--peer", "nosuch"], 2, "invalid choice: 'nosuch'"),
    ("scripts/conformance.py", ["--peer", "nosuch"], 2, "invalid choice: 'nosuch'"),
    ("scripts/demo.py", ["--epochs", "many"], 2, "invalid int value: 'many'"),
]

# The same kinds of mistake through the real wrappers (``python -m``, ``python scripts/x.py``, ``python -m zoo``).
SUBPROCESS_CASES = [
    (["-m", "zoo", "info", "nosuch"], 2, "unknown model 'nosuch'"),
    (["-m", "zoo.convert", "{folder}", "--layers"], 2, "{folder}"),
    (["-m", "zoo.modeling.backbone", "--help"], 0, "usage: python -m zoo.modeling.backbone"),
    (["scripts/bench.py", "--device", "cuda"], 2, "no CUDA GPU"),
]


@functools.cache
def _main(entry: str):
    target, _ = ENTRY_POINTS[entry]
    if isinstance(target, Path):
        module = script(target.stem)
    else:
        module = importlib.import_module(target)
    return module.main


@pytest.fixture
def paths(tmp_path) -> dict[str, str]:
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not an image, not an ONNX file\n")
    (tmp_path / "model.onnx").write_text("not an ONNX file\n")
    (tmp_path / "cat.png").write_text("not an image\n")
    return {"missing": str(tmp_path / "missing.onnx"), "folder": str(tmp_path / "folder"),
            "text": str(tmp_path / "notes.txt"), "fake_onnx": str(tmp_path / "model.onnx"),
            "fake_png": str(tmp_path / "cat.png")}


def _call(main, argv) -> int:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help and usage errors
        code = exc.code
    return 0 if code is None else code


def _assert_one_line_error(code: int, out: str, err: str, expected_code: int, fragment: str) -> None:
    assert "Traceback" not in out + err, err
    assert code == expected_code, (code, out, err)
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # beside usage lines, progress bars
    assert len(errors) == 1 and fragment in errors[0], err


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_has_help(entry, capsys):
    assert _call(_main(entry), ["--help"]) == 0
    out = capsys.readouterr().out
    prog = ENTRY_POINTS[entry][1] or entry
    assert out.startswith(f"usage: {prog}") and "Traceback" not in out, out[:300]
    description = out.split("\n\n")[1]
    assert description.strip() and not description.rstrip().endswith((",", "/", "{")), description


def test_every_zoo_subcommand_has_help_naming_itself(capsys):
    """Subcommands are read from `zoo --help`, so one added later is checked without touching this test."""
    from zoo.cli import main

    _call(main, ["--help"])
    listed = capsys.readouterr().out.split("{", 1)[1].split("}", 1)[0].split(",")
    assert {"list", "info", "predict", "hash", "convert", "build", "finetune"} <= set(listed), listed
    for command in listed:
        assert _call(main, [command, "--help"]) == 0, command
        out = capsys.readouterr().out
        assert out.startswith(f"usage: zoo {command}") and "Traceback" not in out, out[:300]
        arguments = out.split("positional arguments:", 1)[-1].split("options:", 1)[0]
        for line in arguments.splitlines()[1:]:
            if line.strip() and len(line) - len(line.lstrip()) == 2:  # an argument's first line: its help beside it
                assert len(line.split(None, 1)) == 2, f"zoo {command}: {line.strip()} has no help text"


@pytest.mark.parametrize("entry,argv,code,fragment", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_wrong_input_gets_one_line_and_no_traceback(entry, argv, code, fragment, paths, capsys, monkeypatch):
    if "--device" in argv:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ZOO_OFFLINE", "1")  # nothing here may reach for weights
    argv = [a.format(**paths) for a in argv]
    got = _call(_main(entry), argv)
    captured = capsys.readouterr()
    _assert_one_line_error(got, captured.out, captured.err, code, fragment.format(**paths))


@pytest.mark.parametrize("argv,code,fragment", SUBPROCESS_CASES, ids=[" ".join(c[0]) for c in SUBPROCESS_CASES])
def test_wrappers_exit_cleanly(argv, code, fragment, paths):
    env = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, *[a.format(**paths) for a in argv]], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    if code == 0:
        assert done.returncode == 0 and fragment in done.stdout and not done.stderr.strip(), done.stderr
    else:
        _assert_one_line_error(done.returncode, done.stdout, done.stderr, code, fragment.format(**paths))


PLUGIN = '''
from zoo.convert import register_op


@register_op("TestScale", domain="zoo.test.plugin", since=1)
def test_scale(node):
    return f"{node.x(0)} * {node.lit(float(node.attr('factor')))}"
'''


def test_a_custom_op_header_names_the_plugin_that_regenerates_it(tmp_path, monkeypatch, capsys):
    """The generated header's command must work: for a custom op, it has to import the handler first."""
    import shlex

    from onnx import helper

    from zoo.convert.cli import main

    from .helpers import make_model, tensor

    (tmp_path / "zoo_test_plugin_ops.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    model = make_model([helper.make_node("TestScale", ["x"], ["y"], domain="zoo.test.plugin", factor=2.5)],
                       [tensor("x", ["batch", 3])], [tensor("y", ["batch", 3])])
    model.opset_import.append(helper.make_opsetid("zoo.test.plugin", 1))
    (tmp_path / "scale.onnx").write_bytes(model.SerializeToString())
    assert main(["scale.onnx", "-o", "plain"]) == 2 and "TestScale" in capsys.readouterr().err
    assert main(["scale.onnx", "-o", "out", "--plugin", "zoo_test_plugin_ops"]) == 0
    header = next(line for line in (tmp_path / "out" / "scale.py").read_text().splitlines() if "regenerate" in line)
    command = header.split("`")[1]
    assert command == "python -m zoo.convert scale.onnx -o DIR --plugin zoo_test_plugin_ops", header
    assert main(shlex.split(command.replace("DIR", "again"))[3:]) == 0
    assert (tmp_path / "again" / "scale.py").read_text() == (tmp_path / "out" / "scale.py").read_text()


def test_standins_writes_the_zoo_graphs_under_the_zoo_names(tmp_path, capsys):
    from zoo.publish.standins import main
    from zoo.registry import load_registry

    assert main([str(tmp_path), "--models", "squeezenet1_1", "shufflenet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shufflenet.onnx", "squeezenet1_1.onnx"]
    _call(main, ["--help"])
    listed = capsys.readouterr().out
    assert all(name in listed for name, e in load_registry().items() if e.source.standin), listed  # all nine by default


def test_conformance_failures_are_whole_and_a_slice_keeps_the_full_results(tmp_path, monkeypatch, capsys):
    import onnx.backend.test.case.node as cases

    collected = functools.cache(cases.collect_testcases)  # collecting takes seconds: once for both runs
    monkeypatch.setattr(cases, "collect_testcases", collected)
    monkeypatch.chdir(tmp_path)
    conformance = _main("scripts/conformance.py")
    assert conformance(["-k", "test_cast_FLOAT_to_INT4", "--failures"]) == 0
    out = capsys.readouterr().out
    fail = next(line for line in out.splitlines() if line.startswith("FAIL zoo test_cast_FLOAT_to_INT4"))
    assert fail.startswith("FAIL zoo test_cast_FLOAT_to_INT4 (Cast): convert: ConversionError: ") and \
        fail.endswith("dtype int4 has no PyTorch equivalent"), fail  # the op, and the reason to its last word
    assert not (tmp_path / "out").exists()  # a -k slice does not overwrite out/conformance.json
    assert conformance(["-k", "no_such_case"]) == 1 and "no node test case" in capsys.readouterr().err


def test_corpus_rows_say_which_ops_mattered_and_a_missing_peer_is_a_usage_error(monkeypatch, capsys):
    corpus = sys.modules[_main("scripts/corpus.py").__module__]
    assert all(entry.notes.strip() for entry in corpus.CORPUS)  # the README table's column, never empty
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx2torch" else real(name, *a))
    assert _call(corpus.main, ["--peer", "onnx2torch", "-k", "silero"]) == 2
    assert "--peer onnx2torch: not installed (pip install onnx2torch)" in capsys.readouterr().err
