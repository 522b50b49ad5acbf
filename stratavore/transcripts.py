"""Incremental ingestion of Claude Code transcripts into ``usage_entries``.

Each ``<root>/projects/**/*.jsonl`` file is read from the byte offset where the previous run stopped,
complete lines only (a line still being written is left for the next run). A file that shrank, changed
inode, or whose first bytes changed was replaced or truncated: it is read again from the start, and
deduplication keeps that from counting anything twice. Usage already stored is never deleted, so
history outlives Claude Code's own transcript cleanup.

Deduplication follows ccusage 20.0.24, verified against it (see tests/test_ccusage.py):
- Claude Code writes one line per content block, each repeating ``message.id``, ``requestId`` and
  the usage so far: entries with the same (message.id, requestId) count once, the one with the
  largest token total winning (on a tie the costlier, then the one that carries ``speed``, then the
  first seen, files being read in path order).
  An entry without requestId (older Claude Code) merges with those of the same message.id and the
  same ``sessionId`` field, and one without message.id never merges (both as ccusage 20.0.24 does).
- A sidechain entry (``/btw`` replays, subagents) is dropped when its message.id is known from a
  non-sidechain entry, whatever the requestId; sidechain entries sharing a message.id count once.
- The same response copied into several files (resumed sessions) counts once.

The unique ``dedup_key`` column carries those rules into SQLite, so a run needs no memory of earlier
runs: ``<message.id> US <requestId>`` for main-chain entries (``<message.id> US GS <sessionId>``
without a requestId), ``<message.id> RS`` for sidechain ones, ``GS <file> US <offset>`` for entries without a
message.id (one per line, so a re-read file adds nothing). Because US (0x1f) sorts right after RS
(0x1e), "some main-chain entry of message M exists" is a range probe on that index.

Reading is the hot path: lines without ``"usage"`` are skipped before any parsing, files are parsed
in a process pool when there is much to read and cores are idle, repeats within a file are collapsed
before they reach SQLite, and rows are written in large transactions.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import db
from .pricing import PriceTable

try:  # orjson parses transcript lines about 3x faster than json; the stdlib is the fallback
    from orjson import JSONDecodeError as _DecodeError
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import JSONDecodeError as _DecodeError  # type: ignore[assignment]
    from json import loads as _loads  # type: ignore[assignment]

PROJECTS_DIR = "projects"
HEAD_BYTES = 4096  # hashed to notice a file replaced by another of at least the same size
READ_CHUNK = 8 << 20
TASK_BYTES = 64 << 20  # one unit of work: bounds the memory a worker holds
POOL_THRESHOLD = 32 << 20  # below this much new data a pool costs more than it saves
FLUSH_ENTRIES = 50_000  # rows per write transaction: large enough to amortise commits, small enough for memory
CACHE_KIB = 65536  # SQLite page cache while ingesting: the unique index is filled in random order
US, RS, GS = "\x1f", "\x1e", "\x1d"
_USAGE_MARK = b'"usage"'
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

# Entry tuple layout, as produced by the readers (positions matter: they are SQL parameters)
(K_KEY, K_MESSAGE, K_REQUEST, K_SESSION, K_PROJECT_DIR, K_CWD, K_MODEL, K_SPEED, K_TS, K_IN, K_OUT, K_C5, K_C1, K_CR, K_SIDE) = range(15)
Entry = tuple  # (dedup_key, message_id, request_id, session_id, project_dir, cwd, model, speed, ts_ms, in, out, c5m, c1h, cread, sidechain)


def claude_roots(claude_dirs: str | Sequence[str] | None = None, environ: dict[str, str] | None = None, default: str = "") -> list[Path]:
    """Claude Code config roots: the given ones (comma-separated allowed), else ``default``, else
    ``$CLAUDE_CONFIG_DIR`` (comma-separated allowed), else ``~/.claude``."""
    env = os.environ if environ is None else environ
    if isinstance(claude_dirs, str):
        claude_dirs = [claude_dirs]
    raw = ",".join(claude_dirs) if claude_dirs else (default or env.get("CLAUDE_CONFIG_DIR", ""))
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts:
        parts = [str(Path(env.get("HOME", str(Path.home()))) / ".claude")]
    roots, seen = [], set()
    for part in parts:
        path = Path(part).expanduser().absolute()
        if path not in seen:
            seen.add(path)
            roots.append(path)
    return roots


@dataclass(frozen=True)
class SourceFile:
    path: str
    session_id: str  # the file's own session; subagent files belong to their parent's
    project_dir: str  # the encoded-cwd directory under projects/


def discover(roots: Iterable[Path]) -> list[SourceFile]:
    """Every transcript under each root's ``projects/``, in path order (ccusage's order, which decides
    which copy of a duplicated response is kept when the copies tie)."""
    found: dict[str, SourceFile] = {}
    for root in roots:
        base = os.path.join(str(root), PROJECTS_DIR)
        skip = len(base) + 1
        for path in _walk(base):
            rel = path[skip:].split(os.sep)
            if len(rel) < 2:
                continue  # a transcript lives inside a project directory
            session = rel[1][: -len(".jsonl")] if len(rel) == 2 else rel[1]
            found.setdefault(path, SourceFile(path, session, rel[0]))
    return [found[p] for p in sorted(found)]


def _walk(directory: str) -> Iterator[str]:
    try:
        with os.scandir(directory) as it:
            items = list(it)
    except OSError:
        return
    for item in items:
        try:
            if item.is_dir(follow_symlinks=False):
                yield from _walk(item.path)
            elif item.name.endswith(".jsonl") and item.is_file():
                yield item.path
        except OSError:
            continue


# --- reading (runs in worker processes: plain data in, plain data out) -------------------------------


@dataclass
class Chunk:
    """What a reader got from one file, from ``start`` up to ``end`` (the new offset)."""

    path: str
    start: int
    end: int
    lines: int = 0
    accepted: int = 0  # usage lines, before repeats within the chunk were collapsed
    skipped: int = 0
    entries: list[Entry] = field(default_factory=list)
    head_hash: str | None = None
    head_len: int = 0


_VERSIONS: dict[str, bool] = {}  # a transcript names a handful of Claude Code versions


def _is_semver_prefix(value: str) -> bool:
    known = _VERSIONS.get(value)
    if known is None:
        parts = value.split(".", 2)
        known = len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() and parts[2][:1].isdigit()
        if len(_VERSIONS) < 1000:
            _VERSIONS[value] = known
    return known


def _count(value: Any) -> int | None:
    # a token count is a non-negative JSON integer; 12.0, "12" and -1 make the line invalid
    return value if type(value) is int and value >= 0 else None


def _timestamp_ms(value: Any) -> int | None:
    if type(value) is not str:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MS


_NOT_USAGE = 0  # valid JSON that is no usage record (a user line quoting "usage")
_INVALID = 1  # counted as skipped


_ABSENT: Any = object()


def _bad_id(value: Any) -> bool:
    # an identity field may be absent; present, it must be a non-empty string (null or "" drop the line in ccusage)
    return value is not _ABSENT and (type(value) is not str or not value)


def parse_line(line: bytes, session_id: str, project_dir: str, source: str, offset: int) -> Entry | int:
    """One transcript line to an entry tuple, or _NOT_USAGE / _INVALID. The hot path: keep it lean."""
    try:
        data = _loads(line)
        message = data["message"]
        usage = message["usage"]
    except (_DecodeError, ValueError):
        return _INVALID
    except (KeyError, TypeError, IndexError):
        return _NOT_USAGE if type(data) is dict else _INVALID
    if type(usage) is not dict:
        return _NOT_USAGE
    get = usage.get
    input_tokens, output_tokens = get("input_tokens"), get("output_tokens")
    cache_creation, cache_read = get("cache_creation_input_tokens", 0), get("cache_read_input_tokens", 0)
    # token counts are non-negative JSON integers; 12.0, "12", null and -1 make the line invalid
    if not (type(input_tokens) is int and type(output_tokens) is int and type(cache_creation) is int and type(cache_read) is int):
        return _INVALID
    if input_tokens < 0 or output_tokens < 0 or cache_creation < 0 or cache_read < 0:
        return _INVALID
    ts = _timestamp_ms(data.get("timestamp"))
    if ts is None:
        return _INVALID
    message_id, model = message.get("id", _ABSENT), message.get("model", _ABSENT)
    request_id = data.get("requestId", _ABSENT)
    line_session = data.get("sessionId", _ABSENT)
    if _bad_id(message_id) or _bad_id(model) or _bad_id(request_id) or _bad_id(line_session):
        return _INVALID
    speed = get("speed", _ABSENT)
    if (
        speed is None
        or data.get("cwd", _ABSENT) is None
        or data.get("costUSD", _ABSENT) is None
        or data.get("isApiErrorMessage", _ABSENT) is None
    ):
        return _INVALID
    version = data.get("version", "0.0.0")
    if type(version) is not str or not _is_semver_prefix(version):
        return _INVALID
    cache_5m = cache_1h = 0
    detail = get("cache_creation")
    if type(detail) is dict:
        cache_5m = _count(detail.get("ephemeral_5m_input_tokens", 0)) or 0
        cache_1h = _count(detail.get("ephemeral_1h_input_tokens", 0)) or 0
    if cache_5m + cache_1h == 0:
        cache_5m = cache_creation  # older lines carry only the flat count, written at the 5-minute rate
    if request_id is _ABSENT:
        request_id = None
    sidechain = data.get("isSidechain") is True
    if message_id is _ABSENT:
        message_id = None
        key = f"{GS}{source}{US}{offset}"
    elif sidechain:
        key = f"{message_id}{RS}"
    elif request_id is not None:
        key = f"{message_id}{US}{request_id}"
    else:  # older lines without requestId: ccusage 20.0.24 keys them on the line's sessionId instead
        key = f"{message_id}{US}{GS}{'' if line_session is _ABSENT else line_session}"
    return (
        key,
        message_id,
        request_id,
        session_id,
        project_dir,
        data.get("cwd"),
        None if model is _ABSENT else model,
        speed if type(speed) is str else None,
        ts,
        input_tokens,
        output_tokens,
        cache_5m,
        cache_1h,
        cache_read,
        1 if sidechain else 0,
    )


def _tokens(entry: Entry) -> int:
    return entry[K_IN] + entry[K_OUT] + entry[K_C5] + entry[K_C1] + entry[K_CR]


def head_hash(path: str, length: int) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(length)
    except OSError:
        return None
    return hashlib.sha1(data).hexdigest() if len(data) == length else None


def read_chunk(path: str, start: int, limit: int, session_id: str, project_dir: str) -> Chunk:
    """Parse complete lines of ``path`` from byte ``start``, up to about ``limit`` bytes."""
    chunk = Chunk(path, start, start)
    entries: list[Entry] = []
    index: dict[str, int] = {}  # dedup key -> position in entries: collapse repeats before they reach SQLite
    try:
        f = open(path, "rb")
    except OSError:
        return chunk
    with f:
        if start == 0:
            head = f.read(HEAD_BYTES)
            chunk.head_len = len(head)
            chunk.head_hash = hashlib.sha1(head).hexdigest()
        f.seek(start)
        pos = start  # offset of the first byte not yet consumed
        pending = b""
        while pos - start < limit:
            data = f.read(READ_CHUNK)
            if not data:
                break
            buffer = pending + data if pending else data
            lines = buffer.split(b"\n")
            pending = lines.pop()
            for line in lines:
                line_start = pos
                pos += len(line) + 1
                if not line:
                    continue
                chunk.lines += 1
                if _USAGE_MARK not in line:
                    # not worth parsing, but a record always ends with "}": anything else was cut
                    # mid-write or is not a record at all
                    if line[-1:] != b"}" and line.rstrip()[-1:] != b"}":
                        chunk.skipped += 1
                    continue
                result = parse_line(line, session_id, project_dir, path, line_start)
                if type(result) is tuple:
                    chunk.accepted += 1
                    _keep(result, entries, index)
                elif result == _INVALID:
                    chunk.skipped += 1
        if pending and pos - start < limit and _USAGE_MARK in pending:
            # no newline yet: a complete record is taken (the writer may just not have written the
            # newline); a partial one stays for the next run, which will find it completed
            result = parse_line(pending, session_id, project_dir, path, pos)
            if type(result) is tuple:
                chunk.lines += 1
                chunk.accepted += 1
                pos += len(pending)
                _keep(result, entries, index)
    chunk.end = pos
    chunk.entries = entries
    return chunk


def _keep(entry: Entry, entries: list[Entry], index: dict[str, int]) -> None:
    """Collapse a repeat of an entry already in this chunk when the outcome is certain; a tie that only
    the price can break (ccusage keeps the costlier) goes on to the SQL upsert, in order."""
    at = index.get(entry[K_KEY])
    if at is None:
        index[entry[K_KEY]] = len(entries)
        entries.append(entry)
        return
    kept = entries[at]
    new, old = _tokens(entry), _tokens(kept)
    if new > old:
        entries[at] = entry
    elif new == old and _priced_as(entry) != _priced_as(kept):
        entries.append(entry)


def _priced_as(entry: Entry) -> tuple:
    return (entry[K_MODEL], entry[K_SPEED], *entry[K_IN:K_SIDE])


# --- writing -------------------------------------------------------------------------------------------


@dataclass
class IngestStats:
    roots: list[str] = field(default_factory=list)
    files: int = 0  # transcripts found
    files_read: int = 0  # of which had something new
    files_reset: int = 0  # replaced or truncated, read again from the start
    files_missing: int = 0  # known files that are gone (their usage stays)
    bytes_read: int = 0
    lines: int = 0
    entries: int = 0  # usage lines accepted
    stored: int = 0  # new distinct entries
    duplicates: int = 0  # accepted lines that repeated an entry already counted
    skipped: int = 0  # lines that were not JSON, cut mid-write, or lacked fields
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLUMNS = (
    "dedup_key, message_id, request_id, session_id, project_dir, cwd, model, speed, ts, input_tokens, output_tokens,"
    " cache_5m_tokens, cache_1h_tokens, cache_read_tokens, is_sidechain, cost_usd, project_id, runner_id, file_id"
)
_TOTAL = "{t}.input_tokens + {t}.output_tokens + {t}.cache_5m_tokens + {t}.cache_1h_tokens + {t}.cache_read_tokens"
_NEW, _OLD, _NEW_COST, _OLD_COST = (
    _TOTAL.format(t="excluded"),
    _TOTAL.format(t="usage_entries"),
    "coalesce(excluded.cost_usd, 0)",
    "coalesce(usage_entries.cost_usd, 0)",
)
# larger token total; on a tie the costlier (ccusage's daily report), then the one that carries speed
_BETTER = (
    f"{_NEW} > {_OLD} OR ({_NEW} = {_OLD} AND ({_NEW_COST} > {_OLD_COST}"
    f" OR ({_NEW_COST} = {_OLD_COST} AND excluded.speed IS NOT NULL AND usage_entries.speed IS NULL)))"
)
_UPDATE = ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in _COLUMNS.split(",") if c.strip() != "dedup_key")
_PLACEHOLDERS = ", ".join("?" * 19)
UPSERT_MAIN = (
    f"INSERT INTO usage_entries({_COLUMNS}) VALUES ({_PLACEHOLDERS}) ON CONFLICT(dedup_key) DO UPDATE SET {_UPDATE} WHERE {_BETTER}"
)
# a sidechain entry only counts while no main-chain entry of its message exists (see the module docstring)
UPSERT_SIDECHAIN = (
    f"INSERT INTO usage_entries({_COLUMNS}) SELECT {_PLACEHOLDERS} WHERE NOT EXISTS (SELECT 1 FROM usage_entries"
    f" WHERE dedup_key >= ?2 || char(31) AND dedup_key < ?2 || char(32)) ON CONFLICT(dedup_key) DO UPDATE SET {_UPDATE} WHERE {_BETTER}"
)
DROP_REPLAYED_SIDECHAINS = (
    "DELETE FROM usage_entries WHERE id IN (SELECT s.id FROM usage_entries m JOIN usage_entries s"
    " ON s.dedup_key = m.message_id || char(30) WHERE m.id > ? AND m.is_sidechain = 0 AND m.message_id IS NOT NULL)"
)


class Attributor:
    """Which runner and project an entry belongs to: its session's if Stratavore knows the session,
    else the project whose path holds the session's cwd, else none ("unassigned")."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.sessions = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, runner_id, project_id FROM sessions")}
        projects = [(r[1].rstrip(os.sep) or os.sep, r[0]) for r in conn.execute("SELECT id, path FROM projects")]
        self.projects = sorted(projects, key=lambda p: len(p[0]), reverse=True)  # the deepest path wins
        self._by_cwd: dict[str | None, int | None] = {}

    def project_for_cwd(self, cwd: str | None) -> int | None:
        if cwd in self._by_cwd:
            return self._by_cwd[cwd]
        found = None
        if cwd:
            for path, project_id in self.projects:
                if cwd == path or cwd.startswith(path.rstrip(os.sep) + os.sep):
                    found = project_id
                    break
        self._by_cwd[cwd] = found
        return found

    def __call__(self, session_id: str, cwd: str | None) -> tuple[int | None, str | None]:
        known = self.sessions.get(session_id)
        if known is not None:
            runner_id, project_id = known
            return (project_id if project_id is not None else self.project_for_cwd(cwd)), runner_id
        return self.project_for_cwd(cwd), None


