"""Every test gets its own STRATAVORE_HOME, and nothing it started outlives it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from stratavore.context import Context

REPO = Path(__file__).resolve().parent.parent


def processes_of(home: str) -> list[psutil.Process]:
    """Every live process whose environment carries this STRATAVORE_HOME (keepers, agents, daemons)."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("STRATAVORE_HOME") == home:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def recorded_processes(home: str) -> list[psutil.Process]:
    """Keepers and agents the database knows of. A keeper forked inside the test process carries the
    environment pytest started with, so only its row can name it."""
    import sqlite3

    from stratavore import procs as sv_procs

    db = Path(home) / "data" / "stratavore.db"
    if not db.exists():
        return []
    found = []
    try:
        conn = sqlite3.connect(db, timeout=5)
        rows = conn.execute("SELECT keeper_pid, keeper_started, agent_pid, agent_started FROM runners").fetchall()
        conn.close()
    except sqlite3.Error:
        return []
    for keeper_pid, keeper_started, agent_pid, agent_started in rows:
        for pid, started in ((keeper_pid, keeper_started), (agent_pid, agent_started)):
            if sv_procs.is_alive(pid, started):
                try:
                    found.append(psutil.Process(pid))
                except psutil.Error:
                    pass
    return found


def kill_all(home: str) -> list[int]:
    from stratavore import procs as sv_procs

    targets = {p.pid: p for p in [*recorded_processes(home), *processes_of(home)]}
    identities = []
    for proc in targets.values():
        try:
            identities.append((proc.pid, sv_procs.start_time(proc.pid)))
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    # zombies count as gone: the sandbox's init may be slow to reap processes that are not ours
    sv_procs.wait_gone(identities, timeout=5)
    return list(targets)


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # short, so that runner sockets fit in sockaddr_un
    path = Path(tempfile.mkdtemp(prefix="sv", dir="/tmp"))
    monkeypatch.setenv("STRATAVORE_HOME", str(path))
    for key in list(os.environ):
        if key.startswith("STRATAVORE_") and key != "STRATAVORE_HOME":
            monkeypatch.delenv(key)
    yield path
    kill_all(str(path))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ctx(home: Path) -> Iterator[Context]:
    context = Context.load()
    yield context
    context.close()


@pytest.fixture
def workdir(home: Path) -> Path:
    path = home / "work"
    path.mkdir()
    return path


@pytest.fixture
def project(ctx: Context, workdir: Path):
    from stratavore import projects

    return projects.add(ctx.conn, "web", workdir)


SV = [sys.executable, "-m", "stratavore"]


@pytest.fixture
def sv(home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real stratavore command."""

    def run(*args: str, check: bool = False, timeout: float = 60, env: dict[str, str] | None = None, input: str | None = None):
        full_env = {**os.environ, "STRATAVORE_HOME": str(home), **(env or {})}
        proc = subprocess.run([*SV, *args], capture_output=True, text=True, timeout=timeout, env=full_env, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"stratavore {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    return run


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    """A one-line `Error: ...` on stderr, the expected exit code, and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), proc.stderr
    assert fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
