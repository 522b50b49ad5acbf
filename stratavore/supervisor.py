"""Launching, stopping, restarting and removing runners.

A launch writes the runner rows (and their events) in one ``BEGIN IMMEDIATE`` transaction that also
checks the quotas, so concurrent launches can never exceed them. Only after that commit are the
keepers forked; each keeper records itself and its agent before the agent may run. Whatever moment
the launching process dies at, reconciliation can tell a row without a process, and no agent ever
runs without its row.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import agents, budgets, db, events, procs, projects, sessions
from .config import RESTART_POLICIES, Settings, parse_signal
from .context import Context
from .errors import Conflict, InvalidInput, LaunchFailed, NotFound, QuotaExceeded
from .logs import log_files
from .names import validate_name
from .reconcile import reconcile
from .runners import Runner, change_state, count_active, find, get, insert, list_runners
from .states import ACTIVE, ENDED, RunnerState

S = RunnerState

if TYPE_CHECKING:
    from .worktrees import Worktree
STOP_GRACE = 5.0


@dataclass
class LaunchOptions:
    name: str | None = None
    count: int = 1
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    restart: str | None = None
    max_restarts: int | None = None
    stop_signal: str | None = None
    stop_timeout: float | None = None
    agent: str | None = None  # default: the project's default agent, else the command as given
    worktree: str | None = None  # "" for a generated name
    resume_session: str | None = None


@dataclass
class LaunchResult:
    started: list[Runner]
    failed: list[tuple[Runner, str]]


def launch(ctx: Context, project_name: str, command: list[str], options: LaunchOptions | None = None) -> LaunchResult:
    """Launch runners of ``command`` (or of an agent, with ``command`` as its extra arguments) in a project."""
    opts = options or LaunchOptions()
    if opts.count < 1:
        raise InvalidInput("--count must be at least 1")
    if opts.name is not None:
        validate_name("runner", opts.name)
        if opts.count > 1:
            raise InvalidInput("--name names one runner; drop it or use --count 1")
    if opts.worktree is not None and opts.count > 1:
        raise InvalidInput("--worktree gives one runner its own checkout; launch runners one at a time")
    settings = ctx.settings
    restart = opts.restart or settings.restart
    if restart not in RESTART_POLICIES:
        raise InvalidInput(f"--restart must be one of {', '.join(RESTART_POLICIES)}")
    max_restarts = settings.max_restarts if opts.max_restarts is None else opts.max_restarts
    if max_restarts < 0:
        raise InvalidInput("--max-restarts must not be negative")
    stop_signal = parse_signal(opts.stop_signal or settings.stop_signal).name
    stop_timeout = settings.stop_timeout if opts.stop_timeout is None else opts.stop_timeout
    if stop_timeout < 0:
        raise InvalidInput("--stop-timeout must not be negative")
    conn = ctx.conn
    project = projects.get(conn, project_name)
    agent = opts.agent or project.default_agent or "generic"
    if agent == "generic" and not command:
        raise InvalidInput("no command given: put it after `--`, e.g. `stratavore launch web -- bash`, or use --agent")
    cwd = opts.cwd or project.path
    worktree = None
    if opts.worktree is not None:
        # git runs before the launch transaction, which must never wait on a process
        name = opts.worktree or f"{project.name}-{uuid.uuid4().hex[:6]}"
        from . import worktrees

        worktree, cwd = worktrees.create(cwd, ctx.paths.data_dir / "worktrees" / project.name, name)
    try:
        ids = _insert_runners(ctx, project_name, command, opts, agent, cwd, worktree, restart, max_restarts, stop_signal, stop_timeout)
    except BaseException:
        if worktree is not None:
            from . import worktrees

            worktrees.discard_new(worktree)
        raise
    return _start_keepers(ctx, ids)


def _insert_runners(
    ctx: Context,
    project_name: str,
    command: list[str],
    opts: LaunchOptions,
    agent: str,
    cwd: str,
    worktree: Worktree | None,
    restart: str,
    max_restarts: int,
    stop_signal: str,
    stop_timeout: float,
) -> list[str]:
    """Write the runner rows, their sessions and events in one transaction that also checks the quotas."""
    conn = ctx.conn
    launcher_pid, launcher_started = procs.identity()
    boot = procs.boot_id()
    ids: list[str] = []
    from .plugins import launch_rewriter

    # plugins that rewrite launch commands, loaded before the write lock (None, and no pluggy, without any)
    rewrite = launch_rewriter(ctx.paths)
    with db.write(conn):
        project = projects.get(conn, project_name)
        if not Path(cwd).is_dir():
            raise InvalidInput(f"working directory {cwd!r} does not exist")
        _check_quota(conn, ctx.settings, project, opts.count)
        # in the same transaction that would create the runners: no launch slips past a spent budget
        budgets.check_launch(conn, project.name)
        number = conn.execute("SELECT next_runner_number FROM projects WHERE id=?", (project.id,)).fetchone()[0]
        now = db.now()
        for _ in range(opts.count):
            if opts.name:
                name = opts.name
                if conn.execute("SELECT 1 FROM runners WHERE name=?", (name,)).fetchone():
                    raise Conflict(f"a runner named {name!r} already exists")
            else:
                while True:
                    name = f"{project.name}-{number}"
                    number += 1
                    if not conn.execute("SELECT 1 FROM runners WHERE name=?", (name,)).fetchone():
                        break
            plan = agents.plan_launch(agent, command, ctx.settings, runner_name=name, cwd=str(cwd), resume_session=opts.resume_session)
            if rewrite is not None:
                plan.command = rewrite(plan.agent, plan.command, {**plan.env, **opts.env})
            runner_id = uuid.uuid4().hex
            insert(
                conn,
                {
                    "id": runner_id,
                    "name": name,
                    "project_id": project.id,
                    "command": json.dumps(plan.command),
                    "cwd": str(cwd),
                    "env": json.dumps({**plan.env, **opts.env}),
                    "state": S.STARTING.value,
                    "restart_policy": restart,
                    "max_restarts": max_restarts,
                    "stop_signal": stop_signal,
                    "stop_timeout": stop_timeout,
                    "boot_id": boot,
                    "launcher_pid": launcher_pid,
                    "launcher_started": launcher_started,
                    "created_at": now,
                    "agent": plan.agent,
                    "session_id": plan.session_id,
                    "worktree_path": worktree.path if worktree else None,
                    "worktree_branch": worktree.branch if worktree else None,
                    "repo_path": worktree.repo if worktree else None,
                },
            )
            payload = {"name": name, "project": project.name, "command": plan.command, "cwd": str(cwd), "restart": restart}
            payload.update({"agent": plan.agent, "session_id": plan.session_id})
            if worktree:
                payload.update(worktree=worktree.path, branch=worktree.branch)
            events.append(conn, "runner", runner_id, 1, "runner.created", payload)
            if plan.session_id:
                sessions.record_launch(
                    conn,
                    get(conn, runner_id),
                    plan.session_id,
                    plan.transcript_path,
                    "resume" if opts.resume_session else "startup",
                )
            ids.append(runner_id)
        conn.execute("UPDATE projects SET next_runner_number=? WHERE id=?", (number, project.id))
    return ids


def _check_quota(conn, settings: Settings, project: projects.Project, wanted: int) -> None:
    if project.max_runners:
        active = count_active(conn, project.id)
        if active + wanted > project.max_runners:
            raise QuotaExceeded(
                f"project {project.name!r} allows {project.max_runners} active runner(s); {active} active, {wanted} requested"
            )
    if settings.max_runners:
        active = count_active(conn)
        if active + wanted > settings.max_runners:
            raise QuotaExceeded(f"the global limit is {settings.max_runners} active runner(s); {active} active, {wanted} requested")


def _start_keepers(ctx: Context, runner_ids: list[str]) -> LaunchResult:
    """Fork one keeper per runner and wait until each reports its agent running (or failing)."""
    ctx.paths.runner_socket("0" * 12)  # fail early, before any fork, if sockets cannot live there
    # imported here, once, rather than in every keeper: the forks share its pages
    from .keeper import become_keeper

    ctx.close()
    # objects frozen before fork are never touched by the collector, so their pages stay shared
    gc.freeze()
    reports: dict[int, str] = {}
    # the keepers wait at this gate until every one is forked: forking is this process's work, and
    # keepers starting up meanwhile would only compete with it for the CPU
    gate_r, gate_w = os.pipe()
    try:
        for runner_id in runner_ids:
            reports[_fork_keeper(ctx, runner_id, become_keeper, (gate_r, gate_w))] = runner_id
    finally:
        os.close(gate_w)
        os.close(gate_r)
        gc.unfreeze()
    outcome = _collect_reports(reports, ctx.settings.launch_timeout)
    db.flush_wal(ctx.paths.db_path)  # the keepers' "running" is acknowledged below: make it durable first
    conn = ctx.conn
    started, failed = [], []
    for runner_id in runner_ids:
        runner = get(conn, runner_id)
        error = outcome.get(runner_id)
        # a reported start is a start, even if a quick command has already ended since
        if error is None and runner.started_at is not None:
            started.append(runner)
        else:
            failed.append((runner, runner.reason or error or f"runner is {runner.state}"))
    if failed and not started:
        runner, reason = failed[0]
        more = f" ({len(failed)} runners failed)" if len(failed) > 1 else ""
        raise LaunchFailed(f"{runner.name}: {reason}{more}")
    return LaunchResult(started, failed)


def _fork_keeper(ctx: Context, runner_id: str, become_keeper, gate: tuple[int, int]) -> int:
    """Fork a keeper into a session of its own; returns the read end of its report pipe.

    One fork, not the classic two: the keeper never opens a terminal that could become its
    controlling one (openpty opens with O_NOCTTY), and when this process exits, init or the
    nearest subreaper adopts it. A second fork per runner would double the cost of a launch.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.close(gate[1])
            os.setsid()
            os.read(gate[0], 1)  # returns (empty) once the launcher closed the gate, or died
            os.close(gate[0])
            become_keeper(ctx.paths, ctx.settings, runner_id, write_fd)  # never returns
        finally:
            os._exit(1)
    os.close(write_fd)
    return read_fd