def _digest(conn: sqlite3.Connection, sql: str) -> str:
    digest = hashlib.sha1()
    for row in conn.execute(sql):
        digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def _sessions_fingerprint(conn: sqlite3.Connection) -> str:
    return _digest(conn, "SELECT id, runner_id, project_id FROM sessions ORDER BY id")


def _projects_fingerprint(conn: sqlite3.Connection) -> str:
    return _digest(conn, "SELECT id, path FROM projects ORDER BY id")


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else None


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))


def reprice(conn: sqlite3.Connection, prices: PriceTable) -> int:
    """Recompute every stored cost with ``prices`` (inside a write transaction). Returns rows changed."""
    from .pricing import cost_sql

    changed = 0
    for (model,) in conn.execute("SELECT DISTINCT model FROM usage_entries").fetchall():
        price = prices.lookup(model)
        if price is None:
            cur = conn.execute("UPDATE usage_entries SET cost_usd = NULL WHERE model IS ?", (model,))
        else:
            expression, params = cost_sql(price)
            cur = conn.execute(f"UPDATE usage_entries SET cost_usd = {expression} WHERE model IS ?", (*params, model))
        changed += cur.rowcount
    return changed


def reattribute(conn: sqlite3.Connection) -> None:
    """Attribute every stored entry again (inside a write transaction): projects changed."""
    attribute = Attributor(conn)
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS usage_attribution (session_id TEXT, cwd TEXT, project_id INTEGER, runner_id TEXT)")
    conn.execute("DELETE FROM temp.usage_attribution")
    pairs = conn.execute("SELECT DISTINCT session_id, cwd FROM usage_entries").fetchall()
    conn.executemany(
        "INSERT INTO temp.usage_attribution VALUES (?, ?, ?, ?)",
        [(session_id, cwd, *attribute(session_id, cwd)) for session_id, cwd in pairs],
    )
    conn.execute("CREATE INDEX IF NOT EXISTS temp.usage_attribution_key ON usage_attribution(session_id, cwd)")
    conn.execute(
        "UPDATE usage_entries SET project_id = a.project_id, runner_id = a.runner_id FROM temp.usage_attribution a"
        " WHERE a.session_id = usage_entries.session_id AND a.cwd IS usage_entries.cwd"
        " AND (usage_entries.project_id IS NOT a.project_id OR usage_entries.runner_id IS NOT a.runner_id)"
    )
    conn.execute("DELETE FROM temp.usage_attribution")


