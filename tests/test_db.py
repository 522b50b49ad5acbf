import sqlite3

import pytest

from stratavore import db, events, projects, supervisor
from stratavore.errors import ConfigError
from stratavore.runners import change_state, get
from stratavore.states import RunnerState


def test_connection_settings(ctx):
    conn = ctx.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    assert len(db.node_id(conn)) == 32


@pytest.mark.parametrize("start_version", range(db.SCHEMA_VERSION))
def test_migrates_from_every_earlier_version(tmp_path, start_version):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path, isolation_level=None)
    for number in range(start_version):
        for statement in db._statements(db.MIGRATIONS[number]):
            raw.execute(statement)
    raw.execute(f"PRAGMA user_version={start_version}")
    raw.close()
    conn = db.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"projects", "runners", "events", "meta", "daemon_jobs"} <= tables


def test_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "new.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version={db.SCHEMA_VERSION + 5}")
    raw.close()
    with pytest.raises(ConfigError, match="newer"):
        db.connect(path)


def test_state_change_and_event_commit_together(ctx, project):
    [runner] = supervisor.launch(ctx, "web", ["sleep", "300"]).started
    before = events.last_seq(ctx.conn)
    with pytest.raises(RuntimeError):
        with db.write(ctx.conn):
            change_state(ctx.conn, runner.id, RunnerState.STOPPING, reason="test")
            raise RuntimeError("crash between the state change and the commit")
    assert get(ctx.conn, runner.id).state == RunnerState.RUNNING
    assert events.last_seq(ctx.conn) == before
    supervisor.stop(ctx, [runner])


def test_event_outside_a_transaction_is_refused(ctx):
    with pytest.raises(RuntimeError):
        events.append(ctx.conn, "x", "y", 1, "x.y", {})


def test_every_runner_event_carries_increasing_versions(ctx, project):
    [runner] = supervisor.launch(ctx, "web", ["sleep", "300"]).started
    supervisor.stop(ctx, [runner])
    evs = events.list_events(ctx.conn, aggregate_id=runner.id)
    assert [e.type for e in evs] == ["runner.created", "runner.running", "runner.stopping", "runner.stopped"]
    assert [e.aggregate_version for e in evs] == [1, 2, 3, 4]
    assert len({e.event_id for e in evs}) == 4
    assert all(e.node_id == db.node_id(ctx.conn) for e in evs)
    assert get(ctx.conn, runner.id).version == 4


def test_seq_is_never_reused(ctx, workdir):
    projects.add(ctx.conn, "a", workdir)
    top = events.last_seq(ctx.conn)
    with db.write(ctx.conn):
        ctx.conn.execute("DELETE FROM events")
    projects.add(ctx.conn, "b", workdir)
    assert events.last_seq(ctx.conn) == top + 1


def test_flush_wal_syncs_the_log_or_nothing(ctx, workdir, tmp_path):
    projects.add(ctx.conn, "web", workdir)
    wal = ctx.paths.db_path.with_name(ctx.paths.db_path.name + "-wal")
    assert wal.exists()
    db.flush_wal(ctx.paths.db_path)  # no error with a log present
    db.flush_wal(tmp_path / "none.db")  # nor without one (checkpointed and truncated)