def _collect_reports(reports: dict[int, str], timeout: float) -> dict[str, str | None]:
    """Read each keeper's one-line report: None for success, else the error."""
    outcome: dict[str, str | None] = {}
    buffers = {fd: b"" for fd in reports}
    deadline = time.monotonic() + timeout
    while buffers:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select(list(buffers), [], [], remaining)
        for fd in ready:
            chunk = os.read(fd, 4096)
            if chunk:
                buffers[fd] += chunk
                if not buffers[fd].endswith(b"\n"):
                    continue
            data = buffers.pop(fd)
            os.close(fd)
            try:
                report = json.loads(data) if data else {"ok": False, "error": "the keeper exited before reporting"}
            except ValueError:
                report = {"ok": False, "error": "the keeper sent a garbled report"}
            outcome[reports[fd]] = None if report.get("ok") else report.get("error", "unknown error")
    for fd in buffers:
        os.close(fd)
        outcome[reports[fd]] = f"the keeper did not report within {timeout:g}s"
    return outcome


# -- stopping ------------------------------------------------------------------------------------


def stop(
    ctx: Context,
    refs: list[Runner],
    *,
    signal_name: str | None = None,
    timeout: float | None = None,
    wait: bool = True,
) -> list[Runner]:
    """Stop runners: the stop signal to each agent's group, a grace period, then SIGKILL the tree.

    Every keeper is told first, then all are awaited together, so stopping many takes as long as the
    slowest one rather than the sum.
    """
    sig = parse_signal(signal_name).name if signal_name else None
    if timeout is not None and timeout < 0:
        raise InvalidInput("--timeout must not be negative")
    conn = ctx.conn
    requested: list[Runner] = []
    checked = reconcile(conn, refs)
    # one transaction for all the stop requests: a hundred runners cost one commit, not a hundred
    with db.write(conn):
        for runner in checked:
            current = get(conn, runner.id)
            if current.state in ENDED:
                continue
            if current.state != S.STOPPING:
                change_state(
                    conn,
                    runner.id,
                    S.STOPPING,
                    reason="stop requested",
                    stop_requested_signal=sig,
                    stop_requested_timeout=timeout,
                )
            else:
                # a second, harsher stop (e.g. `kill` after `stop`) overrides the first
                conn.execute(
                    "UPDATE runners SET stop_requested_signal=COALESCE(?, stop_requested_signal),"
                    " stop_requested_timeout=COALESCE(?, stop_requested_timeout) WHERE id=?",
                    (sig, timeout, runner.id),
                )
            requested.append(get(conn, runner.id))
    waiting: list[tuple[Runner, float]] = []
    for current in requested:
        effective = current.stop_requested_timeout if current.stop_requested_timeout is not None else current.stop_timeout
        if current.keeper_pid and procs.is_alive(current.keeper_pid, current.keeper_started):
            procs.signal_pid(current.keeper_pid, signal.SIGTERM)
            waiting.append((current, effective))
        else:
            # no keeper to do it (a launch still starting, or a keeper that died): do it ourselves
            _stop_without_keeper(conn, current)
    if not wait:
        return [get(conn, r.id) for r in refs]
    if waiting:
        longest = max(t for _, t in waiting)
        stuck = set(procs.wait_gone([(r.keeper_pid, r.keeper_started) for r, _ in waiting], longest + STOP_GRACE))
        for runner, _ in waiting:
            if runner.keeper_pid in stuck:
                procs.signal_pid(runner.keeper_pid, signal.SIGKILL)
                _stop_without_keeper(conn, get(conn, runner.id), reason="the keeper did not stop in time")
    db.flush_wal(ctx.paths.db_path)  # the keepers recorded the ends without syncing; they are reported now
    return [get(conn, r.id) for r in refs]


