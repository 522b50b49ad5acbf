"""Runner rows: the model, lookups, and the one function through which every state change passes."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, fields
from typing import Any

from . import db, events
from .errors import Ambiguous, InvalidInput, NotFound
from .states import ACTIVE, ACTIVE_VALUES, RunnerState, can_transition


@dataclass(frozen=True)
class Runner:
    id: str
    name: str
    project_id: int
    command: list[str]
    cwd: str
    env: dict[str, str]
    state: RunnerState
    reason: str | None
    exit_code: int | None
    exit_signal: str | None
    restart_policy: str
    max_restarts: int
    restarts: int
    stop_signal: str
    stop_timeout: float
    stop_requested_signal: str | None
    stop_requested_timeout: float | None
    boot_id: str | None
    launcher_pid: int | None
    launcher_started: float | None
    keeper_pid: int | None
    keeper_started: float | None
    agent_pid: int | None
    agent_started: float | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    heartbeat_at: float | None
    cpu_percent: float | None
    rss_bytes: int | None
    process_count: int | None
    version: int
    agent: str = "generic"
    session_id: str | None = None
    agent_status: str | None = None
    agent_status_detail: str | None = None
    agent_status_at: float | None = None
    last_output_at: float | None = None
    worktree_path: str | None = None
    worktree_branch: str | None = None
    repo_path: str | None = None
    project: str = ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Runner:
        data = {k: row[k] for k in row.keys() if k in _FIELDS}
        data["command"] = json.loads(data["command"])
        data["env"] = json.loads(data["env"])
        data["state"] = RunnerState(data["state"])
        return cls(**data)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in _FIELDS}
        out["state"] = self.state.value
        return out


_FIELDS = [f.name for f in fields(Runner)]
_SELECT = "SELECT runners.*, projects.name AS project FROM runners JOIN projects ON projects.id = runners.project_id"


def get(conn: sqlite3.Connection, runner_id: str) -> Runner:
    row = conn.execute(f"{_SELECT} WHERE runners.id=?", (runner_id,)).fetchone()
    if row is None:
        raise NotFound(f"no runner with id {runner_id!r}")
    return Runner.from_row(row)


def find(conn: sqlite3.Connection, ref: str) -> Runner:
    """A runner by exact name, exact id, or unambiguous id prefix."""
    if not ref:
        raise InvalidInput("empty runner name")
    row = conn.execute(f"{_SELECT} WHERE runners.name=? OR runners.id=?", (ref, ref)).fetchone()
    if row is not None:
        return Runner.from_row(row)
    if all(c in "0123456789abcdef" for c in ref.lower()):
        rows = conn.execute(f"{_SELECT} WHERE runners.id LIKE ? LIMIT 6", (ref.lower() + "%",)).fetchall()
        if len(rows) == 1:
            return Runner.from_row(rows[0])
        if len(rows) > 1:
            names = ", ".join(r["name"] for r in rows[:5])
            raise Ambiguous(f"{ref!r} matches several runners ({names}{', ...' if len(rows) > 5 else ''}); give more of the id")
    raise NotFound(f"no runner named {ref!r} (see `stratavore ps --all`)")


def list_runners(conn: sqlite3.Connection, *, project: str | None = None, include_ended: bool = False) -> list[Runner]:
    where, params = [], []
    if project is not None:
        where.append("projects.name=?")
        params.append(project)
    if not include_ended:
        where.append(f"runners.state IN ({','.join('?' * len(ACTIVE_VALUES))})")
        params.extend(ACTIVE_VALUES)
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY runners.created_at, runners.name"
    return [Runner.from_row(r) for r in conn.execute(sql, params)]


def count_active(conn: sqlite3.Connection, project_id: int | None = None) -> int:
    sql = f"SELECT COUNT(*) FROM runners WHERE state IN ({','.join('?' * len(ACTIVE_VALUES))})"
    params: list[Any] = list(ACTIVE_VALUES)
    if project_id is not None:
        sql += " AND project_id=?"
        params.append(project_id)
    return conn.execute(sql, params).fetchone()[0]


def update_fields(conn: sqlite3.Connection, runner_id: str, **values: Any) -> None:
    """Change bookkeeping columns that are not state (pids, liveness); no event, no version bump."""
    assignments = ", ".join(f"{k}=?" for k in values)
    conn.execute(f"UPDATE runners SET {assignments} WHERE id=?", (*values.values(), runner_id))


def change_state(
    conn: sqlite3.Connection,
    runner_id: str,
    new_state: RunnerState,
    *,
    expect: frozenset[RunnerState] | set[RunnerState] | None = None,
    reason: str | None = None,
    payload: dict[str, Any] | None = None,
    **values: Any,
) -> Runner | None:
    """Move a runner to ``new_state``, with its event ``runner.<state>``, inside the caller's transaction.

    Returns the updated runner, or None when the runner is gone, is not in one of ``expect``, or
    cannot move to ``new_state`` from where it is (another process got there first).
    """
    if not conn.in_transaction:
        raise RuntimeError("change_state must run inside db.write()")
    row = conn.execute("SELECT state, version, name FROM runners WHERE id=?", (runner_id,)).fetchone()
    if row is None:
        return None
    old = RunnerState(row["state"])
    if (expect is not None and old not in expect) or not can_transition(old, new_state):
        return None
    version = row["version"] + 1
    values.update(state=new_state.value, version=version, reason=reason)
    update_fields(conn, runner_id, **values)
    body: dict[str, Any] = {"name": row["name"], "from": old.value, "to": new_state.value}
    if reason:
        body["reason"] = reason
    for key in ("exit_code", "exit_signal", "agent_pid", "restarts"):
        if values.get(key) is not None:
            body[key] = values[key]
    body.update(payload or {})
    events.append(conn, "runner", runner_id, version, f"runner.{new_state.value}", body)
    return get(conn, runner_id)


AGENT_STATUSES = ("working", "waiting", "idle")


def set_agent_status(
    conn: sqlite3.Connection,
    runner_id: str,
    status: str,
    detail: str | None = None,
    *,
    at: float | None = None,
    payload: dict[str, Any] | None = None,
) -> bool:
    """Record what the agent is doing (working, waiting for the user, idle), inside the caller's transaction.

    Only a change is an event (``runner.waiting`` ...): an agent that reports "waiting" on several
    hooks alerts once. Returns True when the status changed.
    """
    if status not in AGENT_STATUSES:
        raise ValueError(status)
    if not conn.in_transaction:
        raise RuntimeError("set_agent_status must run inside db.write()")
    row = conn.execute(
        "SELECT name, state, version, agent_status, agent_status_detail, agent_status_at, session_id FROM runners WHERE id=?",
        (runner_id,),
    ).fetchone()
    when = db.now() if at is None else at
    if row is None or RunnerState(row["state"]) not in ACTIVE:
        return False
    if row["agent_status_at"] is not None and when < row["agent_status_at"]:
        return False  # an older report arriving late (a spooled hook) must not undo a newer one
    if row["agent_status"] == status:
        # same status, perhaps finer detail: no new event, so a wait alerts once
        update_fields(conn, runner_id, agent_status_detail=detail or row["agent_status_detail"], agent_status_at=when)
        return False
    version = row["version"] + 1
    update_fields(conn, runner_id, agent_status=status, agent_status_detail=detail, agent_status_at=when, version=version)
    body: dict[str, Any] = {"name": row["name"], "status": status, "previous": row["agent_status"]}
    if detail:
        body["detail"] = detail
    if row["session_id"]:
        body["session_id"] = row["session_id"]
    body.update(payload or {})
    events.append(conn, "runner", runner_id, version, f"runner.{status}", body, at=when)
    return True


def insert(conn: sqlite3.Connection, runner: dict[str, Any]) -> None:
    columns = ", ".join(runner)
    conn.execute(f"INSERT INTO runners({columns}) VALUES ({', '.join('?' * len(runner))})", tuple(runner.values()))


def exit_description(runner: Runner) -> str:
    if runner.exit_signal:
        return f"killed by {runner.exit_signal}"
    if runner.exit_code is not None:
        return f"exit code {runner.exit_code}"
    return ""
