"""Survival: kill -9 of a stratavore process, at any moment, never leaves rows and processes disagreeing.

The CLI is killed in the middle of `launch` and `stop`, at moments spread over the whole command
(timed against an uninterrupted run on this machine); the daemon is killed outright. After
reconciliation these must hold:

(a) every runner row in an active state has a live keeper (pid and start time) and, once running or
    stopping, a live agent;
(b) every live process of a runner (it carries STRATAVORE_RUNNER_ID) belongs to an active row, and
    every live keeper is the recorded keeper of an active row;
(c) no row stays `starting` (or `stopping`): a transient row settles within a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import pexpect
import psutil

from stratavore import daemon, db, events, procs
from stratavore.reconcile import reconcile_all
from stratavore.runners import Runner, change_state, find, get, list_runners
from stratavore.states import ACTIVE, RunnerState
from tests.conftest import SV, processes_of, wait_for

S = RunnerState
SLEEP = ["sleep", "300"]


# -- helpers ---------------------------------------------------------------------------------------


def env_for(home, **extra: str) -> dict[str, str]:
    return {**os.environ, "STRATAVORE_HOME": str(home), **extra}


def problems(ctx, home) -> list[str]:
    """Every way the rows and the live processes disagree right now (transient ones included)."""
    rows = {r.id: r for r in list_runners(ctx.conn, include_ended=True)}
    found = []
    for r in rows.values():
        if r.state not in ACTIVE:
            continue
        keeper = procs.is_alive(r.keeper_pid, r.keeper_started)
        if r.state == S.STARTING:
            if not keeper and not procs.is_alive(r.launcher_pid, r.launcher_started):
                found.append(f"{r.name} is starting with neither its keeper nor its launcher alive")
            found.append(f"{r.name} is still starting")
            continue
        if not keeper:
            found.append(f"{r.name} is {r.state} without a live keeper")
        if r.state in (S.RUNNING, S.STOPPING) and not procs.is_alive(r.agent_pid, r.agent_started):
            found.append(f"{r.name} is {r.state} without a live agent")
        if r.state == S.STOPPING:
            found.append(f"{r.name} is still stopping")
    keepers = {(r.keeper_pid, r.keeper_started) for r in rows.values() if r.state in ACTIVE}
    for proc in processes_of(str(home)):
        try:
            environ, name = proc.environ(), proc.name()
        except psutil.Error:
            continue
        started = procs.start_time(proc.pid)
        if started is None:
            continue
        runner_id = environ.get("STRATAVORE_RUNNER_ID")
        if runner_id is not None:
            row = rows.get(runner_id)
            if row is None or row.state not in ACTIVE:
                what = f"is {row.state}" if row else "does not exist"
                found.append(f"process {proc.pid} ({name}) of runner {row.name if row else runner_id} runs, but its row {what}")
        elif name == "sv-keeper" and not any(pid == proc.pid and procs.is_alive(pid, s) for pid, s in keepers):
            # also an agent between its fork and its exec (it has the keeper's name until then)
            found.append(f"keeper {proc.pid} runs for no active runner")
    return found


def settle(ctx, home, timeout: float = 10.0) -> None:
    """Reconcile until rows and processes agree; fail with what still disagrees after ``timeout``.

    Keepers started by a killed launch may still be finishing their start, and keepers told to stop
    may still be stopping, so a disagreement only counts if it lasts.
    """
    deadline = time.monotonic() + timeout
    while True:
        reconcile_all(ctx.conn)
        found = problems(ctx, home)
        if not found:
            return
        if time.monotonic() > deadline:
            raise AssertionError("rows and processes still disagree:\n" + "\n".join(found))
        time.sleep(0.05)


def ps_all(sv) -> dict[str, dict]:
    """`stratavore ps --all --json`, which reconciles the rows it shows."""
    return {r["name"]: r for r in json.loads(sv("ps", "--all", "--json", check=True).stdout)}


def kill_everything(ctx, home) -> None:
    """Stop every active runner the ordinary way, and check that nothing of this home is left."""
    from stratavore import supervisor

    supervisor.stop(ctx, list_runners(ctx.conn), signal_name="KILL", timeout=0)
    assert not list_runners(ctx.conn), [(r.name, r.state) for r in list_runners(ctx.conn)]
    wait_for(lambda: not processes_of(str(home)), timeout=5)


def timed_run(home, args: list[str], *milestones: Callable[[], bool]) -> list[float]:
    """Run a command to its end; return when each milestone first held, then when the command ended."""
    t0 = time.monotonic()
    proc = subprocess.Popen([*SV, *args], env=env_for(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reached: list[float | None] = [None] * len(milestones)
    while proc.poll() is None:
        for i, milestone in enumerate(milestones):
            if reached[i] is None and milestone():
                reached[i] = time.monotonic() - t0
        time.sleep(0.0005)
    done = time.monotonic() - t0
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    return [done if t is None else t for t in reached] + [done]


def killed_run(home, args: list[str], milestone: Callable[[], bool] | None, delay: float) -> None:
    """Start a command and SIGKILL it ``delay`` seconds after it starts, or after ``milestone`` holds."""
    proc = subprocess.Popen([*SV, *args], env=env_for(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if milestone is not None:
        while proc.poll() is None and not milestone():
            time.sleep(0.0005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def spread(start: float, end: float, count: int) -> list[float]:
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def more_than(count: Callable[[], int], n: int) -> Callable[[], bool]:
    return lambda: count() > n


def claimed_count(ctx) -> int:
    return ctx.conn.execute("SELECT COUNT(keeper_pid) FROM runners").fetchone()[0]


def row_count(ctx) -> int:
    return ctx.conn.execute("SELECT COUNT(*) FROM runners").fetchone()[0]


# -- kill -9 of the CLI during a launch ------------------------------------------------------------


def test_cli_killed_at_any_moment_of_a_launch(sv, ctx, project, home):
    args = ["launch", "web", "--count", "3", "--", *SLEEP]
    # an uninterrupted launch: its rows are committed at t_rows, every keeper has claimed its row at
    # t_claimed, and it returns (all agents running) at t_done
    t_rows, t_claimed, t_done = timed_run(home, args, lambda: row_count(ctx) > 0, lambda: claimed_count(ctx) == 3)
    settle(ctx, home)
    assert Counter(r.state for r in list_runners(ctx.conn)) == {S.RUNNING: 3}
    kill_everything(ctx, home)

    # before the commit (mostly interpreter start-up); then densely across the forks of the keepers
    # and their start; then while the launch waits for the keepers' reports
    moments: list[tuple[bool, float]] = [(False, d) for d in spread(0, t_rows, 3)]
    claiming = max(t_claimed - t_rows, 0.005)
    moments += [(True, 1.5 * claiming * (i / 8) ** 2) for i in range(9)]
    moments += [(True, d) for d in spread(1.5 * claiming, max(t_done - t_rows, 1.5 * claiming), 3)]
    outcomes = []
    for after_commit, delay in moments:
        before = {r.id for r in list_runners(ctx.conn, include_ended=True)}
        committed = more_than(lambda: row_count(ctx), len(before)) if after_commit else None
        killed_run(home, args, committed, delay)

        shown = ps_all(sv)
        settle(ctx, home)
        rows = [r for r in list_runners(ctx.conn, include_ended=True) if r.id not in before]
        where = f"killed {delay * 1000:.0f}ms after {'the commit' if after_commit else 'the start'}"
        # the rows are written in one transaction: all of them or none
        assert len(rows) in (0, 3), where
        states = Counter(r.state.value for r in rows)
        assert set(states) <= {"running", "lost"}, (where, states)
        # what `ps` showed right after the kill was true then: a row it called lost stays lost, and
        # one it called starting has since settled
        for r in rows:
            assert shown[r.name]["state"] in ("starting", r.state.value), (where, shown[r.name], r.state)
        for r in rows:
            if r.state == S.LOST:
                assert r.agent_pid is None or not procs.is_alive(r.agent_pid, r.agent_started), where
        outcomes.append(dict(states))
        kill_everything(ctx, home)

    # the moments did reach inside the launch: some were cut short after the commit
    assert any(o.get("lost") for o in outcomes), outcomes
    assert any(o.get("running") for o in outcomes), outcomes


# -- kill -9 of the CLI during a stop --------------------------------------------------------------

# ignores the stop signal, so every stop lasts its whole timeout before the keeper kills the tree
STUBBORN = ["sh", "-c", "trap '' TERM; sleep 300"]
STOP_TIMEOUT = 0.3


def stopping_count(ctx) -> int:
    return ctx.conn.execute("SELECT COUNT(*) FROM runners WHERE state IN ('stopping', 'stopped')").fetchone()[0]


def top_up(sv, ctx, wanted: int = 3) -> None:
    missing = wanted - len(list_runners(ctx.conn))
    if missing > 0:
        sv("launch", "web", "--count", str(missing), "--stop-timeout", str(STOP_TIMEOUT), "--", *STUBBORN, check=True)


def test_cli_killed_at_any_moment_of_a_stop(sv, ctx, project, home):
    top_up(sv, ctx)
    t_marked, t_done = timed_run(home, ["stop", "--all"], lambda: stopping_count(ctx) > 0)
    settle(ctx, home)
    assert {r.state for r in list_runners(ctx.conn, include_ended=True)} == {S.STOPPED}

    # before the stop requests are committed; right after, while the keepers are being told (a few
    # ms at most); and while the command waits for the keepers to finish
    moments = [(False, d) for d in spread(0, t_marked, 3)]
    moments += [(True, d) for d in (0, 0.0005, 0.001, 0.002, 0.005)]
    moments += [(True, (t_done - t_marked) / 2)]
    outcomes = []
    for after_mark, delay in moments:
        top_up(sv, ctx)
        ended_before = {r.id for r in list_runners(ctx.conn, include_ended=True) if r.state not in ACTIVE}
        marked = more_than(lambda: stopping_count(ctx), len(ended_before)) if after_mark else None
        killed_run(home, ["stop", "--all"], marked, delay)

        ps_all(sv)
        settle(ctx, home, timeout=STOP_TIMEOUT + 10)
        rows = [r for r in list_runners(ctx.conn, include_ended=True) if r.id not in ended_before]
        states = Counter(r.state.value for r in rows)
        # a stop cut short either reached a runner (stopped) or not (still running); never lost
        assert set(states) <= {"running", "stopped"}, (delay, states)
        for r in rows:
            if r.state == S.STOPPED:
                assert not procs.is_alive(r.agent_pid, r.agent_started)
        outcomes.append(dict(states))

    kill_everything(ctx, home)
    assert any(o.get("stopped") for o in outcomes), outcomes
    assert any(o.get("running") for o in outcomes), outcomes


def test_stop_recorded_but_never_delivered_is_finished_by_reconciliation(sv, ctx, project, home):
    """The worst moment of a killed `stop`: the row says `stopping`, but the keeper was never told."""
    sv("launch", "web", "--name", "t", "--", *SLEEP, check=True)
    runner = find(ctx.conn, "t")
    # exactly what `stop` commits before it signals the keeper
    with db.write(ctx.conn):
        change_state(ctx.conn, runner.id, S.STOPPING, reason="stop requested", stop_requested_signal=None, stop_requested_timeout=None)
    time.sleep(0.3)
    assert get(ctx.conn, runner.id).state == S.STOPPING
    assert procs.is_alive(runner.agent_pid, runner.agent_started)

    ps_all(sv)
    wait_for(lambda: get(ctx.conn, runner.id).state == S.STOPPED, timeout=5)
    final = get(ctx.conn, runner.id)
    assert final.exit_signal == "SIGTERM"
    assert not procs.is_alive(runner.agent_pid, runner.agent_started)
    wait_for(lambda: not processes_of(str(home)), timeout=5)


# -- kill -9 of the daemon -------------------------------------------------------------------------


def attach(home, name: str) -> pexpect.spawn:
    child = pexpect.spawn(SV[0], [*SV[1:], "attach", name], env=env_for(home), timeout=10)
    child.expect_exact(f"[attached to {name};")
    return child


def detach(child: pexpect.spawn, name: str) -> None:
    child.send(b"\x1d")
    child.expect_exact(f"[detached from {name}]")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_daemon_killed_runners_keep_running_and_are_adopted(sv, ctx, project, home):
    sv("launch", "web", "--name", "cat", "--", "cat", check=True)
    sv("launch", "web", "--name", "sh", "--", "bash", "--norc", "--noprofile", check=True)
    before: dict[str, Runner] = {r.name: r for r in list_runners(ctx.conn)}
    sv("daemon", "start", check=True, env={"STRATAVORE_RECONCILE_INTERVAL": "0.2"})
    first = daemon.read_pid_file(ctx)
    assert first is not None

    def reconcile_runs() -> int:
        row = ctx.conn.execute("SELECT runs FROM daemon_jobs WHERE job_id='reconcile'").fetchone()
        return row["runs"] if row else 0

    # the daemon has looked at the runners a few times (and left them alone) before it dies
    wait_for(lambda: reconcile_runs() >= 2, timeout=10)
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: not first.alive, timeout=5)
    assert daemon.read_pid_file(ctx) is None

    shown = {r["name"]: r for r in json.loads(sv("ps", "--json", check=True).stdout)}
    assert {name: r["state"] for name, r in shown.items()} == {"cat": "running", "sh": "running"}
    for name, r in before.items():
        now = get(ctx.conn, r.id)
        assert now.version == r.version, f"{name} changed state"
        assert procs.is_alive(now.keeper_pid, now.keeper_started) and procs.is_alive(now.agent_pid, now.agent_started)

    child = attach(home, "cat")
    child.send("survived-the-daemon\r")
    # the terminal's echo of the line, then cat's copy of it: cat is alive and reading
    child.expect_exact("survived-the-daemon\r\nsurvived-the-daemon\r\n")
    detach(child, "cat")
    child = attach(home, "sh")
    child.send("echo $((6*7))\r")
    child.expect(r"[\r\n]42\r\n")
    detach(child, "sh")

    sv("daemon", "start", check=True)
    second = daemon.read_pid_file(ctx)
    assert second is not None and second.pid != first.pid
    started = wait_for(lambda: [e for e in events.list_events(ctx.conn, types=("daemon.started",)) if e.payload["pid"] == second.pid])
    assert started[0].payload["adopted"] == 2
    for name, r in before.items():
        now = get(ctx.conn, r.id)
        assert now.state == S.RUNNING and now.version == r.version, name
        assert now.agent_pid == r.agent_pid and procs.is_alive(now.agent_pid, now.agent_started)

    sv("daemon", "stop", check=True)
    # an interactive bash ignores SIGTERM: do not wait its whole stop timeout
    sv("stop", "--all", "--timeout", "0.2", check=True)
    assert {get(ctx.conn, r.id).state for r in before.values()} == {S.STOPPED}
    wait_for(lambda: not processes_of(str(home)), timeout=5)
