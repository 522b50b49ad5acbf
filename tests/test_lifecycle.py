"""A runner's life with real processes: stop and kill, the whole tree, exit status, restarts, heartbeats."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from stratavore import events, procs, supervisor
from stratavore.errors import NotFound
from stratavore.runners import find, get
from stratavore.states import ACTIVE, RunnerState
from tests.conftest import assert_clean_error, wait_for

S = RunnerState
IGNORES_TERM = ["bash", "-c", 'trap "" TERM; sleep 300; true']


def launch(ctx, command, **options):
    [runner] = supervisor.launch(ctx, "web", command, supervisor.LaunchOptions(**options)).started
    return runner


def configured(request, monkeypatch, **settings):
    """Set settings in the environment, then create the context (and project) that reads them."""
    for key, value in settings.items():
        monkeypatch.setenv(f"STRATAVORE_{key.upper()}", str(value))
    request.getfixturevalue("project")
    return request.getfixturevalue("ctx")


def current(ctx, runner):
    return get(ctx.conn, runner.id)


def ended(ctx, runner, timeout: float = 10.0):
    """Wait for the runner to end and return it."""
    return wait_for(lambda: (r := current(ctx, runner)).state not in ACTIVE and r, timeout)


def tree(pid: int) -> list[tuple[int, float]]:
    """(pid, start time) of a process and every descendant."""
    root = psutil.Process(pid)
    return [(p.pid, procs.start_time(p.pid)) for p in [root, *root.children(recursive=True)]]


def child_names(pid: int) -> list[str]:
    try:
        return [p.name() for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def runner_events(ctx, runner, *types: str) -> list[events.Event]:
    return events.list_events(ctx.conn, aggregate_id=runner.id, types=types)


# -- stop and kill -------------------------------------------------------------------------------


def test_stop_sends_the_stop_signal_and_records_it(ctx, project):
    runner = launch(ctx, ["sleep", "300"])
    [done] = supervisor.stop(ctx, [runner])
    assert (done.state, done.exit_signal, done.exit_code) == (S.STOPPED, "SIGTERM", None)
    assert not procs.is_alive(runner.agent_pid, runner.agent_started)
    assert [e.payload["to"] for e in runner_events(ctx, runner, "runner.stopping", "runner.stopped")] == ["stopping", "stopped"]


def test_stop_signal_option_is_used_and_recorded(ctx, project, sv):
    out = sv("launch", "web", "--stop-signal", "INT", "--json", "--", "sleep", "300", check=True).stdout
    [started] = json.loads(out)["started"]
    assert started["stop_signal"] == "SIGINT"
    runner = get(ctx.conn, started["id"])
    stopped = sv("stop", runner.name, check=True)
    assert "killed by SIGINT" in stopped.stdout
    done = current(ctx, runner)
    assert (done.state, done.exit_signal) == (S.STOPPED, "SIGINT")


def test_agent_ignoring_the_stop_signal_is_killed_after_the_timeout(ctx, project):
    runner = launch(ctx, IGNORES_TERM, stop_timeout=1.0)
    wait_for(lambda: "sleep" in child_names(runner.agent_pid))
    members = tree(runner.agent_pid)
    started = time.monotonic()
    [done] = supervisor.stop(ctx, [runner])
    took = time.monotonic() - started
    assert 1.0 <= took < 3.0, took
    assert (done.state, done.exit_signal) == (S.STOPPED, "SIGKILL")
    assert not [pid for pid, start in members if procs.is_alive(pid, start)]


def test_stop_ends_the_whole_tree_including_escaped_processes(ctx, project):
    runner = launch(ctx, ["bash", "-c", "setsid sleep 300 & sleep 300 & wait"])

    def escaped() -> list[int]:
        return [pid for pid, _ in tree(runner.agent_pid) if pid != runner.agent_pid and os.getsid(pid) == pid]

    # both children exec'd sleep, and one of them left the agent's session
    wait_for(lambda: child_names(runner.agent_pid) == ["sleep", "sleep"] and escaped())
    members = tree(runner.agent_pid)
    assert len(members) == 3 and len(escaped()) == 1
    assert all(procs.is_alive(pid, start) for pid, start in members)

    [done] = supervisor.stop(ctx, [runner])
    assert done.state == S.STOPPED
    assert [pid for pid, start in members if procs.is_alive(pid, start)] == []


def test_kill_kills_at_once(ctx, project, sv):
    runner = launch(ctx, IGNORES_TERM, stop_timeout=30)
    wait_for(lambda: "sleep" in child_names(runner.agent_pid))
    members = tree(runner.agent_pid)
    started = time.monotonic()
    killed = sv("kill", runner.name, check=True)
    assert time.monotonic() - started < 5
    assert f"Killed {runner.name} (killed by SIGKILL)" in killed.stdout
    done = current(ctx, runner)
    assert (done.state, done.exit_signal) == (S.STOPPED, "SIGKILL")
    assert [pid for pid, start in members if procs.is_alive(pid, start)] == []


def test_restart_keeps_name_and_id_with_a_new_agent(ctx, project, sv):
    runner = launch(ctx, ["sleep", "300"])
    [again] = json.loads(sv("restart", runner.name, "--json", check=True).stdout)
    assert (again["id"], again["name"], again["state"]) == (runner.id, runner.name, "running")
    assert again["agent_pid"] != runner.agent_pid
    assert not procs.is_alive(runner.agent_pid, runner.agent_started)
    assert procs.is_alive(again["agent_pid"], again["agent_started"])
    assert [r.id for r in supervisor.resolve(ctx, [runner.name])] == [runner.id]
    supervisor.stop(ctx, [current(ctx, runner)])


def test_rm_refuses_an_active_runner_and_removes_an_ended_one(ctx, project, sv):
    runner = launch(ctx, ["sh", "-c", "echo something to log; exec sleep 300"])
    log = ctx.paths.runner_log(runner.id)
    wait_for(lambda: log.exists() and log.stat().st_size > 0)

    refused = sv("rm", runner.name)
    assert_clean_error(refused, 4, "stop it first")
    assert current(ctx, runner).state == S.RUNNING
    assert procs.is_alive(runner.agent_pid, runner.agent_started)

    supervisor.stop(ctx, [runner])
    assert log.exists()
    removed = sv("rm", runner.name, check=True)
    assert f"Removed {runner.name}" in removed.stdout
    with pytest.raises(NotFound):
        find(ctx.conn, runner.name)
    assert list(log.parent.glob(f"{runner.id}*")) == []
    assert_clean_error(sv("logs", runner.name), 3, "no runner named")


def test_rm_force_stops_and_removes(ctx, project, sv):
    runner = launch(ctx, ["bash", "-c", "sleep 300 & wait"])
    wait_for(lambda: "sleep" in child_names(runner.agent_pid))
    members = tree(runner.agent_pid)
    sv("rm", "--force", runner.name, check=True)
    assert [pid for pid, start in members if procs.is_alive(pid, start)] == []
    with pytest.raises(NotFound):
        find(ctx.conn, runner.id)
    assert list(ctx.paths.runner_log_dir.glob(f"{runner.id}*")) == []


# -- how the agent ended -------------------------------------------------------------------------


def test_exit_code_is_recorded(ctx, project):
    runner = launch(ctx, ["bash", "-c", "exit 3"])
    done = ended(ctx, runner)
    assert (done.state, done.exit_code, done.exit_signal) == (S.EXITED, 3, None)
    assert done.restarts == 0


def test_signal_from_outside_is_recorded(ctx, project):
    runner = launch(ctx, ["sleep", "300"])
    os.kill(runner.agent_pid, signal.SIGUSR1)
    done = ended(ctx, runner)
    assert (done.state, done.exit_code, done.exit_signal) == (S.EXITED, None, "SIGUSR1")


# -- the restart policy --------------------------------------------------------------------------


def test_on_failure_gives_up_after_max_restarts_with_growing_backoff(request, monkeypatch):
    ctx = configured(request, monkeypatch, backoff_initial=0.2)
    runner = launch(ctx, ["bash", "-c", "exit 1"], restart="on-failure", max_restarts=2)
    done = ended(ctx, runner)
    assert done.state == S.FAILED
    assert "restart" in done.reason, done.reason
    assert (done.restarts, done.exit_code) == (2, 1)

    timeline = runner_events(ctx, runner, "runner.running", "runner.backoff", "runner.failed")
    assert [e.type for e in timeline] == [
        "runner.running",
        "runner.backoff",
        "runner.running",
        "runner.backoff",
        "runner.running",
        "runner.failed",
    ]
    assert [e.payload.get("restarts") for e in timeline if e.type == "runner.backoff"] == [1, 2]
    # the wait from each backoff to the next start doubles: 0.2 s, then 0.4 s
    waits = [later.created_at - earlier.created_at for earlier, later in zip(timeline[1:4:2], timeline[2:5:2], strict=True)]
    assert waits[0] >= 0.19 and waits[1] >= 0.39, waits
    assert waits[1] > waits[0], waits


def test_always_restarts_a_command_that_succeeded(request, monkeypatch):
    ctx = configured(request, monkeypatch, backoff_initial=0.05)
    runner = launch(ctx, ["true"], restart="always", max_restarts=1)
    done = ended(ctx, runner)
    assert (done.state, done.restarts, done.exit_code) == (S.FAILED, 1, 0)
    assert len(runner_events(ctx, runner, "runner.running")) == 2


def test_on_failure_does_not_restart_a_command_that_succeeded(request, monkeypatch):
    ctx = configured(request, monkeypatch, backoff_initial=0.05)
    runner = launch(ctx, ["true"], restart="on-failure", max_restarts=3)
    done = ended(ctx, runner)
    assert (done.state, done.restarts, done.exit_code) == (S.EXITED, 0, 0)
    assert len(runner_events(ctx, runner, "runner.running")) == 1
    assert runner_events(ctx, runner, "runner.backoff") == []


def test_a_long_enough_run_resets_the_restart_counter(request, monkeypatch):
    ctx = configured(request, monkeypatch, backoff_initial=0.05, restart_reset_after=0.3)
    # each run outlasts restart_reset_after, so max_restarts=1 is never reached
    runner = launch(ctx, ["bash", "-c", "sleep 0.5; exit 1"], restart="on-failure", max_restarts=1)
    wait_for(lambda: len(runner_events(ctx, runner, "runner.running")) >= 4, timeout=15)
    now = current(ctx, runner)
    assert now.state in (S.RUNNING, S.BACKOFF)
    assert now.restarts == 1
    assert [e.payload["restarts"] for e in runner_events(ctx, runner, "runner.backoff")][:3] == [1, 1, 1]
    [done] = supervisor.stop(ctx, [now])
    assert done.state == S.STOPPED


# -- heartbeats, many runners, the agent's environment -------------------------------------------


def test_heartbeats_record_the_agents_tree(request, monkeypatch):
    ctx = configured(request, monkeypatch, heartbeat_interval=0.2)
    runner = launch(ctx, ["bash", "-c", "sleep 300 & sleep 300 & wait"])
    first = wait_for(lambda: (r := current(ctx, runner)).process_count == 3 and r)
    assert first.heartbeat_at is not None
    assert first.rss_bytes > 1024 * 1024
    assert first.cpu_percent is not None
    beats = [first.heartbeat_at]

    def advanced() -> bool:
        at = current(ctx, runner).heartbeat_at
        if at != beats[-1]:
            beats.append(at)
        return len(beats) >= 4

    wait_for(advanced, timeout=5)
    assert beats == sorted(beats)
    assert current(ctx, runner).process_count == 3
    supervisor.stop(ctx, [runner])


def test_launch_count_gives_each_runner_its_own_keeper_and_session(ctx, project, sv):
    out = sv("launch", "web", "--count", "10", "--json", "--", "sleep", "300", check=True).stdout
    started = json.loads(out)
    assert started["failed"] == []
    assert sorted(r["name"] for r in started["started"]) == sorted(f"web-{i}" for i in range(1, 11))
    runners = [get(ctx.conn, r["id"]) for r in started["started"]]
    assert all(r.state == S.RUNNING for r in runners)
    assert len({r.keeper_pid for r in runners}) == 10
    assert len({r.agent_pid for r in runners}) == 10
    for r in runners:
        assert procs.is_alive(r.keeper_pid, r.keeper_started)
        assert procs.is_alive(r.agent_pid, r.agent_started)
        assert psutil.Process(r.agent_pid).ppid() == r.keeper_pid
        assert os.getsid(r.agent_pid) == r.agent_pid
        assert os.getpgid(r.agent_pid) == r.agent_pid
        assert os.getsid(r.keeper_pid) != r.agent_pid
    done = supervisor.stop(ctx, runners)
    assert {r.state for r in done} == {S.STOPPED}


def test_agent_environment(ctx, project):
    runner = launch(ctx, ["sleep", "300"], env={"EXTRA": "yes"})
    status = dict(line.split(":\t", 1) for line in open(f"/proc/{runner.agent_pid}/status").read().splitlines() if ":\t" in line)
    ignored = int(status["SigIgn"], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} is ignored in the agent"
    assert int(status["SigBlk"], 16) == 0
    environ = dict(item.split("=", 1) for item in open(f"/proc/{runner.agent_pid}/environ").read().split("\0") if "=" in item)
    assert environ["STRATAVORE_RUNNER_ID"] == runner.id
    assert environ["STRATAVORE_RUNNER_NAME"] == runner.name
    assert environ["STRATAVORE_PROJECT"] == "web"
    assert environ["EXTRA"] == "yes"
    supervisor.stop(ctx, [runner])
