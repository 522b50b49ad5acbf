"""Runner output logs: tail, follow, size cap and rotation, and failing log writes that never reach the agent."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import psutil

from stratavore import procs, supervisor
from stratavore.runners import get
from stratavore.states import RunnerState
from tests.conftest import SV, wait_for

# prints numbered lines forever, quickly enough to rotate a small log several times a second
TICKER = [
    sys.executable,
    "-c",
    "import itertools, time\nfor i in itertools.count():\n    print(f'tick {i:08d} ' + 'x' * 60, flush=True)\n    time.sleep(0.004)",
]


def launch(ctx, command, **options):
    [runner] = supervisor.launch(ctx, "web", command, supervisor.LaunchOptions(**options)).started
    return runner


def configured(request, monkeypatch, **settings):
    """Set settings in the environment, then create the context (and project) that reads them."""
    for key, value in settings.items():
        monkeypatch.setenv(f"STRATAVORE_{key.upper()}", str(value))
    request.getfixturevalue("project")
    return request.getfixturevalue("ctx")


def log_files(ctx, runner) -> list[Path]:
    """The runner's log and its rotations (not the keeper's own diagnostics)."""
    log = ctx.paths.runner_log(runner.id)
    return sorted(p for p in log.parent.glob(f"{log.name}*") if re.fullmatch(re.escape(log.name) + r"(\.\d+)?", p.name))


def log_text(ctx, runner) -> str:
    path = ctx.paths.runner_log(runner.id)
    return path.read_bytes().decode(errors="replace") if path.exists() else ""


def last_tick(text: str) -> int:
    return max(int(n) for n in re.findall(r"tick (\d{8}) x{60}", text))


def state(ctx, runner) -> RunnerState:
    return get(ctx.conn, runner.id).state


def test_output_goes_to_the_log_and_tail_gives_the_last_lines(ctx, project, sv):
    runner = launch(ctx, ["sh", "-c", "for i in $(seq 1 40); do echo line-$i; done; exec sleep 300"])
    wait_for(lambda: "line-40\r\n" in log_text(ctx, runner))

    everything = sv("logs", runner.name, check=True).stdout.splitlines()
    assert everything == [f"line-{i}" for i in range(1, 41)]
    assert sv("logs", runner.name, "--tail", "3", check=True).stdout.splitlines() == ["line-38", "line-39", "line-40"]
    assert sv("logs", runner.name, "-n", "1", check=True).stdout.splitlines() == ["line-40"]
    assert sv("logs", runner.name, "--tail", "0", check=True).stdout == ""

    supervisor.stop(ctx, [runner])
    # the log outlives the runner
    assert sv("logs", runner.name, "--tail", "2", check=True).stdout.splitlines() == ["line-39", "line-40"]


def test_logs_follow_prints_new_output_and_returns_when_the_runner_ends(ctx, project, workdir):
    script = "echo started; while [ ! -e go ]; do sleep 0.02; done; echo after-go; sleep 0.3; echo last-line"
    runner = launch(ctx, ["sh", "-c", script])
    wait_for(lambda: "started" in log_text(ctx, runner))

    follower = subprocess.Popen([*SV, "logs", "-f", runner.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "started\n"
        assert follower.poll() is None
        (workdir / "go").touch()
        out, err = follower.communicate(timeout=15)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    assert out.splitlines() == ["after-go", "last-line"]
    assert state(ctx, runner) == RunnerState.EXITED


def test_logs_follow_loses_nothing_between_the_tail_and_the_new_output(ctx, project):
    count = 150_000
    script = f"for i in range({count}):\n    print(f'n {{i}}', flush=True)"
    runner = launch(ctx, [sys.executable, "-c", script])
    wait_for(lambda: "n 3000\r\n" in log_text(ctx, runner))
    # several followers, each starting while the agent writes: what a follower printed from the log
    # so far and what it printed as it came must join without a gap or a repeat
    followers = []
    try:
        for _ in range(3):
            followers.append(subprocess.Popen([*SV, "logs", "-f", runner.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            time.sleep(0.05)
        outputs = [f.communicate(timeout=30) for f in followers]
    finally:
        for f in followers:
            if f.poll() is None:
                f.kill()
                f.communicate()
    assert log_text(ctx, runner).endswith(f"n {count - 1}\r\n")
    for follower, (out, err) in zip(followers, outputs, strict=True):
        assert follower.returncode == 0, err
        numbers = [int(n) for n in re.findall(rb"^n (\d+)\r$", out, re.M)]
        assert numbers == list(range(count)), [(a, b) for a, b in zip(numbers, numbers[1:], strict=False) if b != a + 1][:5]


def test_logs_follow_continues_across_rotations(request, monkeypatch):
    ctx = configured(request, monkeypatch, log_max_bytes=4096, log_backups=2)
    count = 1500  # 9 bytes a line: about three rotations, one every half second or so
    script = f"import time\nfor i in range({count}):\n    print(f'n {{i:05d}}', flush=True)\n    time.sleep(0.0008)"
    runner = launch(ctx, [sys.executable, "-c", script])
    wait_for(lambda: "n 00010\r\n" in log_text(ctx, runner))
    follower = subprocess.Popen([*SV, "logs", "-f", runner.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    log = ctx.paths.runner_log(runner.id)
    assert log.with_name(f"{log.name}.2").exists()
    numbers = [int(n) for n in re.findall(rb"^n (\d+)\r$", out, re.M)]
    assert numbers == list(range(count)), [(a, b) for a, b in zip(numbers, numbers[1:], strict=False) if b != a + 1][:5]


def test_log_is_capped_and_rotated(request, monkeypatch, sv):
    ctx = configured(request, monkeypatch, log_max_bytes=8192, log_backups=2)
    count = 20000
    runner = launch(ctx, [sys.executable, "-c", f"for i in range({count}): print(f'chatty line {{i:05d}}')"])

    def check_files() -> bool:
        files = log_files(ctx, runner)
        assert len(files) <= 3, files
        for path in files:
            try:
                assert path.stat().st_size <= 8192, (path, path.stat().st_size)
            except FileNotFoundError:  # rotated away between the listing and the stat
                pass
        return state(ctx, runner) not in (RunnerState.STARTING, RunnerState.RUNNING)

    wait_for(check_files, timeout=30, interval=0.005)
    check_files()
    done = get(ctx.conn, runner.id)
    assert (done.state, done.exit_code, done.exit_signal) == (RunnerState.EXITED, 0, None)

    log = ctx.paths.runner_log(runner.id)
    assert [p.name for p in log_files(ctx, runner)] == [log.name, f"{log.name}.1", f"{log.name}.2"]
    # what is kept is the most recent output, contiguous across the rotated files
    kept = b"".join(p.read_bytes() for p in (log.with_name(f"{log.name}.2"), log.with_name(f"{log.name}.1"), log))
    assert 16384 < len(kept) <= 3 * 8192
    lines = kept.decode().split("\r\n")
    assert lines[-1] == ""
    numbers = [int(line.removeprefix("chatty line ")) for line in lines[1:-1]]
    assert numbers == list(range(count - len(numbers), count))
    tail = sv("logs", runner.name, "--tail", "2", check=True).stdout.splitlines()
    assert tail == [f"chatty line {count - 2}", f"chatty line {count - 1}"]


def keeper_log_fds(keeper_pid: int, log: Path) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{keeper_pid}/fd"):
        try:
            target = os.readlink(f"/proc/{keeper_pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(log)):
            targets.append(target)
    return targets


def assert_agent_unharmed(ctx, runner, after_tick: int) -> None:
    """Still running, and still producing output that an attached client sees live."""
    current = get(ctx.conn, runner.id)
    assert current.state == RunnerState.RUNNING
    assert current.agent_pid == runner.agent_pid
    assert procs.is_alive(runner.agent_pid, runner.agent_started)
    child = pexpect.spawn(SV[0], [*SV[1:], "attach", runner.name], timeout=10, env=dict(os.environ))
    try:
        child.expect_exact(f"tick {after_tick + 100:08d}")
        child.send("\x1d")
        child.expect_exact(f"[detached from {runner.name}]")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def assert_stops_normally(ctx, runner) -> None:
    [stopped] = supervisor.stop(ctx, [runner], timeout=2)
    assert (stopped.state, stopped.exit_signal) == (RunnerState.STOPPED, "SIGTERM")


def test_removed_log_directory_never_stops_the_agent(request, monkeypatch):
    ctx = configured(request, monkeypatch, log_max_bytes=4096)
    runner = launch(ctx, TICKER)
    log = ctx.paths.runner_log(runner.id)
    wait_for(lambda: "tick 00000010" in log_text(ctx, runner))
    keeper = get(ctx.conn, runner.id).keeper_pid
    assert keeper_log_fds(keeper, log) == [str(log)]

    # with the directory gone, neither the next rotation nor reopening the log can succeed
    written = last_tick(log_text(ctx, runner))
    shutil.rmtree(log.parent)
    # the keeper found out (its rotation failed) and dropped the log
    wait_for(lambda: not keeper_log_fds(keeper, log), timeout=5)
    assert_agent_unharmed(ctx, runner, after_tick=written)
    assert_stops_normally(ctx, runner)


def test_failing_log_writes_never_stop_the_agent(ctx, project):
    runner = launch(ctx, TICKER)
    log = ctx.paths.runner_log(runner.id)
    wait_for(lambda: "tick 00000010" in log_text(ctx, runner))
    keeper = psutil.Process(get(ctx.conn, runner.id).keeper_pid)

    # a file size limit the log has already reached: every further write fails (EFBIG), like a full disk
    size = log.stat().st_size
    keeper.rlimit(psutil.RLIMIT_FSIZE, (size, psutil.RLIM_INFINITY))
    try:
        time.sleep(0.2)
        frozen = log.read_bytes()
        assert len(frozen) <= size + 4096
        assert_agent_unharmed(ctx, runner, after_tick=last_tick(frozen.decode()))
        # nothing more reached the log, yet the agent ran on
        assert log.read_bytes() == frozen
    finally:
        # the limit also blocks the keeper's database writes; lift it so that the stop is recorded
        keeper.rlimit(psutil.RLIMIT_FSIZE, (psutil.RLIM_INFINITY, psutil.RLIM_INFINITY))
    assert_stops_normally(ctx, runner)
