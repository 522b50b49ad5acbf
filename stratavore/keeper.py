"""The keeper: one small process per runner that owns the agent's terminal.

It is forked from an already-running stratavore process (no new interpreter), leaves that process's
session, and then:
- runs the agent on a PTY, in the agent's own session and process group;
- copies the agent's output to the runner's log and to every attached client;
- serves attach clients on a 0600 unix socket;
- records heartbeats (CPU and memory of the agent's tree), the exit status, and restarts the agent
  according to the runner's restart policy;
- on SIGTERM, stops the agent: the stop signal to its group, a grace period, then SIGKILL to every
  process left in its tree.

The keeper never lets a failure of its own bookkeeping (a busy database, a full disk) reach the agent.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import selectors
import signal
import socket
import sqlite3
import struct
import termios
import time
from dataclasses import replace
from typing import Any, NoReturn

from . import db, procs, protocol
from .config import Settings, parse_signal
from .errors import DatabaseBusy
from .logs import RotatingLog
from .paths import Paths
from .runners import Runner, change_state, get, update_fields
from .states import RunnerState

S = RunnerState
REPLAY_BYTES = 64 * 1024
CLIENT_BUFFER_LIMIT = 4 * 1024 * 1024
DEFAULT_WINSIZE = (40, 120)
# signals reset to their defaults in the agent: Python ignores SIGPIPE and SIGXFSZ, and an agent
# inheriting "ignored" misbehaves; the others had handlers in the keeper
RESET_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGWINCH,
)


class Abandoned(Exception):
    """The runner's row no longer wants this agent (the launch was given up, or it was stopped)."""


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = protocol.FrameReader()
        self.out = bytearray()
        self.sized = False


