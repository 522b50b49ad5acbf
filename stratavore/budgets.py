"""Budgets: limits on what agents spend, per scope and period, with warnings and actions.

A budget has a scope (everything, one project, one runner), a limit in USD and/or tokens, a period
(day, week or month in a chosen time zone, a rolling 5 hours, or lifetime), warning thresholds and
an action at 100 %: new launches are always refused, and running agents are interrupted (what Escape
does in Claude Code, Ctrl-C elsewhere), stopped, or only notified about.

Crossing a threshold is an event (``budget.warning``, ``budget.exceeded``) once per period: the
crossing is recorded under a primary key, so of several processes noticing it at once, one wins.
Enforcement does not depend on the daemon: every keeper evaluates the budgets that concern its runner
at each heartbeat, right after reading its agent's new transcript lines.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from . import db, events
from .errors import InvalidInput, NotFound, QuotaExceeded

SCOPES = ("global", "project", "runner")
PERIODS = ("day", "week", "month", "5h", "lifetime")
ACTIONS = ("refuse", "interrupt", "stop", "notify")
ROLLING_WINDOW = 5 * 3600
TOKEN_SUM = "input_tokens + output_tokens + cache_5m_tokens + cache_1h_tokens + cache_read_tokens"


class BudgetExceeded(QuotaExceeded):
    """A budget that concerns the launch is spent."""


@dataclass(frozen=True)
class Budget:
    id: int
    name: str
    scope: str
    target: str | None  # project name, or runner id
    limit_usd: float | None
    limit_tokens: int | None
    period: str
    timezone: str | None
    warn_percents: tuple[int, ...]
    action: str
    created_at: float
    version: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Budget:
        data = {k: row[k] for k in row.keys()}
        data["warn_percents"] = tuple(int(p) for p in str(data["warn_percents"]).split(",") if p)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Standing:
    """Where a budget stands in its current period."""

    budget: Budget
    period_key: str
    since: float
    spent_usd: float
    spent_tokens: int
    unpriced_entries: int

    @property
    def percent(self) -> float:
        shares = []
        if self.budget.limit_usd:
            shares.append(self.spent_usd / self.budget.limit_usd * 100)
        if self.budget.limit_tokens:
            shares.append(self.spent_tokens / self.budget.limit_tokens * 100)
        return max(shares) if shares else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.budget.to_dict(),
            "period_key": self.period_key,
            "since": self.since,
            "spent_usd": round(self.spent_usd, 6),
            "spent_tokens": self.spent_tokens,
            "unpriced_entries": self.unpriced_entries,
            "percent": round(self.percent, 2),
        }


# -- defining budgets ----------------------------------------------------------------------------


def _zone(name: str | None) -> tzinfo | None:
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name!r} (use a name like Europe/Berlin)") from None


def _parse_warn(warn: str | None) -> str:
    if warn is None or warn == "":
        return "80"
    try:
        values = sorted({int(p) for p in warn.split(",") if p.strip()})
    except ValueError:
        raise InvalidInput(f"--warn takes percentages such as 80 or 50,80,95, not {warn!r}") from None
    if any(not 0 < v < 100 for v in values):
        raise InvalidInput("--warn percentages must be between 1 and 99")
    return ",".join(str(v) for v in values)


def set_budget(
    conn: sqlite3.Connection,
    *,
    scope: str,
    target: str | None = None,
    usd: float | None = None,
    tokens: int | None = None,
    period: str = "month",
    timezone: str | None = None,
    warn: str | None = None,
    action: str = "notify",
    name: str | None = None,
) -> Budget:
    """Create a budget, or replace the one with the same name (by default: scope, target and period)."""
    if scope not in SCOPES:
        raise InvalidInput(f"scope must be one of {', '.join(SCOPES)}")
    if period not in PERIODS:
        raise InvalidInput(f"--period must be one of {', '.join(PERIODS)}")
    if action not in ACTIONS:
        raise InvalidInput(f"--action must be one of {', '.join(ACTIONS)}")
    if usd is None and tokens is None:
        raise InvalidInput("give a limit: --usd AMOUNT and/or --tokens COUNT")
    if (usd is not None and usd <= 0) or (tokens is not None and tokens <= 0):
        raise InvalidInput("limits must be positive")
    _zone(timezone)
    warn_percents = _parse_warn(warn)
    with db.write(conn):
        label = target
        if scope == "project":
            if not target:
                raise InvalidInput("--project needs a project name")
            if conn.execute("SELECT 1 FROM projects WHERE name=?", (target,)).fetchone() is None:
                raise NotFound(f"no project named {target!r}")
        elif scope == "runner":
            from .runners import find

            if not target:
                raise InvalidInput("--runner needs a runner name")
            runner = find(conn, target)
            target, label = runner.id, runner.name
        else:
            target = label = None
        name = name or ":".join(p for p in (scope, label, period) if p)
        existing = conn.execute("SELECT id, version FROM budgets WHERE name=?", (name,)).fetchone()
        values = (scope, target, usd, tokens, period, timezone, warn_percents, action)
        if existing:
            version = existing["version"] + 1
            conn.execute(
                "UPDATE budgets SET scope=?, target=?, limit_usd=?, limit_tokens=?, period=?, timezone=?, warn_percents=?,"
                " action=?, version=? WHERE id=?",
                (*values, version, existing["id"]),
            )
            # a changed limit deserves fresh warnings in the current period
            conn.execute("DELETE FROM budget_crossings WHERE budget_id=?", (existing["id"],))
            conn.execute("DELETE FROM budget_actions WHERE budget_id=?", (existing["id"],))
        else:
            version = 1
            conn.execute(
                "INSERT INTO budgets(name, scope, target, limit_usd, limit_tokens, period, timezone, warn_percents, action,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, *values, db.now()),
            )
        budget = get(conn, name)
        events.append(conn, "budget", name, version, "budget.set", {k: v for k, v in budget.to_dict().items() if k != "id"})
    return budget


def get(conn: sqlite3.Connection, name: str) -> Budget:
    row = conn.execute("SELECT * FROM budgets WHERE name=?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no budget named {name!r} (see `stratavore budget list`)")
    return Budget.from_row(row)


def list_budgets(conn: sqlite3.Connection) -> list[Budget]:
    try:
        rows = conn.execute("SELECT * FROM budgets ORDER BY name").fetchall()
    except sqlite3.OperationalError:
        return []
    return [Budget.from_row(r) for r in rows]


def remove(conn: sqlite3.Connection, name: str) -> Budget:
    with db.write(conn):
        budget = get(conn, name)
        conn.execute("DELETE FROM budgets WHERE id=?", (budget.id,))
        events.append(conn, "budget", name, budget.version + 1, "budget.removed", {"name": name})
    return budget


# -- where a budget stands -------------------------------------------------------------------------


def period_window(budget: Budget, now: float) -> tuple[float, str]:
    """The start of the budget's current period (epoch seconds) and a key naming that period."""
    if budget.period == "lifetime":
        return 0.0, "lifetime"
    if budget.period == "5h":
        # the spend window rolls; crossings are remembered per fixed 5-hour slot
        return now - ROLLING_WINDOW, f"5h-{int(now // ROLLING_WINDOW)}"
    zone = _zone(budget.timezone)
    local = datetime.fromtimestamp(now, zone) if zone else datetime.fromtimestamp(now).astimezone()
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if budget.period == "day":
        start, key = midnight, midnight.strftime("%Y-%m-%d")
    elif budget.period == "week":
        start = midnight - timedelta(days=midnight.weekday())
        year, week, _ = start.isocalendar()
        key = f"{year}-W{week:02d}"
    else:
        start, key = midnight.replace(day=1), midnight.strftime("%Y-%m")
    return start.timestamp(), key


