"""Prometheus metrics: read from a real SQLite database with real runners, checked sample by sample and by promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from stratavore import consumers, db, metrics, procs, supervisor
from stratavore.context import Context
from stratavore.runners import get
from stratavore.states import ACTIVE, RunnerState
from tests.conftest import wait_for

S = RunnerState
NOW = 2_000_000_000.0


def registry_of(ctx: Context, now=None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.StratavoreCollector(ctx, now=now) if now else metrics.StratavoreCollector(ctx))
    return registry


def insert_runner(conn, project_id: int, name: str, state: str = "running", **values) -> str:
    runner_id = f"{name:0<32}"[:32]
    row = {"id": runner_id, "name": name, "project_id": project_id, "command": '["sleep", "1"]', "cwd": "/tmp", "state": state}
    row.update(created_at=NOW - 100, started_at=NOW - 50, **values)
    with db.write(conn):
        conn.execute(f"INSERT INTO runners({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    return runner_id


def insert_usage(conn, key: str, model: str | None, project_id: int | None, tokens=(1, 2, 3, 4, 5), cost: float | None = 1.0) -> None:
    with db.write(conn):
        conn.execute(
            "INSERT INTO usage_entries(dedup_key, session_id, project_dir, model, ts, input_tokens, output_tokens, cache_5m_tokens,"
            " cache_1h_tokens, cache_read_tokens, cost_usd, project_id) VALUES (?, 's', 'd', ?, 0, ?, ?, ?, ?, ?, ?, ?)",
            (key, model, *tokens, cost, project_id),
        )


@pytest.fixture
def fast_ctx(request, monkeypatch):
    """A context whose keepers heartbeat every 0.2 s, with the project "web"."""
    monkeypatch.setenv("STRATAVORE_HEARTBEAT_INTERVAL", "0.2")
    request.getfixturevalue("project")
    return request.getfixturevalue("ctx")


@pytest.fixture
def budgets_module(ctx, project):
    """Two real budgets: $5 of the project's $20 a day spent, and 1500 of 1000 tokens this month."""
    from stratavore import budgets

    budgets.set_budget(ctx.conn, scope="project", target="web", usd=20.0, period="day")
    budgets.set_budget(ctx.conn, scope="global", tokens=1000, period="month")
    with db.write(ctx.conn):
        ctx.conn.execute(
            "INSERT INTO usage_entries(dedup_key, session_id, project_dir, model, ts, input_tokens, output_tokens, cache_5m_tokens,"
            " cache_1h_tokens, cache_read_tokens, cost_usd, project_id) VALUES ('budget', 's', 'd', 'claude-opus-4-5', ?, 1500, 0, 0, 0, 0,"
            " 5.0, ?)",
            (int(time.time() * 1000), project.id),
        )
    return budgets


def populated(ctx: Context, project) -> None:
    """At least one sample in every family, from rows written directly."""
    conn = ctx.conn
    with db.write(conn):
        conn.execute("UPDATE projects SET max_runners = 4 WHERE id = ?", (project.id,))
        conn.execute(
            "INSERT INTO daemon_jobs(job_id, last_started_at, last_duration, last_error, runs, failures)"
            " VALUES ('reconcile', ?, 0.01, NULL, 3, 1)",
            (NOW - 5,),
        )
    insert_runner(
        conn, project.id, "web-1", heartbeat_at=NOW - 2, cpu_percent=50.0, rss_bytes=1 << 20, process_count=2, agent_status="waiting"
    )
    insert_usage(conn, "a", "claude-opus-4-5", project.id)
    consumers.register(conn, "notify", start=0)
    pid, started = procs.identity()
    ctx.paths.daemon_pid_file.write_text(json.dumps({"pid": pid, "started": started}))


# -- real runners --------------------------------------------------------------------------------