def _stop_without_keeper(conn, runner: Runner, reason: str = "stopped without its keeper") -> None:
    procs.kill_tree(runner.agent_pid, runner.agent_started)
    with db.write(conn):
        change_state(conn, runner.id, S.STOPPED, expect=ACTIVE, reason=reason, ended_at=db.now())


# -- restart and removal -------------------------------------------------------------------------


def restart(ctx: Context, runner: Runner) -> Runner:
    """Stop the runner if it is active, then start its command again under a new keeper."""
    if runner.state in ACTIVE:
        stop(ctx, [runner])
    conn = ctx.conn
    launcher_pid, launcher_started = procs.identity()
    with db.write(conn):
        current = get(conn, runner.id)
        if current.state in ACTIVE:
            raise Conflict(f"runner {runner.name!r} is still {current.state}; try again")
        project = projects.get(conn, current.project)
        _check_quota(conn, ctx.settings, project, 1)
        command = current.command
        if current.agent == "claude" and current.session_id:
            from .agents.claude import restart_command

            transcript = conn.execute("SELECT transcript_path FROM sessions WHERE id=?", (current.session_id,)).fetchone()
            command = restart_command(command, current.session_id, transcript[0] if transcript else None)
        change_state(
            conn,
            runner.id,
            S.STARTING,
            reason="restart requested",
            command=json.dumps(command),
            restarts=0,
            boot_id=procs.boot_id(),
            launcher_pid=launcher_pid,
            launcher_started=launcher_started,
            keeper_pid=None,
            keeper_started=None,
            agent_pid=None,
            agent_started=None,
            exit_code=None,
            exit_signal=None,
            started_at=None,
            ended_at=None,
            stop_requested_signal=None,
            stop_requested_timeout=None,
        )
    result = _start_keepers(ctx, [runner.id])
    return result.started[0]


