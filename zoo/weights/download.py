"""Fetch a pinned file into a content-addressed cache: Hub sources through huggingface_hub, others over
HTTP(S) with retries, resume and a progress bar. A file enters the cache only once its sha256 matches."""
from __future__ import annotations

import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from ..convert.loader import sha256_of as file_sha256

_HUB_URL = re.compile(r"https://huggingface\.co/(?P<repo>[\w.\-]+/[\w.\-]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")


class DownloadError(OSError):
    """No URL gave the pinned file; the message lists what each URL did."""


def cache_root() -> Path:
    return Path(os.environ.get("ZOO_CACHE") or Path.home() / ".cache" / "zoo")


def default_cache() -> Path:
    return cache_root() / "sources"


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "ZOO_OFFLINE"))


def mirrored(urls: list[str] | tuple[str, ...], filename: str) -> list[str]:
    """``urls``, after ``$ZOO_ONNX_MIRROR/<filename>`` when that variable names a mirror."""
    mirror = os.environ.get("ZOO_ONNX_MIRROR", "").strip()
    return ([f"{mirror.rstrip('/')}/{filename}"] if mirror else []) + list(urls)


def local_path(url: str) -> Path | None:
    """The file a ``file://`` URL or a plain path names; None for network URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    return Path(url).expanduser()


def check_file(path: Path, sha256: str, size: int | None = None, *, source: str | os.PathLike | None = None) -> None:
    """Raise DownloadError (and delete ``path``) when it is not the pinned content. ``source``: what ``path`` is a
    copy of (a user's file, a mirror, a URL); the message names it and says it was left alone."""
    named, fate = (source, "left as it is; only the copy was removed") if source else (path.name, "deleted")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{named}: expected {size:,} bytes, got {actual_size:,}: not the pinned file ({fate})")
    actual = file_sha256(path)
    if actual != sha256:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{named}: sha256 mismatch: expected {sha256}, got {actual}: not the pinned file ({fate})")


def _unresolvable(url: str, checked: dict[str, str | None]) -> str | None:
    """Why ``url``'s host cannot be reached at all (its name does not resolve: no network), asked once per host,
    so a machine without network fails at once instead of after every retry."""
    host = urlparse(url).hostname or ""
    if host not in checked:
        try:
            socket.getaddrinfo(host, None)
            checked[host] = None
        except (socket.gaierror, UnicodeError) as exc:
            checked[host] = f"cannot resolve {host} (no network?): {exc}"
    return checked[host]


def _http_get(url: str, partial: Path, size: int | None, retries: int, timeout: float, desc: str) -> None:
    last: Exception | None = None
    for attempt in range(retries):
        have = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "zoo-build"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:  # the server ignored Range: start over
                    have = 0
                mode = "ab" if have else "wb"
                total = size or (have + int(response.headers.get("Content-Length") or 0)) or None
                with open(partial, mode) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                      desc=desc, leave=False) as bar:
                    for block in iter(lambda: response.read(1 << 16), b""):
                        out.write(block)
                        bar.update(len(block))
            if size is not None and partial.stat().st_size < size:
                raise DownloadError(f"connection closed after {partial.stat().st_size:,} of {size:,} bytes")
            return
        except (urllib.error.URLError, OSError, DownloadError) as exc:
            last = exc
            if isinstance(exc, urllib.error.HTTPError) and exc.code in (404, 410, 403, 401):
                break
            time.sleep(min(2 ** attempt * 0.2, 5))
    raise DownloadError(str(last))


STALE_COPY_S = 3600


def _sweep_stale_copies(folder: Path) -> None:
    """Copies a killed process left behind; an hour is far longer than any copy in progress takes."""
    now = time.time()
    for leftover in folder.glob(".*.tmp"):
        try:
            if now - leftover.stat().st_mtime > STALE_COPY_S:
                leftover.unlink()
        except FileNotFoundError:
            pass


def fetch(urls: list[str] | tuple[str, ...], sha256: str, *, filename: str, size: int | None = None,
          cache_dir: str | os.PathLike | None = None, retries: int = 3, timeout: float = 60.0,
          offline: bool = False) -> Path:
    """The pinned file, from the cache or the first URL that delivers it (``offline``: local files only)."""
    cache = Path(cache_dir) if cache_dir else default_cache()
    final = cache / sha256 / filename
    if final.exists():
        try:
            check_file(final, sha256, size)
            return final
        except DownloadError:
            pass  # corrupted cache entry, already deleted: fetch again
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + ".partial")
    _sweep_stale_copies(final.parent)
    problems, hosts = [], {}
    for url in urls:
        tmp = None
        try:
            hub = _HUB_URL.match(url)
            local = local_path(url)
            if local is None and offline:
                raise DownloadError("offline (HF_HUB_OFFLINE or ZOO_OFFLINE): not fetched")
            if local is None and (why := _unresolvable(url, hosts)):
                raise DownloadError(why)
            if local is not None:
                if not local.is_file():
                    raise DownloadError(f"no such file {local}")
                tmp = final.with_name(f".{uuid.uuid4().hex}.tmp")
                shutil.copyfile(local, tmp)
                check_file(tmp, sha256, size, source=local)
            elif hub:
                from huggingface_hub import hf_hub_download

                got = Path(hf_hub_download(hub["repo"], hub["file"], revision=hub["rev"]))
                tmp = final.with_name(f".{uuid.uuid4().hex}.tmp")
                shutil.copyfile(got, tmp)
                check_file(tmp, sha256, size, source=url)
            else:
                _http_get(url, partial, size, retries, timeout, filename)
                tmp = partial
                check_file(tmp, sha256, size)
            os.replace(tmp, final)
            return final
        except Exception as exc:  # try the next URL
            problems.append(f"  {url}: {exc}")
            if tmp is not None and tmp != partial:  # only this attempt's copy: another process may be copying
                tmp.unlink(missing_ok=True)
            if "sha256 mismatch" in str(exc) or "expected" in str(exc):
                partial.unlink(missing_ok=True)
    raise DownloadError(f"could not fetch {filename} (sha256 {sha256}):\n" + "\n".join(problems))