def test_runner_families_follow_real_runners(fast_ctx, project):
    ctx = fast_ctx
    result = supervisor.launch(ctx, "web", ["sleep", "300"], supervisor.LaunchOptions(count=2))
    first, second = result.started
    wait_for(lambda: all(get(ctx.conn, r.id).rss_bytes for r in (first, second)))
    registry = registry_of(ctx)
    value = registry.get_sample_value

    assert value("stratavore_runners", {"project": "web", "state": "running"}) == 2
    assert value("stratavore_runners", {"project": "web", "state": "stopped"}) == 0
    assert sum(value("stratavore_runners_agent_status", {"project": "web", "status": s}) for s in metrics.AGENT_STATUSES) == 2
    for runner in (first, second):
        labels = {"project": "web", "runner": runner.name, "runner_id": runner.id}
        row = get(ctx.conn, runner.id)
        status = row.agent_status or "unknown"
        assert value("stratavore_runner_info", {**labels, "agent": row.agent, "state": "running", "status": status}) == 1
        assert value("stratavore_runner_cpu_ratio", labels) >= 0
        assert value("stratavore_runner_resident_memory_bytes", labels) > 100_000  # a real `sleep`: hundreds of KiB at least
        assert value("stratavore_runner_processes", labels) == 1
        assert 0 <= value("stratavore_runner_heartbeat_age_seconds", labels) < 5
        assert value("stratavore_runner_start_time_seconds", labels) == pytest.approx(row.started_at)
        assert value("stratavore_runner_restarts", labels) == 0

    supervisor.stop(ctx, [second])
    wait_for(lambda: get(ctx.conn, second.id).state not in ACTIVE)
    assert value("stratavore_runners", {"project": "web", "state": "running"}) == 1
    assert value("stratavore_runners", {"project": "web", "state": "stopped"}) == 1
    gone = {"project": "web", "runner": second.name, "runner_id": second.id}
    assert value("stratavore_runner_resident_memory_bytes", gone) is None  # ended runners have no per-runner series
    assert value("stratavore_events_last_seq") >= 4  # launches, starts, the stop


