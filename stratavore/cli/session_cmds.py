"""Agent sessions: sessions, session show, resume."""

from __future__ import annotations

import time

import click

from .. import sessions as session_store
from .. import supervisor
from ..projects import get as get_project
from . import cli, pass_app
from .render import duration, emit_json, table


def _cost_by_session(conn) -> dict[str, float]:
    """Spend per session when usage has been recorded (empty before any accounting ran)."""
    try:
        rows = conn.execute("SELECT session_id, SUM(cost_usd) FROM usage_entries GROUP BY session_id").fetchall()
    except Exception:  # noqa: BLE001 - no usage table yet
        return {}
    return {r[0]: r[1] for r in rows if r[1] is not None}


@cli.command("sessions")
@click.option("-p", "--project", default=None, help="Only this project's sessions.")
@click.option("-a", "--all", "include_external", is_flag=True, help="Also sessions Stratavore did not start.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def sessions(app, project: str | None, include_external: bool, as_json: bool) -> None:
    """List Claude sessions: title, directory, runner, last activity, cost so far."""
    ctx = app.get()
    conn = ctx.conn
    if project is not None:
        get_project(conn, project)
    items = session_store.list_sessions(conn, project=project)
    if include_external and project is None:
        items += session_store.discover_external(ctx.settings, {s.id for s in items})
    costs = _cost_by_session(conn)
    if as_json:
        emit_json([{**s.to_dict(), "cost_usd": costs.get(s.id)} for s in items])
        return
    if not items:
        click.echo("No sessions." + ("" if include_external else " (`--all` includes sessions Stratavore did not start)"))
        return
    now = time.time()
    rows = [
        [
            s.id[:8],
            s.runner or ("(external)" if s.external else "-"),
            s.project or "-",
            s.status or "-",
            f"{duration(now - s.last_activity_at)} ago" if s.last_activity_at else "-",
            f"${costs[s.id]:.2f}" if s.id in costs else "-",
            (s.title or "")[:40],
            s.cwd,
        ]
        for s in items
    ]
    click.echo(table(["SESSION", "RUNNER", "PROJECT", "STATUS", "ACTIVE", "COST", "TITLE", "CWD"], rows))


@cli.group("session")
def session() -> None:
    """Inspect one session."""


@session.command("show")
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def session_show(app, session_id: str, as_json: bool) -> None:
    """Show a session (by id or unambiguous prefix)."""
    ctx = app.get()
    s = session_store.get(ctx.conn, session_id)
    cost = _cost_by_session(ctx.conn).get(s.id)
    if as_json:
        emit_json({**s.to_dict(), "cost_usd": cost})
        return
    fields = [
        ("id", s.id),
        ("title", s.title or "-"),
        ("runner", s.runner or "-"),
        ("project", s.project or "-"),
        ("status", f"{s.status or '-'}{': ' + s.status_detail if s.status_detail else ''}"),
        ("cwd", s.cwd),
        ("transcript", s.transcript_path or "-"),
        ("started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started_at)) if s.started_at else "-"),
        ("last activity", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.last_activity_at)) if s.last_activity_at else "-"),
        ("continued from", s.parent_session_id or "-"),
        ("ended", f"{s.end_reason}" if s.ended_at else "-"),
        ("cost", f"${cost:.4f}" if cost is not None else "-"),
    ]
    click.echo("\n".join(f"{k + ':':<16}{v}" for k, v in fields))


@cli.command("resume")
@click.argument("session_id")
@click.argument("agent_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--name", default=None, help="Name of the new runner.")
@click.option("-a", "--attach", "attach_after", is_flag=True, help="Attach to it once it runs.")
@pass_app
def resume(app, session_id: str, agent_args: tuple[str, ...], name: str | None, attach_after: bool) -> int:
    """Continue a Claude session in a new runner (claude --resume), e.g. after a reboot."""
    from .runner_cmds import _attach

    ctx = app.get()
    result = supervisor.resume(ctx, session_id, name=name, user_args=list(agent_args))
    runner = result.started[0]
    click.echo(f"{runner.name}  {runner.short_id}  running  pid {runner.agent_pid}  (session {runner.session_id})")
    if attach_after:
        return _attach(ctx, runner, None)
    return 0
