"""A loopback stand-in for the Hugging Face Hub, serving repo trees built on disk.

It implements only what ``huggingface_hub`` (2.4.0) calls for ``HfApi.model_info`` and
``hf_hub_download``, with the headers and error codes the real Hub sends, so the library's own
error mapping, caching and resume logic run unchanged against it.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_CHUNK = 1 << 20
_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str  # unquoted URL path
    range: str | None
    authorization: str | None


@dataclass
class Fault:
    """Break the next GET of one file after ``after_bytes`` bytes of its body."""

    after_bytes: int
    stall: bool = False  # hang instead of closing, so a test can kill the client mid-download
    then_status: int | None = None  # answer the GET after that with this status (the Hub "goes down")
    reached: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Tree:
    sha: str
    files: dict[str, Path]  # repo path -> file on disk
    etags: dict[str, str]


@dataclass
class _Repo:
    token: str | None  # gated: files need "Authorization: Bearer <token>"
    branches: dict[str, _Tree] = field(default_factory=dict)


class FakeHub:
    """``with FakeHub() as hub: hub.add_repo("owner/x", folder)``; point HF_ENDPOINT at ``hub.url``."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.faults: dict[tuple[str, str], Fault] = {}
        self.down_status: int | None = None  # when set, every request is answered with it (Hub outage)
        self._pending_status: dict[tuple[str, str], int] = {}
        self._log: list[HubRequest] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: _Server | None = None
        self.url = ""

    def add_repo(self, repo_id: str, root: Path, *, branch: str = "main", gated_token: str | None = None) -> str:
        """Serve every file under root as branch of repo_id; returns the branch's commit sha."""
        files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
        etags = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in files.items()}
        sha = hashlib.sha1(json.dumps([repo_id, branch, etags], sort_keys=True).encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, _Repo(token=gated_token))
        repo.branches[branch] = _Tree(sha=sha, files=files, etags=etags)
        return sha

    def add_fault(self, repo_id: str, filename: str, fault: Fault) -> Fault:
        self.faults[(repo_id, filename)] = fault
        return fault

    @property
    def requests(self) -> list[HubRequest]:
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def downloaded(self, repo_id: str) -> set[str]:
        """Repo paths of repo_id whose bytes were requested (GET /resolve)."""
        found = set()
        for r in self.requests:
            m = _RESOLVE.match(r.path)
            if r.method == "GET" and m and m.group(1) == repo_id:
                found.add(m.group(3))
        return found

    def __enter__(self) -> FakeHub:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- request handling ---------------------------------------------------------------

    def _record(self, request: HubRequest) -> None:
        with self._lock:
            self._log.append(request)

    def _tree(self, repo: _Repo, revision: str) -> _Tree | None:
        if revision in repo.branches:
            return repo.branches[revision]
        return next((t for t in repo.branches.values() if t.sha == revision), None)


class _Server(ThreadingHTTPServer):
    hub: FakeHub

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that go away mid-response (faults, killed processes) are expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real Hub: the client pools connections
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request log replaces stderr noise

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        raw_path = urlsplit(self.path).path
        # Split before unquoting: a revision like "refs/pr/1" arrives as one %2F-quoted segment.
        parts = [unquote(p) for p in raw_path.split("/")]
        path = "/".join(parts)
        self.server.hub._record(
            HubRequest(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
        )
        if self.server.hub.down_status is not None:
            return self._error(self.server.hub.down_status, None, "Service Unavailable")
        info, resolve = _INFO.match(raw_path), _RESOLVE.match(raw_path)
        match = info or resolve
        if match is None:
            return self._error(404, None, "Not Found")
        repo_id, revision = unquote(match.group(1)), unquote(match.group(2) or "main")
        repo = self.server.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        tree = self.server.hub._tree(repo, revision)
        if tree is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if info:
            # Metadata of a gated repo is public on the real Hub; only its files need a token.
            siblings = [{"rfilename": name} for name in tree.files]
            data = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": tree.sha,
                "private": False,
                "gated": "auto" if repo.token else False,
                "siblings": siblings,
            }
            return self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body)
        filename = unquote(resolve.group(3)) if resolve else ""
        if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
            msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return self._error(401, "GatedRepo", msg)
        if filename not in tree.files:
            return self._error(404, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": tree.sha})
        self._send_file(repo_id, filename, tree, body)

    def _send_file(self, repo_id: str, filename: str, tree: _Tree, body: bool) -> None:
        data = tree.files[filename].read_bytes()
        headers = {
            "X-Repo-Commit": tree.sha,
            "ETag": f'"{tree.etags[filename]}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        key = (repo_id, filename)
        if body and key in self.server.hub._pending_status:
            return self._error(self.server.hub._pending_status.pop(key), None, "Service Unavailable")
        fault = self.server.hub.faults.pop(key, None) if body else None
        start = 0
        range_match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if body and range_match:
            start = int(range_match.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if fault is None:
            return self._send(206 if start else 200, data[start:], headers, body)
        if fault.then_status is not None:
            self.server.hub._pending_status[key] = fault.then_status
        self._send_headers(206 if start else 200, len(data) - start, headers)
        self.wfile.write(data[start : start + fault.after_bytes])
        self.wfile.flush()
        fault.reached.set()
        if fault.stall:
            self.server.hub._release.wait(timeout=60)
        self.close_connection = True
        with suppress(OSError):  # the client may be gone already (killed while stalled)
            self.connection.shutdown(socket.SHUT_RDWR)  # drop mid-body: the client sees a short read

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, self.command == "GET")

    def _send_headers(self, status: int, length: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, status: int, payload: bytes, headers: dict[str, str], body: bool) -> None:
        self._send_headers(status, len(payload), headers)
        if body:
            for i in range(0, len(payload), _CHUNK):
                self.wfile.write(payload[i : i + _CHUNK])


@contextmanager
def dead_endpoint() -> Iterator[str]:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield f"http://127.0.0.1:{port}"