def attribute_sessions(conn: sqlite3.Connection) -> None:
    """Give the entries of every session Stratavore knows its runner and project (cheap: by index)."""
    attribute = Attributor(conn)
    for session_id in attribute.sessions:
        for (cwd,) in conn.execute("SELECT DISTINCT cwd FROM usage_entries WHERE session_id = ?", (session_id,)).fetchall():
            project_id, runner_id = attribute(session_id, cwd)
            conn.execute(
                "UPDATE usage_entries SET project_id = ?, runner_id = ? WHERE session_id = ? AND cwd IS ?"
                " AND (project_id IS NOT ? OR runner_id IS NOT ?)",
                (project_id, runner_id, session_id, cwd, project_id, runner_id),
            )


@dataclass
class _Plan:
    source: SourceFile
    file_id: int | None
    start: int
    size: int
    inode: int
    mtime_ns: int
    reset: bool
    head_hash: str | None
    head_len: int


def _plan(conn: sqlite3.Connection, files: list[SourceFile], stats: IngestStats) -> list[_Plan]:
    known = {r[1]: r for r in conn.execute("SELECT id, path, inode, size, mtime_ns, offset, head_hash, head_len FROM transcript_files")}
    plans = []
    for source in files:
        try:
            st = os.stat(source.path)
        except OSError:
            continue
        row = known.get(source.path)
        if row is None:
            plans.append(_Plan(source, None, 0, st.st_size, st.st_ino, st.st_mtime_ns, False, None, 0))
            continue
        file_id, _, inode, size, mtime_ns, offset, old_hash, old_len = row
        if inode == st.st_ino and size == st.st_size and mtime_ns == st.st_mtime_ns:
            continue  # untouched since the last run: not even opened
        reset = inode != st.st_ino or st.st_size < offset or (old_len > 0 and head_hash(source.path, old_len) != old_hash)
        start = 0 if reset else offset
        plans.append(_Plan(source, file_id, start, st.st_size, st.st_ino, st.st_mtime_ns, reset, old_hash, old_len))
    return plans


