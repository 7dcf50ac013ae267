"""A loopback stand-in for the Hugging Face Hub, serving repo trees built on disk.

It implements what ``huggingface_hub`` (2.4.0) calls for ``HfApi.model_info`` and ``hf_hub_download``,
answering as huggingface.co does where the client's behaviour depends on it (checked against the
client's own parsing in huggingface_hub/file_download.py and utils/_http.py):

- Small files are answered from ``/resolve`` itself: 200, ``ETag`` = the git blob id, ``X-Repo-Commit``.
- Large (LFS) files -- ``*.onnx``, ``*.onnx_data*``, or anything over ``LFS_THRESHOLD`` -- are answered with a
  302 to a storage host on another origin (the fake's "CDN", a second port), carrying ``X-Linked-Etag``
  (the sha256) and ``X-Linked-Size``; the client takes size and etag from those, downloads from the
  ``Location`` without the Authorization header, and names the cached blob by the sha256.
- No Xet headers (``X-Xet-Hash``, the xet-auth link) are ever sent, so with ``hf_xet`` installed the client
  still downloads over plain HTTP from the redirect: the fake serves that path, and test_fake_hub.py
  proves it is the one taken (emulating Xet's content-addressed protocol is out of scope).
- A missing repo is 401 ``RepoNotFound`` for an anonymous caller (404 for a valid token), as the Hub does
  not tell strangers which private repos exist; a token the Hub does not know is 401 "Invalid credentials
  in Authorization header" on every endpoint; a gated repo's files are 401 ``GatedRepo`` without a token
  and 403 ``GatedRepo`` for a valid token without access. Metadata of a gated repo is public.

Faults (connections dropped or stalled mid-body, the Hub going down) apply to a file's bytes wherever they
are served (``/resolve`` or the CDN).
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
from urllib.parse import quote, unquote, urlsplit

from support.ports import closed_port

_CHUNK = 1 << 20
_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/lfs/([0-9a-f]{64})$")
LFS_THRESHOLD = 10 << 20  # the Hub stores files over 10 MB in LFS whatever their name
_LFS_NAME = re.compile(r".*\.onnx(_data(_\d+)?)?$")  # as .gitattributes of ONNX repos track them
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str  # unquoted URL path
    range: str | None
    authorization: str | None
    host: str = "hub"  # "hub", or "cdn" for the storage host large files are redirected to
    file: tuple[str, str] | None = None  # (repo_id, repo path) of the bytes asked for, on either host


@dataclass
class Fault:
    """Break the next GET of one file's bytes after ``after_bytes`` bytes of its body."""

    after_bytes: int
    stall: bool = False  # hang instead of closing, so a test can kill the client mid-download
    then_status: int | None = None  # answer the GET after that with this status (the Hub "goes down")
    reached: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _File:
    path: Path
    size: int
    git_sha1: str  # the git blob id: a small file's ETag
    sha256: str  # an LFS file's X-Linked-Etag, and its name on the CDN
    lfs: bool


@dataclass
class _Tree:
    sha: str
    files: dict[str, _File]  # repo path -> file


@dataclass
class _Repo:
    allowed: frozenset[str] | None  # gated: the tokens whose users accepted its terms; None: public
    branches: dict[str, _Tree] = field(default_factory=dict)


def _describe(path: Path) -> _File:
    data = path.read_bytes()
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    lfs = len(data) > LFS_THRESHOLD or _LFS_NAME.fullmatch(path.name) is not None
    return _File(path, len(data), git_sha1, hashlib.sha256(data).hexdigest(), lfs)


