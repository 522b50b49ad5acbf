#!/usr/bin/env python3
"""Compare Stratavore with supervisord and pm2 at supervising `sleep 600`.

Five measures, each the median of several runs (every run starts from fresh, isolated state):
  1. one launch: from invoking the CLI until the process is reported running;
  2. COUNT launches with one command, until all are running;
  3. memory the supervisor adds per runner (RSS, PSS, USS);
  4. stopping COUNT until every supervised process (and, for Stratavore, every keeper) is gone;
  5. from `kill -9` of one agent until the supervisor's status shows the exit.

Run:  python bench/supervise.py [--runs 3] [--count 100] [--kills 5] [--only NAME ...] [--json]
Only psutil and the standard library are used; supervisord and pm2 are optional (a missing one is
skipped with a note). Everything started is cleaned up by pid, even when a measurement fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xmlrpc.client
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024
# every process we start carries this variable; the final sweep kills whatever still has it
MARKER = "SVBENCH_RUN"
POLL_INTERVAL = 0.001
COMMAND_TIMEOUT = 120.0
WAIT_TIMEOUT = 60.0
# memory is read this long after the launch of many: past Stratavore's first heartbeat (every 5 s),
# which imports psutil into each keeper, so the figure is the steady state, not the start-up one
SETTLE_SECONDS = 6.0
AGENT = [shutil.which("sleep") or "/bin/sleep", "600"]


# -- the measures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    target: float | None = None
    target_text: str = ""


def measures(count: int) -> list[Measure]:
    return [
        Measure("one_launch_ms", "one launch (ms)", 150, "< 150 ms"),
        Measure("many_launch_ms", f"{count} launches, one command (ms)", 1000, "< 1000 ms"),
        Measure("pss_per_runner_mib", "memory per runner, PSS (MiB)", 10e6 / MIB, "< 10 MB (9.5 MiB)"),
        Measure("uss_per_runner_mib", "memory per runner, USS (MiB)"),
        Measure("rss_per_runner_mib", "memory per runner, RSS (MiB)"),
        Measure("pss_total_mib", f"supervisor PSS total, {count} runners (MiB)"),
        Measure("stop_many_ms", f"stop {count} until all gone (ms)", 500, "< 500 ms"),
        Measure("exit_seen_ms", "kill -9 to exit shown (ms)", 100, "< 100 ms"),
    ]


@dataclass
class Memory:
    rss: int = 0
    pss: int = 0
    uss: int = 0


@dataclass
class RunFigures:
    """One run of one contender; lists hold repeated samples within the run."""

    one_launch_ms: list[float] = field(default_factory=list)
    many_launch_ms: float | None = None
    memory: Memory | None = None
    stop_many_ms: float | None = None
    exit_seen_ms: list[float] = field(default_factory=list)

    def summary(self, count: int) -> dict[str, float | None]:
        mem = self.memory
        return {
            "one_launch_ms": _median(self.one_launch_ms),
            "many_launch_ms": self.many_launch_ms,
            "pss_per_runner_mib": mem.pss / count / MIB if mem else None,
            "uss_per_runner_mib": mem.uss / count / MIB if mem else None,
            "rss_per_runner_mib": mem.rss / count / MIB if mem else None,
            "pss_total_mib": mem.pss / MIB if mem else None,
            "stop_many_ms": self.stop_many_ms,
            "exit_seen_ms": _median(self.exit_seen_ms),
        }


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# -- process helpers -----------------------------------------------------------------------------


class BenchError(RuntimeError):
    """A contender did something the benchmark cannot measure past."""


def find_executable(name: str) -> str | None:
    """Prefer the binary next to this Python: a pyenv shim adds ~100 ms to every call we time."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def run(cmd: list[str], env: dict[str, str], *, check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a command to completion; return its wall time in ms and the result."""
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    elapsed = (time.perf_counter() - start) * 1000
    if check and result.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:3])} ... exited {result.returncode}: {_last_line(result.stderr or result.stdout)}")
    return elapsed, result


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT) -> float:
    """Poll ``predicate`` every millisecond; return perf_counter() at the first success."""
    deadline = time.perf_counter() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def snapshot(pids: Iterable[int]) -> list[psutil.Process]:
    """Process objects taken now, so a later check is not fooled by a reused pid."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return procs


def has_exited(proc: psutil.Process) -> bool:
    # a zombie has exited; reaping it is its parent's business (pid 1 for double-forked keepers)
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_all_exited(procs: list[psutil.Process], what: str) -> float:
    remaining = list(procs)

    def all_exited() -> bool:
        remaining[:] = [p for p in remaining if not has_exited(p)]
        return not remaining

    return wait_until(all_exited, what)


def memory_of(pids: Iterable[int]) -> Memory:
    total = Memory()
    for proc in snapshot(pids):
        info = proc.memory_full_info()
        total.rss += info.rss
        total.pss += info.pss
        total.uss += info.uss
    return total


def sweep(token: str) -> list[str]:
    """SIGKILL every process still carrying our marker; describe each one found.

    Repeated until a pass finds nothing, since a supervisor may start a process while we sweep.
    """
    found: list[str] = []
    for _ in range(10):
        killed = _sweep_once(token)
        if not killed:
            break
        found.extend(killed)
        time.sleep(0.05)
    return found


def _sweep_once(token: str) -> list[str]:
    killed = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.pid == me:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE or proc.environ().get(MARKER) != token:
                continue
            proc.kill()
            killed.append(f"{proc.pid} {proc.info['name']}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return killed


def terminate(pid: int, grace: float = 5.0) -> None:
    """SIGTERM one process we started, then SIGKILL if it outlives ``grace``."""
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(grace)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.NoSuchProcess:
        pass


# -- contenders ----------------------------------------------------------------------------------


class Contender:
    """One supervisor under test. A fresh instance is made for every run."""

    label = ""

    def __init__(self, workdir: Path, env: dict[str, str], count: int) -> None:
        self.workdir = workdir
        self.env = env
        self.count = count
        self.notes: list[str] = []

    @staticmethod
    def missing() -> str | None:
        """Why this contender cannot run here, or None."""
        return None

    def start(self) -> None:
        """Prepare state and any daemon; not timed."""

    def launch_one(self, index: int) -> float:
        raise NotImplementedError

    def exit_seen(self, index: int) -> float:
        """SIGKILL single runner ``index``'s agent; ms until the supervisor reports it ended."""
        raise NotImplementedError

    def launch_many(self) -> float:
        raise NotImplementedError

    def settle(self, since: float) -> None:
        """Wait until the runners launched at ``since`` (perf_counter) are in their steady state."""
        time.sleep(max(0.0, since + SETTLE_SECONDS - time.perf_counter()))

    def supervisor_memory(self) -> Memory:
        raise NotImplementedError

    def stop_many(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Shut down gracefully; the caller's marker sweep catches anything left."""


class Stratavore(Contender):
    label = "Stratavore"
    project = "bench"

    def __init__(self, workdir: Path, env: dict[str, str], count: int) -> None:
        super().__init__(workdir, env, count)
        self.exe = find_executable("stratavore") or "stratavore"
        self.env = {**env, "STRATAVORE_HOME": str(workdir / "home")}
        self.db_path = workdir / "home" / "data" / "stratavore.db"
        self.singles: dict[int, tuple[str, int]] = {}

    @staticmethod
    def missing() -> str | None:
        return None if find_executable("stratavore") else "the `stratavore` command is not installed"

    def cli(self, *args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
        return run([self.exe, *args], self.env, check=check)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        # read-only and separate from Stratavore's own connections, as any observer would be
        with closing(self.connect()) as conn:
            return conn.execute(sql, params).fetchall()

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)

    def start(self) -> None:
        project_dir = self.workdir / "project"
        project_dir.mkdir()
        self.cli("project", "add", self.project, str(project_dir))

    def launch_one(self, index: int) -> float:
        elapsed, result = self.cli("launch", self.project, "--", *AGENT)
        # prints `NAME  SHORT_ID  running  pid N`
        fields = result.stdout.split()
        if len(fields) < 5 or fields[2] != "running":
            raise BenchError(f"unexpected launch output: {result.stdout!r}")
        self.singles[index] = (fields[0], int(fields[4]))
        return elapsed

    def exit_seen(self, index: int) -> float:
        name, pid = self.singles[index]
        with closing(self.connect()) as conn:

            def shown_ended() -> bool:
                return conn.execute("SELECT state FROM runners WHERE name=?", (name,)).fetchone()[0] != "running"

            start = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            seen = wait_until(shown_ended, f"{name} to show its exit")
        return (seen - start) * 1000

    def launch_many(self) -> float:
        elapsed, result = self.cli("launch", self.project, "--count", str(self.count), "--", *AGENT, check=False)
        if result.returncode != 0:
            self.notes.append(f"launch --count {self.count} exited {result.returncode}: {_last_line(result.stderr)}")
        running = self.query("SELECT COUNT(*) FROM runners WHERE state='running'")[0][0]
        if running != self.count:
            raise BenchError(f"{running} of {self.count} runners running after launch --count")
        return elapsed

    def active_pids(self) -> tuple[list[int], list[int]]:
        rows = self.query("SELECT keeper_pid, agent_pid FROM runners WHERE state IN ('starting', 'running', 'backoff', 'stopping')")
        return [k for k, _ in rows if k], [a for _, a in rows if a]

    def settle(self, since: float) -> None:
        super().settle(since)
        # a keeper's first heartbeat comes heartbeat_interval after *its* start, up to ~2 s apart
        try:
            wait_until(self.all_heartbeating, "every runner's first heartbeat", timeout=15)
        except BenchError as e:
            self.notes.append(f"memory measured before the steady state: {e}")

    def all_heartbeating(self) -> bool:
        return not self.query("SELECT COUNT(*) FROM runners WHERE state='running' AND heartbeat_at IS NULL")[0][0]

    def supervisor_memory(self) -> Memory:
        keepers, _ = self.active_pids()
        return memory_of(keepers)

    def stop_many(self) -> float:
        keepers, agents = self.active_pids()
        procs = snapshot(keepers + agents)
        start = time.perf_counter()
        _, result = self.cli("stop", "--all", check=False)
        if result.returncode != 0:
            self.notes.append(f"stop --all exited {result.returncode}: {_last_line(result.stderr)}")
        gone = wait_all_exited(procs, "keepers and agents to exit")
        return (gone - start) * 1000

    def close(self) -> None:
        if self.db_path.exists():
            self.cli("stop", "--all", check=False)


class UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket, with the standard library only."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return UnixHTTPConnection(self.path)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


SUPERVISORD_CONF = """\
[unix_http_server]
file={dir}/supervisor.sock

[supervisord]
nodaemon=true
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}/logs

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{dir}/supervisor.sock

[program:one]
command={command}
process_name=%(program_name)s_%(process_num)d
numprocs={singles}
autostart=false
autorestart=false
startsecs={startsecs}

[program:many]
command={command}
process_name=%(program_name)s_%(process_num)d
numprocs={count}
autostart=false
autorestart=false
startsecs={startsecs}
"""


class Supervisord(Contender):
    startsecs = 1

    def __init__(self, workdir: Path, env: dict[str, str], count: int, singles: int) -> None:
        super().__init__(workdir, env, count)
        self.singles = singles
        self.conf = workdir / "supervisord.conf"
        self.socket = workdir / "supervisor.sock"
        self.ctl = find_executable("supervisorctl") or "supervisorctl"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.rpc = xmlrpc.client.ServerProxy("http://localhost", transport=UnixTransport(str(self.socket)))

    @staticmethod
    def missing() -> str | None:
        if find_executable("supervisord") and find_executable("supervisorctl"):
            return None
        return "supervisord is not installed (pip install supervisor)"

    def start(self) -> None:
        (self.workdir / "logs").mkdir()
        self.conf.write_text(
            SUPERVISORD_CONF.format(
                dir=self.workdir, command=" ".join(AGENT), singles=self.singles, count=self.count, startsecs=self.startsecs
            )
        )
        exe = find_executable("supervisord") or "supervisord"
        self.daemon = subprocess.Popen(
            [exe, "-c", str(self.conf)], env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self._answers, "supervisord to answer on its socket", timeout=15)

    def _answers(self) -> bool:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise BenchError(f"supervisord exited {self.daemon.returncode}; see {self.workdir}/supervisord.log")
        try:
            return self.rpc.supervisor.getState()["statename"] == "RUNNING"
        except OSError:
            return False

    def ctl_run(self, *args: str) -> float:
        elapsed, result = run([self.ctl, "-c", str(self.conf), *args], self.env, check=False)
        # supervisorctl exits non-zero on any failed process and says why on stdout
        if result.returncode != 0:
            raise BenchError(f"supervisorctl {' '.join(args)} exited {result.returncode}: {_last_line(result.stdout)}")
        return elapsed

    def info(self, name: str) -> dict[str, Any]:
        return self.rpc.supervisor.getProcessInfo(name)

    def launch_one(self, index: int) -> float:
        name = f"one:one_{index}"
        elapsed = self.ctl_run("start", name)
        if self.info(name)["statename"] != "RUNNING":
            raise BenchError(f"{name} not RUNNING after supervisorctl start")
        return elapsed

    def exit_seen(self, index: int) -> float:
        name = f"one:one_{index}"
        pid = self.info(name)["pid"]
        start = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        seen = wait_until(lambda: self.info(name)["statename"] != "RUNNING", f"{name} to show its exit")
        return (seen - start) * 1000

    def many(self) -> list[dict[str, Any]]:
        return [p for p in self.rpc.supervisor.getAllProcessInfo() if p["group"] == "many"]

    def launch_many(self) -> float:
        start = time.perf_counter()
        self.ctl_run("start", "many:*")
        # `start` waits for RUNNING itself; the check only confirms it
        done = wait_until(lambda: all(p["statename"] == "RUNNING" for p in self.many()), "all programs RUNNING")
        return (done - start) * 1000

    def supervisor_memory(self) -> Memory:
        assert self.daemon is not None
        return memory_of([self.daemon.pid])

    def stop_many(self) -> float:
        procs = snapshot(p["pid"] for p in self.many() if p["pid"])
        start = time.perf_counter()
        self.ctl_run("stop", "many:*")
        gone = wait_all_exited(procs, "programs to exit")
        return (gone - start) * 1000

    def close(self) -> None:
        if self.daemon is None:
            return
        # SIGTERM makes supervisord stop its programs, then exit
        terminate(self.daemon.pid, grace=15)
        self.daemon.wait()


class SupervisordNoStartsecs(Supervisord):
    label = "supervisord (startsecs=0)"
    startsecs = 0


class SupervisordDefault(Supervisord):
    label = "supervisord (default)"
    startsecs = 1


# Polls the daemon through pm2's own API over one connection, as `pm2 jlist` would without paying
# for a node start-up (~0.3 s) on every poll.
PM2_EXIT_PROBE = """\
const pm2 = require(process.env.SVBENCH_PM2_MODULE);
const name = process.argv[2];
const list = () => new Promise((ok, fail) => pm2.list((err, procs) => (err ? fail(err) : ok(procs))));
const pause = () => new Promise((ok) => setTimeout(ok, 1));
pm2.connect(async (err) => {
  if (err) throw err;
  const before = (await list()).find((p) => p.name === name);
  const pid = before.pid;
  const start = process.hrtime.bigint();
  process.kill(pid, "SIGKILL");
  for (;;) {
    const now = (await list()).find((p) => p.name === name);
    if (!now || now.pm2_env.status !== "online" || now.pid !== pid) break;
    await pause();
  }
  console.log(JSON.stringify({ ms: Number(process.hrtime.bigint() - start) / 1e6 }));
  pm2.disconnect();
});
"""


class Pm2(Contender):
    label = "pm2"

    def __init__(self, workdir: Path, env: dict[str, str], count: int) -> None:
        super().__init__(workdir, env, count)
        self.exe = shutil.which("pm2") or "pm2"
        home = workdir / "pm2"
        self.env = {**env, "PM2_HOME": str(home), "SVBENCH_PM2_MODULE": str(Path(self.exe).resolve().parents[1])}
        self.pid_file = home / "pm2.pid"
        self.probe = workdir / "exit_probe.js"
        self.eco = workdir / "eco.json"

    @staticmethod
    def missing() -> str | None:
        if not shutil.which("pm2"):
            return "pm2 is not installed (npm install -g pm2)"
        if not shutil.which("node"):
            return "node is not installed"
        return None

    def cli(self, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        return run([self.exe, *args], self.env)

    def daemon_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        self.probe.write_text(PM2_EXIT_PROBE)
        self.cli("ping")  # starts the daemon, untimed

    def jlist(self) -> list[dict[str, Any]]:
        _, result = self.cli("jlist")
        text = result.stdout
        return json.loads(text[text.index("[") :])

    def launch_one(self, index: int) -> float:
        name = f"one_{index}"
        elapsed, _ = self.cli("start", AGENT[0], "--name", name, "--interpreter", "none", "--no-autorestart", "--", *AGENT[1:])
        status = next((p["pm2_env"]["status"] for p in self.jlist() if p["name"] == name), None)
        if status != "online":
            raise BenchError(f"{name} is {status} after pm2 start")
        return elapsed

    def exit_seen(self, index: int) -> float:
        node = shutil.which("node") or "node"
        _, result = run([node, str(self.probe), f"one_{index}"], self.env)
        return float(json.loads(result.stdout.strip().splitlines()[-1])["ms"])

    def many(self) -> list[dict[str, Any]]:
        return [p for p in self.jlist() if p["name"].startswith("many_")]

    def launch_many(self) -> float:
        eco = self.eco
        apps = [
            {"name": f"many_{i}", "script": AGENT[0], "args": AGENT[1:], "interpreter": "none", "autorestart": False}
            for i in range(self.count)
        ]
        eco.write_text(json.dumps({"apps": apps}))
        elapsed, _ = self.cli("start", str(eco))
        online = sum(p["pm2_env"]["status"] == "online" for p in self.many())
        if online != self.count:
            raise BenchError(f"{online} of {self.count} apps online after pm2 start")
        return elapsed

    def supervisor_memory(self) -> Memory:
        pid = self.daemon_pid()
        if pid is None:
            raise BenchError("no pm2 daemon pid file")
        return memory_of([pid])

    def stop_many(self) -> float:
        procs = snapshot(p["pid"] for p in self.many() if p["pid"])
        start = time.perf_counter()
        self.cli("stop", str(self.eco))
        gone = wait_all_exited(procs, "apps to exit")
        return (gone - start) * 1000

    def close(self) -> None:
        pid = self.daemon_pid()
        try:
            self.cli("kill")
        except (BenchError, subprocess.TimeoutExpired) as e:
            self.notes.append(f"pm2 kill failed: {e}")
        if pid is not None:
            terminate(pid)


# -- running -------------------------------------------------------------------------------------


def measure_run(contender: Contender, singles: int) -> RunFigures:
    figures = RunFigures()
    contender.start()
    for i in range(singles):
        figures.one_launch_ms.append(contender.launch_one(i))
    for i in range(singles):
        figures.exit_seen_ms.append(contender.exit_seen(i))
    launched = time.perf_counter()
    figures.many_launch_ms = contender.launch_many()
    contender.settle(launched)
    figures.memory = contender.supervisor_memory()
    figures.stop_many_ms = contender.stop_many()
    return figures


def run_isolated(make: Factory, singles: int) -> tuple[RunFigures | None, list[str]]:
    """One run in a fresh temp dir; whatever happens, nothing it started outlives it."""
    token = uuid.uuid4().hex
    workdir = Path(tempfile.mkdtemp(prefix="svb-", dir="/tmp"))  # short: unix socket paths are limited
    env = {**os.environ, MARKER: token}
    contender = make(workdir, env)
    figures: RunFigures | None = None
    notes: list[str] = []
    try:
        figures = measure_run(contender, singles)
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the others or skip clean-up
        notes.append(f"run failed: {type(e).__name__}: {e}")
    finally:
        try:
            contender.close()
        except Exception as e:  # noqa: BLE001 - the sweep below still cleans up
            notes.append(f"close failed: {type(e).__name__}: {e}")
        notes.extend(contender.notes)
        left = sweep(token)
        if left:
            notes.append(f"left running after a graceful shutdown, killed: {', '.join(left)}")
        shutil.rmtree(workdir, ignore_errors=True)
    return figures, notes


Factory = Callable[[Path, dict[str, str]], Contender]
CONTENDER_KEYS = ["stratavore", "supervisord0", "supervisord", "pm2"]


def contenders(count: int, singles: int, only: list[str] | None) -> list[tuple[type[Contender], Factory]]:
    every: dict[str, tuple[type[Contender], Factory]] = {
        "stratavore": (Stratavore, lambda d, e: Stratavore(d, e, count)),
        "supervisord0": (SupervisordNoStartsecs, lambda d, e: SupervisordNoStartsecs(d, e, count, singles)),
        "supervisord": (SupervisordDefault, lambda d, e: SupervisordDefault(d, e, count, singles)),
        "pm2": (Pm2, lambda d, e: Pm2(d, e, count)),
    }
    return [every[key] for key in CONTENDER_KEYS if not only or key in only]


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind, make in contenders(args.count, args.kills, args.only):
        reason = kind.missing()
        if reason:
            results[kind.label] = {"skipped": reason}
            continue
        runs, notes = [], []
        for number in range(1, args.runs + 1):
            began = time.perf_counter()
            figures, run_notes = run_isolated(make, args.kills)
            print(f"{kind.label}: run {number}/{args.runs} took {time.perf_counter() - began:.1f}s", file=sys.stderr)
            notes.extend(f"run {number}: {n}" for n in run_notes)
            if figures is not None:
                runs.append(figures)
        summaries = [r.summary(args.count) for r in runs]
        medians = {m.key: _median(s[m.key] for s in summaries) for m in measures(args.count)}
        results[kind.label] = {
            "median": medians,
            "runs": summaries,
            "samples": {
                "one_launch_ms": [r.one_launch_ms for r in runs],
                "exit_seen_ms": [r.exit_seen_ms for r in runs],
            },
            "notes": notes,
        }
    return results


# -- reporting -----------------------------------------------------------------------------------


def fmt(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if key.endswith("mib") else f"{value:.0f}"


def table(results: dict[str, Any], count: int) -> str:
    labels = list(results)
    header = ["measure", *labels, "target", "Stratavore"]
    rows = [header]
    for m in measures(count):
        cells = [m.label]
        for label in labels:
            median = results[label].get("median")
            cells.append(fmt(median[m.key], m.key) if median else "skipped")
        ours = results.get(Stratavore.label, {}).get("median", {}).get(m.key)
        verdict = "" if m.target is None or ours is None else ("meets" if ours < m.target else "MISSES")
        rows.append([*cells, m.target_text, verdict])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


LEGEND = """\
Stratavore memory: all keeper processes (one per runner), summed, divided by the count;
supervisord and pm2 memory: the one daemon, divided by the count (the agents themselves are never counted).
supervisord (default) is startsecs=1: a program counts as RUNNING only after 1 s up.
Exit shown: Stratavore's sqlite row, supervisord's XML-RPC getProcessInfo, pm2's API list (as `pm2 jlist`), polled every 1 ms."""


def notes_text(results: dict[str, Any]) -> str:
    lines = []
    for label, result in results.items():
        if "skipped" in result:
            lines.append(f"{label}: skipped: {result['skipped']}")
        lines.extend(f"{label}: {note}" for note in result.get("notes", []))
    return "\n".join(lines)


def machine_text(busy_before: float) -> str:
    text = f"{os.cpu_count()} cores, {busy_before:.0f}% busy just before the run"
    # the timings are only comparable on an otherwise idle machine
    if busy_before > 25:
        text += " (WARNING: the machine was busy before the run; timings are inflated)"
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per contender; figures are medians (default 3)")
    parser.add_argument("--count", type=int, default=100, help="runners launched together and stopped together (default 100)")
    parser.add_argument("--kills", type=int, default=5, help="single launches and kill -9 probes per run (default 5)")
    parser.add_argument("--json", action="store_true", help="also print all figures as JSON")
    parser.add_argument("--only", action="append", choices=CONTENDER_KEYS, help="measure only this contender; repeatable (default: all)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.count < 1 or args.kills < 1:
        parser.error("--runs, --count and --kills must be at least 1")
    return args


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # turn SIGTERM into SystemExit so the `finally` clean-ups still run
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    began = time.perf_counter()
    # sampled over a second: the load average still remembers work that already ended
    busy_before = psutil.cpu_percent(interval=1.0)
    results = benchmark(args)
    print(f"\nsupervising `{' '.join(AGENT)}`: median of {args.runs} run(s); {args.kills} single launches and kills per run")
    print(table(results, args.count))
    print("\n" + LEGEND)
    notes = notes_text(results)
    if notes:
        print("\nnotes:\n" + notes)
    print(f"\ntotal time {time.perf_counter() - began:.0f}s; {machine_text(busy_before)}")
    if args.json:
        summary = {"count": args.count, "runs": args.runs, "kills": args.kills, "cpu_busy_before_percent": busy_before, "results": results}
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
