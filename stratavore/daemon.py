"""The optional background daemon: one per user profile, running the scheduled work.

Runners do not depend on it: keepers supervise their agents on their own, so the daemon can be
killed at any moment and, restarted, simply adopts the runners it finds in the database.
"""

from __future__ import annotations

import fcntl
import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import db, events, procs
from .context import Context
from .errors import DaemonError
from .reconcile import reconcile_all
from .runners import count_active

log = logging.getLogger("stratavore.daemon")


def self_command() -> list[str]:
    """How to run this very stratavore again (also inside a PyInstaller executable)."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "stratavore"]


@dataclass
class DaemonInfo:
    pid: int
    started: float

    @property
    def alive(self) -> bool:
        return procs.is_alive(self.pid, self.started)


def read_pid_file(ctx: Context) -> DaemonInfo | None:
    try:
        data = json.loads(ctx.paths.daemon_pid_file.read_text())
        info = DaemonInfo(int(data["pid"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if info.alive else None


def start(ctx: Context, timeout: float = 10.0) -> DaemonInfo:
    running = read_pid_file(ctx)
    if running:
        raise DaemonError(f"the daemon is already running (pid {running.pid})")
    ctx.paths.ensure()
    proc = subprocess.Popen(
        [*self_command(), "daemon", "run"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_pid_file(ctx)
        if info and info.pid == proc.pid:
            # the daemon's stderr must not hold a pipe to us once we are gone
            proc.stderr.close() if proc.stderr else None
            _wait_for_api(ctx, info, deadline)
            return info
        if proc.poll() is not None:
            err = (proc.stderr.read().decode(errors="replace").strip().splitlines() or [""])[-1] if proc.stderr else ""
            raise DaemonError(f"the daemon exited at start-up{': ' + err if err else ''} (see {ctx.paths.daemon_log})")
        time.sleep(0.02)
    raise DaemonError(f"the daemon did not start within {timeout:g}s (see {ctx.paths.daemon_log})")


def _wait_for_api(ctx: Context, info: DaemonInfo, deadline: float) -> None:
    """Return once the new daemon's API listens (or has given up), so a script can use it right away."""
    from .apiauth import read_info

    while time.monotonic() < deadline and info.alive:
        api = read_info(ctx.paths, check_alive=False)
        if api is not None and api.pid == info.pid:
            return
        time.sleep(0.02)


def stop(ctx: Context, timeout: float = 15.0) -> DaemonInfo:
    info = read_pid_file(ctx)
    if info is None:
        raise DaemonError("the daemon is not running")
    procs.signal_pid(info.pid, signal.SIGTERM)
    if procs.wait_gone([(info.pid, info.started)], timeout):
        procs.signal_pid(info.pid, signal.SIGKILL)
    return info


def status(ctx: Context) -> dict[str, Any]:
    info = read_pid_file(ctx)
    conn = ctx.conn
    jobs = [dict(r) for r in conn.execute("SELECT * FROM daemon_jobs ORDER BY job_id")]
    now = time.time()
    for job in jobs:
        job["last_run_age"] = round(now - job["last_started_at"], 3) if job["last_started_at"] else None
    return {
        "running": info is not None,
        "pid": info.pid if info else None,
        "uptime": round(now - info.started, 1) if info else None,
        "jobs": jobs,
        "active_runners": count_active(conn),
        "log": str(ctx.paths.daemon_log),
        "api": _api_status(ctx, info),
    }


def _api_status(ctx: Context, info: DaemonInfo | None) -> dict[str, Any] | None:
    """Where the running daemon's API listens (or why it does not)."""
    from .apiauth import read_info

    api = read_info(ctx.paths, check_alive=False) if info else None
    return api.to_dict() if api is not None and info is not None and api.pid == info.pid else None


# -- the daemon process --------------------------------------------------------------------------