def _results(plans: list[_Plan], workers: int) -> Iterator[tuple[_Plan, Chunk]]:
    """Read every planned file (all of it, a task at a time), in order, with a pool when it pays."""
    pending = sum(max(0, p.size - p.start) for p in plans)
    if workers > 0 and pending > POOL_THRESHOLD and len(plans) > 1:
        import multiprocessing
        from collections import deque

        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            # a few tasks ahead of the writer, never more: memory stays bounded whatever the corpus
            window: deque = deque()
            queued = iter(plans)
            for plan in queued:
                window.append((plan, pool.apply_async(read_chunk, _task(plan))))
                if len(window) >= 4 * workers:
                    break
            while window:
                plan, result = window.popleft()
                nxt = next(queued, None)
                if nxt is not None:
                    window.append((nxt, pool.apply_async(read_chunk, _task(nxt))))
                chunk = result.get()
                yield plan, chunk
                yield from _rest(plan, chunk)
        return
    for plan in plans:
        chunk = read_chunk(*_task(plan))
        yield plan, chunk
        yield from _rest(plan, chunk)


def _task(plan: _Plan) -> tuple[str, int, int, str, str]:
    return (plan.source.path, plan.start, TASK_BYTES, plan.source.session_id, plan.source.project_dir)


def _rest(plan: _Plan, chunk: Chunk) -> Iterator[tuple[_Plan, Chunk]]:
    # a file larger than one task continues where the previous task stopped
    while chunk.end - chunk.start >= TASK_BYTES:
        chunk = read_chunk(plan.source.path, chunk.end, TASK_BYTES, plan.source.session_id, plan.source.project_dir)
        yield plan, chunk


