"""TEST DOUBLE of the Hugging Face Hub: a small local HTTP server for tests, never a real Hub.

`LocalHub` serves, on 127.0.0.1 and an ephemeral port, the part of the Hub HTTP API that the real `huggingface_hub`
client (1.x) and `transformers` (5.x) call when this project's tests release and load models: whoami, repo creation,
pre-upload and NDJSON commits (files base64-encoded in the commit), model info, tree listings, refs, commit history,
tags, model-card YAML validation and `resolve` downloads with the Hub's headers (`X-Repo-Commit`, `ETag`,
`X-Error-Code`). Repos live in memory as a git-like history: every commit is a full snapshot of the tree, ids are
40-hex sha1s, branches and tags point at commits. A request no route knows is answered 404 and listed in
`hub.unhandled`, so a client that starts calling something new shows up in the tests.

Typical use, in-process and in a fresh subprocess::

    from hub_double import LocalHub

    with LocalHub() as hub:                         # server thread started; hub.endpoint == "http://127.0.0.1:PORT"
        with hub.patch_client(hf_home=tmp_path / "hf"):   # already-imported huggingface_hub/transformers -> the double
            model.push_to_hub("user/tiny")                # real client, real requests
        env = hub.env(hf_home=tmp_path / "fresh")       # HF_ENDPOINT, HF_TOKEN (fake), HF_HOME, ...
        subprocess.run([sys.executable, "load.py"], env=env, check=True)   # no patching needed there

With pytest, `hub.install(monkeypatch, hf_home)` does the same as `patch_client` through `monkeypatch` (undone at
teardown).

Deliberate simplifications (this is a double, not a Hub): model repos only; any `Authorization: Bearer <token>` is
accepted and maps to one user (`LocalHub(user=...)`); writes need a token (401 otherwise) and private repos need one
to be read (401 + `X-Error-Code: RepoNotFound`, as the Hub does); tokens are never logged. `preupload` answers
`"regular"` for every file, so the client sends contents inside the commit and never uses LFS or Xet
(`HF_HUB_DISABLE_XET=1` is set by `env()`, `patch_client()` and `install()`). No pull requests, branch creation,
deletions, ranges, gating or search.
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
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

logger = logging.getLogger("hub_double")

DEFAULT_TOKEN = "hf_localhub_test_double_not_a_real_token"
# The `.gitattributes` the Hub writes into every new repo (abridged: the patterns that matter for ML files).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.bin", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.pt", "*.pth", "*.safetensors", "*.zip")
)
TREE_PAGE_SIZE = 1000
COMMITS_PAGE_SIZE = 50


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A file in a commit's tree. `oid` is the git blob sha1 of its content."""

    size: int
    oid: str
    last_commit: str  # commit that last changed this path


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
    repo_id: str
    private: bool
    created_at: datetime.datetime
    uid: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:24])
    commits: dict[str, _Commit] = dataclasses.field(default_factory=dict)
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


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
        user: the user every token belongs to (whoami name, default namespace of `create_repo`).
        token: the fake token handed out by `env()` / `patch_client()`.
        max_body_size: requests with larger bodies get 413.
        keep_bodies: keep `(method, path with query string, body)` of every request in `bodies`, for tests that
            search all a client sent (e.g. for a secret). Headers, where the token travels, are never kept.
    """

    def __init__(self, *, user: str = "user", token: str = DEFAULT_TOKEN, max_body_size: int = 1024 * 1024 * 1024,
                 keep_bodies: bool = False):
        self.user = user
        self.token = token
        self.max_body_size = max_body_size
        self.keep_bodies = keep_bodies
        self.bodies: list[tuple[str, str, bytes]] = []
        self.repos: dict[str, _Repo] = {}
        self.blobs: dict[str, bytes] = {}  # git blob oid -> content
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
            # the module-level `HfApi()` behind `huggingface_hub.create_repo`, `upload_folder`, ...: endpoint frozen
            # when huggingface_hub was imported
            (hf_api_module.api, "endpoint", self.endpoint),
        ]
        if hasattr(_http, "_HUB_ORIGINS"):  # huggingface_hub 2.x sends the token only to the origins it knows
            patches.append((_http, "_HUB_ORIGINS", frozenset(_http._HUB_ORIGINS | {_http._url_origin(self.endpoint)})))
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

    # ------------------------------------------------------------------ server-side inspection / seeding

    def create_repo(self, repo_id: str, *, private: bool = False) -> None:
        """Create a repo directly (no HTTP), with the Hub's initial `.gitattributes` commit."""
        with self._lock:
            self._create_repo(repo_id, private, self.user)

    def read_file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        with self._lock:
            entry = self._resolve(self._repo_or_404(repo_id, user="<server>"), revision).tree.get(path)
            if entry is None:
                raise KeyError(path)
            return self.blobs[entry.oid]

    def list_files(self, repo_id: str, revision: str = "main") -> list[str]:
        with self._lock:
            return sorted(self._resolve(self._repo_or_404(repo_id, user="<server>"), revision).tree)

    def head(self, repo_id: str, revision: str = "main") -> str:
        with self._lock:
            return self._resolve(self._repo_or_404(repo_id, user="<server>"), revision).oid

    # ------------------------------------------------------------------ HTTP plumbing

    def _handle(self, handler: _Handler) -> None:
        request_id = uuid.uuid4().hex
        split = urlsplit(handler.path)
        response: _Response
        try:
            body = self._read_body(handler)
            if self.keep_bodies:
                with self._lock:
                    self.bodies.append((handler.command, handler.path, body))
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
        length = int(handler.headers.get("Content-Length") or 0)
        if length > self.max_body_size:
            handler.close_connection = True
            raise HubError(413, "Request body too large for LocalHub")
        return handler.rfile.read(length) if length else b""

    def _authenticate(self, authorization: str | None) -> tuple[str | None, str | None]:
        if not authorization:
            return None, None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HubError(401, "Invalid credentials in Authorization header")
        return token.strip(), self.user

    # ------------------------------------------------------------------ routing

    def _route(self, req: _Request) -> _Response:
        seg, method = req.segments, req.method
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami(req)
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(req)
            if rest == ["repos", "create"] and method == "POST":
                with self._lock:
                    return self._api_create_repo(req)
            if len(rest) >= 3 and rest[0] == "models":
                with self._lock:
                    return self._repo_api(req, f"{rest[1]}/{rest[2]}", rest[3:])
        if len(seg) >= 4 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            with self._lock:
                return self._resolve_file(req, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        return self._no_route(req)

    def _no_route(self, req: _Request) -> _Response:
        self.unhandled.append((req.method, req.path))
        logger.warning("LocalHub: no route for %s %s", req.method, req.path)
        return _json_response({"error": f"LocalHub test double: no route for {req.method} {req.path}"}, 404)

    def _repo_api(self, req: _Request, repo_id: str, rest: list[str]) -> _Response:
        method = req.method
        head = rest[0] if rest else None
        if head is None and method == "GET":
            return self._info(req, repo_id, "main")
        if head == "revision" and len(rest) >= 2 and method == "GET":
            return self._info(req, repo_id, "/".join(rest[1:]))
        if head == "tree" and len(rest) >= 2 and method == "GET":
            return self._tree(req, repo_id, rest[1], "/".join(rest[2:]))
        if head == "refs" and len(rest) == 1 and method == "GET":
            return self._refs(req, repo_id)
        if head == "commits" and len(rest) >= 2 and method == "GET":
            return self._commits(req, repo_id, "/".join(rest[1:]))
        if head == "preupload" and len(rest) >= 2 and method == "POST":
            return self._preupload(req, repo_id, "/".join(rest[1:]))
        if head == "commit" and len(rest) >= 2 and method == "POST":
            return self._commit(req, repo_id, "/".join(rest[1:]))
        if head == "tag" and len(rest) >= 2 and method == "POST":
            return self._tag(req, repo_id, "/".join(rest[1:]))
        return self._no_route(req)

    # ------------------------------------------------------------------ store helpers (call with self._lock held)

    def _url(self, repo: _Repo) -> str:
        return f"{self.endpoint}/{repo.repo_id}"

    def _require_user(self, req: _Request) -> str:
        if req.user is None:
            raise HubError(401, "Invalid username or password. You must be authenticated (a token) to write.")
        return req.user

    def _repo_or_404(self, repo_id: str, user: str | None) -> _Repo:
        repo = self.repos.get(repo_id)
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
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(found) == 1:
                return repo.commits[found[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _create_repo(self, repo_id: str, private: bool, author: str) -> _Repo:
        repo = _Repo(repo_id=repo_id, private=private, created_at=_now())
        content = DEFAULT_GITATTRIBUTES.encode()
        oid = _git_blob_oid(content)
        self.blobs[oid] = content
        commit = self._new_commit(repo, [], {".gitattributes": (len(content), oid)}, "initial commit", "", author)
        repo.branches["main"] = commit.oid
        self.repos[repo_id] = repo
        return repo

    def _new_commit(self, repo: _Repo, parents: list[str], tree: dict[str, Any], title: str, message: str,
                    author: str) -> _Commit:
        """Create a commit; `tree` values are `_Entry` (unchanged) or `(size, oid)` (new content)."""
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
            size, blob_oid = value
            previous = parent_tree.get(path)
            entries[path] = previous if previous is not None and previous.oid == blob_oid else _Entry(size, blob_oid, oid)
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

    def _file_json(self, repo: _Repo, path: str, entry: _Entry, expand: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
        if expand:
            commit = repo.commits[entry.last_commit]
            item["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": _iso(commit.date)}
            item["securityFileStatus"] = {"status": "safe", "avScan": None, "pickleImportScan": None}
        return item

    @staticmethod
    def _ignored(path: str, gitignore: str | None) -> bool:
        """Whether `.gitignore` lines (basename globs, `dir/` prefixes, `!` negations) exclude `path`."""
        ignored = False
        for raw in (gitignore or "").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = (line[1:] if negate else line).strip("/")
            parts = path.split("/")
            if any(fnmatch.fnmatchcase(part, pattern) for part in parts) or fnmatch.fnmatchcase(path, pattern):
                ignored = not negate
        return ignored

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
        if (payload.get("type") or "model") != "model":
            raise HubError(400, "LocalHub serves model repos only")
        repo_id = f"{namespace}/{name}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        existing = self.repos.get(repo_id)
        if existing is not None:
            # the Hub's 409 carries the url: `create_repo(exist_ok=True)` reads it
            raise HubError(409, "You already created this model repo", body={"url": self._url(existing)})
        repo = self._create_repo(repo_id, private, user)
        return _json_response({"url": self._url(repo), "name": repo_id, "id": repo.uid})

    def _info(self, req: _Request, repo_id: str, revision: str) -> _Response:
        repo = self._repo_or_404(repo_id, req.user)
        commit = self._resolve(repo, revision)
        info: dict[str, Any] = {
            "_id": repo.uid,
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": path} for path in commit.tree],
        }
        expand = req.query.get("expand") or req.query.get("expand[]")
        if expand:
            info = {k: v for k, v in info.items() if k in {"_id", "id", *expand}}
        return _json_response(info)

    def _paginate(self, req: _Request, items: list[Any], page_size: int) -> _Response:
        try:
            start = max(int(req.param("cursor") or 0), 0)
        except ValueError as exc:
            raise HubError(400, "Invalid cursor") from exc
        headers = {}
        if start + page_size < len(items):
            query = {k: v[0] for k, v in req.query.items() if k != "cursor"}
            query["cursor"] = str(start + page_size)
            link = f"{self.endpoint}{req.path}?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
            headers["Link"] = f'<{link}>; rel="next"'
        return _json_response(items[start : start + page_size], headers=headers)

    def _tree(self, req: _Request, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._repo_or_404(repo_id, req.user)
        commit = self._resolve(repo, revision)
        path = path.strip("/")
        dirs = self._directories(commit.tree)
        if path and path not in dirs:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        prefix = f"{path}/" if path else ""
        recursive = req.flag("recursive")

        def listed(name: str) -> bool:
            return name.startswith(prefix) and (recursive or "/" not in name[len(prefix):])

        items: list[dict[str, Any]] = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                        "path": d} for d in sorted(dirs) if listed(d)]
        items += [self._file_json(repo, name, entry, req.flag("expand")) for name, entry in commit.tree.items()
                  if listed(name)]
        return self._paginate(req, items, TREE_PAGE_SIZE)

    def _refs(self, req: _Request, repo_id: str) -> _Response:
        repo = self._repo_or_404(repo_id, req.user)
        return _json_response({
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in repo.branches.items()],
            "converts": [],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in repo.tags.items()],
        })

    def _commits(self, req: _Request, repo_id: str, revision: str) -> _Response:
        repo = self._repo_or_404(repo_id, req.user)
        commit: _Commit | None = self._resolve(repo, revision)
        items = []
        while commit is not None:  # first-parent history
            item = {"id": commit.oid, "title": commit.title, "message": commit.message, "date": _iso(commit.date),
                    "authors": [{"user": commit.author, "avatar": None}]}
            if "formatted" in (req.query.get("expand[]") or []):
                item["formatted"] = {"title": commit.title, "message": commit.message}
            items.append(item)
            commit = repo.commits[commit.parents[0]] if commit.parents else None
        return self._paginate(req, items, COMMITS_PAGE_SIZE)

    def _tag(self, req: _Request, repo_id: str, target: str) -> _Response:
        self._require_user(req)
        repo = self._repo_or_404(repo_id, req.user)
        tag = req.json().get("tag")
        if not isinstance(tag, str) or not tag or tag.startswith("refs/") or ".." in tag:
            raise HubError(400, f"Invalid tag name: {tag!r}")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = self._resolve(repo, target).oid
        return _Response(200)

    # ------------------------------------------------------------------ endpoints: uploads

    def _preupload(self, req: _Request, repo_id: str, revision: str) -> _Response:
        self._require_user(req)
        repo = self._repo_or_404(repo_id, req.user)
        commit = self._resolve(repo, revision if revision in repo.branches else "main")
        payload = req.json()
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, "`files` must be a list")
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in commit.tree:
            gitignore = self.blobs[commit.tree[".gitignore"].oid].decode(errors="replace")
        answer = []
        for item in files:
            path = str(item.get("path", ""))
            existing = commit.tree.get(path)
            answer.append({"path": path, "uploadMode": "regular", "shouldIgnore": self._ignored(path, gitignore),
                           "oid": None if existing is None else existing.oid})
        return _json_response({"files": answer, "commitOid": commit.oid})

    def _commit(self, req: _Request, repo_id: str, revision: str) -> _Response:
        user = self._require_user(req)
        repo = self._repo_or_404(repo_id, user)
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
        branch = revision.removeprefix("refs/heads/")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        parent = header.get("parentCommit")
        if parent is not None and not head.oid.startswith(str(parent)):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        tree: dict[str, Any] = dict(head.tree)
        new_blobs: dict[str, bytes] = {}
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = str(value.get("path", ""))
            if key == "file":
                if not path or path.startswith("/") or path.endswith("/") or ".." in path.split("/"):
                    raise HubError(400, f"Invalid path: {path!r}")
                raw = value.get("content", "")
                data = base64.b64decode(raw) if value.get("encoding") == "base64" else str(raw).encode()
                blob_oid = _git_blob_oid(data)
                new_blobs[blob_oid] = data
                tree[path] = (len(data), blob_oid)
            elif key == "deletedFile":
                if path not in tree:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del tree[path]
            else:  # lfsFile (preupload never asks for LFS), deletedFolder, ...
                raise HubError(400, f"LocalHub does not implement commit operation {key!r}")
        self.blobs.update(new_blobs)
        message = title + ("\n\n" + description if description else "")
        commit = self._new_commit(repo, [head.oid], tree, title, message, user)
        repo.branches[branch] = commit.oid
        return _json_response({"success": True, "commitOid": commit.oid, "commitUrl": f"{self._url(repo)}/commit/"
                               f"{commit.oid}", "commitMessage": message, "hookOutput": "", "pullRequestUrl": None})

    # ------------------------------------------------------------------ endpoints: downloads

    def _resolve_file(self, req: _Request, repo_id: str, revision: str, path: str) -> _Response:
        repo = self._repo_or_404(repo_id, req.user)
        commit = self._resolve(repo, revision)
        entry = commit.tree.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        return _Response(200, self.blobs[entry.oid], {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{entry.oid}"',
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
            "Cache-Control": "private, max-age=0, must-revalidate",
        })
