"""Commands around the runners: events, daemon, demo, config, completion."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict

import click

from .. import daemon as daemon_mod
from .. import demo as demo_mod
from .. import events as event_log
from .. import supervisor
from ..runners import find
from . import LazyContext, cli, pass_app
from .render import duration, emit_json, runner_rows, table


def _event_line(event: event_log.Event) -> str:
    when = dt.datetime.fromtimestamp(event.created_at).strftime("%H:%M:%S.%f")[:-3]
    payload = event.payload
    subject = payload.get("name") or event.aggregate_id[:8]
    details = " ".join(f"{k}={v}" for k, v in payload.items() if k not in ("name",) and v is not None)
    return f"{event.seq:>6}  {when}  {event.type:<18} {subject}  {details}".rstrip()


@cli.group("events", invoke_without_command=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they happen.")
@click.option("-t", "--type", "types", multiple=True, help="Only this event type; a trailing * matches a prefix (runner.*).")
@click.option("-r", "--runner", default=None, help="Only this runner's events.")
@click.option("--since", "since_seq", type=int, default=0, help="Only events after this sequence number.")
@click.option("-n", "--last", type=int, default=None, help="Only the last N events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--failed", is_flag=True, help="Show parked events instead: a consumer gave up on them (see `events retry`).")
@click.pass_context
def events(
    click_ctx, follow: bool, types: tuple[str, ...], runner: str | None, since_seq: int, last: int | None, as_json: bool, failed: bool
) -> None:
    """Show the event log (every state change, in order); `events retry` re-queues parked events."""
    if click_ctx.invoked_subcommand:
        return
    app = click_ctx.find_object(LazyContext)
    conn = app.get().conn
    if failed:
        from .notify_cmds import show_parked

        show_parked(conn, as_json)
        return
    aggregate = find(conn, runner).id if runner else None
    if last is None and follow and since_seq == 0:
        last = 10
    shown = event_log.list_events(conn, after_seq=since_seq, types=types, aggregate_id=aggregate, last=last)

    def show(event: event_log.Event) -> None:
        click.echo(json.dumps(event.to_dict(), sort_keys=True) if as_json else _event_line(event))

    for event in shown:
        show(event)
    if follow:
        cursor = max([since_seq, event_log.last_seq(conn) if shown or last is not None else since_seq])
        for event in event_log.follow(conn, after_seq=cursor, types=types, aggregate_id=aggregate):
            show(event)


@events.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="Every parked event.")
@pass_app
def events_retry(app, ids: tuple[int, ...], all_: bool) -> None:
    """Queue parked events (IDs from `events --failed`, or --all) for delivery again."""
    from .notify_cmds import retry_parked

    retry_parked(app.get().conn, list(ids), all_)


@cli.group("daemon")
def daemon() -> None:
    """The optional background daemon (scheduled reconciliation and maintenance)."""


@daemon.command("start")
@pass_app
def daemon_start(app) -> None:
    """Start the daemon in the background."""
    info = daemon_mod.start(app.get())
    click.echo(f"Daemon started (pid {info.pid})")


@daemon.command("stop")
@pass_app
def daemon_stop(app) -> None:
    """Stop the daemon. Runners keep running."""
    info = daemon_mod.stop(app.get())
    click.echo(f"Daemon stopped (pid {info.pid})")


@daemon.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def daemon_status(app, as_json: bool) -> int:
    """Show whether the daemon runs, and how its jobs are doing. Exit code 3 when it is not running."""
    status = daemon_mod.status(app.get())
    if as_json:
        emit_json(status)
    elif status["running"]:
        click.echo(f"Daemon running (pid {status['pid']}, up {duration(status['uptime'])}), {status['active_runners']} active runner(s)")
        api = status.get("api") or {}
        where = " and ".join(filter(None, [api.get("url"), api.get("socket") and f"unix:{api['socket']}"]))
        click.echo(f"API: {where}" if where else f"API: not listening{': ' + api['error'] if api.get('error') else ''}")
    else:
        click.echo(f"Daemon not running; {status['active_runners']} active runner(s) keep running without it")
    if not as_json and status["jobs"]:
        rows = [
            [
                j["job_id"],
                j["runs"],
                j["failures"],
                f"{(j['last_duration'] or 0) * 1000:.1f}ms",
                duration(j["last_run_age"]) + " ago",
                j["last_error"] or "",
            ]
            for j in status["jobs"]
        ]
        click.echo(table(["JOB", "RUNS", "FAILURES", "LAST TOOK", "LAST RUN", "LAST ERROR"], rows))
    return 0 if status["running"] else 3


@daemon.command("install")
@click.option("--print", "print_only", is_flag=True, help="Print the unit instead of writing it.")
def daemon_install(print_only: bool) -> None:
    """Write a systemd user unit (Linux) or a launchd agent (macOS) that starts the daemon at login."""
    from .. import service

    if print_only:
        click.echo(service.unit_text().decode(), nl=False)
        return
    path = service.install()
    click.echo(f"Wrote {path}\nEnable it with: {service.activation_hint()}")


@daemon.command("uninstall")
def daemon_uninstall() -> None:
    """Remove the service unit written by `daemon install` (disable it first)."""
    from .. import service

    click.echo(f"Removed {service.uninstall()}")


@daemon.command("run")
@pass_app
def daemon_run(app) -> None:
    """Run the daemon in the foreground (for systemd, launchd or a terminal)."""
    daemon_mod.Daemon(app.get()).run()


@cli.command("demo")
@click.option("-n", "--count", type=int, default=3, show_default=True, help="How many demo runners to launch.")
@click.option("--cleanup", is_flag=True, help="Stop the demo runners before returning.")
@pass_app
def demo(app, count: int, cleanup: bool) -> None:
    """A guided tour: a demo project, a few runners of a small bundled agent, ps and logs."""
    ctx = app.get()
    click.echo(f"Stratavore demo (data in {ctx.paths.data_dir})\n")
    from .session_cmds import sessions as sessions_command

    def show_sessions() -> None:
        click.get_current_context().invoke(sessions_command, project=demo_mod.DEMO_PROJECT, include_external=False, as_json=False)

    def show_usage() -> None:
        from .usage_cmds import usage_session

        click.get_current_context().invoke(
            usage_session, since=None, until=None, tz_name=None, claude_dir=None, as_json=False, session_id=None
        )

    started = demo_mod.run(ctx, count, click.echo, lambda rs: click.echo(runner_rows(rs)), show_sessions, show_usage)
    names = " ".join(r.name for r in started)
    first = started[0].name
    tips = [
        (f"stratavore attach {first}", "its live terminal: answer its permission prompt (y); Ctrl-] detaches"),
        (f"stratavore logs {first} -f", "follow its output"),
        ("stratavore events", "every state change so far"),
        (f"stratavore stop --project {demo_mod.DEMO_PROJECT}", "stop the demo runners"),
    ]
    width = max(len(command) for command, _ in tips)
    click.echo("\nTry it yourself:\n" + "\n".join(f"  {command.ljust(width)}   # {why}" for command, why in tips))
    if cleanup:
        supervisor.stop(ctx, started)
        click.echo(f"\nStopped the demo runners ({names}). Nothing is left running.")
    else:
        click.echo(f"\nLeft running: {names} (stop them with `stratavore stop --project {demo_mod.DEMO_PROJECT}`).")


@cli.group("config")
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def config_show(app, as_json: bool) -> None:
    """Show the effective settings (defaults < config file < environment) and paths."""
    ctx = app.get()
    data = {"settings": asdict(ctx.settings), "paths": {k: str(v) for k, v in asdict(ctx.paths).items()}}
    data["paths"]["config_file"] = str(ctx.paths.config_file)
    data["paths"]["database"] = str(ctx.paths.db_path)
    if as_json:
        emit_json(data)
        return
    for section, values in data.items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            click.echo(f"{key} = {value!r}")


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script, e.g. `eval "$(stratavore completion bash)"`."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "stratavore", "_STRATAVORE_COMPLETE").source())
