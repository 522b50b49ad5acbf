"""Reconciliation: make the rows tell the truth about processes.

A runner is active in the database only while its keeper lives. A keeper that vanished (kill -9, a
crash, a reboot) leaves its runner ``lost``, and the agent tree it left behind is killed. Identity is
pid plus start time, so a reused pid is never mistaken for a runner's process.

The daemon runs this over every active runner on a schedule; the CLI runs it over the rows it is
about to show, which costs a few /proc reads.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterable

from . import db, procs
from .runners import Runner, change_state, get, list_runners
from .states import ACTIVE, RunnerState


def diagnose(runner: Runner, boot_id: str) -> str | None:
    """Why this active runner is not really alive, or None if it is (or may still be starting)."""
    if runner.state not in ACTIVE:
        return None
    if runner.boot_id and runner.boot_id != boot_id:
        return "the machine restarted"
    if runner.keeper_pid is None:
        if procs.is_alive(runner.launcher_pid, runner.launcher_started):
            return None
        return "the launch was interrupted before the keeper started"
    if procs.is_alive(runner.keeper_pid, runner.keeper_started):
        return None
    return "the keeper exited unexpectedly"


def reconcile(conn: sqlite3.Connection, runners: Iterable[Runner]) -> list[Runner]:
    """Return the runners as they truly are, marking the dead ones ``lost`` on the way."""
    boot = procs.boot_id()
    out = []
    for runner in runners:
        if diagnose(runner, boot) is not None:
            runner = _mark_lost(conn, runner.id, boot) or runner
        elif runner.state == RunnerState.STOPPING and procs.is_alive(runner.keeper_pid, runner.keeper_started):
            # the stop is recorded before the keeper is told; whoever recorded it may have died in
            # between, so tell the keeper again (a keeper already stopping ignores a second request)
            procs.signal_pid(runner.keeper_pid, signal.SIGTERM)
        out.append(runner)
    return out


def _mark_lost(conn: sqlite3.Connection, runner_id: str, boot: str) -> Runner | None:
    with db.write(conn):
        # look again under the write lock: the keeper may have recorded its exit meanwhile
        current = get(conn, runner_id)
        reason = diagnose(current, boot)
        if reason is None:
            return current
        if reason != "the machine restarted":
            procs.kill_tree(current.agent_pid, current.agent_started)
        return change_state(conn, runner_id, RunnerState.LOST, reason=reason, ended_at=db.now())


def reconcile_all(conn: sqlite3.Connection) -> list[Runner]:
    """Check every active runner; return those found lost."""
    active = list_runners(conn)
    after = reconcile(conn, active)
    return [r for r in after if r.state == RunnerState.LOST]