def default_workers() -> int:
    """Reader processes: one core stays for this process, which writes while the readers parse. A
    pool only pays with idle cores (it costs a sixth more CPU in all), so a busy machine reads inline."""
    cores = os.cpu_count() or 1
    try:
        idle = cores - os.getloadavg()[0]
    except OSError:
        idle = cores
    return max(0, min(cores - 1, int(idle), 4))


def ingest(
    conn: sqlite3.Connection,
    roots: Sequence[Path],
    prices: PriceTable,
    *,
    workers: int | None = None,
    progress: Callable[[IngestStats], None] | None = None,
) -> IngestStats:
    """Read what is new in every transcript under ``roots`` and store its usage."""
    started = time.perf_counter()
    stats = IngestStats(roots=[str(r) for r in roots])
    files = discover(roots)
    stats.files = len(files)
    _refresh(conn, prices)
    plans = _plan(conn, files, stats)
    if plans:
        _store(conn, plans, prices, default_workers() if workers is None else workers, stats, progress)
    stats.files_missing = _mark_missing(conn, {f.path for f in files}, roots)
    stats.seconds = time.perf_counter() - started
    return stats


def session_files(transcript_path: str, session_id: str) -> list[SourceFile]:
    """One session's transcript and its subagents' (which count toward it)."""
    path = Path(transcript_path)
    project_dir = path.parent.name
    files = [SourceFile(str(path), session_id, project_dir)] if path.is_file() else []
    subagents = path.parent / session_id / "subagents"
    if subagents.is_dir():
        files += [SourceFile(str(p), session_id, project_dir) for p in sorted(subagents.glob("*.jsonl"))]
    return files


