"""Budgets: limits, periods, warnings once per period, refused launches and enforcement on agents."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from stratavore import budgets, db, events
from stratavore.errors import ExitCode, InvalidInput, NotFound

from .conftest import assert_clean_error, wait_for


def _spend(conn, *, usd: float, tokens: int = 1000, project_id: int | None = None, runner_id: str | None = None, at: float | None = None):
    at = time.time() if at is None else at
    with db.write(conn):
        n = conn.execute("SELECT COUNT(*) FROM usage_entries").fetchone()[0]
        conn.execute(
            "INSERT INTO usage_entries(dedup_key, session_id, project_dir, model, ts, input_tokens, output_tokens, cache_5m_tokens,"
            " cache_1h_tokens, cache_read_tokens, cost_usd, project_id, runner_id)"
            " VALUES (?, 's', 'p', 'claude-sonnet-4-5', ?, ?, 0, 0, 0, 0, ?, ?, ?)",
            (f"k{n}", int(at * 1000), tokens, usd, project_id, runner_id),
        )


def test_period_windows_follow_the_time_zone():
    b = budgets.Budget(1, "b", "global", None, 1.0, None, "day", "Europe/Berlin", (80,), "notify", 0, 1)
    now = datetime(2026, 11, 22, 0, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()  # 23:30 UTC the day before
    start, key = budgets.period_window(b, now)
    assert key == "2026-11-22"
    assert start == datetime(2026, 11, 22, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    week = budgets.period_window(budgets.Budget(**{**b.to_dict(), "period": "week"}), now)
    assert week[1] == "2026-W47" and week[0] == datetime(2026, 11, 16, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    month = budgets.period_window(budgets.Budget(**{**b.to_dict(), "period": "month"}), now)
    assert month[1] == "2026-11" and month[0] == datetime(2026, 11, 1, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    rolling = budgets.period_window(budgets.Budget(**{**b.to_dict(), "period": "5h"}), now)
    assert rolling[0] == now - 5 * 3600
    assert budgets.period_window(budgets.Budget(**{**b.to_dict(), "period": "lifetime"}), now) == (0.0, "lifetime")


def test_set_validates(ctx, project):
    conn = ctx.conn
    with pytest.raises(InvalidInput, match="give a limit"):
        budgets.set_budget(conn, scope="global")
    with pytest.raises(InvalidInput, match="positive"):
        budgets.set_budget(conn, scope="global", usd=-1)
    with pytest.raises(InvalidInput, match="time zone"):
        budgets.set_budget(conn, scope="global", usd=1, timezone="Mars/Olympus")
    with pytest.raises(InvalidInput, match="between 1 and 99"):
        budgets.set_budget(conn, scope="global", usd=1, warn="120")
    with pytest.raises(NotFound):
        budgets.set_budget(conn, scope="project", target="nope", usd=1)
    assert budgets.list_budgets(conn) == []


def test_standing_counts_only_the_scope_and_the_period(ctx, project):
    conn = ctx.conn
    b = budgets.set_budget(conn, scope="project", target="web", usd=10, tokens=10_000, period="day")
    _spend(conn, usd=2.5, tokens=4000, project_id=project.id)
    _spend(conn, usd=100, project_id=None)  # another project's spend
    _spend(conn, usd=100, project_id=project.id, at=time.time() - 3 * 86400)  # an earlier day
    s = budgets.standing(conn, b)
    assert (round(s.spent_usd, 2), s.spent_tokens) == (2.5, 4000)
    assert s.percent == 40.0  # the larger share of the two limits


def test_warnings_and_exceeded_are_events_once_per_period(ctx, project):
    conn = ctx.conn
    budgets.set_budget(conn, scope="global", usd=1.0, period="day", warn="50,80", action="notify")
    _spend(conn, usd=0.6)
    budgets.evaluate(conn)
    budgets.evaluate(conn)
    _spend(conn, usd=0.5)
    budgets.evaluate(conn)
    budgets.evaluate(conn)
    kinds = [(e.type, e.payload["threshold"]) for e in events.list_events(conn, types=("budget.warning", "budget.exceeded"))]
    assert kinds == [("budget.warning", 50), ("budget.warning", 80), ("budget.exceeded", 100)]


def test_launch_over_a_spent_budget_is_refused(sv, ctx, project):
    budgets.set_budget(ctx.conn, scope="project", target="web", usd=1.0, period="day", action="refuse")
    sv("launch", "web", "--", "sleep", "300", check=True)
    _spend(ctx.conn, usd=1.5, project_id=project.id)
    proc = sv("launch", "web", "--", "sleep", "300")
    assert_clean_error(proc, ExitCode.QUOTA_EXCEEDED, "budget 'project:web:day' is spent ($1.50 of $1.00)")
    assert len(json.loads(sv("ps", "--all", "--json").stdout)) == 1  # no row for the refused launch


def test_budget_cli(sv, project):
    out = sv("budget", "set", "--project", "web", "--usd", "20", "--period", "day", "--warn", "50,80", "--action", "interrupt", check=True)
    assert "Budget project:web:day: $20.00 per day, warn at 50,80%, action interrupt" in out.stdout
    sv("budget", "set", "--global", "--usd", "300", "--period", "month", "--action", "refuse", check=True)
    listed = json.loads(sv("budget", "list", "--json", check=True).stdout)
    assert {b["name"]: b["percent"] for b in listed} == {"global:month": 0.0, "project:web:day": 0.0}
    assert "project:web:day" in sv("budget", "list", check=True).stdout
    assert "interrupt" in sv("budget", "show", "project:web:day", check=True).stdout
    assert_clean_error(sv("budget", "set", "--usd", "5"), 2, "choose one scope")
    assert_clean_error(sv("budget", "set", "--global", "--project", "web", "--usd", "5"), 2, "choose one scope")
    assert_clean_error(sv("budget", "set", "--global"), 2, "give a limit")
    assert_clean_error(sv("budget", "show", "nope"), 3, "no budget named 'nope'")
    sv("budget", "rm", "project:web:day", check=True)
    assert [b["name"] for b in json.loads(sv("budget", "list", "--json").stdout)] == ["global:month"]


def _claude_env(home, **extra):
    return {
        "CLAUDE_CONFIG_DIR": str(home / "claude"),
        "STRATAVORE_CLAUDE_COMMAND": f"{sys.executable} -m stratavore simulated-claude",
        "STRATAVORE_SIM_SPEED": "0.05",
        "STRATAVORE_HEARTBEAT_INTERVAL": "0.3",
        **extra,
    }


def test_keeper_enforces_without_the_daemon(sv, ctx, project, home, workdir):
    """Spend in a simulated Claude's transcript reaches the budget within a few heartbeats: the other
    runner of the project is interrupted (Ctrl-C reaches it), the spender too, with no daemon running."""
    env = _claude_env(home)
    trap = "import signal, time\nsignal.signal(signal.SIGINT, lambda *a: print('got-interrupt', flush=True))\nwhile True: time.sleep(1)\n"
    sv("launch", "web", "--name", "worker", "--", sys.executable, "-c", trap, check=True, env=env)
    sv("budget", "set", "--project", "web", "--usd", "0.001", "--period", "day", "--action", "interrupt", check=True)
    started = time.monotonic()
    sv(
        "launch", "web", "--agent", "claude", "--name", "spender",
        "-e", "STRATAVORE_SIM_AUTOPLAY=write a poem", "-e", "STRATAVORE_SIM_AUTOPLAY_EVERY=2",
        check=True, env=env,
    )  # fmt: skip

    def interrupted():
        return "got-interrupt" in sv("logs", "worker").stdout

    wait_for(interrupted, timeout=15)
    took = time.monotonic() - started
    assert took < 10, f"enforcement took {took:.1f}s"
    types = [e.type for e in events.list_events(ctx.conn, types=("budget.*",))]
    assert "budget.exceeded" in types and types.count("budget.enforced") == 2
    assert_clean_error(sv("launch", "web", "--", "true", env=env), ExitCode.QUOTA_EXCEEDED, "is spent")


def test_stop_action_stops_the_runner(sv, ctx, project, home):
    env = _claude_env(home)
    sv("budget", "set", "--project", "web", "--tokens", "100", "--period", "lifetime", "--action", "stop", check=True)
    sv(
        "launch", "web", "--agent", "claude", "--name", "spender",
        "-e", "STRATAVORE_SIM_AUTOPLAY=hello", "-e", "STRATAVORE_SIM_AUTOPLAY_EVERY=2",
        check=True, env=env,
    )  # fmt: skip

    def stopped():
        [r] = json.loads(sv("ps", "--all", "--json").stdout)
        return r["state"] == "stopped"

    wait_for(stopped, timeout=15)