class FakeHub:
    """``with FakeHub() as hub: hub.add_repo("owner/x", folder)``; point HF_ENDPOINT at ``hub.url``."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.tokens: set[str] = set()  # tokens the Hub knows (any other is refused as invalid)
        self.faults: dict[tuple[str, str], Fault] = {}
        self.down_status: int | None = None  # when set, every request is answered with it (Hub outage)
        self._pending_status: dict[tuple[str, str], int] = {}
        self._lfs: dict[str, tuple[str, str, _File]] = {}  # sha256 -> (repo_id, repo path, file)
        self._log: list[HubRequest] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._servers: list[_Server] = []
        self.url = ""
        self.cdn_url = ""

    def add_repo(self, repo_id: str, root: Path, *, branch: str = "main", gated_token: str | None = None) -> str:
        """Serve every file under root as branch of repo_id; returns the branch's commit sha.

        gated_token: the repo is gated, and this (valid) token's user has accepted its terms.
        """
        files = {p.relative_to(root).as_posix(): _describe(p) for p in sorted(root.rglob("*")) if p.is_file()}
        etags = {name: f.sha256 for name, f in files.items()}
        sha = hashlib.sha1(json.dumps([repo_id, branch, etags], sort_keys=True).encode()).hexdigest()
        if gated_token is not None:
            self.tokens.add(gated_token)
        repo = self.repos.setdefault(repo_id, _Repo(frozenset({gated_token}) if gated_token else None))
        repo.branches[branch] = _Tree(sha=sha, files=files)
        with self._lock:
            for name, f in files.items():
                if f.lfs:
                    self._lfs[f.sha256] = (repo_id, name, f)
        return sha

    def add_token(self, token: str) -> str:
        """A valid token (its user has accepted no gated repo's terms)."""
        self.tokens.add(token)
        return token

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

    def downloads(self, repo_id: str) -> list[str]:
        """Repo paths of repo_id whose bytes were asked for (GET of /resolve, or of the CDN for LFS files), in order."""
        return [r.file[1] for r in self.requests if r.method == "GET" and r.file is not None and r.file[0] == repo_id]

    def downloaded(self, repo_id: str) -> set[str]:
        return set(self.downloads(repo_id))

    def byte_ranges(self, repo_id: str, filename: str) -> list[str | None]:
        """The Range header of every GET that asked for this file's bytes, in order (None: from the start)."""
        return [r.range for r in self.requests if r.method == "GET" and r.file == (repo_id, filename)]

    def __enter__(self) -> FakeHub:
        for _ in range(2):  # the Hub, and the storage host large files are redirected to
            server = _Server(("127.0.0.1", 0), _Handler)  # port 0: the kernel picks a free port, no race
            server.hub = self
            self._servers.append(server)
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        hub, cdn = self._servers
        cdn.is_cdn = True
        self.url = f"http://127.0.0.1:{hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{cdn.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

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
    is_cdn = False

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

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def _serve(self, *, body: bool) -> None:
        raw_path = urlsplit(self.path).path
        # Split before unquoting: a revision like "refs/pr/1" arrives as one %2F-quoted segment.
        path = "/".join(unquote(p) for p in raw_path.split("/"))
        if self.server.is_cdn:
            return self._serve_cdn(path, body)
        resolve = _RESOLVE.match(raw_path)
        file = (unquote(resolve.group(1)), unquote(resolve.group(3))) if resolve else None
        authorization = self.headers.get("Authorization")
        self.hub._record(HubRequest(self.command, path, self.headers.get("Range"), authorization, "hub", file))
        if self.hub.down_status is not None:
            return self._error(self.hub.down_status, None, "Service Unavailable")
        token = authorization.removeprefix("Bearer ") if authorization else None
        if token is not None and token not in self.hub.tokens:
            return self._error(401, None, INVALID_CREDENTIALS)
        info = _INFO.match(raw_path)
        match = info or resolve
        if match is None:
            return self._error(404, None, "Not Found")
        repo_id, revision = unquote(match.group(1)), unquote(match.group(2) or "main")
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            # The Hub does not tell an anonymous caller whether a (private) repo exists: 401, not 404.
            return self._error(404 if token else 401, "RepoNotFound", "Repository not found")
        tree = self.hub._tree(repo, revision)
        if tree is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if info:
            # Metadata of a gated repo is public on the real Hub; only its files need a token.
            data = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": tree.sha,
                "private": False,
                "gated": "auto" if repo.allowed is not None else False,
                "siblings": [{"rfilename": name} for name in tree.files],
            }
            return self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"}, body)
        assert file is not None
        if repo.allowed is not None and token not in repo.allowed:
            if token is None:
                msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
                return self._error(401, "GatedRepo", msg)
            msg = f"Access to model {repo_id} is restricted and you are not in the authorized list."
            return self._error(403, "GatedRepo", msg)
        entry = tree.files.get(file[1])
        if entry is None:
            return self._error(404, "EntryNotFound", f"{file[1]} does not exist", {"X-Repo-Commit": tree.sha})
        if entry.lfs:
            location = f"{self.hub.cdn_url}/lfs/{entry.sha256}?filename={quote(Path(file[1]).name)}"
            headers = {
                "X-Repo-Commit": tree.sha,
                "ETag": f'"{entry.git_sha1}"',  # the LFS pointer's blob id; the client prefers X-Linked-Etag
                "X-Linked-Etag": f'"{entry.sha256}"',
                "X-Linked-Size": str(entry.size),
                "Location": location,
            }
            return self._send(302, b"", headers, body)
        self._send_bytes(file, entry, {"X-Repo-Commit": tree.sha, "ETag": f'"{entry.git_sha1}"'}, body)

    def _serve_cdn(self, path: str, body: bool) -> None:
        match = _CDN.match(path)
        with self.hub._lock:
            found = self.hub._lfs.get(match.group(1)) if match else None
        file = (found[0], found[1]) if found else None
        self.hub._record(
            HubRequest(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"), "cdn", file)
        )
        if self.hub.down_status is not None:
            return self._error(self.hub.down_status, None, "Service Unavailable")
        if found is None:
            return self._error(404, None, "Not Found")
        self._send_bytes((found[0], found[1]), found[2], {"ETag": f'"{found[2].sha256}"'}, body)

    def _send_bytes(self, key: tuple[str, str], entry: _File, headers: dict[str, str], body: bool) -> None:
        data = entry.path.read_bytes()
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if body and key in self.hub._pending_status:
            return self._error(self.hub._pending_status.pop(key), None, "Service Unavailable")
        fault = self.hub.faults.pop(key, None) if body else None
        start = 0
        range_match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if body and range_match:
            start = int(range_match.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if fault is None:
            return self._send(206 if start else 200, data[start:], headers, body)
        if fault.then_status is not None:
            self.hub._pending_status[key] = fault.then_status
        self._send_headers(206 if start else 200, len(data) - start, headers)
        self.wfile.write(data[start : start + fault.after_bytes])
        self.wfile.flush()
        fault.reached.set()
        if fault.stall:
            self.hub._release.wait(timeout=60)
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
    """An http URL on 127.0.0.1 where nothing listens (connections are refused) until exit."""
    with closed_port() as port:
        yield f"http://127.0.0.1:{port}"