def ingest_files(conn: sqlite3.Connection, files: list[SourceFile], prices: PriceTable) -> IngestStats:
    """Read what is new in just these transcripts, in this process (a keeper following its agent's
    session every few seconds has no need to walk the whole transcript tree)."""
    started = time.perf_counter()
    stats = IngestStats(roots=[])
    stats.files = len(files)
    _refresh(conn, prices)
    plans = _plan(conn, files, stats)
    if plans:
        _store(conn, plans, prices, 0, stats, None)
    stats.seconds = time.perf_counter() - started
    return stats


def _refresh(conn: sqlite3.Connection, prices: PriceTable) -> None:
    """Keep stored costs and attributions current when prices, projects or sessions changed (a write
    transaction only then: a report with nothing new takes no lock)."""
    wanted = {
        "usage_prices": prices.fingerprint,
        "usage_projects": _projects_fingerprint(conn),
        "usage_sessions": _sessions_fingerprint(conn),
    }
    if all(_meta(conn, key) == value for key, value in wanted.items()):
        return
    with db.write(conn):
        if _meta(conn, "usage_prices") != wanted["usage_prices"]:
            reprice(conn, prices)
        if _meta(conn, "usage_projects") != wanted["usage_projects"]:
            reattribute(conn)
        elif _meta(conn, "usage_sessions") != wanted["usage_sessions"]:
            attribute_sessions(conn)
        for key, value in wanted.items():
            _set_meta(conn, key, value)


