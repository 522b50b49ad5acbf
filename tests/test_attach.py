"""`stratavore attach`: a real terminal on a real PTY, driven through pexpect."""

from __future__ import annotations

import json
import os
import sys
import time

import pexpect
import psutil
import pytest

from stratavore import procs, supervisor
from stratavore.runners import get
from stratavore.states import RunnerState
from tests.conftest import SV, assert_clean_error, wait_for

PROMPT = "PROMPT> "
BASH = ["bash", "--norc", "--noprofile"]
# reads lines and reports each one's exact bytes, so a control key that got through is visible
ECHO_BYTES = [
    sys.executable,
    "-c",
    "import sys; print('READY', flush=True); [print('GOT', l.encode().hex(), flush=True) for l in iter(sys.stdin.readline, '')]",
]


def launch(ctx, command, **env):
    options = supervisor.LaunchOptions(env={"PS1": PROMPT, **env})
    [runner] = supervisor.launch(ctx, "web", command, options).started
    return runner


@pytest.fixture
def attach():
    """Start `stratavore attach` on a fresh pseudo-terminal of the given size."""
    children: list[pexpect.spawn] = []

    def spawn(name: str, *extra: str, rows: int = 24, cols: int = 80) -> pexpect.spawn:
        child = pexpect.spawn(SV[0], [*SV[1:], "attach", name, *extra], dimensions=(rows, cols), timeout=10, env=dict(os.environ))
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.close(force=True)


def ended(child: pexpect.spawn) -> int | None:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def agent_children(runner) -> list[str]:
    try:
        return [p.name() for p in psutil.Process(runner.agent_pid).children(recursive=True)]
    except psutil.Error:
        return []


def test_attach_is_a_terminal_of_the_clients_size(ctx, project, attach):
    runner = launch(ctx, BASH)
    child = attach(runner.name, rows=31, cols=97)
    child.expect_exact(PROMPT)
    child.send("stty size\r")
    child.expect(r"\D31 97\r\n")
    child.setwinsize(22, 75)
    child.send("stty size\r")
    child.expect(r"\D22 75\r\n")
    # the agent's stdin, stdout and stderr are all the terminal
    child.send("[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo tty-$((6*7))\r")
    child.expect(r"\Dtty-42\r\n")
    child.send("\x1d")
    assert ended(child) == 0


def test_ctrl_c_reaches_the_agent_and_not_the_client(ctx, project, attach):
    runner = launch(ctx, BASH)
    child = attach(runner.name)
    child.expect_exact(PROMPT)
    child.send("sleep 100\r")
    wait_for(lambda: "sleep" in agent_children(runner))
    child.send("\x03")
    wait_for(lambda: "sleep" not in agent_children(runner), timeout=5)
    child.expect_exact("^C")
    child.expect_exact(PROMPT)
    assert child.isalive()
    child.send("echo $((6*7))\r")
    child.expect(r"\D42\r\n")
    current = get(ctx.conn, runner.id)
    assert current.state == RunnerState.RUNNING
    assert current.agent_pid == runner.agent_pid
    child.send("\x1d")
    assert ended(child) == 0


def test_detach_leaves_the_agent_running(ctx, project, attach, sv):
    runner = launch(ctx, BASH)
    child = attach(runner.name)
    child.expect_exact("Ctrl-] detaches")
    child.expect_exact(PROMPT)
    child.send("echo $((100+23))\r")
    child.expect(r"\D123\r\n")
    child.send("\x1d")
    child.expect_exact(f"[detached from {runner.name}]")
    assert ended(child) == 0

    [shown] = json.loads(sv("ps", "--json", check=True).stdout)
    assert shown["name"] == runner.name
    assert shown["state"] == "running"
    assert shown["agent_pid"] == runner.agent_pid
    assert procs.is_alive(runner.agent_pid, runner.agent_started)

    # the same shell is there to attach to again
    again = attach(runner.name)
    again.expect_exact(PROMPT)
    again.send("echo $$\r")
    again.expect(rf"\D{runner.agent_pid}\r\n")
    again.send("\x1d")
    assert ended(again) == 0


@pytest.mark.parametrize("how", ["flag", "config"])
def test_configurable_detach_key(ctx, project, attach, how):
    runner = launch(ctx, ECHO_BYTES)
    if how == "flag":
        child = attach(runner.name, "--detach-key", "ctrl-q")
    else:
        ctx.paths.config_file.write_text('detach_key = "ctrl-q"\n')
        child = attach(runner.name)
    child.expect_exact("Ctrl-Q detaches")
    child.expect_exact("READY")
    # the default detach key is now an ordinary key, and reaches the agent
    child.send("\x1d\r")
    child.expect_exact("GOT 1d0a")
    assert child.isalive()
    child.send("ok\r")
    child.expect_exact("GOT 6f6b0a")
    child.send("\x11")
    child.expect_exact(f"[detached from {runner.name}]")
    assert ended(child) == 0
    assert get(ctx.conn, runner.id).state == RunnerState.RUNNING
    assert procs.is_alive(runner.agent_pid, runner.agent_started)


def test_attach_replays_earlier_output_and_forces_a_redraw(ctx, project, attach):
    # the agent reports every SIGWINCH with the size it then sees
    script = 'trap "echo WINCH \\$(stty size)" WINCH; echo output-before-attach; while :; do sleep 0.05; done'
    runner = launch(ctx, ["bash", "-c", script])
    log = ctx.paths.runner_log(runner.id)
    wait_for(lambda: log.exists() and b"output-before-attach" in log.read_bytes())
    time.sleep(0.1)
    assert b"WINCH" not in log.read_bytes()

    # same size as the keeper's terminal already has: only the forced redraw makes the agent repaint
    rows, cols = 40, 120
    child = attach(runner.name, rows=rows, cols=cols)
    child.expect_exact("output-before-attach")
    child.expect_exact(f"WINCH {rows} {cols}")
    child.send("\x1d")
    assert ended(child) == 0


def test_two_clients_see_the_same_terminal(ctx, project, attach):
    runner = launch(ctx, BASH)
    first = attach(runner.name)
    second = attach(runner.name)
    first.expect_exact(PROMPT)
    second.expect_exact(PROMPT)

    first.send("echo $((1000+2345))\r")
    first.expect(r"\D3345\r\n")
    second.expect(r"\D3345\r\n")

    second.send("echo $((2000+2345))\r")
    second.expect(r"\D4345\r\n")
    first.expect(r"\D4345\r\n")

    # one client detaching leaves the other attached
    first.send("\x1d")
    assert ended(first) == 0
    second.send("echo $((3000+2345))\r")
    second.expect(r"\D5345\r\n")
    second.send("\x1d")
    assert ended(second) == 0


def test_agent_exit_ends_the_client_with_the_final_state(ctx, project, attach, sv):
    runner = launch(ctx, BASH)
    child = attach(runner.name)
    child.expect_exact(PROMPT)
    child.send("exit 5\r")
    child.expect_exact(f"[{runner.name} exited (exit code 5)]")
    assert ended(child) == 0

    current = get(ctx.conn, runner.id)
    assert current.state == RunnerState.EXITED
    assert current.exit_code == 5

    again = sv("attach", runner.name, input="")
    assert_clean_error(again, 4, "exited")