class Daemon:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.stopping = threading.Event()
        self._lock_fd: int | None = None

    def acquire_lock(self) -> None:
        self.ctx.paths.ensure()
        fd = os.open(self.ctx.paths.runtime_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            running = read_pid_file(self.ctx)
            raise DaemonError(f"the daemon is already running{f' (pid {running.pid})' if running else ''}") from None
        self._lock_fd = fd
        pid, started = procs.identity()
        tmp = self.ctx.paths.daemon_pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": pid, "started": started}))
        os.replace(tmp, self.ctx.paths.daemon_pid_file)

    def job(self, job_id: str, fn: Callable[[Any], Any]) -> Callable[[], None]:
        def run() -> None:
            started = time.time()
            t0 = time.monotonic()
            error = None
            conn = db.connect(self.ctx.paths.db_path, busy_timeout=self.ctx.settings.busy_timeout)
            try:
                fn(conn)
            except Exception as e:  # noqa: BLE001 - one failing run must not end the schedule
                error = f"{type(e).__name__}: {e}"
                log.exception("job %s failed", job_id)
            finally:
                try:
                    with db.write(conn):
                        conn.execute(
                            "INSERT INTO daemon_jobs(job_id, last_started_at, last_duration, last_error, runs, failures)"
                            " VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(job_id) DO UPDATE SET"
                            " last_started_at=excluded.last_started_at, last_duration=excluded.last_duration,"
                            " last_error=excluded.last_error, runs=runs+1, failures=failures+excluded.failures",
                            (job_id, started, time.monotonic() - t0, error, 1 if error else 0),
                        )
                except Exception:  # noqa: BLE001
                    log.exception("could not record the run of job %s", job_id)
                conn.close()

        return run

    def _budget_job(self, conn) -> None:
        """Spend from every transcript (sessions Stratavore did not start count toward global and
        project budgets too), then every budget's thresholds and actions."""
        from . import budgets, pricing, supervisor, transcripts

        if not budgets.list_budgets(conn):
            return
        roots = transcripts.claude_roots(default=self.ctx.settings.claude_config_dir)
        transcripts.ingest(conn, roots, pricing.load(self.ctx.paths.config_dir), workers=0)
        due = budgets.evaluate(conn)
        if due:
            ctx = Context(self.ctx.paths, self.ctx.settings)
            try:
                supervisor.enforce(ctx, due)
            finally:
                ctx.close()

    def _agent_status_job(self, conn) -> None:
        """Statuses that no hook reports (agents without hooks, Claude's registry file), and hook
        events spooled while the database was busy: brought up to date without anyone running `ps`."""
        from .hook import SPOOL_NAME, drain_spool
        from .runners import list_runners
        from .sessions import refresh_statuses

        drain_spool(conn, self.ctx.paths.runtime_dir / SPOOL_NAME)
        refresh_statuses(conn, self.ctx.settings, list_runners(conn))

    def run(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.acquire_lock()
        _setup_logging(self.ctx)
        conn = self.ctx.conn
        lost = reconcile_all(conn)
        adopted = count_active(conn)
        with db.write(conn):
            events.append(conn, "daemon", db.node_id(conn), 0, "daemon.started", {"pid": os.getpid(), "adopted": adopted})
        log.info("daemon started: adopted %d running runner(s), %d found lost", adopted, len(lost))
        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}, timezone="UTC")
        settings = self.ctx.settings
        scheduler.add_job(self.job("reconcile", _reconcile_job), "interval", seconds=settings.reconcile_interval, id="reconcile")
        scheduler.add_job(self.job("wal_checkpoint", _checkpoint_job), "interval", minutes=10, id="wal_checkpoint")
        scheduler.add_job(self.job("budgets", self._budget_job), "interval", seconds=settings.heartbeat_interval, id="budgets")
        status_every = settings.heartbeat_interval
        scheduler.add_job(self.job("agent_status", self._agent_status_job), "interval", seconds=status_every, id="agent_status")
        # event consumers (notifications, plugins): a quarter-second poll keeps event-to-receiver latency under 1 s
        from .notify import build_dispatcher

        dispatcher = build_dispatcher(self.ctx)
        scheduler.add_job(self.job("consumers", dispatcher.run_once), "interval", seconds=0.25, id="consumers")
        scheduler.add_job(self.job("event_retention", dispatcher.prune), "interval", minutes=10, id="event_retention")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stopping.set())
        from .api import start_for_daemon

        try:
            api_server = start_for_daemon(self.ctx)  # None (logged, and in `daemon status`) if it cannot listen
        except Exception:  # noqa: BLE001 - the scheduled work goes on without the API
            log.exception("the API could not start")
            api_server = None
        scheduler.start()
        try:
            while not self.stopping.wait(1.0):
                pass
        finally:
            if api_server is not None:
                api_server.stop()  # refuses new requests, lets those under way finish
            scheduler.shutdown(wait=True)
            with db.write(conn):
                events.append(conn, "daemon", db.node_id(conn), 0, "daemon.stopped", {"pid": os.getpid()})
            self.job("consumers", lambda c: dispatcher.run_once(c, budget=3.0))()  # send "daemon stopped" now
            log.info("daemon stopped")
            try:
                self.ctx.paths.daemon_pid_file.unlink()
            except OSError:
                pass


def _reconcile_job(conn) -> None:
    for runner in reconcile_all(conn):
        log.warning("runner %s is lost: %s", runner.name, runner.reason)


def _checkpoint_job(conn) -> None:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _setup_logging(ctx: Context) -> None:
    handler = logging.handlers.RotatingFileHandler(ctx.paths.daemon_log, maxBytes=5 * 1024 * 1024, backupCount=3)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