def _scope_filter(conn: sqlite3.Connection, budget: Budget) -> tuple[str, list[Any]]:
    if budget.scope == "project":
        row = conn.execute("SELECT id FROM projects WHERE name=?", (budget.target,)).fetchone()
        return "project_id = ?", [row[0] if row else -1]
    if budget.scope == "runner":
        return "runner_id = ?", [budget.target]
    return "1", []


def standing(conn: sqlite3.Connection, budget: Budget, now: float | None = None) -> Standing:
    now = time.time() if now is None else now
    since, key = period_window(budget, now)
    where, params = _scope_filter(conn, budget)
    try:
        row = conn.execute(
            f"SELECT COALESCE(SUM(cost_usd), 0), COALESCE(SUM({TOKEN_SUM}), 0), COALESCE(SUM(cost_usd IS NULL), 0)"
            f" FROM usage_entries WHERE ts >= ? AND {where}",
            (int(since * 1000), *params),
        ).fetchone()
    except sqlite3.OperationalError:
        row = (0, 0, 0)
    return Standing(budget, key, since, float(row[0]), int(row[1]), int(row[2]))


def standings(conn: sqlite3.Connection, now: float | None = None) -> list[Standing]:
    return [standing(conn, b, now) for b in list_budgets(conn)]


def utilisation(conn: sqlite3.Connection, now: float | None = None) -> list[dict[str, Any]]:
    """Every budget with its limits and what its current period has spent (for metrics)."""
    out = []
    for s in standings(conn, now):
        b = s.budget
        out.append(
            {
                "id": b.id,
                "name": b.name,
                "scope": b.scope,
                "target": b.target,
                "period": b.period,
                "limit_usd": b.limit_usd,
                "spent_usd": s.spent_usd,
                "limit_tokens": b.limit_tokens,
                "spent_tokens": s.spent_tokens,
            }
        )
    return out


