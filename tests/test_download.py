"""Downloads: sha256 pin, resume after a cut connection, retries, and a cache that never holds a bad file."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from zoo.weights.download import DownloadError, fetch, mirrored

from .servers import FileServer

DATA = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()


def _cache_files(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


def test_fetch_and_cache_hit(tmp_path):
    with FileServer({"/m.onnx": DATA}) as server:
        path = fetch([server.url + "/m.onnx"], SHA, filename="m.onnx", size=len(DATA), cache_dir=tmp_path)
        assert path.read_bytes() == DATA
        fetch([server.url + "/m.onnx"], SHA, filename="m.onnx", size=len(DATA), cache_dir=tmp_path)
        assert len(server.requests) == 1


def test_sha256_mismatch_leaves_nothing(tmp_path):
    with FileServer({"/m.onnx": DATA[:-1] + b"x"}) as server:
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            fetch([server.url + "/m.onnx"], SHA, filename="m.onnx", cache_dir=tmp_path)
    assert _cache_files(tmp_path) == []


def test_a_wrong_file_in_a_mirror_folder_is_named_and_left_alone(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "m.onnx").write_bytes(DATA[:-1] + b"x")
    monkeypatch.setenv("ZOO_ONNX_MIRROR", str(mirror))
    with pytest.raises(DownloadError) as error:
        fetch(mirrored([], "m.onnx"), SHA, filename="m.onnx", size=len(DATA), cache_dir=tmp_path / "cache")
    assert f"{mirror / 'm.onnx'}: sha256 mismatch" in str(error.value) and ".tmp" not in str(error.value)
    assert "left as it is" in str(error.value) and (mirror / "m.onnx").read_bytes() == DATA[:-1] + b"x"


def test_cut_connection_resumes(tmp_path):
    with FileServer({"/m.onnx": DATA}) as server:
        server.cut_after, server.cuts_left = 300_000, 1
        path = fetch([server.url + "/m.onnx"], SHA, filename="m.onnx", size=len(DATA), cache_dir=tmp_path)
        assert path.read_bytes() == DATA
        assert server.requests[1][1] == "bytes=300000-"
    assert _cache_files(tmp_path) == ["m.onnx"]


def test_failed_download_leaves_no_cache_entry_and_rerun_succeeds(tmp_path):
    with FileServer({"/m.onnx": DATA}) as server:
        server.cut_after, server.cuts_left = 100_000, 10
        with pytest.raises(DownloadError, match="could not fetch m.onnx"):
            fetch([server.url + "/m.onnx"], SHA, filename="m.onnx", size=len(DATA), cache_dir=tmp_path, retries=2)
        assert "m.onnx" not in _cache_files(tmp_path)  # only the resumable .partial may remain
        server.cuts_left = 0
        assert fetch([server.url + "/m.onnx"], SHA, filename="m.onnx", size=len(DATA),
                     cache_dir=tmp_path).read_bytes() == DATA
    assert _cache_files(tmp_path) == ["m.onnx"]


def test_server_error_then_fallback_url(tmp_path):
    with FileServer({"/good.onnx": DATA}) as server:
        server.errors_left = 2
        urls = [server.url + "/missing.onnx", server.url + "/good.onnx"]
        path = fetch(urls, SHA, filename="m.onnx", size=len(DATA), cache_dir=tmp_path, retries=3)
        assert path.read_bytes() == DATA
        # two 500s retried, the 404 that follows ends that URL at once, and the fallback serves the file
        assert [p for p, _ in server.requests] == ["/missing.onnx"] * 3 + ["/good.onnx"]


def test_corrupted_cache_entry_is_refetched(tmp_path):
    with FileServer({"/m.onnx": DATA}) as server:
        path = fetch([server.url + "/m.onnx"], SHA, filename="m.onnx", cache_dir=tmp_path)
        path.write_bytes(b"garbage")
        assert fetch([server.url + "/m.onnx"], SHA, filename="m.onnx", cache_dir=tmp_path).read_bytes() == DATA


def test_full_disk_is_a_clear_error_and_leaves_no_cache_entry(tmp_path, monkeypatch):
    import errno

    import zoo.weights.download as download

    def no_space(url, partial, size, retries, timeout, desc):
        partial.write_bytes(b"x" * 10)
        raise download.DownloadError(f"{url}: {OSError(errno.ENOSPC, 'No space left on device')}")

    monkeypatch.setattr(download, "_http_get", no_space)
    with pytest.raises(DownloadError, match="No space left on device"):
        fetch(["http://127.0.0.1:9/m.onnx"], SHA, filename="m.onnx", size=len(DATA), cache_dir=tmp_path)
    assert "m.onnx" not in _cache_files(tmp_path)


def test_a_failed_fetch_removes_only_its_own_copy_and_stale_ones(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not the pinned bytes")
    folder = tmp_path / "cache" / SHA
    folder.mkdir(parents=True)
    busy, stale = folder / ".other-process.tmp", folder / ".killed-process.tmp"
    busy.write_bytes(b"in progress")
    stale.write_bytes(b"left by a kill")
    os.utime(stale, (time.time() - 2 * 3600,) * 2)
    with pytest.raises(DownloadError, match="sha256"):
        fetch([bad.as_uri()], SHA, filename="m.onnx", cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == [".other-process.tmp"]
