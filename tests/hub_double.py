"""TEST DOUBLE of the Hugging Face Hub: a small local HTTP server for tests, never a real Hub.

`LocalHub` serves, on 127.0.0.1 and an ephemeral port, the subset of the Hub HTTP API that the real
`huggingface_hub` client (2.x) and `transformers` (5.x) call when releasing and loading models: repo creation,
pre-upload, NDJSON commits (base64 files and, optionally, Git LFS basic transfers), model/dataset info, tree
listings, refs, commits, tags, branches and `resolve` downloads with the Hub's headers (`X-Repo-Commit`, `ETag`,
`X-Linked-Etag`, `X-Linked-Size`, `X-Error-Code`). Repos live in memory as a git-like history: every commit is a full
snapshot of the tree, ids are 40-hex sha1s, branches, tags and `refs/pr/N` point at commits.

Typical use, in-process and in a fresh subprocess::

    from hub_double import LocalHub

    with LocalHub() as hub:                         # server thread started; hub.endpoint == "http://127.0.0.1:PORT"
        with hub.patch_client(hf_home=tmp_path / "hf"):   # already-imported huggingface_hub/transformers -> the double
            model.push_to_hub("user/tiny")                # real client, real requests
        env = hub.env(hf_home=tmp_path / "fresh")       # HF_ENDPOINT, HF_TOKEN (fake), HF_HOME, ...
        subprocess.run([sys.executable, "load.py"], env=env, check=True)   # no patching needed there

With pytest, `hub.install(monkeypatch, hf_home)` does the same as `patch_client` through `monkeypatch` (undone at
teardown), and the `local_hub` fixture below (or the `hub_fixture` generator, to build your own fixture) bundles it.

Deliberate simplifications (this is a double, not a Hub):

* Auth: any `Authorization: Bearer <token>` is accepted and maps to one user (`LocalHub(user=...)`), unless a
  `tokens={token: user}` mapping is given. Writes need a token (401 otherwise); private repos need one to be read
  (401 + `X-Error-Code: RepoNotFound`, as the Hub does). There are no per-namespace permissions. Tokens are never
  logged or stored in the request log.
* Xet storage is not implemented. By default (`lfs=False`) `preupload` answers `"regular"` for every file, so the
  client sends contents base64-encoded inside the commit and never tries Xet. With `lfs=True` binary, large
  (`lfs_threshold`) or `.gitattributes`-LFS files get `"lfs"`, uploaded through the LFS batch API (basic transfer
  + verify) and served with `X-Linked-Etag`/`X-Linked-Size`; the client then must not use Xet, i.e. run with
  `HF_HUB_DISABLE_XET=1` (set by `env()`, `patch_client()` and `install()`).
* LFS files are served directly from the double (no redirect to a CDN host). No gating, discussions (beyond
  `create_pr` making `refs/pr/N`), webhooks, Spaces runtime, buckets, search/listing of all models.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import datetime
import fnmatch
import hashlib
import http.server
import itertools
import json
import logging
import os
import re
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

logger = logging.getLogger("hub_double")

DEFAULT_TOKEN = "hf_localhub_test_double_not_a_real_token"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
LFS_POINTER_TEMPLATE = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
# The `.gitattributes` the Hub writes into every new repo (abridged: the patterns that matter for ML files).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
        "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
        "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
        "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)
TREE_PAGE_SIZE = 1000
COMMITS_PAGE_SIZE = 50
_MAX_CHUNKS = 1_000_000  # bound on chunked-body chunks (the byte limit usually triggers first)


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A file in a commit's tree. `oid` is the git blob sha1 (of the content, or of the LFS pointer)."""

    size: int
    oid: str
    sha256: str | None  # set for LFS files
    last_commit: str  # commit that last changed this path

    @property
    def lfs_pointer_size(self) -> int:
        return len(LFS_POINTER_TEMPLATE.format(oid=self.sha256, size=self.size).encode())


@dataclasses.dataclass
class _Commit:
    oid: str
    parents: list[str]
    tree: dict[str, _Entry]
    title: str
    message: str
    author: str
    date: datetime.datetime


@dataclasses.dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime.datetime
    uid: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:24])
    gated: Any = False
    commits: dict[str, _Commit] = dataclasses.field(default_factory=dict)
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    prs: dict[int, str] = dataclasses.field(default_factory=dict)  # number -> commit (ref refs/pr/N)
    lfs_objects: dict[str, bytes] = dataclasses.field(default_factory=dict)  # sha256 -> content
    lfs_pending: set[str] = dataclasses.field(default_factory=set)  # announced by a batch call, not yet PUT


