"""A Hugging Face Hub on loopback, for tests and the offline demo.

olah serves git repositories as a Hub mirror; with ``offline = true`` and a dead upstream nothing leaves
the machine, while the real ``huggingface_hub`` client downloads from it (``hf_hub_download``,
``snapshot_download``, revision pins). olah has no write API, so :class:`LocalHubPublisher` publishes by
committing into the mirror's git repository. Loopback addresses only.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

_CONFIG = """\
[basic]
host = "127.0.0.1"
port = {port}
hf-scheme = "http"
hf-netloc = "127.0.0.1:9"
hf-lfs-netloc = "127.0.0.1:9"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
repos-path = "{repos}"
mirrors-path = ["{mirrors}"]
metadata-cache-ttl = 0

[accessibility]
offline = true
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=zoo build", "-c", "user.email=build@zoo.invalid", *args],
                          cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


class LocalHub:
    """``with LocalHub(folder) as hub:`` starts olah on a free loopback port and stops it afterwards."""

    def __init__(self, root: str | Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.mirrors = self.root / "mirrors"
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "LocalHub":
        self.mirrors.mkdir(parents=True, exist_ok=True)
        config = self.root / "olah.toml"
        config.write_text(_CONFIG.format(port=self.port, repos=self.root / "repos", mirrors=self.mirrors))
        log = open(self.root / "olah.out", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from olah.server import cli; sys.exit(cli())",
             "-c", str(config), "--log-path", str(self.root / "logs")],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"olah exited with {self.process.returncode}: see {self.root / 'olah.out'}")
            try:
                urllib.request.urlopen(self.endpoint + "/api/models/none/none/revision/main", timeout=2)
                return self
            except urllib.error.HTTPError:
                return self  # it answers
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not answer on {self.endpoint} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def publisher(self) -> "LocalHubPublisher":
        return LocalHubPublisher(self)


class LocalHubPublisher:
    """The build's publish step for a LocalHub: commit the folder's files into the mirror repository."""

    FILES = ("model.safetensors", "config.json", "README.md")

    def __init__(self, hub: LocalHub):
        self.hub = hub
        self.endpoint = hub.endpoint

    def publish(self, folder: Path, repo: str, message: str, *, private: bool = False,
                revision: str | None = None) -> str:
        """As :meth:`zoo.publish.hub.HubPublisher.publish`; ``private`` means nothing on loopback, ``revision`` is a branch."""
        target = self.hub.mirrors / "models" / repo
        if not (target / ".git").exists():
            target.mkdir(parents=True, exist_ok=True)
            _git(target, "init", "-q", "-b", "main")
        if revision:
            _git(target, "checkout", "-q", "-B", revision)
        for name in self.FILES:
            shutil.copyfile(Path(folder) / name, target / name)
        _git(target, "add", *self.FILES)
        _git(target, "commit", "-q", "--allow-empty", "-m", message)
        head = _git(target, "rev-parse", "HEAD")
        if revision:
            _git(target, "checkout", "-q", "main")
        return head