def remove(ctx: Context, runner: Runner, *, force: bool = False, remove_worktree: bool = False) -> Runner:
    """Delete an ended runner's row and logs; an active one only with ``force`` (it is stopped first).

    With ``remove_worktree`` its git worktree goes too, but never with uncommitted work in it unless
    ``force`` (the branch and its commits always stay).
    """
    conn = ctx.conn
    [runner] = reconcile(conn, [runner])
    if runner.state in ACTIVE:
        if not force:
            raise Conflict(f"runner {runner.name!r} is {runner.state}; stop it first or use --force")
        stop(ctx, [runner])
    if remove_worktree and runner.worktree_path and runner.repo_path:
        from . import worktrees

        worktrees.remove(worktrees.Worktree(runner.worktree_path, runner.worktree_branch or "", runner.repo_path), force=force)
    with db.write(conn):
        current = get(conn, runner.id)
        if current.state in ACTIVE:
            raise Conflict(f"runner {runner.name!r} is still {current.state}")
        conn.execute("DELETE FROM runners WHERE id=?", (runner.id,))
        conn.execute("UPDATE sessions SET runner_id=NULL WHERE runner_id=?", (runner.id,))
        events.append(conn, "runner", runner.id, current.version + 1, "runner.removed", {"name": runner.name})
    delete_files(ctx, [runner.id])
    return runner