def test_registering_does_not_touch_the_database(ctx, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the database was opened at registration")

    monkeypatch.setattr(db, "connect", refuse)
    registry = CollectorRegistry()  # auto_describe on: describe() must still answer without collecting
    registry.register(metrics.StratavoreCollector(ctx))
    assert not ctx.paths.db_path.exists()


# -- each family ---------------------------------------------------------------------------------


def test_every_family_has_help_and_type(ctx, project, budgets_module):
    populated(ctx, project)
    text = generate_latest(registry_of(ctx, now=lambda: NOW)).decode()
    for spec in metrics.ALL_SPECS.values():
        name = spec.exposed
        kind = "gauge" if spec.type == "info" else spec.type
        assert f"# HELP {name} {spec.doc}\n" in text, name
        assert f"# TYPE {name} {kind}\n" in text, name
        assert f"\n{name}" in text, f"{name} has no sample"


def test_state_counts_include_every_state_of_every_project(ctx, project):
    insert_runner(ctx.conn, project.id, "web-1", state="failed")
    value = registry_of(ctx).get_sample_value
    assert value("stratavore_runners", {"project": "web", "state": "failed"}) == 1
    for state in S:
        assert value("stratavore_runners", {"project": "web", "state": state.value}) is not None
    assert value("stratavore_runners_agent_status", {"project": "web", "status": "unknown"}) == 0
    assert value("stratavore_project_max_runners", {"project": "web"}) is None  # no limit set


def test_heartbeat_age_cpu_and_agent_status_come_from_the_row(ctx, project):
    runner_id = insert_runner(
        ctx.conn, project.id, "web-1", heartbeat_at=NOW - 7.5, cpu_percent=250.0, rss_bytes=4096, agent_status="waiting"
    )
    value = registry_of(ctx, now=lambda: NOW).get_sample_value
    labels = {"project": "web", "runner": "web-1", "runner_id": runner_id}
    assert value("stratavore_runner_heartbeat_age_seconds", labels) == 7.5
    assert value("stratavore_runner_cpu_ratio", labels) == 2.5
    assert value("stratavore_runner_resident_memory_bytes", labels) == 4096
    assert value("stratavore_runner_processes", labels) is None  # not measured yet: no sample rather than a false 0
    assert value("stratavore_runners_agent_status", {"project": "web", "status": "waiting"}) == 1


def test_usage_by_project_and_model(ctx, project):
    insert_usage(ctx.conn, "a", "claude-opus-4-5", project.id, tokens=(10, 20, 30, 40, 50), cost=0.25)
    insert_usage(ctx.conn, "b", "claude-opus-4-5", project.id, tokens=(1, 1, 1, 1, 1), cost=0.5)
    insert_usage(ctx.conn, "c", "mystery-model", None, cost=None)
    insert_usage(ctx.conn, "d", None, 999, cost=None)  # a project id no longer known counts as unassigned
    value = registry_of(ctx).get_sample_value
    web = {"project": "web", "model": "claude-opus-4-5"}
    assert value("stratavore_cost_usd_total", web) == 0.75
    assert value("stratavore_model_requests_total", web) == 2
    assert value("stratavore_unpriced_model_requests_total", web) == 0
    for kind, expected in zip(("input", "output", "cache_write_5m", "cache_write_1h", "cache_read"), (11, 21, 31, 41, 51), strict=True):
        assert value("stratavore_tokens_total", {**web, "type": kind}) == expected
    mystery = {"project": metrics.UNASSIGNED, "model": "mystery-model"}
    assert value("stratavore_unpriced_model_requests_total", mystery) == 1
    assert value("stratavore_cost_usd_total", mystery) is None  # never a false $0
    assert value("stratavore_model_requests_total", {"project": metrics.UNASSIGNED, "model": metrics.UNKNOWN_MODEL}) == 1


def test_usage_totals_are_served_from_cache_when_slow_and_refreshed_in_the_background(ctx, project, monkeypatch):
    monkeypatch.setattr(metrics, "USAGE_SYNC_LIMIT", 0.0)  # every aggregate counts as slow
    monkeypatch.setattr(metrics, "USAGE_MAX_AGE", 3600.0)
    insert_usage(ctx.conn, "a", "m", project.id, cost=1.0)
    registry = registry_of(ctx)
    labels = {"project": "web", "model": "m"}
    assert registry.get_sample_value("stratavore_cost_usd_total", labels) == 1.0  # the first scrape computes
    insert_usage(ctx.conn, "b", "m", project.id, cost=2.0)
    assert registry.get_sample_value("stratavore_cost_usd_total", labels) == 1.0  # fresh enough: served from cache
    monkeypatch.setattr(metrics, "USAGE_MAX_AGE", 0.0)
    wait_for(lambda: registry.get_sample_value("stratavore_cost_usd_total", labels) == 3.0, timeout=5)


def test_optional_families_only_when_their_tables_exist(ctx, project, budgets_module):
    with db.write(ctx.conn):
        ctx.conn.execute("DROP TABLE IF EXISTS usage_entries")
        ctx.conn.execute("DROP TABLE IF EXISTS budgets")
        ctx.conn.execute("DROP TABLE IF EXISTS consumer_cursors")
    text = generate_latest(registry_of(ctx)).decode()
    for spec in (*metrics.USAGE.values(), *metrics.BUDGETS.values(), *metrics.CONSUMERS.values()):
        assert spec.exposed not in text
    assert "stratavore_runners{" in text


def test_budget_utilisation(ctx, project, budgets_module):
    value = registry_of(ctx).get_sample_value
    day = {"budget": "1", "scope": "project", "target": "web", "period": "day"}
    assert value("stratavore_budget_utilisation_ratio", {**day, "unit": "usd"}) == 0.25
    assert value("stratavore_budget_limit_usd", day) == 20
    assert value("stratavore_budget_spent_usd", day) == 5
    assert value("stratavore_budget_limit_tokens", day) is None
    month = {"budget": "2", "scope": "global", "target": "", "period": "month"}
    assert value("stratavore_budget_utilisation_ratio", {**month, "unit": "tokens"}) == 1.5


def test_failing_budgets_leave_out_only_the_budget_families(ctx, project, monkeypatch):
    def broken(conn, now):
        raise RuntimeError("no such column: amount")

    from stratavore import budgets

    monkeypatch.setattr(budgets, "utilisation", broken)
    text = generate_latest(registry_of(ctx)).decode()
    assert "stratavore_budget_" not in text
    assert "stratavore_runners{" in text


def test_events_waiting_parked_and_delivered_per_consumer(ctx, project):
    last = ctx.conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    stored = ctx.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    consumers.register(ctx.conn, "notify", start=last - 1)
    consumers.register(ctx.conn, "sse", start=0)
    with db.write(ctx.conn):
        ctx.conn.execute("UPDATE consumer_cursors SET delivered = 5 WHERE consumer = 'notify'")
        ctx.conn.execute(
            "INSERT INTO parked_events(consumer, seq, event_id, type, error, attempts, parked_at)"
            " SELECT 'notify', seq, event_id, type, 'boom', 3, 0 FROM events ORDER BY seq LIMIT 1"
        )
    value = registry_of(ctx).get_sample_value
    assert value("stratavore_events_pending", {"consumer": "notify"}) == 1
    assert value("stratavore_events_pending", {"consumer": "sse"}) == stored
    assert value("stratavore_events_parked", {"consumer": "notify"}) == 1
    assert value("stratavore_events_parked", {"consumer": "sse"}) == 0
    assert value("stratavore_consumer_delivered_total", {"consumer": "notify"}) == 5
    assert value("stratavore_events_last_seq") == last
    assert value("stratavore_events_stored") == stored


def test_daemon_uptime_from_the_pid_file_and_job_health(ctx, project):
    value = registry_of(ctx, now=lambda: NOW).get_sample_value
    assert value("stratavore_daemon_up") == 0
    assert value("stratavore_daemon_uptime_seconds") is None
    pid, started = procs.identity()  # this very process stands in for a live daemon
    ctx.paths.daemon_pid_file.write_text(json.dumps({"pid": pid, "started": started}))
    with db.write(ctx.conn):
        ctx.conn.execute(
            "INSERT INTO daemon_jobs(job_id, last_started_at, last_duration, last_error, runs, failures)"
            " VALUES ('reconcile', ?, 0.125, 'OSError: x', 7, 2), ('wal_checkpoint', NULL, NULL, NULL, 0, 0)",
            (NOW - 3,),
        )
    assert value("stratavore_daemon_up") == 1
    assert value("stratavore_daemon_start_time_seconds") == started
    assert value("stratavore_daemon_uptime_seconds") == NOW - started
    job = {"job": "reconcile"}
    assert value("stratavore_daemon_job_runs_total", job) == 7
    assert value("stratavore_daemon_job_failures_total", job) == 2
    assert value("stratavore_daemon_job_last_duration_seconds", job) == 0.125
    assert value("stratavore_daemon_job_last_run_timestamp_seconds", job) == NOW - 3
    assert value("stratavore_daemon_job_last_run_failed", job) == 1
    assert value("stratavore_daemon_job_runs_total", {"job": "wal_checkpoint"}) == 0
    assert value("stratavore_daemon_job_last_run_failed", {"job": "wal_checkpoint"}) is None
    # a pid file naming a process that is gone (or a reused pid) is no daemon
    ctx.paths.daemon_pid_file.write_text(json.dumps({"pid": pid, "started": started - 100}))
    assert value("stratavore_daemon_up") == 0


# -- serving -------------------------------------------------------------------------------------


def test_render_serves_the_text_format_with_the_process_metrics(ctx, project):
    body, content_type = metrics.render(ctx)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b'stratavore_runners{project="web",state="running"} 0.0' in body
    assert b"process_resident_memory_bytes" in body  # the serving process's own metrics


def test_our_exposition_is_byte_for_byte_what_prometheus_client_writes(ctx, project, budgets_module):
    populated(ctx, project)
    insert_runner(ctx.conn, project.id, "web-2", agent_status="idle", heartbeat_at=NOW, cpu_percent=1e-7, rss_bytes=123456789012)
    insert_usage(ctx.conn, "q", 'odd "model"\\with\nescapes', None, tokens=(10**12, 0, 0, 0, 0), cost=1234567.891)
    snapshot = metrics.StratavoreCollector(ctx, now=lambda: NOW).snapshot()

    class Fixed:
        def collect(self):
            return [family.spec.metric(family.samples) for family in snapshot]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    assert metrics.exposition(snapshot) == generate_latest(registry)
    assert b'model="odd \\"model\\"\\\\with\\nescapes"' in metrics.exposition(snapshot)


def test_promtool_accepts_the_exposition(ctx, project, budgets_module):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (Debian package `prometheus`; .ci/run installs it)")
    populated(ctx, project)
    body, _ = metrics.render(ctx)
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b"", proc.stdout.decode() + proc.stderr.decode()
