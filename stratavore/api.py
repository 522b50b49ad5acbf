"""The HTTP API the daemon serves: ``/v1/...`` for what the CLI does, ``/health``, ``/metrics``, hooks.

Standard library only (``http.server``): one thread per connection, keep-alive, every response
written in one send. It listens on loopback TCP and/or a 0600 unix socket, never beyond the machine.

- **Auth**: every route but ``/health`` needs ``Authorization: Bearer <token>`` (``/metrics`` too
  unless ``metrics_auth = false``). A runner token (see :mod:`stratavore.apiauth`) opens only the
  hooks and heartbeats of its own runner.
- **Limits**: a token bucket per client (the API token, each runner token, each unauthenticated
  peer) answers 429 with Retry-After; bodies over the limit get 413 without being read.
- **Errors** are JSON, ``{"error": "...", "code": "..."}``, mapped from the error hierarchy:

      InvalidInput, Ambiguous, LaunchFailed -> 422   NotFound -> 404
      Conflict, QuotaExceeded              -> 409   DatabaseBusy, DaemonError -> 503
      malformed JSON or HTTP               -> 400   anything unexpected -> 500, logged, no traceback sent

- **Requests are checked against the OpenAPI document** (:mod:`stratavore.apispec`): query
  parameters and bodies that it calls invalid get 422 before any handler runs.
- **Launches** (and restarts) fork keepers, which must not happen in a process with threads (a lock
  held by another thread at the fork stays held forever in the child): they run in the launcher, a
  single-threaded helper process with Stratavore already imported, started with the API.
- **Heartbeats** are written by one thread with group commit: every batch queued while a commit is
  under way goes into the next transaction, and each request is answered once its batch is fsynced.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import re
import socket
import socketserver
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import __version__, apiauth, apispec, db, events, procs, projects
from .context import Context
from .errors import (
    Ambiguous,
    ConfigError,
    Conflict,
    DaemonError,
    DatabaseBusy,
    InvalidInput,
    LaunchFailed,
    NotFound,
    QuotaExceeded,
    StratavoreError,
)
from .runners import Runner, find, get
from .states import ACTIVE_VALUES

log = logging.getLogger("stratavore.api")

MAX_BODY = 1024 * 1024
MAX_HOOK_BODY = 4 * 1024 * 1024  # as the command hook (stratavore.hook.MAX_PAYLOAD)
CONNECTION_IDLE_TIMEOUT = 60.0
MAX_STREAMS = 64
STREAM_KEEPALIVE = 15.0
STREAM_POLL = 0.1
HEARTBEAT_WAIT = 30.0
DRAIN_TIMEOUT = 10.0
RUNNER_ROUTES = frozenset({"claudeHook", "heartbeats"})  # what a runner token may call


# -- errors ----------------------------------------------------------------------------------------


class HttpError(Exception):
    """An answer other than success, decided before or outside the library."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


