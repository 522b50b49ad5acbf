"""The SQLite store: connection settings, numbered migrations, write transactions.

Every write goes through :func:`write`, which opens ``BEGIN IMMEDIATE``: a deferred transaction that
reads and then writes fails with SQLITE_BUSY under concurrency whatever the busy timeout, while an
immediate one waits its turn.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError, DatabaseBusy, StratavoreError

MIGRATIONS: list[str] = [
    # 1: projects, runners, the outbox
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL,
        max_runners INTEGER,
        next_runner_number INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        version INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE runners (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        command TEXT NOT NULL,
        cwd TEXT NOT NULL,
        env TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL,
        reason TEXT,
        exit_code INTEGER,
        exit_signal TEXT,
        restart_policy TEXT NOT NULL DEFAULT 'no',
        max_restarts INTEGER NOT NULL DEFAULT 0,
        restarts INTEGER NOT NULL DEFAULT 0,
        stop_signal TEXT NOT NULL DEFAULT 'SIGTERM',
        stop_timeout REAL NOT NULL DEFAULT 10,
        stop_requested_signal TEXT,
        stop_requested_timeout REAL,
        boot_id TEXT,
        launcher_pid INTEGER,
        launcher_started REAL,
        keeper_pid INTEGER,
        keeper_started REAL,
        agent_pid INTEGER,
        agent_started REAL,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        heartbeat_at REAL,
        cpu_percent REAL,
        rss_bytes INTEGER,
        process_count INTEGER,
        version INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX runners_project_state ON runners(project_id, state);
    CREATE INDEX runners_state ON runners(state);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        node_id TEXT NOT NULL,
        aggregate_type TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        aggregate_version INTEGER NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX events_aggregate ON events(aggregate_type, aggregate_id);
    CREATE TABLE daemon_jobs (
        job_id TEXT PRIMARY KEY,
        last_started_at REAL,
        last_duration REAL,
        last_error TEXT,
        runs INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 2: agents, sessions, live agent status, worktrees
    """
    ALTER TABLE projects ADD COLUMN default_agent TEXT;
    ALTER TABLE runners ADD COLUMN agent TEXT NOT NULL DEFAULT 'generic';
    ALTER TABLE runners ADD COLUMN session_id TEXT;
    ALTER TABLE runners ADD COLUMN agent_status TEXT;
    ALTER TABLE runners ADD COLUMN agent_status_detail TEXT;
    ALTER TABLE runners ADD COLUMN agent_status_at REAL;
    ALTER TABLE runners ADD COLUMN last_output_at REAL;
    ALTER TABLE runners ADD COLUMN worktree_path TEXT;
    ALTER TABLE runners ADD COLUMN worktree_branch TEXT;
    ALTER TABLE runners ADD COLUMN repo_path TEXT;
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL DEFAULT 'claude',
        runner_id TEXT,
        project_id INTEGER,
        cwd TEXT NOT NULL,
        transcript_path TEXT,
        title TEXT,
        status TEXT,
        status_detail TEXT,
        source TEXT,
        parent_session_id TEXT,
        started_at REAL,
        last_activity_at REAL,
        ended_at REAL,
        end_reason TEXT,
        version INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX sessions_runner ON sessions(runner_id);
    CREATE INDEX sessions_project ON sessions(project_id, last_activity_at);
    """,
    # 3: token accounting: how far each transcript was read, and the deduplicated usage entries
    """
    CREATE TABLE transcript_files (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        session_id TEXT NOT NULL,
        project_dir TEXT NOT NULL,
        inode INTEGER,
        size INTEGER NOT NULL DEFAULT 0,
        mtime_ns INTEGER,
        offset INTEGER NOT NULL DEFAULT 0,
        head_hash TEXT,
        head_len INTEGER NOT NULL DEFAULT 0,
        entries INTEGER NOT NULL DEFAULT 0,
        skipped_lines INTEGER NOT NULL DEFAULT 0,
        resets INTEGER NOT NULL DEFAULT 0,
        missing_since REAL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE usage_entries (
        id INTEGER PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        message_id TEXT,
        request_id TEXT,
        session_id TEXT NOT NULL,
        project_dir TEXT NOT NULL,
        cwd TEXT,
        model TEXT,
        speed TEXT,
        ts INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cache_5m_tokens INTEGER NOT NULL,
        cache_1h_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        is_sidechain INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL,
        project_id INTEGER,
        runner_id TEXT,
        file_id INTEGER
    );
    CREATE INDEX usage_entries_ts ON usage_entries(ts);
    CREATE INDEX usage_entries_session ON usage_entries(session_id);
    -- sums per quarter hour (every time zone's midnight falls on one), model and speed, kept by
    -- triggers, so that period reports read a few thousand rows instead of every entry
    CREATE TABLE usage_quarters (
        quarter INTEGER NOT NULL,
        model TEXT NOT NULL,
        speed TEXT NOT NULL,
        entries INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cache_5m_tokens INTEGER NOT NULL,
        cache_1h_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        unpriced INTEGER NOT NULL,
        PRIMARY KEY (quarter, model, speed)
    ) WITHOUT ROWID;
    CREATE TRIGGER usage_quarters_insert AFTER INSERT ON usage_entries BEGIN
        INSERT INTO usage_quarters VALUES (NEW.ts / 900000, coalesce(NEW.model, ''), coalesce(NEW.speed, ''), 1, NEW.input_tokens,
            NEW.output_tokens, NEW.cache_5m_tokens, NEW.cache_1h_tokens, NEW.cache_read_tokens, coalesce(NEW.cost_usd, 0),
            NEW.cost_usd IS NULL)
        ON CONFLICT DO UPDATE SET entries = entries + 1, input_tokens = input_tokens + excluded.input_tokens,
            output_tokens = output_tokens + excluded.output_tokens, cache_5m_tokens = cache_5m_tokens + excluded.cache_5m_tokens,
            cache_1h_tokens = cache_1h_tokens + excluded.cache_1h_tokens,
            cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
            cost_usd = cost_usd + excluded.cost_usd, unpriced = unpriced + excluded.unpriced;
    END;
    CREATE TRIGGER usage_quarters_delete AFTER DELETE ON usage_entries BEGIN
        UPDATE usage_quarters SET entries = entries - 1, input_tokens = input_tokens - OLD.input_tokens,
            output_tokens = output_tokens - OLD.output_tokens, cache_5m_tokens = cache_5m_tokens - OLD.cache_5m_tokens,
            cache_1h_tokens = cache_1h_tokens - OLD.cache_1h_tokens, cache_read_tokens = cache_read_tokens - OLD.cache_read_tokens,
            cost_usd = cost_usd - coalesce(OLD.cost_usd, 0), unpriced = unpriced - (OLD.cost_usd IS NULL)
        WHERE quarter = OLD.ts / 900000 AND model = coalesce(OLD.model, '') AND speed = coalesce(OLD.speed, '');
    END;
    CREATE TRIGGER usage_quarters_update AFTER UPDATE OF ts, model, speed, input_tokens, output_tokens, cache_5m_tokens,
        cache_1h_tokens, cache_read_tokens, cost_usd ON usage_entries BEGIN
        UPDATE usage_quarters SET entries = entries - 1, input_tokens = input_tokens - OLD.input_tokens,
            output_tokens = output_tokens - OLD.output_tokens, cache_5m_tokens = cache_5m_tokens - OLD.cache_5m_tokens,
            cache_1h_tokens = cache_1h_tokens - OLD.cache_1h_tokens, cache_read_tokens = cache_read_tokens - OLD.cache_read_tokens,
            cost_usd = cost_usd - coalesce(OLD.cost_usd, 0), unpriced = unpriced - (OLD.cost_usd IS NULL)
        WHERE quarter = OLD.ts / 900000 AND model = coalesce(OLD.model, '') AND speed = coalesce(OLD.speed, '');
        INSERT INTO usage_quarters VALUES (NEW.ts / 900000, coalesce(NEW.model, ''), coalesce(NEW.speed, ''), 1, NEW.input_tokens,
            NEW.output_tokens, NEW.cache_5m_tokens, NEW.cache_1h_tokens, NEW.cache_read_tokens, coalesce(NEW.cost_usd, 0),
            NEW.cost_usd IS NULL)
        ON CONFLICT DO UPDATE SET entries = entries + 1, input_tokens = input_tokens + excluded.input_tokens,
            output_tokens = output_tokens + excluded.output_tokens, cache_5m_tokens = cache_5m_tokens + excluded.cache_5m_tokens,
            cache_1h_tokens = cache_1h_tokens + excluded.cache_1h_tokens,
            cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
            cost_usd = cost_usd + excluded.cost_usd, unpriced = unpriced + excluded.unpriced;
    END;
    """,
    # 4: outbox consumers (cursors, parked events, delivered event ids) and notification channels
    """
    CREATE TABLE consumer_cursors (
        consumer TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        delivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE parked_events (
        id INTEGER PRIMARY KEY,
        consumer TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        error TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        parked_at REAL NOT NULL,
        queued INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        UNIQUE (consumer, event_id)
    );
    CREATE INDEX parked_events_seq ON parked_events(seq);
    CREATE TABLE consumer_deliveries (
        consumer TEXT NOT NULL,
        event_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (consumer, event_id)
    ) WITHOUT ROWID;
    CREATE INDEX consumer_deliveries_seq ON consumer_deliveries(seq);
    CREATE TABLE notify_channels (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        config TEXT NOT NULL DEFAULT '{}',
        events TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 5: budgets, the thresholds each crossed in a period, and the actions taken on runners
    """
    CREATE TABLE budgets (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL CHECK (scope IN ('global', 'project', 'runner')),
        target TEXT,
        limit_usd REAL,
        limit_tokens INTEGER,
        period TEXT NOT NULL CHECK (period IN ('day', 'week', 'month', '5h', 'lifetime')),
        timezone TEXT,
        warn_percents TEXT NOT NULL DEFAULT '80',
        action TEXT NOT NULL CHECK (action IN ('refuse', 'interrupt', 'stop', 'notify')),
        created_at REAL NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        CHECK (limit_usd IS NOT NULL OR limit_tokens IS NOT NULL)
    );
    CREATE TABLE budget_crossings (
        budget_id INTEGER NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
        period_key TEXT NOT NULL,
        percent INTEGER NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (budget_id, period_key, percent)
    );
    CREATE TABLE budget_actions (
        budget_id INTEGER NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
        period_key TEXT NOT NULL,
        runner_id TEXT NOT NULL,
        action TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (budget_id, period_key, runner_id)
    );
    CREATE INDEX usage_entries_project_ts ON usage_entries(project_id, ts);
    CREATE INDEX usage_entries_runner_ts ON usage_entries(runner_id, ts);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def _translate(e: sqlite3.Error, path: Path | str) -> StratavoreError:
    text = str(e)
    if "locked" in text or "busy" in text:
        return DatabaseBusy(f"the database {path} stayed locked by another process; try again")
    return ConfigError(f"cannot use the database {path}: {text}")


def connect(path: Path | str, *, busy_timeout: float = 5.0, durable: bool = True, migrate: bool = True) -> sqlite3.Connection:
    """Open the database with our settings, applying pending migrations.

    ``durable=False`` is for connections that only write coalesced heartbeats: they may lose the last
    second of liveness on a power cut, never a state change.
    """
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION and migrate:
            _migrate(conn)
        elif version > SCHEMA_VERSION:
            raise ConfigError(f"the database {path} has schema version {version}, newer than this stratavore knows ({SCHEMA_VERSION})")
    except sqlite3.Error as e:
        raise _translate(e, path) from None
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # another process may have migrated while we waited for the lock
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number + 1}")
        if conn.execute("SELECT 1 FROM meta WHERE key='node_id'").fetchone() is None:
            conn.execute("INSERT INTO meta(key, value) VALUES ('node_id', ?)", (uuid.uuid4().hex,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    # executescript() would commit our open transaction; split so the migration stays atomic
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s]


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any exception."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        raise _translate(e, _db_file(conn)) from None
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            conn.execute("ROLLBACK")
            raise _translate(e, _db_file(conn)) from None


def _db_file(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return row[2] if row else "?"


def flush_wal(db_path: Path | str) -> None:
    """Make every commit so far durable with one fsync of the write-ahead log (group commit).

    Keepers commit their runners' transitions without syncing (synchronous=NORMAL); the command
    that acknowledges them (a launch, a stop) syncs the log once for all of them. A hundred
    launches then cost one fsync instead of a hundred, and what a command reported survives a
    power cut all the same. Syncing the log covers every frame before it, so an event is never
    durable after one that followed it.
    """
    wal = f"{db_path}-wal"
    try:
        fd = os.open(wal, os.O_RDONLY)
    except FileNotFoundError:
        return  # checkpointed and truncated: everything is in the synced database file
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def node_id(conn: sqlite3.Connection) -> str:
    return conn.execute("SELECT value FROM meta WHERE key='node_id'").fetchone()[0]


def now() -> float:
    return time.time()