def _store(
    conn: sqlite3.Connection,
    plans: list[_Plan],
    prices: PriceTable,
    workers: int,
    stats: IngestStats,
    progress: Callable[[IngestStats], None] | None,
) -> None:
    # each upsert that fires the usage_quarters triggers keeps a statement journal; on disk that
    # costs more system time than all the parsing
    conn.execute("PRAGMA temp_store=MEMORY")
    # a big import fills the unique index at random: a large page cache then, returned afterwards
    # (a keeper following one session must stay small)
    cache_size = conn.execute("PRAGMA cache_size").fetchone()[0]
    if sum(max(0, p.size - p.start) for p in plans) > POOL_THRESHOLD:
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    try:
        attribute = Attributor(conn)
        batch: list[tuple[_Plan, Chunk]] = []
        batch_entries = 0
        for plan, chunk in _results(plans, workers):
            batch.append((plan, chunk))
            batch_entries += len(chunk.entries)
            if batch_entries >= FLUSH_ENTRIES:
                _flush(conn, batch, prices, attribute, stats)
                batch, batch_entries = [], 0
                if progress:
                    progress(stats)
        if batch:
            _flush(conn, batch, prices, attribute, stats)
    finally:
        conn.execute(f"PRAGMA cache_size={cache_size}")


def _flush(
    conn: sqlite3.Connection, batch: list[tuple[_Plan, Chunk]], prices: PriceTable, attribute: Attributor, stats: IngestStats
) -> None:
    now = db.now()
    cost = prices.cost
    with db.write(conn):
        before = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM usage_entries").fetchone()
        main_rows: list[tuple] = []
        side_rows: list[tuple] = []
        for plan, chunk in batch:
            file_id = _save_file(conn, plan, chunk, now)
            for e in chunk.entries:
                project_id, runner_id = attribute(e[K_SESSION], e[K_CWD])
                price = cost(e[K_MODEL], e[K_IN], e[K_OUT], e[K_C5], e[K_C1], e[K_CR], e[K_SPEED] == "fast")
                (side_rows if e[K_SIDE] else main_rows).append((*e, price, project_id, runner_id, file_id))
            stats.files_read += chunk.start == plan.start
            stats.files_reset += plan.reset and chunk.start == plan.start
            stats.bytes_read += chunk.end - chunk.start
            stats.lines += chunk.lines
            stats.skipped += chunk.skipped
            stats.entries += chunk.accepted
        conn.executemany(UPSERT_MAIN, main_rows)
        conn.executemany(UPSERT_SIDECHAIN, side_rows)
        conn.execute(DROP_REPLAYED_SIDECHAINS, (before[1],))
        after = conn.execute("SELECT count(*) FROM usage_entries").fetchone()[0]
    stats.stored += after - before[0]
    stats.duplicates = stats.entries - stats.stored