def delete_files(ctx: Context, runner_ids: list[str]) -> None:
    for runner_id in runner_ids:
        log = ctx.paths.runner_log(runner_id)
        for path in [*log_files(log), log.with_name(f"{runner_id}.keeper.log")]:
            try:
                path.unlink()
            except OSError:
                pass


def remove_project(ctx: Context, name: str, *, force: bool = False) -> projects.Project:
    if force:
        active = list_runners(ctx.conn, project=name)
        if active:
            stop(ctx, active)
    project, runner_ids = projects.remove(ctx.conn, name)
    delete_files(ctx, runner_ids)
    return project


def resolve(ctx: Context, refs: list[str]) -> list[Runner]:
    return [find(ctx.conn, ref) for ref in refs]


def resume(ctx: Context, session_id: str, *, name: str | None = None, user_args: list[str] | None = None) -> LaunchResult:
    """Continue a Claude session in a new runner, in the session's recorded directory."""
    from .agents.claude import transcript_path

    conn = ctx.conn
    try:
        session = sessions.get(conn, session_id)
        cwd, transcript, project_id = session.cwd, session.transcript_path, session.project_id
        session_id = session.id
    except NotFound:
        external = [s for s in sessions.discover_external(ctx.settings, set()) if s.id == session_id]
        if not external:
            raise
        cwd, transcript, project_id = external[0].cwd, external[0].transcript_path, None
    if not cwd or not Path(cwd).is_dir():
        raise InvalidInput(f"session {session_id} ran in {cwd or 'an unknown directory'}, which no longer exists")
    transcript = transcript or str(transcript_path(ctx.settings, cwd, session_id))
    if not Path(transcript).is_file():
        raise NotFound(f"session {session_id} has no transcript at {transcript}; it cannot be resumed")
    busy = [r for r in list_runners(conn) if r.session_id == session_id]
    if busy:
        raise Conflict(f"session {session_id} is already running in {busy[0].name}")
    project = _project_for(conn, project_id, cwd)
    options = LaunchOptions(name=name, agent="claude", cwd=cwd, resume_session=session_id)
    return launch(ctx, project.name, list(user_args or []), options)


def _project_for(conn, project_id: int | None, cwd: str) -> projects.Project:
    candidates = projects.list_projects(conn)
    for project in candidates:
        if project.id == project_id:
            return project
    real = os.path.realpath(cwd)
    containing = [p for p in candidates if real == p.path or real.startswith(p.path.rstrip("/") + "/")]
    if not containing:
        raise InvalidInput(f"no project contains {cwd}; add one with `stratavore project add NAME {cwd}`")
    return max(containing, key=lambda p: len(p.path))


def enforce(ctx: Context, due: list[budgets.Enforcement]) -> None:
    """Carry out budget actions found by someone other than the runner's keeper (the daemon, a
    report): an interrupt is typed into the agent's terminal, a stop is a normal stop."""
    from . import protocol

    for item in due:
        try:
            runner = get(ctx.conn, item.runner_id)
        except NotFound:
            continue
        if runner.state not in ACTIVE:
            continue
        if item.action == "stop":
            stop(ctx, [runner])
        elif item.action == "interrupt":
            import socket

            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(2.0)
                    sock.connect(str(ctx.paths.runner_socket(runner.id)))
                    sock.sendall(protocol.frame(protocol.INPUT, agents.interrupt_keys(runner.agent)))
            except OSError:
                pass