_ERROR_MAP: list[tuple[type[StratavoreError], int, str]] = [
    (Ambiguous, 422, "ambiguous"),
    (InvalidInput, 422, "invalid_input"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (QuotaExceeded, 409, "quota_exceeded"),
    (LaunchFailed, 422, "launch_failed"),
    (DatabaseBusy, 503, "database_busy"),
    (DaemonError, 503, "daemon_error"),
    (ConfigError, 500, "config_error"),
]


def error_for(exc: StratavoreError) -> HttpError:
    for kind, status, code in _ERROR_MAP:
        if isinstance(exc, kind):
            headers = {"Retry-After": "1"} if status == 503 else None
            return HttpError(status, code, str(exc), headers)
    # other library errors (a git failure, ...) are about the request's target, not the server
    return HttpError(422, "invalid_input", str(exc))


# -- checking requests against the OpenAPI document --------------------------------------------------


def _check_string(value: str, where: str) -> None:
    if "\x00" in value:
        raise InvalidInput(f"{where} must not contain NUL characters")


def validate(schema: dict[str, Any], value: Any, where: str, components: dict[str, Any]) -> None:
    """Check ``value`` against the subset of JSON Schema the document uses; InvalidInput says what is wrong."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    if "allOf" in schema:
        for part in schema["allOf"]:
            validate(part, value, where, components)
        return
    if value is None:
        if schema.get("nullable"):
            return
        raise InvalidInput(f"{where} must not be null")
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise InvalidInput(f"{where} must be an object")
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise InvalidInput(f"{where}: {name!r} is required")
        if len(value) < schema.get("minProperties", 0):
            raise InvalidInput(f"{where} must not be empty")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            raise InvalidInput(f"{where} has more than {schema['maxProperties']} entries")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                validate(props[name], item, f"{where}.{name}" if where != "body" else name, components)
            elif extra is False:
                raise InvalidInput(f"{where}: unknown field {name!r}")
            elif isinstance(extra, dict):
                _check_string(name, f"{where} key")
                validate(extra, item, f"{where}.{name}", components)
    elif kind == "array":
        if not isinstance(value, list):
            raise InvalidInput(f"{where} must be an array")
        if len(value) < schema.get("minItems", 0):
            raise InvalidInput(f"{where} needs at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise InvalidInput(f"{where} takes at most {schema['maxItems']} items")
        for index, item in enumerate(value):
            validate(schema.get("items", {}), item, f"{where}[{index}]", components)
    elif kind == "string":
        if not isinstance(value, str):
            raise InvalidInput(f"{where} must be a string")
        _check_string(value, where)
        if len(value) < schema.get("minLength", 0):
            raise InvalidInput(f"{where} must not be empty")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise InvalidInput(f"{where} is longer than {schema['maxLength']} characters")
    elif kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind == "integer" and not isinstance(value, int)):
            raise InvalidInput(f"{where} must be {'an integer' if kind == 'integer' else 'a number'}")
        if "minimum" in schema and schema.get("exclusiveMinimum") and value <= schema["minimum"]:
            raise InvalidInput(f"{where} must be more than {schema['minimum']}")
        if "minimum" in schema and value < schema["minimum"]:
            raise InvalidInput(f"{where} must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise InvalidInput(f"{where} must be at most {schema['maximum']}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidInput(f"{where} must be true or false")
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(str(c) for c in schema["enum"] if c is not None)
        raise InvalidInput(f"{where} must be one of {choices}")


_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _query_value(schema: dict[str, Any], raw: str, where: str) -> Any:
    kind = schema.get("type")
    if kind == "boolean":
        if raw.lower() not in _TRUE:
            raise InvalidInput(f"{where} must be true or false")
        return _TRUE[raw.lower()]
    if kind == "integer":
        if not re.fullmatch(r"-?[0-9]{1,19}", raw):
            raise InvalidInput(f"{where} must be an integer")
        return int(raw)
    return raw


def parse_query(parameters: list[dict[str, Any]], raw_query: str, components: dict[str, Any]) -> dict[str, Any]:
    try:
        given = parse_qs(raw_query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the query string is not valid UTF-8") from None
    out: dict[str, Any] = {}
    for param in parameters:
        if param["in"] != "query" or param["name"] not in given:
            continue
        name, schema, values = param["name"], param["schema"], given[param["name"]]
        where = f"query parameter {name!r}"
        if schema.get("type") == "array":
            value: Any = [_query_value(schema["items"], v, where) for v in values]
        else:
            if len(values) > 1:
                raise InvalidInput(f"{where} is given more than once")
            value = _query_value(schema, values[0], where)
        validate(schema, value, where, components)
        out[name] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _has_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    return False


def parse_json(raw: bytes) -> Any:
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise HttpError(400, "bad_request", f"the body is not valid JSON: {e}") from None
    # a lone surrogate escape ("\\ud800") is valid JSON but no valid text: refuse it before SQLite does
    if (b"\\ud" in raw or b"\\uD" in raw) and _has_surrogates(value):
        raise HttpError(400, "bad_request", "the body contains an invalid unicode escape")
    return value


# -- routing --------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, Any]
    headers: Any
    body: Any
    identity: Identity
    api: Api
    _ctx: Context | None = None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            self._ctx = self.api.pool.context()
        return self._ctx

    def release(self) -> None:
        if self._ctx is not None:
            self.api.pool.release(self._ctx)
            self._ctx = None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Callable[[Callable[[bytes], None]], None] | None = None


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":"), default=str).encode())


@dataclass(frozen=True)
class Identity:
    kind: str  # "token", "runner" or "anonymous"
    key: str  # the rate limiter's bucket
    runner_id: str | None = None


@dataclass
class Route:
    method: str
    template: str
    operation: dict[str, Any]
    handler: Callable[[Request], Response]
    pattern: re.Pattern[str]
    parameters: list[dict[str, Any]]
    max_body: int = MAX_BODY


class Router:
    def __init__(self, handlers: dict[str, Callable[[Request], Response]], spec: dict[str, Any]) -> None:
        self.routes: list[Route] = []
        self.components = spec["components"]["schemas"]
        for template, item in spec["paths"].items():
            shared = item.get("parameters", [])
            for method, operation in item.items():
                if method == "parameters":
                    continue
                regex = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
                route = Route(
                    method.upper(),
                    template,
                    operation,
                    handlers[operation["operationId"]],
                    re.compile(regex),
                    [*shared, *operation.get("parameters", [])],
                    MAX_HOOK_BODY if operation["operationId"] == "claudeHook" else MAX_BODY,
                )
                self.routes.append(route)
        missing = set(handlers) - {r.operation["operationId"] for r in self.routes}
        if missing:
            raise RuntimeError(f"handlers without a documented route: {sorted(missing)}")
        self._static = {(r.method, r.template): r for r in self.routes if "{" not in r.template}

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        """The route and its path parameters; else None and the methods the path does allow."""
        route = self._static.get((method, path))
        if route is not None:
            return route, {}, []
        allowed = []
        for route in self.routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method:
                return route, {k: unquote(v, errors="strict") for k, v in m.groupdict().items()}, []
            allowed.append(route.method)
        return None, {}, allowed


# -- shared services: connections, rate limits, heartbeats, the event watch ------------------------


class Pool:
    """Database connections for request threads (a connection is never shared by two threads at once)."""

    def __init__(self, paths, settings, size: int = 16) -> None:
        self.paths = paths
        self.settings = settings
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._size = size

    def context(self) -> Context:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = db.connect(self.paths.db_path, busy_timeout=self.settings.busy_timeout, migrate=False)
        return Context(self.paths, self.settings, _conn=conn)

    def release(self, ctx: Context) -> None:
        conn = ctx._conn
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            conn.close()
            return
        if self._idle.qsize() < self._size:
            self._idle.put(conn)
        else:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class RateLimiter:
    """A token bucket per client: ``rate`` requests a second, bursts of twice that."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * 2)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def wait_time(self, key: str) -> float:
        """0 when the request may go ahead (and is counted), else seconds until it could."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1 - tokens) / self.rate
            if now > self._next_prune:
                # a bucket idle long enough to be full again is the same as no bucket
                full_after = self.burst / self.rate
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
                self._next_prune = now + 60
        return wait


@dataclass
class _Batch:
    rows: list[dict[str, Any]]
    done: threading.Event = field(default_factory=threading.Event)
    accepted: int = 0
    ignored: list[str] = field(default_factory=list)
    error: StratavoreError | None = None


class HeartbeatWriter:
    """One writer thread; batches queued while a commit is under way go into the next transaction."""

    SQL = (
        "UPDATE runners SET heartbeat_at=?, cpu_percent=COALESCE(?, cpu_percent), rss_bytes=COALESCE(?, rss_bytes),"
        f" process_count=COALESCE(?, process_count) WHERE id=? AND state IN ({','.join('?' * len(ACTIVE_VALUES))})"
    )

    def __init__(self, db_path: Path, busy_timeout: float) -> None:
        self.db_path = db_path
        self.busy_timeout = busy_timeout
        self._cond = threading.Condition()
        self._pending: list[_Batch] = []
        self._stopping = False
        self.transactions = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="sv-api-heartbeats", daemon=True)
        self._thread.start()

    def submit(self, rows: list[dict[str, Any]], timeout: float = HEARTBEAT_WAIT) -> _Batch:
        batch = _Batch(rows)
        with self._cond:
            if self._stopping:
                raise DaemonError("the daemon is shutting down")
            self._pending.append(batch)
            self._cond.notify()
        if not batch.done.wait(timeout):
            raise DatabaseBusy(f"the heartbeats were not written within {timeout:g}s; try again")
        if batch.error is not None:
            raise batch.error
        return batch

    def _run(self) -> None:
        conn = None
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    break
                batches, self._pending = self._pending, []
            try:
                if conn is None:
                    # synchronous=FULL: a heartbeat acknowledged is a heartbeat on disk
                    conn = db.connect(self.db_path, busy_timeout=self.busy_timeout, durable=True, migrate=False)
                self._write(conn, batches)
            except StratavoreError as e:
                for batch in batches:
                    batch.error = e
            except Exception as e:  # noqa: BLE001 - the writer must outlive any one bad transaction
                log.exception("heartbeat transaction failed")
                for batch in batches:
                    batch.error = DatabaseBusy(f"the heartbeats could not be written: {e}")
                if conn is not None:
                    conn.close()
                    conn = None
            for batch in batches:
                batch.done.set()
        if conn is not None:
            conn.close()

    def _write(self, conn: sqlite3.Connection, batches: list[_Batch]) -> None:
        now = time.time()
        for batch in batches:
            batch.accepted, batch.ignored = 0, []
        with db.write(conn):
            for batch in batches:
                for row in batch.rows:
                    cur = conn.execute(
                        self.SQL,
                        (now, row.get("cpu_percent"), row.get("rss_bytes"), row.get("process_count"), row["runner"], *ACTIVE_VALUES),
                    )
                    if cur.rowcount:
                        batch.accepted += 1
                    else:
                        batch.ignored.append(row["runner"])
        self.transactions += 1
        self.written += sum(b.accepted for b in batches)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)


class EventWatch:
    """One thread notices new events (the highest seq) and wakes every stream waiting for them."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.cond = threading.Condition()
        self.seq = 0
        self.stopping = False
        self._thread: threading.Thread | None = None

    def _ensure_running(self) -> None:
        with self.cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sv-api-events", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        conn = db.connect(self.db_path, migrate=False)
        try:
            while not self.stopping:
                seq = events.last_seq(conn)
                if seq != self.seq:
                    with self.cond:
                        self.seq = seq
                        self.cond.notify_all()
                time.sleep(STREAM_POLL)
        except Exception:  # noqa: BLE001 - streams fall back to their keepalive timeout
            log.exception("the event watch stopped")
        finally:
            conn.close()

    def wait_past(self, seq: int, timeout: float) -> bool:
        """Wait until an event after ``seq`` may exist; False on timeout or shutdown."""
        self._ensure_running()
        with self.cond:
            return self.cond.wait_for(lambda: self.stopping or self.seq > seq, timeout) and not self.stopping

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


# -- launching from a single-threaded process ----------------------------------------------------


def _send_frame(fd: int, obj: Any) -> None:
    import pickle

    data = pickle.dumps(obj)
    view = memoryview(len(data).to_bytes(8, "big") + data)
    while view:
        view = view[os.write(fd, view) :]


def _recv_frame(fd: int, deadline: float | None) -> Any:
    """The next object from ``fd``; None at EOF or when ``deadline`` (monotonic) passes."""
    import pickle
    import select

    def read(n: int) -> bytes | None:
        out = b""
        while len(out) < n:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    return None
            chunk = os.read(fd, n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    head = read(8)
    body = read(int.from_bytes(head, "big")) if head is not None else None
    return pickle.loads(body) if body is not None else None


def launcher_main(requests: int, replies: int) -> None:
    """The launcher process: single-threaded, so it may fork keepers (a process with threads must not:
    a lock another thread holds at the fork, SQLite's allocator mutex say, stays held in the child).
    It takes one request at a time from the API, and reaps the keepers it forked once they end."""
    import select

    from . import keeper, supervisor  # noqa: F401 - imported once, before any keeper is forked

    while True:
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not select.select([requests], [], [], 1.0)[0]:
            continue
        request = _recv_frame(requests, None)
        if request is None:
            return  # the API went away
        environ, paths, settings, op, args = request
        os.environ.clear()
        os.environ.update(environ)  # runners inherit the daemon's environment as it is now
        ctx = Context(paths, settings)
        try:
            if op == "launch":
                reply: tuple[str, Any] = ("ok", supervisor.launch(ctx, *args))
            elif op == "restart":
                reply = ("ok", supervisor.restart(ctx, find(ctx.conn, args[0])))
            else:
                reply = ("crash", f"unknown operation {op!r}")
        except StratavoreError as e:
            reply = ("error", e)
        except sqlite3.Error as e:
            reply = ("error", db._translate(e, paths.db_path))
        except Exception as e:  # noqa: BLE001 - reported to the request, which answers 500
            reply = ("crash", f"{type(e).__name__}: {e}")
        finally:
            ctx.close()
        _send_frame(replies, reply)


class Launcher:
    """Runs launches and restarts in the launcher process, one at a time, starting it when needed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: Any = None
        self._requests = self._replies = -1

    def _start(self) -> None:
        import subprocess

        from .daemon import self_command

        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            # through the entry point, so a single executable (PyInstaller) runs it too
            self._proc = subprocess.Popen(
                [*self_command(), "api-launcher", str(req_r), str(rep_w)],
                pass_fds=(req_r, rep_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._requests, self._replies = req_w, rep_r

    def call(self, ctx: Context, op: str, *args: Any, timeout: float) -> Any:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._close_pipes()
                self._start()
            try:
                _send_frame(self._requests, (dict(os.environ), ctx.paths, ctx.settings, op, args))
                reply = _recv_frame(self._replies, time.monotonic() + timeout)
            except OSError:
                reply = None
            if reply is None:
                self._stop_process()
                raise LaunchFailed(f"the launcher did not answer within {timeout:g}s")
        kind, value = reply
        if kind == "error":
            raise value
        if kind == "crash":
            raise RuntimeError(value)
        return value

    def _close_pipes(self) -> None:
        for fd in (self._requests, self._replies):
            if fd >= 0:
                os.close(fd)
        self._requests = self._replies = -1

    def _stop_process(self) -> None:
        self._close_pipes()  # EOF: the launcher ends on its own
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except Exception:  # noqa: BLE001 - then by force
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def warm(self) -> None:
        with self._lock:
            if self._proc is None:
                self._start()

    def close(self) -> None:
        with self._lock:
            self._stop_process()


# -- the handlers -----------------------------------------------------------------------------------


def runner_json(runner: Runner, now: float | None = None) -> dict[str, Any]:
    data = runner.to_dict()
    now = time.time() if now is None else now
    data["heartbeat_age"] = round(now - runner.heartbeat_at, 3) if runner.heartbeat_at else None
    return data


def _runner_list_sql(conn: sqlite3.Connection) -> str:
    """SQLite builds the JSON of a runner list itself: for a thousand runners that is ten times faster
    than dataclasses and json.dumps. The fields are Runner.to_dict()'s, in the same order. The caller
    puts its WHERE clause (on the runners table) in place of ``{where}``."""
    from dataclasses import fields

    columns = {r[1] for r in conn.execute("PRAGMA table_info(runners)")}
    pairs: list[tuple[str, str]] = []
    for f in fields(Runner):
        if f.name == "project":
            pairs.append(("project", "projects.name"))
        elif f.name in ("command", "env"):
            pairs.append((f.name, f"json(runners.{f.name})"))
        elif f.name in columns:
            pairs.append((f.name, f"runners.{f.name}"))
    pairs.append(("heartbeat_age", "CASE WHEN runners.heartbeat_at IS NOT NULL THEN round(:now - runners.heartbeat_at, 3) END"))
    # a function takes at most 127 arguments: build the object in parts
    obj = "json_object(" + ", ".join(f"'{k}', {v}" for k, v in pairs[:60]) + ")"
    for start in range(60, len(pairs), 60):
        obj = f"json_insert({obj}, " + ", ".join(f"'$.{k}', {v}" for k, v in pairs[start : start + 60]) + ")"
    # the rows are filtered and ordered in a subquery, and the JSON built over them outside it: built
    # inside, it would come out as text and have to be parsed again
    return f"SELECT json_group_array({obj}) FROM (SELECT * FROM runners{{where}} ORDER BY created_at, name) AS runners" + (
        " JOIN projects ON projects.id = runners.project_id"
    )


class Api:
    """The routes and the services they share; one per server, whatever sockets it listens on."""

    def __init__(self, ctx: Context, token: str) -> None:
        self.paths = ctx.paths
        self.settings = ctx.settings
        self.token = token
        self.runner_key = apiauth.runner_key(token)
        self.spec = apispec.document()
        self.spec_bytes = json.dumps(self.spec, separators=(",", ":")).encode()
        self.router = Router(self._handlers(), self.spec)
        self.pool = Pool(self.paths, self.settings)
        self.limiter = RateLimiter(self.settings.api_rate_limit)
        self.heartbeats = HeartbeatWriter(self.paths.db_path, self.settings.busy_timeout)
        self.watch = EventWatch(self.paths.db_path)
        self.launcher = Launcher()
        self.started = time.time()
        self.stopping = threading.Event()
        self._inflight = 0
        self._inflight_cond = threading.Condition()
        self._streams = 0
        self._runner_names: dict[str, str] = {}
        self._list_sql: str | None = None
        self._ingest_lock = threading.Lock()
        self._ingest_started = float("-inf")  # when the last finished ingest began (monotonic)

    def _handlers(self) -> dict[str, Callable[[Request], Response]]:
        return {
            "health": self.health,
            "healthDb": self.health_db,
            "metrics": self.metrics,
            "openapi": lambda req: Response(200, self.spec_bytes),
            "listProjects": self.list_projects,
            "addProject": self.add_project,
            "getProject": self.get_project,
            "updateProject": self.update_project,
            "removeProject": self.remove_project,
            "listRunners": self.list_runners,
            "launchRunners": self.launch,
            "getRunner": self.get_runner,
            "removeRunner": self.remove_runner,
            "stopRunner": self.stop_runner,
            "killRunner": self.kill_runner,
            "restartRunner": self.restart_runner,
            "runnerLogs": self.runner_logs,
            "listSessions": self.list_sessions,
            "getSession": self.get_session,
            "listEvents": self.list_events,
            "streamEvents": self.stream_events,
            "claudeHook": self.claude_hook,
            "heartbeats": self.post_heartbeats,
            "usageOverview": self.usage_overview,
            "usageDaily": lambda req: self.usage_period(req, "daily"),
            "usageWeekly": lambda req: self.usage_period(req, "weekly"),
            "usageMonthly": lambda req: self.usage_period(req, "monthly"),
            "usageSessions": self.usage_sessions,
            "usageProjects": self.usage_projects,
            "usageModels": self.usage_models,
            "usageBlocks": self.usage_blocks,
            "usagePrices": self.usage_prices,
            "usageImport": self.usage_import,
            "listBudgets": self.list_budgets,
            "setBudget": self.set_budget,
            "getBudget": self.get_budget,
            "putBudget": self.set_budget,
            "removeBudget": self.remove_budget,
        }

    # -- bookkeeping of requests, for a draining shutdown

    def begin(self) -> None:
        with self._inflight_cond:
            self._inflight += 1

    def end(self) -> None:
        with self._inflight_cond:
            self._inflight -= 1
            self._inflight_cond.notify_all()

    def drain(self, timeout: float) -> bool:
        with self._inflight_cond:
            return self._inflight_cond.wait_for(lambda: self._inflight == 0, timeout)

    def close(self) -> None:
        self.watch.stop()
        self.heartbeats.stop()
        self.launcher.close()
        self.pool.close()

    # -- who is asking

    def identify(self, headers: Any, peer: str) -> Identity:
        auth = headers.get("Authorization", "")
        scheme, _, presented = auth.partition(" ")
        presented = presented.strip()
        if scheme.lower() == "bearer" and presented:
            if presented.startswith(apiauth.TOKEN_PREFIX) and hmac.compare_digest(presented, self.token):
                return Identity("token", "token")
            if presented.startswith(apiauth.RUNNER_TOKEN_PREFIX):
                runner_id = headers.get("X-Stratavore-Runner", "").strip()
                name = self._runner_name(runner_id) if runner_id else None
                if name and apiauth.check_runner_token(self.runner_key, name, presented):
                    return Identity("runner", f"runner:{runner_id}", runner_id)
        return Identity("anonymous", f"peer:{peer}")

    def _runner_name(self, runner_id: str) -> str | None:
        name = self._runner_names.get(runner_id)
        if name is None and len(runner_id) <= 64:
            ctx = self.pool.context()
            try:
                row = ctx.conn.execute("SELECT name FROM runners WHERE id=?", (runner_id,)).fetchone()
            finally:
                self.pool.release(ctx)
            if row is not None:
                name = self._runner_names[runner_id] = row[0]
        return name

    # -- health, metrics

    def health(self, req: Request) -> Response:
        try:
            req.ctx.conn.execute("SELECT 1 FROM meta LIMIT 1").fetchone()
        except (sqlite3.Error, StratavoreError):
            return json_response({"status": "unavailable", "version": __version__}, 503)
        return json_response({"status": "ok", "version": __version__})

    def health_db(self, req: Request) -> Response:
        report: dict[str, Any] = {
            "status": "unavailable",
            "reachable": False,
            "writable": False,
            "migrations_current": False,
            "schema_version": None,
            "expected_schema_version": db.SCHEMA_VERSION,
            "error": None,
        }
        conn = None
        try:
            # a connection of its own, opened read-write but never created: a missing file is unhealthy
            conn = sqlite3.connect(f"file:{self.paths.db_path}?mode=rw", uri=True, timeout=1.0, isolation_level=None)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute("SELECT count(*) FROM meta").fetchone()
            report.update(reachable=True, schema_version=version, migrations_current=version == db.SCHEMA_VERSION)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('health_probe', ?)", (str(time.time()),))
            conn.execute("COMMIT")
            report["writable"] = True
        except sqlite3.Error as e:
            report["error"] = str(e)
        finally:
            if conn is not None:
                conn.close()
        if report["reachable"] and not report["migrations_current"] and report["error"] is None:
            report["error"] = f"schema version {report['schema_version']}, expected {db.SCHEMA_VERSION}"
        healthy = report["reachable"] and report["writable"] and report["migrations_current"]
        report["status"] = "ok" if healthy else "unavailable"
        return json_response(report, 200 if healthy else 503)

    def metrics(self, req: Request) -> Response:
        import importlib.util

        if importlib.util.find_spec("stratavore.metrics") is None:
            raise HttpError(404, "not_found", "metrics are not part of this build")
        from . import metrics

        body, content_type = metrics.render(req.ctx)
        return Response(200, body, content_type)

    # -- projects

    def _project_json(self, conn: sqlite3.Connection, project: projects.Project) -> dict[str, Any]:
        return {**project.to_dict(), "active_runners": projects.active_counts(conn).get(project.id, 0)}

    def _check_agent(self, agent: str | None) -> str | None:
        from .agents import agent_names

        if agent and agent not in agent_names(self.settings):
            raise InvalidInput(f"unknown agent {agent!r}; known: {', '.join(agent_names(self.settings))}")
        return agent

    def list_projects(self, req: Request) -> Response:
        conn = req.ctx.conn
        counts = projects.active_counts(conn)
        items = [{**p.to_dict(), "active_runners": counts.get(p.id, 0)} for p in projects.list_projects(conn)]
        return json_response({"projects": items})

    def add_project(self, req: Request) -> Response:
        b = req.body
        agent = self._check_agent(b.get("agent"))
        p = projects.add(req.ctx.conn, b["name"], b["path"], max_runners=b.get("max_runners"), default_agent=agent)
        return json_response(self._project_json(req.ctx.conn, p), 201)

    def get_project(self, req: Request) -> Response:
        return json_response(self._project_json(req.ctx.conn, projects.get(req.ctx.conn, req.params["name"])))

    def update_project(self, req: Request) -> Response:
        b = req.body
        agent = b.get("agent")
        agent = self._check_agent(agent) or agent
        p = projects.update(req.ctx.conn, req.params["name"], path=b.get("path"), max_runners=b.get("max_runners"), default_agent=agent)
        return json_response(self._project_json(req.ctx.conn, p))

    def remove_project(self, req: Request) -> Response:
        from . import supervisor

        p = supervisor.remove_project(req.ctx, req.params["name"], force=req.query.get("force", False))
        return json_response({"removed": p.name})

    # -- runners

    def list_runners(self, req: Request) -> Response:
        conn = req.ctx.conn
        q = req.query
        if "project" in q:
            projects.get(conn, q["project"])  # 404 for an unknown project, as `ps --project`
        if self._list_sql is None:
            self._list_sql = _runner_list_sql(conn)
        where, params = [], {"now": time.time()}
        filters = (
            ("project", "project_id = (SELECT id FROM projects WHERE name = :project)"),
            ("state", "state = :state"),
            ("agent", "agent = :agent"),
            ("status", "agent_status = :status"),
        )
        for key, clause in filters:
            if key in q:
                where.append(clause)
                params[key] = q[key]
        if not q.get("all") and "state" not in q:
            where.append(f"state IN ({', '.join(repr(s) for s in ACTIVE_VALUES)})")
        sql = self._list_sql.replace("{where}", " WHERE " + " AND ".join(where) if where else "")
        array = conn.execute(sql, params).fetchone()[0]
        return Response(200, b'{"runners":' + array.encode() + b"}")

    def _runner(self, req: Request) -> Runner:
        from .reconcile import reconcile

        [runner] = reconcile(req.ctx.conn, [find(req.ctx.conn, req.params["runner"])])
        return get(req.ctx.conn, runner.id)

    def get_runner(self, req: Request) -> Response:
        return json_response(runner_json(self._runner(req)))

    def launch(self, req: Request) -> Response:
        from .supervisor import LaunchOptions

        b = req.body
        options = LaunchOptions(
            name=b.get("name"),
            count=b.get("count", 1),
            cwd=b.get("cwd"),
            env=b.get("env", {}),
            restart=b.get("restart"),
            max_restarts=b.get("max_restarts"),
            stop_signal=b.get("stop_signal"),
            stop_timeout=b.get("stop_timeout"),
            agent=self._check_agent(b.get("agent")),
            worktree=b.get("worktree"),
        )
        projects.get(req.ctx.conn, b["project"])  # a quick 404 without a fork
        timeout = self.settings.launch_timeout + 30
        result = self.launcher.call(req.ctx, "launch", b["project"], list(b.get("command", [])), options, timeout=timeout)
        now = time.time()
        return json_response(
            {
                "started": [runner_json(r, now) for r in result.started],
                "failed": [{**runner_json(r, now), "error": reason} for r, reason in result.failed],
            },
            201,
        )

    def stop_runner(self, req: Request) -> Response:
        from . import supervisor

        runner = find(req.ctx.conn, req.params["runner"])
        b = req.body or {}
        [done] = supervisor.stop(req.ctx, [runner], signal_name=b.get("signal"), timeout=b.get("timeout"), wait=b.get("wait", True))
        return json_response(runner_json(done))

    def kill_runner(self, req: Request) -> Response:
        from . import supervisor

        runner = find(req.ctx.conn, req.params["runner"])
        [done] = supervisor.stop(req.ctx, [runner], signal_name="KILL", timeout=0)
        return json_response(runner_json(done))

    def restart_runner(self, req: Request) -> Response:
        runner = find(req.ctx.conn, req.params["runner"])
        timeout = runner.stop_timeout + self.settings.launch_timeout + 30
        restarted = self.launcher.call(req.ctx, "restart", runner.id, timeout=timeout)
        return json_response(runner_json(restarted))

    def remove_runner(self, req: Request) -> Response:
        from . import supervisor

        runner = find(req.ctx.conn, req.params["runner"])
        supervisor.remove(req.ctx, runner, force=req.query.get("force", False), remove_worktree=req.query.get("worktree", False))
        return json_response({"removed": runner.name, "id": runner.id})

    def runner_logs(self, req: Request) -> Response:
        from .logs import read_tail

        runner = find(req.ctx.conn, req.params["runner"])
        data, _ = read_tail(self.paths.runner_log(runner.id), req.query.get("tail"))
        return Response(200, data, "text/plain; charset=utf-8")

    # -- sessions

    def _costs(self, conn: sqlite3.Connection) -> dict[str, float]:
        try:
            rows = conn.execute("SELECT session_id, SUM(cost_usd) FROM usage_entries GROUP BY session_id").fetchall()
        except sqlite3.Error:
            return {}
        return {r[0]: r[1] for r in rows if r[1] is not None}

    def list_sessions(self, req: Request) -> Response:
        from . import sessions

        conn = req.ctx.conn
        project = req.query.get("project")
        if project is not None:
            projects.get(conn, project)
        items = sessions.list_sessions(conn, project=project)
        if req.query.get("all") and project is None:
            items += sessions.discover_external(self.settings, {s.id for s in items})
        costs = self._costs(conn)
        return json_response({"sessions": [{**s.to_dict(), "cost_usd": costs.get(s.id)} for s in items]})

    def get_session(self, req: Request) -> Response:
        from . import sessions

        s = sessions.get(req.ctx.conn, req.params["session_id"])
        return json_response({**s.to_dict(), "cost_usd": self._costs(req.ctx.conn).get(s.id)})

    # -- events

    def _event_filter(self, req: Request) -> tuple[tuple[str, ...], str | None]:
        runner = req.query.get("runner")
        return tuple(req.query.get("type", ())), find(req.ctx.conn, runner).id if runner else None

    def list_events(self, req: Request) -> Response:
        types, aggregate = self._event_filter(req)
        after = req.query.get("after", 0)
        page = events.list_events(req.ctx.conn, after_seq=after, limit=req.query.get("limit", 100), types=types, aggregate_id=aggregate)
        return json_response({"events": [e.to_dict() for e in page], "last_seq": page[-1].seq if page else after})

    def stream_events(self, req: Request) -> Response:
        types, aggregate = self._event_filter(req)
        last_id = (req.headers.get("Last-Event-ID") or "").strip()
        if last_id:
            if not last_id.isdigit() or len(last_id) > 19:
                raise InvalidInput("Last-Event-ID must be the seq of an event")
            cursor = int(last_id)
        elif "after" in req.query:
            cursor = req.query["after"]
        else:
            cursor = events.last_seq(req.ctx.conn)
        with self._inflight_cond:
            if self._streams >= MAX_STREAMS:
                raise HttpError(429, "rate_limited", f"at most {MAX_STREAMS} event streams at once", {"Retry-After": "5"})
            self._streams += 1
        # the stream outlives the request's pooled connection: it reads with one of its own
        req.release()

        def stream(write: Callable[[bytes], None]) -> None:
            conn = db.connect(self.paths.db_path, migrate=False)
            position = cursor
            try:
                write(b"retry: 1000\n\n")
                quiet_since = time.monotonic()
                while not self.stopping.is_set():
                    batch = events.list_events(conn, after_seq=position, limit=500)
                    for event in batch:
                        position = event.seq
                        if events._matches(event, types, aggregate):
                            data = json.dumps(event.to_dict(), separators=(",", ":"))
                            write(f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode())
                            quiet_since = time.monotonic()
                    if len(batch) == 500:
                        continue
                    if time.monotonic() - quiet_since >= STREAM_KEEPALIVE:
                        write(b": keepalive\n\n")  # also how a vanished client is noticed
                        quiet_since = time.monotonic()
                    self.watch.wait_past(position, STREAM_KEEPALIVE)
            finally:
                conn.close()
                with self._inflight_cond:
                    self._streams -= 1

        return Response(200, content_type="text/event-stream", stream=stream)

    # -- agents reporting

    def claude_hook(self, req: Request) -> Response:
        from .sessions import apply_hook

        runner_id = (req.headers.get("X-Stratavore-Runner") or "").strip() or None
        if req.identity.kind == "runner" and runner_id != req.identity.runner_id:
            raise HttpError(403, "forbidden", "a runner token reports only for its own runner")
        if runner_id is not None:
            get(req.ctx.conn, runner_id)  # 404 for an unknown runner
        apply_hook(req.ctx.conn, req.body, runner_id)
        return Response(204)

    def post_heartbeats(self, req: Request) -> Response:
        rows = req.body["heartbeats"]
        if req.identity.kind == "runner" and any(r["runner"] != req.identity.runner_id for r in rows):
            raise HttpError(403, "forbidden", "a runner token reports only for its own runner")
        req.release()  # the writer has its own connection; do not hold one while waiting for it
        batch = self.heartbeats.submit(rows)
        return json_response({"accepted": batch.accepted, "ignored": batch.ignored})

    # -- usage and budgets

    def _filters(self, req: Request, *, dates: bool = True) -> Any:
        from . import usage

        q = req.query
        since = usage.parse_day(q.get("since"), "since") if dates else None
        until = usage.parse_day(q.get("until"), "until") if dates else None
        filters = usage.Filters(since, until, usage.parse_timezone(q.get("timezone")))
        try:
            filters.where()  # the range's instants exist (the year 1 in local time, the day after 9999-12-31 do not)
        except (OverflowError, ValueError, OSError):
            raise InvalidInput("since or until is out of the range of dates this time zone can express") from None
        return filters

    def _ingest(self, req: Request, *, always: bool = False) -> Any:
        """Read what is new in the transcripts first, as the CLI's reports do.

        One ingest at a time in this process: a request that waited for another's ingest, begun after it
        arrived, has nothing left to read and skips its own. Reading is inline (no process pool: this
        process has threads and must not fork), and the ingest commits in batches as the CLI's does; only
        reports wait for it, other routes never do."""
        from . import pricing, transcripts

        arrived = time.monotonic()
        with self._ingest_lock:
            if self._ingest_started >= arrived and not always:
                return None
            started = time.monotonic()
            prices = pricing.load(self.paths.config_dir)
            roots = transcripts.claude_roots(default=self.settings.claude_config_dir)
            try:
                stats = transcripts.ingest(req.ctx.conn, roots, prices, workers=0)
            except sqlite3.IntegrityError:
                # another process (a keeper, the daemon's budget job, the CLI) stored the same new file
                # first: what is left to read is now planned from its rows
                stats = transcripts.ingest(req.ctx.conn, roots, prices, workers=0)
            self._ingest_started = started
            return stats

    def usage_overview(self, req: Request) -> Response:
        from . import usage

        filters = self._filters(req, dates=False)
        self._ingest(req)
        return json_response(usage.overview(req.ctx.conn, filters.tz))

    def usage_period(self, req: Request, period: str) -> Response:
        from . import usage

        filters = self._filters(req)
        self._ingest(req)
        return json_response(usage.period_report(req.ctx.conn, period, filters))

    def usage_sessions(self, req: Request) -> Response:
        from . import usage

        filters = self._filters(req)
        self._ingest(req)
        return json_response(usage.session_report(req.ctx.conn, filters, session_id=req.query.get("id")))

    def usage_projects(self, req: Request) -> Response:
        from . import usage

        filters = self._filters(req)
        self._ingest(req)
        return json_response(usage.project_report(req.ctx.conn, filters))

    def usage_models(self, req: Request) -> Response:
        from . import usage

        filters = self._filters(req)
        self._ingest(req)
        return json_response(usage.model_report(req.ctx.conn, filters))

    def usage_blocks(self, req: Request) -> Response:
        from . import usage

        filters = self._filters(req)
        self._ingest(req)
        return json_response(usage.block_report(req.ctx.conn, filters, active_only=req.query.get("active", False)))

    def usage_prices(self, req: Request) -> Response:
        from . import pricing, usage

        prices = pricing.load(self.paths.config_dir)
        models = [p.to_dict() for name, p in sorted(prices.models.items()) if name != usage.SYNTHETIC]
        return json_response({"version": prices.version, "overrides": prices.overrides_file, "models": models})

    def usage_import(self, req: Request) -> Response:
        from . import transcripts

        stats: transcripts.IngestStats = self._ingest(req, always=True)
        return json_response(stats.to_dict())

    def list_budgets(self, req: Request) -> Response:
        from . import budgets

        return json_response({"budgets": [s.to_dict() for s in budgets.standings(req.ctx.conn)]})

    def get_budget(self, req: Request) -> Response:
        from . import budgets

        conn = req.ctx.conn
        return json_response(budgets.standing(conn, budgets.get(conn, req.params["name"])).to_dict())

    def set_budget(self, req: Request) -> Response:
        """``POST /v1/budgets`` (the name in the body, or the default one) and ``PUT /v1/budgets/{name}``."""
        from . import budgets

        b = req.body
        name = req.params.get("name", b.get("name"))
        if b["scope"] == "global" and b.get("target") is not None:
            raise InvalidInput("a global budget takes no target")
        if name is not None and len(name) > 200:
            raise InvalidInput("a budget name is at most 200 characters")
        budget = budgets.set_budget(
            req.ctx.conn,
            scope=b["scope"],
            target=b.get("target"),
            usd=b.get("usd"),
            tokens=b.get("tokens"),
            period=b.get("period", "month"),
            timezone=b.get("timezone"),
            warn=",".join(str(p) for p in b["warn"]) if b.get("warn") else None,
            action=b.get("action", "notify"),
            name=name,
        )
        return json_response(budget.to_dict(), 201 if budget.version == 1 else 200)  # created, or replaced

    def remove_budget(self, req: Request) -> Response:
        from . import budgets

        budget = budgets.remove(req.ctx.conn, req.params["name"])
        return json_response({"removed": budget.name})

    # -- one request

    def dispatch(self, handler: _Handler) -> Response:
        split = urlsplit(handler.path)
        path = split.path
        identity = self.identify(handler.headers, handler.peer())
        wait = self.limiter.wait_time(identity.key)
        if wait > 0:
            retry = max(1, int(wait + 0.999))
            raise HttpError(429, "rate_limited", f"too many requests; retry in {retry}s", {"Retry-After": str(retry)})
        public = path == "/health" or (path == "/metrics" and not self.settings.metrics_auth)
        if identity.kind == "anonymous" and not public:
            raise HttpError(401, "unauthorized", "this route needs Authorization: Bearer <token> (see `stratavore api token`)")
        route, params, allowed = self.router.match(handler.command, path)
        if route is None:
            if allowed:
                raise HttpError(405, "method_not_allowed", f"{handler.command} is not allowed here", {"Allow": ", ".join(sorted(allowed))})
            raise HttpError(404, "not_found", f"no route {path}")
        if identity.kind == "runner" and route.operation["operationId"] not in RUNNER_ROUTES:
            raise HttpError(403, "forbidden", "a runner token only reports hooks and heartbeats")
        for name, value in params.items():
            _check_string(value, f"path parameter {name!r}")
        query = parse_query(route.parameters, split.query, self.router.components)
        body = None
        if "requestBody" in route.operation:
            raw = handler.read_body(route.max_body)
            spec_body = route.operation["requestBody"]
            if raw:
                body = parse_json(raw)
            elif spec_body.get("required"):
                raise InvalidInput("this route needs a JSON body")
            if body is not None or spec_body.get("required"):
                validate(spec_body["content"]["application/json"]["schema"], body, "body", self.router.components)
        else:
            handler.discard_body()
        req = Request(handler.command, path, params, query, handler.headers, body, identity, self)
        try:
            return route.handler(req)
        finally:
            req.release()


# -- the HTTP side ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"stratavore/{__version__}"
    sys_version = ""
    timeout = CONNECTION_IDLE_TIMEOUT
    disable_nagle_algorithm = True
    api: Api  # set on the subclass each server makes

    def setup(self) -> None:
        super().setup()
        self._body_state = "none"
        self.server.track(self.connection, True)  # type: ignore[attr-defined]

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)  # type: ignore[attr-defined]

    def peer(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) and self.client_address else "unix"

    def address_string(self) -> str:
        return self.peer()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.peer(), format % args)

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            self._body_state = "none"
            if not self.parse_request():
                return
            self._serve()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _serve(self) -> None:
        api = self.api
        if api.stopping.is_set():
            self.close_connection = True
            self.discard_body()
            self.respond(json_response({"error": "the daemon is shutting down", "code": "unavailable"}, 503))
            return
        api.begin()
        try:
            try:
                response = api.dispatch(self)
            except HttpError as e:
                response = json_response({"error": str(e), "code": e.code}, e.status)
                response.headers.update(e.headers)
            except StratavoreError as e:
                mapped = error_for(e)
                response = json_response({"error": str(mapped), "code": mapped.code}, mapped.status)
                response.headers.update(mapped.headers)
            except sqlite3.Error as e:
                mapped = error_for(db._translate(e, api.paths.db_path))
                response = json_response({"error": str(mapped), "code": mapped.code}, mapped.status)
                response.headers.update(mapped.headers)
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception:  # noqa: BLE001 - one failing request must not take the server down
                log.exception("%s %s failed", self.command, self.path)
                response = json_response({"error": "internal error (see the daemon log)", "code": "internal"}, 500)
            if response.stream is not None:
                self._stream(response)
            else:
                self.discard_body()
                self.respond(response)
        finally:
            api.end()

    # -- request bodies

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HttpError(411, "length_required", "send the body with a Content-Length, not chunked")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        if not raw.strip().isdigit():
            self.close_connection = True
            raise HttpError(400, "bad_request", "invalid Content-Length")
        return int(raw)

    def read_body(self, limit: int) -> bytes:
        length = self._content_length()
        if length > limit:
            self.close_connection = True  # the unread body would be taken for the next request
            self._body_state = "read"
            raise HttpError(413, "payload_too_large", f"the body is larger than {limit} bytes")
        data = self.rfile.read(length) if length else b""
        self._body_state = "read"
        if len(data) < length:
            self.close_connection = True
            raise HttpError(400, "bad_request", "the body ended early")
        return data

    def discard_body(self) -> None:
        """Whatever the route did not read must not be taken for the next request."""
        if self._body_state == "read":
            return
        self._body_state = "read"
        try:
            length = self._content_length()
        except HttpError:
            self.close_connection = True
            return
        if length > MAX_BODY:
            self.close_connection = True
        elif length:
            self.rfile.read(length)

    # -- responses

    def _head(self, status: int, content_type: str | None, length: int | None, headers: dict[str, str]) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
        ]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        if status == 401:
            lines.append('WWW-Authenticate: Bearer realm="stratavore"')
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")

    def respond(self, response: Response) -> None:
        body = b"" if response.status in (204, 304) else response.body
        content_type = response.content_type if body else None
        length = None if response.status in (204, 304) else len(body)
        self.log_request(response.status, len(body))
        # one send: headers and body split over two would wait on Nagle and delayed ACKs
        self.wfile.write(self._head(response.status, content_type, length, response.headers) + body)

    def _stream(self, response: Response) -> None:
        self.close_connection = True  # the body ends when the connection does
        self.log_request(response.status, "-")
        self.wfile.write(self._head(response.status, response.content_type, None, response.headers))
        self.wfile.flush()

        def write(data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()

        assert response.stream is not None
        try:
            response.stream(write)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the client went away

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, headers too large ...), as JSON."""
        self.close_connection = True
        status = int(code)
        text = message or HTTPStatus(status).phrase
        if status >= 500:
            status = 400  # only ever about a request we could not parse
        try:
            self.respond(json_response({"error": text, "code": "bad_request"}, status))
        except OSError:
            pass


class _UnixHandler(_Handler):
    disable_nagle_algorithm = False


class _Tracking:
    """Remembers open connections, so a shutdown can close idle keep-alive ones."""

    def _init_tracking(self) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._connections_lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def close_connections(self) -> None:
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _TCPServer(_Tracking, ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[_Handler], family: int) -> None:
        self.address_family = family
        self._init_tracking()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up, which can be slow; we know it
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _UnixServer(_Tracking, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    request_queue_size = 1024
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, handler: type[_Handler]) -> None:
        self._init_tracking()
        super().__init__(path, handler, bind_and_activate=False)
        old = os.umask(0o177)  # the socket is born 0600
        try:
            self.server_bind()
        finally:
            os.umask(old)
        self.server_activate()


class ApiServer:
    """The API on its sockets. ``start()`` binds and serves in threads; ``stop()`` drains and closes."""

    def __init__(
        self, ctx: Context, *, token: str | None = None, host: str | None = None, port: int | None = None, socket_path: str | None = None
    ) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.host = settings.api_host if host is None else host
        self.port = settings.api_port if port is None else port
        self.socket_path = settings.api_socket if socket_path is None else socket_path
        self.api = Api(ctx, token or apiauth.load_token(ctx.paths) or "")
        self._servers: list[Any] = []
        self._threads: list[threading.Thread] = []
        self.url: str | None = None

    def start(self) -> None:
        if not self.host and not self.socket_path:
            raise ConfigError("the API has nowhere to listen: set api_host or api_socket")
        handler = type("Handler", (_Handler,), {"api": self.api})
        unix_handler = type("UnixHandler", (_UnixHandler,), {"api": self.api})
        try:
            if self.host:
                host = "127.0.0.1" if self.host == "localhost" else self.host.strip("[]")
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                server = _TCPServer((host, self.port), handler, family)
                self._servers.append(server)
                bound = server.server_address[1]
                self.url = f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound}"
            if self.socket_path:
                path = Path(self.socket_path).expanduser()
                if path.is_socket():
                    path.unlink()  # a stale socket from a daemon that died; the daemon lock says none runs
                self._servers.append(_UnixServer(str(path), unix_handler))
                self.socket_path = str(path)
        except OSError as e:
            self.stop()
            where = f"{self.host}:{self.port}" if self.host else self.socket_path
            raise DaemonError(f"the API cannot listen on {where}: {e.strerror or e}") from None
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="sv-api", daemon=True)
            thread.start()
            self._threads.append(thread)
        pid, started = procs.identity()
        apiauth.write_info(self.ctx.paths, apiauth.ApiInfo(pid, started, self.url, self.socket_path or None, self.api.runner_key.hex()))
        log.info("API listening on %s", " and ".join(filter(None, [self.url, self.socket_path])))

    def stop(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Refuse new requests, let the ones under way finish (up to ``timeout``), then close."""
        self.api.stopping.set()
        self.api.watch.stop()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        if not self.api.drain(timeout):
            log.warning("API stopped with requests still under way")
        for server in self._servers:
            server.close_connections()
        for thread in self._threads:
            thread.join(1)
        self.api.close()
        if self.socket_path and self._servers:
            Path(self.socket_path).unlink(missing_ok=True)
        apiauth.remove_info(self.ctx.paths, os.getpid())
        self._servers = []


def start_for_daemon(ctx: Context) -> ApiServer | None:
    """The daemon's API, or None (logged) when it cannot listen: the daemon's other work goes on."""
    try:
        server = ApiServer(ctx)
        server.start()
    except StratavoreError as e:
        log.error("%s", e)
        apiauth.write_error(ctx.paths, str(e))
        return None
    try:
        server.api.launcher.warm()
    except OSError:
        log.exception("could not start the launcher; launches will try again")
    return server