class HubError(Exception):
    """An HTTP error answered the way the Hub does (status, `X-Error-Code`, `X-Error-Message`, JSON `error`)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})
        self.body = dict(body or {})


@dataclasses.dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(obj).encode(), {"Content-Type": "application/json; charset=utf-8",
                                                        **(headers or {})})


@dataclasses.dataclass
class _Request:
    method: str
    path: str  # raw path, without query
    segments: list[str]  # path split on "/" and percent-decoded one by one ("a%2Fb" stays one segment "a/b")
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    token: str | None
    user: str | None

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in {"1", "true", "yes"}

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HubError(400, f"Invalid JSON body: {exc}") from exc


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # handler threads are joined by server_close()
    block_on_close = True
    allow_reuse_address = False


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every response carries Content-Length
    server_version = "LocalHubTestDouble/1.0"
    timeout = 60  # idle keep-alive connections and stalled bodies give up after this many seconds

    def setup(self) -> None:
        super().setup()
        self.server.hub._track(self.connection, add=True)  # type: ignore[attr-defined]

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub._track(self.connection, add=False)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        logger.debug("%s - " + format, self.address_string(), *args)

    def _handle(self) -> None:
        self.server.hub._handle(self)  # type: ignore[attr-defined]

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class LocalHub:
    """In-memory Hugging Face Hub test double served on 127.0.0.1 (see the module docstring).

    Args:
        user: the user every accepted token belongs to (whoami name, default namespace of `create_repo`).
        token: the fake token handed out by `env()` / `patch_client()` (default: a fixed fake string, or the first
            key of `tokens`).
        tokens: if given, only these tokens are valid, mapping token -> user name; others get 401.
        lfs: answer `"lfs"` in preupload for binary/large/LFS-pattern files (needs `HF_HUB_DISABLE_XET=1`).
        lfs_threshold: in `lfs` mode, files at least this large are LFS.
        max_body_size: requests with larger bodies get 413.
    """

    def __init__(
        self,
        *,
        user: str = "user",
        token: str | None = None,
        tokens: dict[str, str] | None = None,
        lfs: bool = False,
        lfs_threshold: int = 10 * 1024 * 1024,
        max_body_size: int = 1024 * 1024 * 1024,
    ) -> None:
        self.user = user
        self.tokens = dict(tokens) if tokens is not None else None
        if token is None:
            token = next(iter(self.tokens)) if self.tokens else DEFAULT_TOKEN
        self.token = token
        self.lfs = lfs
        self.lfs_threshold = lfs_threshold
        self.max_body_size = max_body_size
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.blobs: dict[str, bytes] = {}  # git blob oid -> content (regular files)
        # (method, path, status) of every request, and the ones no route matched: handy when a new client version
        # calls something new. Paths only: no headers, no query strings, no tokens.
        self.requests: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=10_000)
        self.unhandled: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self.endpoint = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalHub:
        if self._server is not None:
            raise RuntimeError("LocalHub already started")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        host, port = server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"LocalHub:{port}", daemon=True
        )
        self._thread.start()
        logger.debug("LocalHub test double listening on %s", self.endpoint)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()  # stops serve_forever (returns once the loop has exited)
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:  # unblock handler threads waiting on idle keep-alive connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()  # closes the listening socket and joins the handler threads
        if thread is not None:
            thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conn_lock:
            (self._connections.add if add else self._connections.discard)(conn)

    # ------------------------------------------------------------------ client configuration

    def env(self, hf_home: str | os.PathLike | None = None, *, token: bool = True,
            base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a fresh process that should talk to this double (`subprocess.run(..., env=...)`).

        Copies `base` (default `os.environ`), drops variables that would redirect caches, tokens or go offline,
        and sets `HF_ENDPOINT`, `HF_TOKEN` (unless `token=False`), `HF_HOME` (if given), telemetry/Xet/progress off.
        """
        env = dict(os.environ if base is None else base)
        for name in (
            "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
            "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_TOKEN_PATH", "HF_XET_CACHE", "HF_MODULES_CACHE",
            "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_CO_STAGING", "HF_OIDC_RESOURCE", "HF_TOKEN", "TRANSFORMERS_CACHE",
            "HF_DATASETS_CACHE",
        ):
            env.pop(name, None)
        env.update(self._client_env(token=token))
        if hf_home is not None:
            env["HF_HOME"] = str(hf_home)
        return env

    def _client_env(self, token: bool = True) -> dict[str, str]:
        env = {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        }
        if token:
            env["HF_TOKEN"] = self.token
        return env

    def _client_patches(self, hf_home: str | os.PathLike | None) -> list[tuple[Any, str, Any]]:
        """(object, attribute, new value) that point already-imported clients at this double."""
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub import hf_api as hf_api_module
        from huggingface_hub.utils import _http

        if not self.endpoint:
            raise RuntimeError("start the LocalHub before patching clients")
        host = urlsplit(self.endpoint).hostname
        patches: list[tuple[Any, str, Any]] = [
            (constants, "ENDPOINT", self.endpoint),
            (constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
            (constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {host})),
            (constants, "HF_HUB_DISABLE_XET", True),
            (constants, "HF_HUB_DISABLE_TELEMETRY", True),
            (constants, "HF_HUB_OFFLINE", False),
            (_http, "_HUB_ORIGINS", frozenset(_http._HUB_ORIGINS | {_http._url_origin(self.endpoint)})),
            # the module-level `HfApi()` behind `huggingface_hub.create_repo`, `upload_folder`, ...: endpoint frozen
            # when huggingface_hub was imported
            (hf_api_module.api, "endpoint", self.endpoint),
        ]
        if getattr(huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE", None) is not None:
            patches.append((huggingface_hub, "HUGGINGFACE_CO_URL_TEMPLATE", patches[1][2]))
        if hf_home is not None:
            home = os.fspath(hf_home)
            hub_cache = os.path.join(home, "hub")
            for name, value in {
                "HF_HOME": home,
                "HF_HUB_CACHE": hub_cache,
                "HUGGINGFACE_HUB_CACHE": hub_cache,
                "default_cache_path": hub_cache,
                "HF_ASSETS_CACHE": os.path.join(home, "assets"),
                "HUGGINGFACE_ASSETS_CACHE": os.path.join(home, "assets"),
                "default_assets_cache_path": os.path.join(home, "assets"),
                "HF_TOKEN_PATH": os.path.join(home, "token"),
                "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
                "HF_XET_CACHE": os.path.join(home, "xet"),
                "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
                "CHECK_FOR_UPDATE_DONE_PATH": os.path.join(home, ".check_for_update_done"),
                "CHECK_FOR_SKILL_UPDATE_DONE_PATH": os.path.join(home, ".check_for_skill_update_done"),
            }.items():
                if hasattr(constants, name):
                    patches.append((constants, name, value))
        # transformers keeps one lazily built HfApi (endpoint frozen when built): drop it so it is rebuilt.
        transformers_hub = sys.modules.get("transformers.utils.hub")
        if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
            patches.append((transformers_hub, "_hf_api", None))
        return patches

    @staticmethod
    def _forget_cached_clients() -> None:
        """Drop transformers' cached HfApi, which may have been built (with our endpoint) while patched."""
        transformers_hub = sys.modules.get("transformers.utils.hub")
        if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
            transformers_hub._hf_api = None

    @contextlib.contextmanager
    def patch_client(self, hf_home: str | os.PathLike | None = None, *, token: bool = True) -> Iterator[LocalHub]:
        """Point the already-imported `huggingface_hub` (and `transformers`) of this process at the double.

        Patches `constants.ENDPOINT` and the URL template/host sets derived from it at import time, the module-level
        `HfApi` instance, transformers' cached `HfApi`, Xet/telemetry switches, and (if `hf_home` is given) every
        cache/token path derived from `HF_HOME`; sets `HF_ENDPOINT`/`HF_TOKEN` in `os.environ`. Everything is
        restored on exit. Not thread-safe with respect to other code patching the same globals.
        Note: transformers' `HF_MODULES_CACHE` (remote code) is not moved: load remote code in a subprocess.
        """
        patches = self._client_patches(hf_home)
        saved_attrs = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        env = self._client_env(token=token)
        if hf_home is not None:
            env["HF_HOME"] = os.fspath(hf_home)
        removed = ["HF_TOKEN"] if not token else []
        saved_env = {name: os.environ.get(name) for name in [*env, *removed]}
        try:
            for obj, name, value in patches:
                setattr(obj, name, value)
            os.environ.update(env)
            for name in removed:
                os.environ.pop(name, None)
            yield self
        finally:
            for obj, name, value in reversed(saved_attrs):
                setattr(obj, name, value)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._forget_cached_clients()

    def install(self, monkeypatch: Any, hf_home: str | os.PathLike | None = None, *, token: bool = True) -> LocalHub:
        """Same as `patch_client`, through pytest's `monkeypatch` (undone at test teardown)."""
        for obj, name, value in self._client_patches(hf_home):
            monkeypatch.setattr(obj, name, value)
        for name, value in self._client_env(token=token).items():
            monkeypatch.setenv(name, value)
        if not token:
            monkeypatch.delenv("HF_TOKEN", raising=False)
        if hf_home is not None:
            monkeypatch.setenv("HF_HOME", os.fspath(hf_home))
        return self

    def api(self, token: str | bool | None = None) -> Any:
        """An `HfApi` bound to this double (no global patching needed). `token=None` uses the fake token."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token if token is None else token)

    # ------------------------------------------------------------------ server-side inspection / seeding

    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False) -> None:
        """Create a repo directly (no HTTP), with the Hub's initial `.gitattributes` commit."""
        with self._lock:
            self._create_repo(repo_type, repo_id, private, self.user)

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        with self._lock:
            repo = self._repo_or_404(repo_type, repo_id, user="<server>")
            commit = self._resolve(repo, revision)
            entry = commit.tree.get(path)
            if entry is None:
                raise KeyError(path)
            return self._content(repo, entry)

    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        with self._lock:
            repo = self._repo_or_404(repo_type, repo_id, user="<server>")
            return sorted(self._resolve(repo, revision).tree)

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            return self._resolve(self._repo_or_404(repo_type, repo_id, user="<server>"), revision).oid

    def is_lfs(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bool:
        with self._lock:
            repo = self._repo_or_404(repo_type, repo_id, user="<server>")
            return self._resolve(repo, revision).tree[path].sha256 is not None

    # ------------------------------------------------------------------ HTTP plumbing

    def _handle(self, handler: _Handler) -> None:
        request_id = uuid.uuid4().hex
        split = urlsplit(handler.path)
        response: _Response
        try:
            body = self._read_body(handler)
            token, user = self._authenticate(handler.headers.get("Authorization"))
            request = _Request(
                method=handler.command,
                path=split.path,
                segments=[unquote(s) for s in split.path.strip("/").split("/")] if split.path.strip("/") else [],
                query=parse_qs(split.query, keep_blank_values=True),
                headers=handler.headers,
                body=body,
                token=token,
                user=user,
            )
            response = self._route(request)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            response = _json_response({"error": err.message, **err.body}, err.status, headers)
        except Exception as exc:  # a bug in the double: report it as a 500 the client will show
            logger.exception("LocalHub internal error on %s %s", handler.command, split.path)
            response = _json_response({"error": f"LocalHub internal error: {exc!r}"}, 500)
        self.requests.append((handler.command, split.path, response.status))
        self._write(handler, response, request_id)

    def _write(self, handler: _Handler, response: _Response, request_id: str) -> None:
        try:
            handler.send_response(response.status)
            headers = {"X-Request-Id": request_id, "Content-Length": str(len(response.body)), **response.headers}
            for name, value in headers.items():  # header values must be one latin-1 line
                line = " ".join(str(value).splitlines())
                handler.send_header(name, line.encode("latin-1", "replace").decode("latin-1"))
            handler.end_headers()
            if handler.command != "HEAD" and response.body:
                handler.wfile.write(response.body)
        except OSError:  # the client went away (e.g. stopped reading a download): drop the connection quietly
            handler.close_connection = True

    def _read_body(self, handler: _Handler) -> bytes:
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            parts, total = [], 0
            for _ in range(_MAX_CHUNKS):
                size_line = handler.rfile.readline(1024)
                if not size_line:
                    raise HubError(400, "Truncated chunked body")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    for _ in range(1000):  # trailers, up to the empty line
                        if handler.rfile.readline(65536) in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(parts)
                total += size
                if total > self.max_body_size:
                    handler.close_connection = True
                    raise HubError(413, "Request body too large for LocalHub")
                parts.append(handler.rfile.read(size))
                handler.rfile.readline(1024)  # CRLF after each chunk
            raise HubError(400, "Too many chunks")
        length = int(handler.headers.get("Content-Length") or 0)
        if length > self.max_body_size:
            handler.close_connection = True
            raise HubError(413, "Request body too large for LocalHub")
        return handler.rfile.read(length) if length else b""

    def _authenticate(self, authorization: str | None) -> tuple[str | None, str | None]:
        if not authorization:
            return None, None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HubError(401, "Invalid credentials in Authorization header")
        if self.tokens is None:
            return token, self.user
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return token, self.tokens[token]

    # ------------------------------------------------------------------ routing

    def _route(self, req: _Request) -> _Response:
        seg, method = req.segments, req.method
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami(req)
            if rest == ["agent-harnesses"] and method == "GET":
                return _json_response({"standardEnvVars": [], "harnesses": {}})
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(req)
            if rest[:1] == ["repos"] and len(rest) == 2:
                action = {("POST", "create"): self._api_create_repo, ("DELETE", "delete"): self._api_delete_repo,
                          ("POST", "move"): self._api_move_repo}.get((method, rest[1]))
                if action is not None:
                    with self._lock:
                        return action(req)
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                with self._lock:
                    return self._repo_api(req, REPO_TYPES[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:])
        if method == "PUT" and seg[:2] == ["_localhub", "lfs"] and len(seg) == 6:
            with self._lock:
                return self._lfs_put(req, seg[2], f"{seg[3]}/{seg[4]}", seg[5])
        typed = seg[:1] and seg[0] in REPO_TYPES and seg[0] != "models"
        repo_type = REPO_TYPES[seg[0]] if typed else "model"
        rest = seg[1:] if typed else seg
        if len(rest) >= 4 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            with self._lock:
                return self._resolve_file(req, repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        if len(rest) == 6 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"]:
            repo_id = f"{rest[0]}/{rest[1][: -len('.git')]}"
            with self._lock:
                if rest[5] == "batch" and method == "POST":
                    return self._lfs_batch(req, repo_type, repo_id)
                if rest[5] == "verify" and method == "POST":
                    return self._lfs_verify(req, repo_type, repo_id)
        return self._no_route(req)

    def _no_route(self, req: _Request) -> _Response:
        self.unhandled.append((req.method, req.path))
        logger.warning("LocalHub: no route for %s %s", req.method, req.path)
        return _json_response({"error": f"LocalHub test double: no route for {req.method} {req.path}"}, 404)

    def _repo_api(self, req: _Request, repo_type: str, repo_id: str, rest: list[str]) -> _Response:
        method = req.method
        head = rest[0] if rest else None
        if head is None and method == "GET":
            return self._info(req, repo_type, repo_id, None)
        if head == "revision" and len(rest) >= 2 and method == "GET":
            return self._info(req, repo_type, repo_id, "/".join(rest[1:]))
        if head == "tree" and len(rest) >= 2 and method == "GET":
            return self._tree(req, repo_type, repo_id, rest[1], "/".join(rest[2:]))
        if head == "refs" and len(rest) == 1 and method == "GET":
            return self._refs(req, repo_type, repo_id)
        if head == "commits" and len(rest) >= 2 and method == "GET":
            return self._commits(req, repo_type, repo_id, "/".join(rest[1:]))
        if head == "paths-info" and len(rest) >= 2 and method == "POST":
            return self._paths_info(req, repo_type, repo_id, "/".join(rest[1:]))
        if head == "preupload" and len(rest) >= 2 and method == "POST":
            return self._preupload(req, repo_type, repo_id, "/".join(rest[1:]))
        if head == "commit" and len(rest) >= 2 and method == "POST":
            return self._commit(req, repo_type, repo_id, "/".join(rest[1:]))
        if head == "branch" and len(rest) >= 2 and method in ("POST", "DELETE"):
            return self._branch(req, repo_type, repo_id, "/".join(rest[1:]))
        if head == "tag" and len(rest) >= 2 and method in ("POST", "DELETE"):
            return self._tag(req, repo_type, repo_id, "/".join(rest[1:]))
        if head == "settings" and len(rest) == 1 and method == "PUT":
            return self._settings(req, repo_type, repo_id)
        if head in ("xet-write-token", "xet-read-token"):
            self._repo_or_404(repo_type, repo_id, req.user)
            raise HubError(
                501,
                "LocalHub test double does not implement Xet storage: run the client with HF_HUB_DISABLE_XET=1 "
                "(LocalHub.env()/patch_client()/install() set it) so LFS files use the LFS batch API.",
            )
        return self._no_route(req)

    # ------------------------------------------------------------------ store helpers (call with self._lock held)

    def _url(self, repo: _Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def _require_user(self, req: _Request) -> str:
        if req.user is None:
            raise HubError(401, "Invalid username or password. You must be authenticated (a token) to write.")
        return req.user

    def _repo_or_404(self, repo_type: str, repo_id: str, user: str | None) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.private and user is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> _Commit:
        rev = revision
        for prefix in ("refs/heads/", "refs/tags/"):
            if rev.startswith(prefix) and rev[len(prefix):]:
                rev = rev[len(prefix):]
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if rev in repo.tags:
            return repo.commits[repo.tags[rev]]
        match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if match and int(match.group(1)) in repo.prs:
            return repo.commits[repo.prs[int(match.group(1))]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(found) == 1:
                return repo.commits[found[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _content(self, repo: _Repo, entry: _Entry) -> bytes:
        return repo.lfs_objects[entry.sha256] if entry.sha256 is not None else self.blobs[entry.oid]

    def _create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> _Repo:
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
        content = DEFAULT_GITATTRIBUTES.encode()
        oid = _git_blob_oid(content)
        self.blobs[oid] = content
        commit = self._new_commit(repo, [], {".gitattributes": (len(content), oid, None)}, "initial commit", "",
                                  author)
        repo.branches["main"] = commit.oid
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def _new_commit(self, repo: _Repo, parents: list[str], tree: dict[str, Any], title: str, message: str,
                    author: str) -> _Commit:
        """Create a commit; `tree` values are `_Entry` (unchanged) or `(size, oid, sha256)` (new content)."""
        date = _now()
        seed = json.dumps([parents, sorted((p, str(v)) for p, v in tree.items()), title, message, author, _iso(date),
                           next(self._counter), repo.uid]).encode()
        oid = hashlib.sha1(b"commit %d\0" % len(seed) + seed).hexdigest()
        parent_tree = repo.commits[parents[0]].tree if parents else {}
        entries: dict[str, _Entry] = {}
        for path, value in tree.items():
            if isinstance(value, _Entry):
                entries[path] = value
                continue
            size, blob_oid, sha256 = value
            previous = parent_tree.get(path)
            same = previous is not None and (previous.oid, previous.sha256) == (blob_oid, sha256)
            entries[path] = previous if same else _Entry(size, blob_oid, sha256, oid)  # type: ignore[arg-type]
        commit = _Commit(oid, list(parents), dict(sorted(entries.items())), title, message, author, date)
        repo.commits[oid] = commit
        return commit

    @staticmethod
    def _directories(tree: dict[str, _Entry]) -> set[str]:
        dirs = set()
        for path in tree:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    @staticmethod
    def _dir_oid(tree: dict[str, _Entry], directory: str) -> str:
        listing = "\n".join(f"{p} {e.oid}" for p, e in tree.items() if p.startswith(directory + "/"))
        return hashlib.sha1(b"tree " + listing.encode()).hexdigest()

    def _file_json(self, repo: _Repo, path: str, entry: _Entry, expand: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
        if entry.sha256 is not None:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.lfs_pointer_size}
        if expand:
            commit = repo.commits[entry.last_commit]
            item["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": _iso(commit.date)}
            item["securityFileStatus"] = {"status": "safe", "avScan": None, "pickleImportScan": None}
        return item

    def _dir_json(self, tree: dict[str, _Entry], path: str) -> dict[str, Any]:
        return {"type": "directory", "oid": self._dir_oid(tree, path), "size": 0, "path": path}

    @staticmethod
    def _lfs_patterns(tree: dict[str, _Entry], blobs: dict[str, bytes]) -> list[str]:
        entry = tree.get(".gitattributes")
        if entry is None or entry.sha256 is not None:
            return []
        patterns = []
        for line in blobs[entry.oid].decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and "filter=lfs" in parts[1:]:
                patterns.append(parts[0])
        return patterns

    @staticmethod
    def _matches(path: str, pattern: str) -> bool:
        pattern = pattern.lstrip("/")
        if "/" in pattern:
            return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)

    def _ignored(self, path: str, gitignore: str | None) -> bool:
        if not gitignore:
            return False
        ignored = False
        for raw in gitignore.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line[1:] if negate else line
            pattern = pattern.rstrip("/")
            hit = self._matches(path, pattern) or any(
                self._matches("/".join(path.split("/")[: i + 1]), pattern) for i in range(path.count("/"))
            )
            if hit:
                ignored = not negate
        return ignored

    @staticmethod
    def _card_data(readme: bytes) -> dict[str, Any] | None:
        text = readme.decode(errors="replace")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.S)
        if match is None:
            return None
        try:
            import yaml
        except ImportError:
            return None
        try:
            data = yaml.safe_load(match.group(1))
        except yaml.YAMLError:
            return None
        return data if isinstance(data, dict) else None

    # ------------------------------------------------------------------ endpoints: account

    def _whoami(self, req: _Request) -> _Response:
        if req.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return _json_response({
            "type": "user",
            "id": hashlib.sha1(req.user.encode()).hexdigest()[:24],
            "name": req.user,
            "fullname": req.user,
            "email": f"{req.user}@localhub.invalid",
            "emailVerified": True,
            "isPro": False,
            "canPay": False,
            "periodEnd": None,
            "avatarUrl": "",
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "LocalHub test token", "role": "write",
                                                              "createdAt": _iso(_now())}},
        })

    def _validate_yaml(self, req: _Request) -> _Response:
        content = str(req.json().get("content", ""))
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
        if match is not None:
            try:
                import yaml

                data = yaml.safe_load(match.group(1))
                if data is not None and not isinstance(data, dict):
                    raise yaml.YAMLError("metadata must be a YAML mapping")
            except ImportError:
                pass
            except Exception as exc:  # yaml.YAMLError, kept generic since yaml is optional
                return _json_response({"errors": [{"message": f"Invalid YAML metadata: {exc}"}], "warnings": []}, 400)
        return _json_response({"errors": [], "warnings": []})

    # ------------------------------------------------------------------ endpoints: repos

    def _api_create_repo(self, req: _Request) -> _Response:
        user = self._require_user(req)
        payload = req.json()
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.\-]{1,96}", name) or "--" in name or ".." in name:
            raise HubError(400, f"Invalid repo name: {name!r}")
        namespace = payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type: {repo_type!r}")
        repo_id = f"{namespace}/{name}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        existing = self.repos.get((repo_type, repo_id))
        if existing is not None:
            # the Hub's 409 carries the url: `create_repo(exist_ok=True)` reads it
            raise HubError(409, f"You already created this {repo_type} repo", body={"url": self._url(existing)})
        repo = self._create_repo(repo_type, repo_id, private, user)
        return _json_response({"url": self._url(repo), "name": repo_id, "id": repo.uid})

    def _api_delete_repo(self, req: _Request) -> _Response:
        self._require_user(req)
        payload = req.json()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or req.user}/{payload.get('name')}"
        self._repo_or_404(repo_type, repo_id, req.user)
        del self.repos[(repo_type, repo_id)]
        return _Response(200)

    def _api_move_repo(self, req: _Request) -> _Response:
        self._require_user(req)
        payload = req.json()
        repo_type = payload.get("type") or "model"
        source, target = payload.get("fromRepo"), payload.get("toRepo")
        repo = self._repo_or_404(repo_type, str(source), req.user)
        if (repo_type, target) in self.repos:
            raise HubError(409, f"Repository {target} already exists")
        del self.repos[(repo_type, repo.repo_id)]
        repo.repo_id = str(target)
        self.repos[(repo_type, repo.repo_id)] = repo
        return _Response(200)

    def _settings(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        self._require_user(req)
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        payload = req.json()
        if "private" in payload:
            repo.private = bool(payload["private"])
        if "visibility" in payload:
            repo.private = payload["visibility"] != "public"
        if "gated" in payload:
            repo.gated = payload["gated"]
        return _json_response({})

    def _info(self, req: _Request, repo_type: str, repo_id: str, revision: str | None) -> _Response:
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        commit = self._resolve(repo, revision or "main")
        blobs = req.flag("blobs")
        siblings = []
        for path, entry in commit.tree.items():
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.oid)
                if entry.sha256 is not None:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size,
                                      "pointerSize": entry.lfs_pointer_size}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": repo.uid,
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.tree.values()),
        }
        if repo_type == "model":
            info.update(spaces=[], widgetData=None)
            config_entry = commit.tree.get("config.json")
            if config_entry is not None:
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    config = json.loads(self._content(repo, config_entry))
                    if isinstance(config, dict):
                        info["config"] = {k: config[k] for k in ("architectures", "model_type", "auto_map")
                                          if k in config}
        readme = commit.tree.get("README.md")
        if readme is not None:
            card = self._card_data(self._content(repo, readme))
            if card is not None:
                info["cardData"] = card
                tags = card.get("tags")
                if isinstance(tags, list):
                    info["tags"] = [str(t) for t in tags]
                if isinstance(card.get("library_name"), str):
                    info["library_name"] = card["library_name"]
                if isinstance(card.get("pipeline_tag"), str):
                    info["pipeline_tag"] = card["pipeline_tag"]
        if req.flag("securityStatus"):
            info["securityRepoStatus"] = {"scansDone": True, "filesWithIssues": []}
        expand = req.query.get("expand") or req.query.get("expand[]")
        if expand:
            info = {k: v for k, v in info.items() if k in {"_id", "id", *expand}}
        return _json_response(info)

    def _paginate(self, req: _Request, items: list[Any], page_size: int) -> _Response:
        try:
            start = max(int(req.param("cursor") or 0), 0)
        except ValueError as exc:
            raise HubError(400, "Invalid cursor") from exc
        page = items[start : start + page_size]
        headers = {}
        if start + page_size < len(items):
            query = {k: v[0] for k, v in req.query.items() if k != "cursor"}
            query["cursor"] = str(start + page_size)
            link = f"{self.endpoint}{req.path}?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
            headers["Link"] = f'<{link}>; rel="next"'
        return _json_response(page, headers=headers)

    def _tree(self, req: _Request, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        commit = self._resolve(repo, revision)
        path = path.strip("/")
        tree = commit.tree
        dirs = self._directories(tree)
        if path and path not in dirs:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        prefix = f"{path}/" if path else ""
        recursive = req.flag("recursive")
        expand = req.flag("expand")
        items: list[dict[str, Any]] = []
        for directory in sorted(dirs):
            if directory.startswith(prefix) and (recursive or "/" not in directory[len(prefix):]):
                items.append(self._dir_json(tree, directory))
        for file_path, entry in tree.items():
            if file_path.startswith(prefix) and (recursive or "/" not in file_path[len(prefix):]):
                items.append(self._file_json(repo, file_path, entry, expand))
        return self._paginate(req, items, TREE_PAGE_SIZE)

    def _paths_info(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        commit = self._resolve(repo, revision)
        content_type = req.headers.get("Content-Type", "")
        if "json" in content_type:
            payload = req.json()
            paths, expand = payload.get("paths") or [], str(payload.get("expand", "")).lower() == "true"
        else:
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand") or [""])[0].lower() == "true"
        dirs = self._directories(commit.tree)
        result = []
        for raw in paths if isinstance(paths, list) else [paths]:
            path = str(raw).strip("/")
            if path in commit.tree:
                result.append(self._file_json(repo, path, commit.tree[path], expand))
            elif path in dirs:
                result.append(self._dir_json(commit.tree, path))
        return _json_response(result)

    def _refs(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        data: dict[str, Any] = {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in repo.branches.items()],
            "converts": [],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in repo.tags.items()],
        }
        if req.flag("include_prs"):
            data["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c}
                                    for n, c in repo.prs.items()]
        return _json_response(data)

    def _commits(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        commit: _Commit | None = self._resolve(repo, revision)
        items = []
        for _ in range(len(repo.commits)):  # first-parent history, bounded by the number of commits
            if commit is None:
                break
            item = {"id": commit.oid, "title": commit.title, "message": commit.message, "date": _iso(commit.date),
                    "authors": [{"user": commit.author, "avatar": None}]}
            if "formatted" in (req.query.get("expand[]") or []):
                item["formatted"] = {"title": commit.title, "message": commit.message}
            items.append(item)
            commit = repo.commits[commit.parents[0]] if commit.parents else None
        return self._paginate(req, items, COMMITS_PAGE_SIZE)

    def _branch(self, req: _Request, repo_type: str, repo_id: str, branch: str) -> _Response:
        self._require_user(req)
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        if req.method == "DELETE":
            if branch not in repo.branches:
                raise HubError(404, f"Branch {branch} not found", "RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo.branches[branch]
            return _Response(200)
        if not branch or branch.startswith("refs/") or ".." in branch or branch.endswith("/"):
            raise HubError(400, f"Invalid branch name: {branch!r}")
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        payload = req.json()
        if payload.get("emptyBranch"):
            raise HubError(400, "LocalHub does not support emptyBranch")
        start = self._resolve(repo, str(payload.get("startingPoint") or "main"))
        repo.branches[branch] = start.oid
        return _Response(200)

    def _tag(self, req: _Request, repo_type: str, repo_id: str, target: str) -> _Response:
        self._require_user(req)
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        if req.method == "DELETE":
            if target not in repo.tags:
                raise HubError(404, f"Tag {target} not found", "RevisionNotFound")
            del repo.tags[target]
            return _Response(200)
        tag = req.json().get("tag")
        if not isinstance(tag, str) or not tag or tag.startswith("refs/") or ".." in tag:
            raise HubError(400, f"Invalid tag name: {tag!r}")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = self._resolve(repo, target).oid
        return _Response(200)

    # ------------------------------------------------------------------ endpoints: uploads

    def _preupload(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        self._require_user(req)
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        branch_exists = revision in repo.branches or revision.startswith("refs/pr/")
        commit = self._resolve(repo, revision if branch_exists else "main")
        payload = req.json()
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, "`files` must be a list")
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in commit.tree and commit.tree[".gitignore"].sha256 is None:
            gitignore = self.blobs[commit.tree[".gitignore"].oid].decode(errors="replace")
        patterns = self._lfs_patterns(commit.tree, self.blobs)
        answer = []
        for item in files:
            path, size = str(item.get("path", "")), int(item.get("size") or 0)
            sample = base64.b64decode(item.get("sample") or "")
            mode = "regular"
            if self.lfs and (size >= self.lfs_threshold or b"\x00" in sample
                             or any(self._matches(path, p) for p in patterns)):
                mode = "lfs"
            existing = commit.tree.get(path)
            oid = None if existing is None else (existing.sha256 or existing.oid)
            answer.append({"path": path, "uploadMode": mode, "shouldIgnore": self._ignored(path, gitignore),
                           "oid": oid})
        return _json_response({"files": answer, "commitOid": commit.oid})

    def _lfs_batch(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        user = self._require_user(req)
        repo = self._repo_or_404(repo_type, repo_id, user)
        payload = req.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "LocalHub only implements the LFS batch 'upload' operation")
        transfers = payload.get("transfers") or ["basic"]
        if "basic" not in transfers:
            raise HubError(400, "LocalHub only implements the 'basic' LFS transfer")
        objects = []
        for obj in payload.get("objects") or []:
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in repo.lfs_objects:
                repo.lfs_pending.add(oid)
                prefix = URL_PREFIXES[repo.repo_type]
                item["actions"] = {
                    "upload": {"href": f"{self.endpoint}/_localhub/lfs/{repo.repo_type}/{repo.repo_id}/{oid}",
                               "header": {}},
                    "verify": {"href": f"{self.endpoint}/{prefix}{repo.repo_id}.git/info/lfs/objects/verify",
                               "header": {}},
                }
            objects.append(item)
        return _json_response({"transfer": "basic", "objects": objects},
                              headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, req: _Request, repo_type: str, repo_id: str, oid: str) -> _Response:
        # Like a pre-signed storage URL: no Authorization header is sent, the batch call authorised the object.
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or oid not in repo.lfs_pending:
            raise HubError(403, "Upload URL not authorised by an LFS batch request")
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256 oid")
        repo.lfs_objects[oid] = req.body
        repo.lfs_pending.discard(oid)
        return _Response(200, headers={"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})

    def _lfs_verify(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        self._require_user(req)
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        payload = req.json()
        data = repo.lfs_objects.get(str(payload.get("oid")))
        if data is None or len(data) != payload.get("size"):
            raise HubError(404, "LFS object not found or size mismatch")
        return _json_response({"success": True})

    def _commit(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        user = self._require_user(req)
        repo = self._repo_or_404(repo_type, repo_id, user)
        try:
            lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        except ValueError as exc:
            raise HubError(400, f"Invalid NDJSON commit payload: {exc}") from exc
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be the header")
        header = lines[0].get("value") or {}
        title = str(header.get("summary") or "").strip()
        if not title:
            raise HubError(400, "Commit summary is required")
        description = str(header.get("description") or "")
        create_pr = req.flag("create_pr")
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/"):]
        pr_match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if pr_match and int(pr_match.group(1)) in repo.prs:
            head = repo.commits[repo.prs[int(pr_match.group(1))]]
        elif revision in repo.branches:
            head = repo.commits[repo.branches[revision]]
        elif revision in repo.tags or re.fullmatch(r"[0-9a-f]{40}", revision):
            raise HubError(400, f"Invalid rev id: {revision} is not a branch")
        else:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        parent = header.get("parentCommit")
        if parent is not None and not create_pr and not head.oid.startswith(str(parent)):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        tree: dict[str, Any] = dict(head.tree)
        new_blobs: dict[str, bytes] = {}
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = str(value.get("path", ""))
            if key in ("file", "lfsFile", "deletedFile", "deletedFolder"):
                if key != "deletedFolder" and (not path or path.startswith("/") or path.endswith("/")
                                               or ".." in path.split("/") or path.split("/")[0] == ".git"):
                    raise HubError(400, f"Invalid path: {path!r}")
            if key == "file":
                raw = value.get("content", "")
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else str(raw).encode()
                blob_oid = _git_blob_oid(data)
                new_blobs[blob_oid] = data
                tree[path] = (len(data), blob_oid, None)
            elif key == "lfsFile":
                oid = str(value.get("oid", ""))
                data = repo.lfs_objects.get(oid)
                if data is None:
                    raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file that does "
                                        f"not exist ({path}: sha256 {oid})")
                if value.get("size") is not None and value["size"] != len(data):
                    raise HubError(422, f"LFS object size mismatch for {path}")
                pointer = LFS_POINTER_TEMPLATE.format(oid=oid, size=len(data)).encode()
                tree[path] = (len(data), _git_blob_oid(pointer), oid)
            elif key == "deletedFile":
                if path not in tree:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del tree[path]
            elif key == "deletedFolder":
                folder = path.strip("/")
                doomed = [p for p in tree if not folder or p.startswith(folder + "/")]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del tree[p]
            else:
                raise HubError(400, f"Unknown commit operation key: {key!r}")
        self.blobs.update(new_blobs)
        message = title + ("\n\n" + description if description else "")
        commit = self._new_commit(repo, [head.oid], tree, title, message, user)
        pr_url = None
        if create_pr:
            number = max([0, *repo.prs]) + 1
            repo.prs[number] = commit.oid
            pr_url = f"{self._url(repo)}/discussions/{number}"
        elif pr_match:
            repo.prs[int(pr_match.group(1))] = commit.oid
        else:
            repo.branches[revision] = commit.oid
        return _json_response({"success": True, "commitOid": commit.oid, "commitUrl": f"{self._url(repo)}/commit/"
                               f"{commit.oid}", "commitMessage": message, "hookOutput": "",
                               "pullRequestUrl": pr_url})

    # ------------------------------------------------------------------ endpoints: downloads

    def _resolve_file(self, req: _Request, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._repo_or_404(repo_type, repo_id, req.user)
        commit = self._resolve(repo, revision)
        entry = commit.tree.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = self._content(repo, entry)
        headers = {
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
            "Cache-Control": "private, max-age=0, must-revalidate",
        }
        if entry.sha256 is not None:
            headers.update({"ETag": f'"{entry.sha256}"', "X-Linked-Etag": f'"{entry.sha256}"',
                            "X-Linked-Size": str(entry.size)})
        else:
            headers["ETag"] = f'"{entry.oid}"'
        range_header = req.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", range_header)
            size = len(data)
            start = end = None
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:
                    start, end = max(size - int(match.group(2)), 0), size - 1
            if start is None or end is None or start > end or start >= size:
                raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return _Response(206, data[start : end + 1], headers)
        return _Response(200, data, headers)


def hub_fixture(monkeypatch: Any, tmp_path: Path, **kwargs: Any) -> Iterator[LocalHub]:
    """Generator for your own pytest fixture: a started `LocalHub`, this process' client pointed at it.

    `HF_HOME` is `tmp_path / "hf_home"` (user caches untouched), `HF_TOKEN` is the double's fake token.
    Example: ``hub = pytest.fixture(lambda monkeypatch, tmp_path: (yield from hub_fixture(monkeypatch, tmp_path)))``
    or a plain ``def hub(monkeypatch, tmp_path): yield from hub_fixture(monkeypatch, tmp_path, lfs=True)``.
    """
    with LocalHub(**kwargs) as hub:
        hub.install(monkeypatch, hf_home=Path(tmp_path) / "hf_home")
        try:
            yield hub
        finally:
            hub._forget_cached_clients()  # a transformers HfApi built during the test points at this server


try:
    import pytest
except ImportError:  # pragma: no cover - the module is usable without pytest
    pass
else:

    @pytest.fixture
    def local_hub(monkeypatch: Any, tmp_path: Path) -> Iterator[LocalHub]:
        """A running `LocalHub` with this process' client patched (import it into a conftest to use it)."""
        yield from hub_fixture(monkeypatch, tmp_path)
