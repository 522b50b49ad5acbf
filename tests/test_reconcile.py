"""Reconciliation with real processes: dead keepers make runners `lost`, and nothing else is ever killed.

The tests run real runners through the real CLI, kill them or disguise their rows the way a crash, a
reboot or a reused pid would, and check both the rows and which processes are still alive.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid

import psutil
import pytest

from stratavore import db, events, procs, protocol, supervisor
from stratavore.errors import LaunchFailed
from stratavore.runners import Runner, find, get, insert
from stratavore.states import RunnerState

from .conftest import processes_of, wait_for

S = RunnerState
Identity = tuple[int, float]


# -- helpers ---------------------------------------------------------------------------------------


def launch(sv, ctx, name: str, *command: str) -> Runner:
    sv("launch", "web", "--name", name, "--", *command, check=True)
    return find(ctx.conn, name)


def ps_all(sv) -> dict[str, dict]:
    """`stratavore ps --all --json` (which reconciles the rows it shows), by runner name."""
    out = sv("ps", "--all", "--json", check=True)
    return {r["name"]: r for r in json.loads(out.stdout)}


def identity(pid: int) -> Identity:
    return procs.identity(pid)


def alive(identities: list[Identity]) -> list[Identity]:
    return [(pid, started) for pid, started in identities if procs.is_alive(pid, started)]


def sleeps_in_session(sid: int) -> list[psutil.Process]:
    found = []
    for pid in procs.session_members(sid):
        try:
            proc = psutil.Process(pid)
            if proc.name() == "sleep":
                found.append(proc)
        except psutil.Error:
            pass
    return found


def tree_of(agent_pid: int) -> list[Identity]:
    """The agent, its descendants and every member of its session, by identity."""
    pids = {agent_pid, *procs.descendants(agent_pid), *procs.session_members(agent_pid)}
    out = []
    for pid in pids:
        try:
            out.append(identity(pid))
        except ProcessLookupError:
            pass
    return out


def kill9(pid: int, started: float) -> None:
    assert procs.is_alive(pid, started)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not procs.is_alive(pid, started), timeout=5)


def edit(ctx, sql: str, *params) -> None:
    with db.write(ctx.conn):
        ctx.conn.execute(sql, params)


def assert_nothing_left(home) -> None:
    wait_for(lambda: not processes_of(str(home)), timeout=5)


# -- a keeper that dies ----------------------------------------------------------------------------


def test_killed_keeper_makes_runner_lost_and_its_whole_tree_dies(sv, ctx, project, home):
    # an agent that survives the hangup of its terminal (HUP ignored, as under nohup), with a
    # background job and a straggler that left the agent's process group (job control in a subshell)
    # and whose parent is the keeper: once the keeper is gone, only the session sweep can find it
    script = "trap '' HUP; (set -m; sleep 301 &); sleep 302 & sleep 300"
    runner = launch(sv, ctx, "t", "bash", "-c", script)
    assert runner.state == S.RUNNING
    wait_for(lambda: len(sleeps_in_session(runner.agent_pid)) == 3, timeout=5)
    escaped = [p for p in sleeps_in_session(runner.agent_pid) if os.getpgid(p.pid) != runner.agent_pid]
    assert len(escaped) == 1, "the test needs one process outside the agent's group"
    tree = tree_of(runner.agent_pid)
    assert len(tree) == 4  # bash and three sleeps

    kill9(runner.keeper_pid, runner.keeper_started)
    # nobody looked yet: the row still claims to run, and the agent's tree lives on without its keeper
    time.sleep(0.2)
    assert get(ctx.conn, runner.id).state == S.RUNNING
    assert alive(tree) == tree

    shown = ps_all(sv)["t"]
    assert shown["state"] == "lost"
    assert shown["reason"] == "the keeper exited unexpectedly"
    wait_for(lambda: not alive(tree), timeout=5)
    after = get(ctx.conn, runner.id)
    assert after.state == S.LOST and after.ended_at is not None
    assert [e.type for e in events.list_events(ctx.conn, aggregate_id=runner.id)][-1] == "runner.lost"
    # the plain `ps` no longer lists it, and a second pass changes nothing
    assert json.loads(sv("ps", "--json", check=True).stdout) == []
    assert get(ctx.conn, runner.id).version == after.version
    assert_nothing_left(home)


# -- a reused pid ----------------------------------------------------------------------------------


def test_reused_pids_are_never_signalled(sv, ctx, project, home):
    """The recorded keeper and agent pids now belong to "other" processes: lost, and nothing killed."""
    runner = launch(sv, ctx, "t", "bash", "-c", "sleep 300 & sleep 300")
    wait_for(lambda: len(procs.descendants(runner.agent_pid)) >= 1, timeout=5)
    keeper = (runner.keeper_pid, runner.keeper_started)
    tree = tree_of(runner.agent_pid)
    assert len(tree) >= 2
    # same pids, other start times: exactly what the row would hold if both pids had been reused
    edit(
        ctx,
        "UPDATE runners SET keeper_started = keeper_started - 1000, agent_started = agent_started - 1000 WHERE id=?",
        runner.id,
    )

    shown = ps_all(sv)["t"]
    assert shown["state"] == "lost"
    assert shown["reason"] == "the keeper exited unexpectedly"
    # the real processes carry the recorded pids but are not the recorded processes: left alone,
    # including the agent, which leads a session whose id is the recorded agent pid
    time.sleep(0.3)
    assert alive(tree) == tree, "reconciliation killed processes that only shared the agent's pid"
    assert procs.is_alive(*keeper), "reconciliation killed a process that only shared the keeper's pid"
    assert get(ctx.conn, runner.id).state == S.LOST

    # clean up: the keeper stops its agent when asked
    os.kill(keeper[0], signal.SIGTERM)
    wait_for(lambda: not procs.is_alive(*keeper) and not alive(tree), timeout=10)
    assert get(ctx.conn, runner.id).state == S.LOST  # a keeper never revives a lost row
    assert_nothing_left(home)


def test_reused_keeper_pid_kills_only_the_identified_agent(sv, ctx, project, home):
    """Only the keeper's identity is stale: the agent (still identified) is killed, the keeper is not.

    The keeper is not our child, so we cannot read how it ended; but a keeper that ends on its own
    (its agent died) sends an EXIT frame to attached clients first, and a SIGKILLed one cannot.
    """
    runner = launch(sv, ctx, "t", "bash", "-c", "sleep 300 & sleep 300")
    wait_for(lambda: len(procs.descendants(runner.agent_pid)) >= 1, timeout=5)
    keeper = (runner.keeper_pid, runner.keeper_started)
    tree = tree_of(runner.agent_pid)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(ctx.paths.runner_socket(runner.id)))
    client.settimeout(10)
    edit(ctx, "UPDATE runners SET keeper_started = keeper_started - 1000 WHERE id=?", runner.id)

    assert ps_all(sv)["t"]["state"] == "lost"
    wait_for(lambda: not alive(tree), timeout=5)

    reader, frames = protocol.FrameReader(), []
    with client:
        while data := client.recv(65536):
            frames.extend(reader.feed(data))
    exits = [json.loads(payload) for kind, payload in frames if kind == protocol.EXIT]
    assert exits, "the keeper was killed instead of ending on its own"
    assert exits[0]["exit_signal"] == "SIGKILL"  # its agent was killed by reconciliation
    wait_for(lambda: not procs.is_alive(*keeper), timeout=5)
    final = get(ctx.conn, runner.id)
    assert final.state == S.LOST and final.reason == "the keeper exited unexpectedly"
    assert_nothing_left(home)


# -- a reboot --------------------------------------------------------------------------------------


def test_rows_from_a_previous_boot_are_lost_and_nothing_is_killed(sv, ctx, project, home):
    runner = launch(sv, ctx, "t", "bash", "-c", "sleep 300 & sleep 300")
    other = launch(sv, ctx, "u", "sleep", "300")
    wait_for(lambda: len(procs.descendants(runner.agent_pid)) >= 1, timeout=5)
    keeper = (runner.keeper_pid, runner.keeper_started)
    tree = tree_of(runner.agent_pid)
    edit(ctx, "UPDATE runners SET boot_id=? WHERE id=?", "a-boot-long-gone", runner.id)

    shown = ps_all(sv)
    assert shown["t"]["state"] == "lost"
    assert shown["t"]["reason"] == "the machine restarted"
    assert shown["u"]["state"] == "running"  # a row of this boot is untouched
    # pids from another boot say nothing about this boot's processes: none is signalled
    time.sleep(0.3)
    assert procs.is_alive(*keeper)
    assert alive(tree) == tree

    os.kill(keeper[0], signal.SIGTERM)
    wait_for(lambda: not procs.is_alive(*keeper) and not alive(tree), timeout=10)
    assert get(ctx.conn, runner.id).state == S.LOST
    sv("stop", "u", check=True)
    assert get(ctx.conn, other.id).state == S.STOPPED
    assert_nothing_left(home)


# -- an interrupted launch -------------------------------------------------------------------------


def _dead_identity() -> Identity:
    proc = subprocess.Popen(["sleep", "60"])
    ident = identity(proc.pid)
    proc.kill()
    proc.wait()
    return ident


def _starting_row(ctx, project, name: str, launcher: Identity) -> str:
    runner_id = uuid.uuid4().hex
    with db.write(ctx.conn):
        insert(
            ctx.conn,
            {
                "id": runner_id,
                "name": name,
                "project_id": project.id,
                "command": json.dumps(["sleep", "300"]),
                "cwd": str(project.path),
                "state": S.STARTING.value,
                "boot_id": procs.boot_id(),
                "launcher_pid": launcher[0],
                "launcher_started": launcher[1],
                "created_at": db.now(),
            },
        )
    return runner_id


def test_starting_row_whose_launcher_died_is_lost(sv, ctx, project, home):
    dead = _starting_row(ctx, project, "dead-launcher", _dead_identity())
    me = procs.identity()
    reused = _starting_row(ctx, project, "reused-launcher", (me[0], me[1] - 1000))
    # this very test process is a live launcher: its launch may still be on its way
    live = _starting_row(ctx, project, "live-launcher", me)

    shown = ps_all(sv)
    assert shown["dead-launcher"]["state"] == "lost"
    assert shown["dead-launcher"]["reason"] == "the launch was interrupted before the keeper started"
    assert shown["reused-launcher"]["state"] == "lost"
    assert shown["live-launcher"]["state"] == "starting"
    assert get(ctx.conn, dead).state == S.LOST
    assert get(ctx.conn, reused).state == S.LOST
    assert get(ctx.conn, live).state == S.STARTING

    # a keeper that comes late for a lost row gives up instead of running an agent without a row
    with pytest.raises(LaunchFailed):
        supervisor._start_keepers(ctx, [dead])
    row = get(ctx.conn, dead)
    assert row.state == S.LOST and row.keeper_pid is None and row.agent_pid is None

    # the live launcher's row starts normally once its keeper comes
    [started] = supervisor._start_keepers(ctx, [live]).started
    assert started.state == S.RUNNING
    assert procs.is_alive(started.agent_pid, started.agent_started)
    supervisor.stop(ctx, [started])
    assert get(ctx.conn, live).state == S.STOPPED
    assert_nothing_left(home)


# -- the daemon's schedule -------------------------------------------------------------------------


def test_daemon_marks_lost_on_its_own_schedule(sv, ctx, project, home):
    # HUP ignored: the hangup of its terminal when the keeper dies does not end this agent, only
    # reconciliation does
    runner = launch(sv, ctx, "t", "bash", "-c", "trap '' HUP; sleep 300 & sleep 300")
    wait_for(lambda: len(procs.descendants(runner.agent_pid)) >= 1, timeout=5)
    tree = tree_of(runner.agent_pid)
    sv("daemon", "start", check=True, env={"STRATAVORE_RECONCILE_INTERVAL": "0.5"})
    wait_for(lambda: events.list_events(ctx.conn, types=("daemon.started",)), timeout=5)

    kill9(runner.keeper_pid, runner.keeper_started)
    # from here on, no stratavore command runs and this process only reads the database
    wait_for(lambda: get(ctx.conn, runner.id).state == S.LOST, timeout=5, interval=0.05)
    assert get(ctx.conn, runner.id).reason == "the keeper exited unexpectedly"
    wait_for(lambda: not alive(tree), timeout=5)
    # the pass that found it is recorded once it ends
    job = wait_for(lambda: ctx.conn.execute("SELECT runs, failures, last_error FROM daemon_jobs WHERE job_id='reconcile'").fetchone())
    assert job["failures"] == 0, dict(job)

    sv("daemon", "stop", check=True)
    assert_nothing_left(home)