def _save_file(conn: sqlite3.Connection, plan: _Plan, chunk: Chunk, now: float) -> int:
    # the head hash is taken when the file is read from its start, and kept while it only grows
    head_hash, head_len = (chunk.head_hash, chunk.head_len) if chunk.start == 0 and chunk.head_hash else (plan.head_hash, plan.head_len)
    reset = 1 if plan.reset and chunk.start == plan.start else 0
    size = max(plan.size, chunk.end)
    if plan.file_id is None:
        cur = conn.execute(
            "INSERT INTO transcript_files(path, session_id, project_dir, inode, size, mtime_ns, offset, head_hash, head_len,"
            " entries, skipped_lines, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (plan.source.path, plan.source.session_id, plan.source.project_dir, plan.inode, size, plan.mtime_ns, chunk.end,
             head_hash, head_len, len(chunk.entries), chunk.skipped, now),
        )  # fmt: skip
        plan.file_id = cur.lastrowid
        return plan.file_id or 0
    conn.execute(
        "UPDATE transcript_files SET inode=?, size=?, mtime_ns=?, offset=?, head_hash=?, head_len=?, entries=entries+?,"
        " skipped_lines=skipped_lines+?, resets=resets+?, missing_since=NULL, updated_at=? WHERE id=?",
        (plan.inode, size, plan.mtime_ns, chunk.end, head_hash, head_len, len(chunk.entries), chunk.skipped, reset, now, plan.file_id),
    )
    return plan.file_id


def _mark_missing(conn: sqlite3.Connection, present: set[str], roots: Sequence[Path]) -> int:
    """Note known files that disappeared (Claude Code's cleanup). Their usage is kept."""
    prefixes = tuple(os.path.join(str(r), PROJECTS_DIR) + os.sep for r in roots)
    rows = conn.execute("SELECT id, path FROM transcript_files WHERE missing_since IS NULL").fetchall()
    gone = [file_id for file_id, path in rows if path.startswith(prefixes) and path not in present]
    if gone:
        with db.write(conn):
            conn.executemany("UPDATE transcript_files SET missing_since=? WHERE id=?", [(db.now(), i) for i in gone])
    return len(gone)