def concerning(conn: sqlite3.Connection, *, project: str | None = None, runner_id: str | None = None) -> list[Budget]:
    """Budgets that apply to a launch in ``project`` (or to runner ``runner_id`` of it)."""
    return [
        b
        for b in list_budgets(conn)
        if b.scope == "global" or (b.scope == "project" and b.target == project) or (b.scope == "runner" and b.target == runner_id)
    ]


def check_launch(conn: sqlite3.Connection, project: str, now: float | None = None) -> None:
    """Refuse a launch over a spent budget (called inside the launch's own transaction)."""
    for budget in concerning(conn, project=project):
        if budget.scope == "runner":
            continue
        s = standing(conn, budget, now)
        if s.percent >= 100:
            raise BudgetExceeded(
                f"budget {budget.name!r} is spent ({_describe(s)}); launches are refused until the period ends"
                + ("" if budget.period == "lifetime" else f" ({budget.period})")
            )


def _describe(s: Standing) -> str:
    parts = []
    if s.budget.limit_usd:
        parts.append(f"${s.spent_usd:.2f} of ${s.budget.limit_usd:.2f}")
    if s.budget.limit_tokens:
        parts.append(f"{s.spent_tokens:,} of {s.budget.limit_tokens:,} tokens")
    return ", ".join(parts)


# -- crossing thresholds and acting --------------------------------------------------------------


@dataclass(frozen=True)
class Enforcement:
    runner_id: str
    action: str  # interrupt or stop
    budget: str
    reason: str


def evaluate(
    conn: sqlite3.Connection, *, runner_id: str | None = None, project: str | None = None, now: float | None = None
) -> list[Enforcement]:
    """Record thresholds crossed (one event per budget, period and threshold) and return the actions
    due on running agents: every budget when ``runner_id`` is None, else those concerning that runner
    (its own, its project's, the global ones) and only actions on it."""
    from .states import ACTIVE_VALUES

    now = time.time() if now is None else now
    budgets = list_budgets(conn) if runner_id is None else concerning(conn, project=project, runner_id=runner_id)
    if not budgets:
        return []
    due: list[Enforcement] = []
    notes = [standing(conn, b, now) for b in budgets]
    crossed = [(s, p) for s in notes for p in (*s.budget.warn_percents, 100) if s.percent >= p]
    if not crossed:
        return []
    with db.write(conn):
        for s, percent in crossed:
            budget = s.budget
            cur = conn.execute(
                "INSERT OR IGNORE INTO budget_crossings(budget_id, period_key, percent, at) VALUES (?, ?, ?, ?)",
                (budget.id, s.period_key, percent, now),
            )
            if cur.rowcount:
                kind = "budget.exceeded" if percent >= 100 else "budget.warning"
                payload = {
                    "name": budget.name,
                    "scope": budget.scope,
                    "target": budget.target,
                    "threshold": percent,
                    "percent": round(s.percent, 2),
                    "spent_usd": round(s.spent_usd, 6),
                    "limit_usd": budget.limit_usd,
                    "spent_tokens": s.spent_tokens,
                    "limit_tokens": budget.limit_tokens,
                    "period": s.period_key,
                    "action": budget.action,
                }
                events.append(conn, "budget", budget.name, budget.version, kind, payload, at=now)
            if percent < 100 or budget.action not in ("interrupt", "stop"):
                continue
            placeholders = ",".join("?" * len(ACTIVE_VALUES))
            sql = (
                "SELECT runners.id, runners.name FROM runners JOIN projects ON projects.id = runners.project_id"
                f" WHERE state IN ({placeholders})"
            )
            params: list[Any] = list(ACTIVE_VALUES)
            if budget.scope == "project":
                sql += " AND projects.name = ?"
                params.append(budget.target)
            elif budget.scope == "runner":
                sql += " AND runners.id = ?"
                params.append(budget.target)
            if runner_id is not None:
                sql += " AND runners.id = ?"
                params.append(runner_id)
            for rid, rname in conn.execute(sql, params).fetchall():
                cur = conn.execute(
                    "INSERT OR IGNORE INTO budget_actions(budget_id, period_key, runner_id, action, at) VALUES (?, ?, ?, ?, ?)",
                    (budget.id, s.period_key, rid, budget.action, now),
                )
                if cur.rowcount:
                    reason = f"budget {budget.name} exceeded ({_describe(s)})"
                    events.append(
                        conn,
                        "budget",
                        budget.name,
                        budget.version,
                        "budget.enforced",
                        {"name": budget.name, "runner": rname, "runner_id": rid, "action": budget.action, "period": s.period_key},
                        at=now,
                    )
                    due.append(Enforcement(rid, budget.action, budget.name, reason))
    return due
