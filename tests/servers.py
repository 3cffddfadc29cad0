"""A loopback HTTP file server with Range support and injected faults, for download tests."""
from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Loopback:
    """A threaded HTTP server on 127.0.0.1 (never another address), served while the ``with`` block runs."""

    def _serve(self, handler) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class FileServer(_Loopback):
    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.cut_after: int | None = None  # close the connection after this many bytes...
        self.cuts_left = 0                 # ...this many times
        self.errors_left = 0               # answer 500 this many times
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if server.errors_left > 0:
                    server.errors_left -= 1
                    self.send_error(500)
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cuts_left > 0 and server.cut_after is not None:
                    server.cuts_left -= 1
                    self.wfile.write(body[: server.cut_after])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self._serve(Handler)


class WritableHub(_Loopback):
    """A minimal Hugging Face Hub on loopback that ``huggingface_hub.HfApi`` can write to and read from.

    Only what ``create_repo``, ``upload_folder``/``create_commit``, ``model_info`` and ``hf_hub_download``
    use: ``POST /api/repos/create``, ``POST /api/validate-yaml``, ``POST /api/models/<repo>/preupload/<rev>``
    (every file "regular", so it travels base64 inside the commit and no LFS or Xet storage is involved),
    ``POST /api/models/<repo>/commit/<rev>`` (NDJSON: a header line, then one line per file),
    ``GET /api/models/<repo>[/revision/<rev>]`` and ``HEAD``/``GET /<repo>/resolve/<rev>/<path>``.
    Faults: ``fail_commits`` answers 500 to that many commits, ``drop_commits`` closes the connection
    without an answer, ``corrupt`` names paths served with one byte changed (same length and headers).
    """

    def __init__(self):
        import hashlib
        import json
        import re

        self.repos: dict[str, dict] = {}  # repo -> {"main": oid or None, "commits": {oid: {path: bytes}}}
        self.fail_commits = 0
        self.drop_commits = 0
        self.corrupt: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.on_request = lambda method, path: None
        hub = self
        repo_re = r"(?P<repo>[\w.\-]+/[\w.\-]+)"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status: int, body=b"", headers=None, error_code: str | None = None):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes)
                                 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _commit_of(self, repo: str, rev: str):
                state = hub.repos.get(repo)
                if state is None:
                    return None, "RepoNotFound"
                oid = state["main"] if rev == "main" else rev
                if oid not in state["commits"]:
                    return None, "RevisionNotFound"
                return oid, None

            def do_POST(self):
                hub.requests.append(("POST", self.path))
                hub.on_request("POST", self.path)
                body = self._body()
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    spec = json.loads(body)
                    repo = f"{spec.get('organization') or 'me'}/{spec['name']}"
                    if repo in hub.repos:
                        return self._reply(409, {"error": "You already created this model repo",
                                                 "url": f"{hub.url}/{repo}"})
                    hub.repos[repo] = {"main": None, "commits": {}}
                    return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                m = re.fullmatch(rf"/api/models/{repo_re}/(?P<op>preupload|commit)/(?P<rev>[^/]+)", path)
                if not m or m["repo"] not in hub.repos:
                    return self._reply(404, {"error": "Repository not found"}, error_code="RepoNotFound")
                if m["op"] == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False, "oid": None} for f in files]})
                if hub.drop_commits > 0:  # the connection breaks before any answer
                    hub.drop_commits -= 1
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if hub.fail_commits > 0:
                    hub.fail_commits -= 1
                    return self._reply(500, {"error": "Internal Error - We're working hard to fix this"})
                state = hub.repos[m["repo"]]
                files = dict(state["commits"].get(state["main"], {}))
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] != "header":
                        return self._reply(400, {"error": f"this test Hub does not take {item['key']!r}"})
                oid = hashlib.sha1(repr((state["main"], sorted(files.items()))).encode()).hexdigest()
                state["commits"][oid] = files
                state["main"] = oid
                return self._reply(200, {"commitUrl": f"{hub.url}/{m['repo']}/commit/{oid}", "commitOid": oid,
                                         "success": True})

            def do_GET(self):
                hub.requests.append((self.command, self.path))
                hub.on_request(self.command, self.path)
                path = self.path.split("?")[0]
                m = re.fullmatch(rf"/api/models/{repo_re}(/revision/(?P<rev>[^/]+))?", path)
                if m:
                    oid, error = self._commit_of(m["repo"], m["rev"] or "main")
                    if error:
                        return self._reply(404, {"error": error}, error_code=error)
                    files = hub.repos[m["repo"]]["commits"][oid]
                    return self._reply(200, {"id": m["repo"], "modelId": m["repo"], "sha": oid, "private": False,
                                             "siblings": [{"rfilename": f} for f in sorted(files)]})
                m = re.fullmatch(rf"/{repo_re}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
                if not m:
                    return self._reply(404, {"error": "not found"})
                oid, error = self._commit_of(m["repo"], m["rev"])
                if error:
                    return self._reply(404, {"error": error}, error_code=error)
                data = hub.repos[m["repo"]]["commits"][oid].get(m["file"])
                if data is None:
                    return self._reply(404, {"error": "Entry not found"}, error_code="EntryNotFound")
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                if m["file"] in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                return self._reply(200, data, {"ETag": etag, "X-Repo-Commit": oid})

            do_HEAD = do_GET

        self._serve(Handler)

    def head(self, repo: str) -> str | None:
        return self.repos.get(repo, {}).get("main")