class Keeper:
    def __init__(self, paths: Paths, settings: Settings, runner_id: str, report_fd: int | None) -> None:
        self.paths = paths
        self.settings = settings
        self.runner_id = runner_id
        self.report_fd = report_fd
        # a short busy timeout: transact() retries in short jittered steps instead (see there)
        self.conn: sqlite3.Connection = db.connect(paths.db_path, busy_timeout=0.01, migrate=False)
        self.runner: Runner = get(self.conn, runner_id)
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, Client] = {}
        self.replay = bytearray()
        self.master: int | None = None
        self.pending_input = bytearray()
        self.agent_pid: int | None = None
        self.agent_started: float | None = None
        self.agent_spawned_at = 0.0
        self.winsize = DEFAULT_WINSIZE
        self.stop_requested = False
        self.stop_deadline: float | None = None
        self.restart_at: float | None = None
        self.restarts = self.runner.restarts
        self.next_heartbeat = 0.0
        self.last_output_at: float | None = None
        self.tree_procs: dict[int, Any] = {}
        self.log = RotatingLog(paths.runner_log(runner_id), settings.log_max_bytes, settings.log_backups)
        self.listener: socket.socket | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.identity = procs.identity()
        self.prices: Any = None  # the price table, loaded on the first transcript read
        self.subreaper = False
        self.cpu_sample: tuple[float, float] | None = None  # (cpu seconds of the tree, monotonic time)

    # -- bookkeeping ---------------------------------------------------------------------------

    def diagnose(self, message: str) -> None:
        try:
            with open(self.paths.runner_log_dir / f"{self.runner_id}.keeper.log", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
        except OSError:
            pass

    def transact(self, fn, *, durable: bool = True, patience: float = 60.0) -> Any:
        """Run ``fn`` in a write transaction, retrying while the database is busy.

        The connection does not wait inside SQLite (whose busy handler sleeps in coarse, growing
        steps): with a hundred keepers starting at once, short jittered retries here keep each
        turn at the write lock close to the time the writes really take. ``durable=False`` skips
        the fsync for bookkeeping that is meaningless after a power cut anyway (pids).
        """
        deadline = time.monotonic() + patience
        delay = 0.0005
        while True:
            try:
                if not durable:
                    self.conn.execute("PRAGMA synchronous=NORMAL")
                try:
                    with db.write(self.conn):
                        return fn()
                finally:
                    if not durable:
                        self.conn.execute("PRAGMA synchronous=FULL")
            except DatabaseBusy:
                if time.monotonic() > deadline:
                    self.diagnose("giving up on a database write: the database stayed locked")
                    return None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 1.5, 0.005)
            except Exception as e:  # noqa: BLE001 - a keeper outlives its bookkeeping failures
                self.diagnose(f"giving up on a database write: {e}")
                return None

    def report(self, **data: Any) -> None:
        if self.report_fd is None:
            return
        try:
            os.write(self.report_fd, (json.dumps(data) + "\n").encode())
            os.close(self.report_fd)
        except OSError:
            pass
        self.report_fd = None

    # -- start-up --------------------------------------------------------------------------------

    def listen(self) -> None:
        path = self.paths.runner_socket(self.runner_id)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        sock.listen(16)
        sock.setblocking(False)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, "listener")

    def spawn(self) -> str | None:
        """Start the agent on a fresh PTY. Returns an error message if it could not be started."""
        runner = self.runner
        master, slave = os.openpty()
        _set_winsize(master, *self.winsize)
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        env = dict(os.environ)
        env.update(runner.env)
        env.update(
            STRATAVORE_RUNNER_ID=runner.id,
            STRATAVORE_RUNNER_NAME=runner.name,
            STRATAVORE_PROJECT=runner.project,
        )
        env.setdefault("TERM", "xterm-256color")
        pid = os.fork()
        if pid == 0:  # the agent
            try:
                os.close(master)
                os.close(go_w)
                os.close(err_r)
                signal.set_wakeup_fd(-1)
                for sig in RESET_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for fd in (0, 1, 2):
                    os.dup2(slave, fd)
                if slave > 2:
                    os.close(slave)
                # wait until the keeper has recorded our pid: an agent must never run unrecorded
                if os.read(go_r, 1) != b"g":
                    os._exit(0)
                os.close(go_r)
                try:
                    os.chdir(runner.cwd)
                except OSError as e:
                    os.write(err_w, f"cannot enter {runner.cwd}: {e.strerror}".encode())
                    os._exit(126)
                try:
                    os.execvpe(runner.command[0], runner.command, env)
                except FileNotFoundError:
                    os.write(err_w, f"command not found: {runner.command[0]}".encode())
                except PermissionError:
                    os.write(err_w, f"permission denied: {runner.command[0]}".encode())
                except OSError as e:
                    os.write(err_w, f"cannot run {runner.command[0]}: {e.strerror}".encode())
            finally:
                os._exit(127)
        os.close(slave)
        os.close(go_r)
        os.close(err_w)
        started = procs.start_time(pid)
        recorded = self.transact(lambda: self._record_agent(pid, started), durable=False)
        os.write(go_w, b"g" if recorded else b"n")
        os.close(go_w)
        failure = _read_all(err_r).decode(errors="replace")
        os.close(err_r)
        if not recorded:
            os.close(master)
            os.waitpid(pid, 0)
            raise Abandoned()
        if failure:
            os.close(master)
            os.waitpid(pid, 0)
            return failure
        self.agent_pid, self.agent_started = pid, started
        self.agent_spawned_at = time.monotonic()
        os.set_blocking(master, False)
        self.master = master
        self.sel.register(master, selectors.EVENT_READ, "master")
        return None

    def _record_agent(self, pid: int, started: float | None) -> bool:
        """Claim the row for this keeper and record the agent, before the agent may run.

        A first start claims a row still ``starting`` that no keeper claimed (the launch was not
        given up meanwhile); a restart needs the row still ``backoff`` and ours.
        """
        cur = self.conn.execute(
            "UPDATE runners SET keeper_pid=?, keeper_started=?, agent_pid=?, agent_started=? WHERE id=?"
            " AND ((state=? AND keeper_pid IS NULL) OR (state=? AND keeper_pid=?))",
            (*self.identity, pid, started, self.runner_id, S.STARTING.value, S.BACKOFF.value, self.identity[0]),
        )
        return cur.rowcount == 1

    def mark_running(self) -> None:
        self.runner = (
            self.transact(
                lambda: change_state(
                    self.conn,
                    self.runner_id,
                    S.RUNNING,
                    expect={S.STARTING, S.BACKOFF},
                    started_at=db.now(),
                    restarts=self.restarts,
                    exit_code=None,
                    exit_signal=None,
                ),
                durable=False,  # made durable by whoever acknowledges it: see db.flush_wal
            )
            or self.runner
        )

    # -- main loop -------------------------------------------------------------------------------

    def run(self) -> NoReturn:
        # handlers first: once claimed, a `stop` may signal us at any moment
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.subreaper = procs.set_child_subreaper()
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        try:
            self.listen()
        except OSError as e:
            self.fail(f"cannot listen on the attach socket: {e.strerror}")
        try:
            failure = self.spawn()
        except Abandoned:
            # reconciliation gave the launch up (its launcher died) before we could claim it
            self.paths.runner_socket(self.runner_id).unlink(missing_ok=True)
            self.report(ok=False, error="the launch was abandoned before the keeper started")
            os._exit(0)
        if failure:
            self.fail(failure)
        self.mark_running()
        self.report(ok=True, agent_pid=self.agent_pid)
        # the first sample soon after the start, so `ps` shows CPU and memory from the first seconds
        self.next_heartbeat = time.monotonic() + min(1.0, self.settings.heartbeat_interval)
        while True:
            self.loop_once()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.stop_requested = True

    def loop_once(self) -> None:
        timeout = self._next_timeout()
        for key, mask in self.sel.select(timeout):
            tag = key.data
            if tag == "master":
                if mask & selectors.EVENT_READ:
                    self.read_master()
                if mask & selectors.EVENT_WRITE:
                    self.flush_input()
            elif tag == "listener":
                self.accept()
            elif tag == "wake":
                _read_all(self.wake_r, nonblocking=True)
            elif isinstance(tag, Client):
                if mask & selectors.EVENT_READ:
                    self.read_client(tag)
                if mask & selectors.EVENT_WRITE and tag.sock.fileno() in self.clients:
                    self.flush_client(tag)
        self.reap()
        if self.stop_requested and self.stop_deadline is None:
            self.begin_stop()
        now = time.monotonic()
        if self.stop_deadline is not None and self.agent_pid and now >= self.stop_deadline:
            self.kill_tree()
            self.stop_deadline = now + 1.0
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self.respawn()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.settings.heartbeat_interval
            self.heartbeat()

    def _next_timeout(self) -> float:
        deadlines = [self.next_heartbeat]
        if self.stop_deadline is not None:
            deadlines.append(self.stop_deadline)
        if self.restart_at is not None:
            deadlines.append(self.restart_at)
        return max(0.0, min(deadlines) - time.monotonic())

    # -- terminal I/O ----------------------------------------------------------------------------

    def read_master(self) -> None:
        assert self.master is not None
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                self.diagnose(f"reading the terminal failed: {e}")
            data = b""
        if not data:
            # every process holding the terminal has closed it; the agent is ending
            self._close_master()
            return
        self.output(data)

    def _close_master(self) -> None:
        if self.master is not None:
            self.sel.unregister(self.master)
            os.close(self.master)
            self.master = None

    def output(self, data: bytes) -> None:
        self.last_output_at = time.time()
        self.log.write(data)
        self.replay += data
        if len(self.replay) > REPLAY_BYTES:
            del self.replay[: len(self.replay) - REPLAY_BYTES]
        if self.clients:
            message = protocol.frame(protocol.OUTPUT, data)
            for client in list(self.clients.values()):
                self.send(client, message)

    def drain_master(self) -> None:
        while self.master is not None:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                data = b""
            if not data:
                self._close_master()
                return
            self.output(data)

    def write_input(self, data: bytes) -> None:
        if self.master is None:
            return
        self.pending_input += data
        self.flush_input()

    def flush_input(self) -> None:
        if self.master is None:
            return
        try:
            written = os.write(self.master, self.pending_input) if self.pending_input else 0
            del self.pending_input[:written]
        except BlockingIOError:
            pass
        except OSError:
            self.pending_input.clear()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.pending_input else 0)
        self.sel.modify(self.master, events, "master")

    # -- attach clients --------------------------------------------------------------------------

    def accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        client = Client(sock)
        self.clients[sock.fileno()] = client
        self.sel.register(sock, selectors.EVENT_READ, client)
        if self.replay:
            self.send(client, protocol.frame(protocol.OUTPUT, bytes(self.replay)))
        if self.master is None and self.restart_at is None:
            self.send(client, protocol.json_frame(protocol.NOTICE, {"message": "the agent is not running"}))

    def read_client(self, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return
        try:
            frames = client.reader.feed(data)
        except ValueError:
            self.drop(client)
            return
        for kind, payload in frames:
            if kind == protocol.INPUT:
                self.write_input(payload)
            elif kind == protocol.WINSIZE:
                self.resize(*protocol.parse_winsize(payload), redraw=not client.sized)
                client.sized = True

    def resize(self, rows: int, cols: int, *, redraw: bool) -> None:
        if rows <= 0 or cols <= 0:
            return
        if self.master is not None:
            if redraw and (rows, cols) == self.winsize:
                # the kernel only signals SIGWINCH on a change; a one-column wobble makes full-screen
                # programs repaint for the client that just attached
                _set_winsize(self.master, rows, max(1, cols - 1))
            _set_winsize(self.master, rows, cols)
        self.winsize = (rows, cols)

    def send(self, client: Client, message: bytes) -> None:
        client.out += message
        if len(client.out) > CLIENT_BUFFER_LIMIT:
            # a client that stopped reading must never hold up the agent
            self.drop(client)
            return
        self.flush_client(client)

    def flush_client(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.out) if client.out else 0
            del client.out[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self.drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        self.sel.modify(client.sock, events, client)

    def drop(self, client: Client) -> None:
        fd = client.sock.fileno()
        if self.clients.pop(fd, None) is not None:
            self.sel.unregister(client.sock)
            client.sock.close()

    def notify_clients(self, kind: bytes, data: dict[str, Any]) -> None:
        message = protocol.json_frame(kind, data)
        for client in list(self.clients.values()):
            self.send(client, message)

    # -- the agent's life ------------------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.agent_pid:
                self.agent_exited(status)

    def agent_exited(self, status: int) -> None:
        self.drain_master()
        code = os.waitstatus_to_exitcode(status)
        exit_code, exit_signal = (code, None) if code >= 0 else (None, signal.Signals(-code).name)
        ran_for = time.monotonic() - self.agent_spawned_at
        pid, self.agent_pid = self.agent_pid, None
        self.kill_tree(pid, self.agent_started)
        if self.stop_requested or self.stop_deadline is not None:
            self.finish(S.STOPPED, exit_code=exit_code, exit_signal=exit_signal)
        policy = self.runner.restart_policy
        failed = exit_code != 0
        if policy == "always" or (policy == "on-failure" and failed):
            if ran_for >= self.settings.restart_reset_after:
                self.restarts = 0
            if self.restarts >= self.runner.max_restarts:
                self.finish(
                    S.FAILED,
                    reason=f"gave up after {self.restarts} restart(s)",
                    exit_code=exit_code,
                    exit_signal=exit_signal,
                )
            delay = min(self.settings.backoff_initial * (2**self.restarts), self.settings.backoff_max)
            self.restarts += 1
            self.runner = (
                self.transact(
                    lambda: change_state(
                        self.conn,
                        self.runner_id,
                        S.BACKOFF,
                        expect={S.RUNNING},
                        reason=f"restarting in {delay:g}s",
                        exit_code=exit_code,
                        exit_signal=exit_signal,
                        restarts=self.restarts,
                    )
                )
                or self.runner
            )
            self.notify_clients(
                protocol.NOTICE, {"message": f"agent exited ({_describe(exit_code, exit_signal)}); restarting in {delay:g}s"}
            )
            self.restart_at = time.monotonic() + delay
            return
        self.finish(S.EXITED, exit_code=exit_code, exit_signal=exit_signal)

    def respawn(self) -> None:
        self.runner = get(self.conn, self.runner_id)
        if self.runner.agent == "claude" and self.runner.session_id:
            from .agents.claude import restart_command

            row = self.conn.execute("SELECT transcript_path FROM sessions WHERE id=?", (self.runner.session_id,)).fetchone()
            command = restart_command(self.runner.command, self.runner.session_id, row[0] if row else None)
            if command != self.runner.command:
                self.transact(lambda: update_fields(self.conn, self.runner_id, command=json.dumps(command)))
                self.runner = replace(self.runner, command=command)
        try:
            failure = self.spawn()
        except Abandoned:
            failure = "the runner changed state while waiting to restart"
        if failure:
            self.fail(failure)
        self.mark_running()

    def begin_stop(self) -> None:
        row = self.conn.execute(
            "SELECT state, stop_signal, stop_timeout, stop_requested_signal, stop_requested_timeout FROM runners WHERE id=?",
            (self.runner_id,),
        ).fetchone()
        if row is None or row["state"] != S.STOPPING.value:
            # stopped by a plain signal rather than `stratavore stop`: record the request ourselves
            self.transact(lambda: change_state(self.conn, self.runner_id, S.STOPPING, reason="keeper received a stop signal"))
        sig_name = (row and row["stop_requested_signal"]) or (row and row["stop_signal"]) or self.settings.stop_signal
        timeout = row["stop_requested_timeout"] if row and row["stop_requested_timeout"] is not None else None
        if timeout is None:
            timeout = row["stop_timeout"] if row else self.settings.stop_timeout
        if self.agent_pid is None:
            # nothing runs (waiting to restart): the stop is immediate
            self.finish(S.STOPPED, exit_code=self.runner.exit_code, exit_signal=self.runner.exit_signal)
        try:
            sig = parse_signal(sig_name)
        except Exception:  # noqa: BLE001
            sig = signal.SIGTERM
        procs.signal_group(self.agent_pid, sig)
        self.stop_deadline = time.monotonic() + timeout

    def kill_tree(self, pid: int | None = None, started: float | None = None) -> None:
        """SIGKILL the agent's group, session and every descendant left (ours, as subreaper)."""
        pid = pid or self.agent_pid
        if pid:
            procs.signal_group(pid, signal.SIGKILL)
            if not self.subreaper:
                # without subreaping, stragglers that lost their parent are found by a full scan
                procs.kill_tree(pid, started or self.agent_started)
        for straggler in procs.tree(os.getpid()):
            procs.signal_pid(straggler, signal.SIGKILL)

    def reap_stragglers(self, timeout: float = 1.0) -> None:
        """Wait until the SIGKILLed rest of the tree is really gone (as subreaper, its processes are our
        children), so that an ended runner never leaves a process behind for a moment."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if time.monotonic() >= deadline:
                    return
                for straggler in procs.tree(os.getpid()):
                    procs.signal_pid(straggler, signal.SIGKILL)
                time.sleep(0.005)

    def heartbeat(self) -> None:
        values: dict[str, Any] = {"heartbeat_at": db.now(), "last_output_at": self.last_output_at}
        if self.agent_pid:
            values.update(self.measure_tree())
        # liveness is best effort: never wait long for it, and never fsync it
        self.transact(lambda: update_fields(self.conn, self.runner_id, **values), durable=False, patience=1.0)
        if self.agent_pid:
            try:
                self.account()
            except Exception as e:  # noqa: BLE001 - accounting never takes the agent down
                self.diagnose(f"accounting failed: {e}")

    def account(self) -> None:
        """Read the agent's new transcript lines, then enforce the budgets that concern this runner:
        spend shows up here within a heartbeat, with or without the daemon."""
        row = self.conn.execute(
            "SELECT runners.session_id, runners.agent, projects.name AS project, sessions.transcript_path FROM runners"
            " JOIN projects ON projects.id = runners.project_id LEFT JOIN sessions ON sessions.id = runners.session_id"
            " WHERE runners.id=?",
            (self.runner_id,),
        ).fetchone()
        if row is None:
            return
        if row["agent"] == "claude" and row["session_id"] and row["transcript_path"]:
            from . import pricing, transcripts

            if self.prices is None:
                self.prices = pricing.load(self.paths.config_dir)
            files = transcripts.session_files(row["transcript_path"], row["session_id"])
            if files:
                transcripts.ingest_files(self.conn, files, self.prices)
        if self.conn.execute("SELECT 1 FROM budgets LIMIT 1").fetchone() is None:
            return
        from .agents import interrupt_keys
        from .budgets import evaluate

        for item in evaluate(self.conn, runner_id=self.runner_id, project=row["project"]):
            self.diagnose(f"{item.reason}: {item.action}")
            if item.action == "interrupt":
                self.write_input(interrupt_keys(row["agent"]))
                self.notify_clients(protocol.NOTICE, {"message": f"{item.reason}; interrupted"})
            elif item.action == "stop":
                self.notify_clients(protocol.NOTICE, {"message": f"{item.reason}; stopping"})
                self.stop_requested = True

    def measure_tree(self) -> dict[str, Any]:
        """CPU (percent since the last heartbeat), resident memory and process count of the agent's tree."""
        if not procs.LINUX:
            return self._measure_tree_psutil()
        assert self.agent_pid is not None
        members = [self.agent_pid, *procs.tree(self.agent_pid)]
        cpu_seconds, rss, count = procs.usage_sample(members)
        now = time.monotonic()
        cpu = 0.0
        if self.cpu_sample is not None and now > self.cpu_sample[1]:
            # a child that exited takes its CPU time with it; never report a negative share
            cpu = max(0.0, (cpu_seconds - self.cpu_sample[0]) / (now - self.cpu_sample[1]) * 100)
        self.cpu_sample = (cpu_seconds, now)
        return {"cpu_percent": round(cpu, 1), "rss_bytes": rss, "process_count": count}

    def _measure_tree_psutil(self) -> dict[str, Any]:
        import psutil

        try:
            root = psutil.Process(self.agent_pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            return {}
        cpu, rss, seen = 0.0, 0, {}
        for proc in members:
            # reuse Process objects: cpu_percent() measures since the previous call on the same object
            known = self.tree_procs.get(proc.pid)
            if known is not None and known.is_running():
                proc = known
            seen[proc.pid] = proc
            try:
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss
            except psutil.Error:
                pass
        self.tree_procs = seen
        return {"cpu_percent": round(cpu, 1), "rss_bytes": rss, "process_count": len(members)}

    # -- the end ---------------------------------------------------------------------------------

    def fail(self, reason: str) -> NoReturn:
        self.finish(S.FAILED, reason=reason)

    def finish(self, state: RunnerState, *, reason: str | None = None, **values: Any) -> NoReturn:
        if self.agent_pid:
            self.kill_tree()
            self.agent_pid = None
        self.reap_stragglers()
        self.drain_master()
        values.setdefault("exit_code", None)
        values.setdefault("exit_signal", None)
        self.transact(
            lambda: change_state(
                self.conn,
                self.runner_id,
                state,
                reason=reason,
                ended_at=db.now(),
                restarts=self.restarts,
                stop_requested_signal=None,
                stop_requested_timeout=None,
                **values,
            ),
            durable=False,  # made durable by whoever acknowledges it (`stop`), or the next durable commit
        )
        self.report(ok=False, error=reason or state.value)
        self.notify_clients(
            protocol.EXIT,
            {"state": state.value, "exit_code": values["exit_code"], "exit_signal": values["exit_signal"], "reason": reason},
        )
        deadline = time.monotonic() + 1.0
        for client in list(self.clients.values()):
            client.sock.setblocking(True)
            client.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                client.sock.sendall(client.out)
            except OSError:
                pass
            client.sock.close()
        try:
            self.paths.runner_socket(self.runner_id).unlink()
        except (OSError, Exception):  # noqa: BLE001
            pass
        self.log.close()
        os._exit(0)


def _describe(exit_code: int | None, exit_signal: str | None) -> str:
    return f"killed by {exit_signal}" if exit_signal else f"exit code {exit_code}"


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except OSError:
        pass


def _read_all(fd: int, nonblocking: bool = False) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
        if nonblocking:
            continue
    return b"".join(chunks)


def become_keeper(paths: Paths, settings: Settings, runner_id: str, report_fd: int | None) -> NoReturn:
    """Entry point in the freshly forked, already detached keeper process."""
    try:
        procs.set_process_name("sv-keeper")
        _isolate_fds(keep=report_fd)
        keeper = Keeper(paths, settings, runner_id, report_fd)
    except BaseException as e:  # noqa: BLE001
        if report_fd is not None:
            try:
                os.write(report_fd, (json.dumps({"ok": False, "error": f"keeper could not start: {e}"}) + "\n").encode())
            except OSError:
                pass
        os._exit(1)
    try:
        keeper.run()
    except BaseException:  # noqa: BLE001
        import traceback

        keeper.diagnose("keeper crashed:\n" + traceback.format_exc())
        try:
            keeper.finish(S.FAILED, reason="the keeper crashed (see its .keeper.log)")
        finally:
            os._exit(1)


def _isolate_fds(keep: int | None) -> None:
    """Point stdio at /dev/null and close every other inherited descriptor but ``keep``."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    if keep is None:
        os.closerange(3, 65536)
    else:
        os.closerange(3, keep)
        os.closerange(keep + 1, 65536)
