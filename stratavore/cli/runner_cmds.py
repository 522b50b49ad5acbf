"""Runner commands: launch, ps, attach, logs, stop, kill, restart, rm."""

from __future__ import annotations

import sys
import time

import click

from .. import logs as logfiles
from .. import supervisor
from ..agents import agent_names
from ..config import parse_detach_key
from ..errors import Conflict, ExitCode, InvalidInput
from ..reconcile import reconcile
from ..runners import Runner, exit_description, find, get, list_runners
from ..sessions import refresh_statuses
from ..states import ACTIVE
from . import cli, pass_app
from .render import emit_json, runner_json, runner_rows, state_text


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--env takes KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


def _check_agent(ctx, agent: str | None) -> str | None:
    if agent is not None and agent not in agent_names(ctx.settings):
        raise InvalidInput(f"unknown agent {agent!r}; known: {', '.join(agent_names(ctx.settings))}")
    return agent


@cli.command("launch")
@click.argument("project")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--agent", default=None, help="Agent adapter: claude, codex, aider, gemini, a preset from config, or generic.")
@click.option(
    "-w",
    "--worktree",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[NAME]",
    help="Run in a new git worktree on branch stratavore/NAME (a name is generated if omitted).",
)
@click.option("--name", default=None, help="Runner name (default: PROJECT-N).")
@click.option("-n", "--count", type=int, default=1, show_default=True, help="How many runners to launch.")
@click.option("--cwd", type=click.Path(file_okay=False), default=None, help="Working directory (default: the project's path).")
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Extra environment variable; repeatable.")
@click.option(
    "--restart", type=click.Choice(["no", "on-failure", "always"]), default=None, help="Restart policy (default from config: no)."
)
@click.option("--max-restarts", type=int, default=None, help="Give up after this many consecutive restarts.")
@click.option("--stop-signal", default=None, help="Signal that asks the agent to stop (default TERM).")
@click.option("--stop-timeout", type=float, default=None, help="Seconds to wait after the stop signal before SIGKILL.")
@click.option("-a", "--attach", "attach_after", is_flag=True, help="Attach to the runner once it runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the runners as JSON.")
@pass_app
def launch(
    app,
    project: str,
    command: tuple[str, ...],
    agent,
    worktree,
    name,
    count,
    cwd,
    env_pairs,
    restart,
    max_restarts,
    stop_signal,
    stop_timeout,
    attach_after,
    as_json,
) -> int:
    """Launch COMMAND as supervised runner(s) in PROJECT.

    Put the command after `--` when it has options of its own: `stratavore launch web -- python agent.py -v`.
    With --agent, the words after `--` are the agent's own arguments:
    `stratavore launch web --agent claude -- --model opus`.
    """
    ctx = app.get()
    options = supervisor.LaunchOptions(
        name=name,
        count=count,
        cwd=cwd,
        env=_parse_env(env_pairs),
        restart=restart,
        max_restarts=max_restarts,
        stop_signal=stop_signal,
        stop_timeout=stop_timeout,
        agent=_check_agent(ctx, agent),
        worktree=worktree,
    )
    result = supervisor.launch(ctx, project, list(command), options)
    if as_json:
        emit_json(
            {
                "started": [runner_json(r) for r in result.started],
                "failed": [{**runner_json(r), "error": reason} for r, reason in result.failed],
            }
        )
    else:
        for r in result.started:
            click.echo(f"{r.name}  {r.short_id}  {state_text(r)}  pid {r.agent_pid}")
        for r, reason in result.failed:
            click.echo(f"Error: {r.name}: {reason}", err=True)
    if attach_after and result.started:
        return _attach(ctx, result.started[0], None)
    return int(ExitCode.LAUNCH_FAILED) if result.failed else 0


@cli.command("ps")
@click.option("-a", "--all", "include_ended", is_flag=True, help="Include ended runners.")
@click.option("-p", "--project", default=None, help="Only this project's runners.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def ps(app, include_ended: bool, project: str | None, as_json: bool) -> None:
    """List runners (active ones unless --all)."""
    conn = app.get().conn
    if project is not None:
        from ..projects import get as get_project

        get_project(conn, project)
    runners = reconcile(conn, list_runners(conn, project=project, include_ended=include_ended))
    refresh_statuses(conn, app.get().settings, runners)
    runners = [get(conn, r.id) for r in runners]
    if not include_ended:
        runners = [r for r in runners if r.state in ACTIVE]
    if as_json:
        emit_json([runner_json(r) for r in runners])
        return
    if not runners:
        click.echo("No runners." + ("" if include_ended else " (`--all` shows ended ones)"))
        return
    click.echo(runner_rows(runners))


def _attach(ctx, runner: Runner, detach_key: str | None) -> int:
    [runner] = reconcile(ctx.conn, [runner])
    if runner.state not in ACTIVE:
        raise Conflict(f"runner {runner.name!r} is {state_text(runner)}; see its output with `stratavore logs {runner.name}`")
    key = parse_detach_key(detach_key or ctx.settings.detach_key)
    from ..attach import attach as attach_terminal
    from ..attach import connect, describe_key

    sock = connect(ctx.paths.runner_socket(runner.id), runner.name)
    click.echo(f"[attached to {runner.name}; {describe_key(key)} detaches]", err=True)
    outcome = attach_terminal(sock, key)
    if outcome.detached:
        click.echo(f"\r\n[detached from {runner.name}]", err=True)
        return 0
    ended = get(ctx.conn, runner.id)
    click.echo(f"\r\n[{runner.name} {state_text(ended)}]", err=True)
    return 0


@cli.command("attach")
@click.argument("runner")
@click.option("--detach-key", default=None, help="Key that detaches, e.g. ctrl-] (the default) or ctrl-q.")
@pass_app
def attach(app, runner: str, detach_key: str | None) -> int:
    """Attach this terminal to a runner's terminal. The detach key leaves it running."""
    ctx = app.get()
    return _attach(ctx, find(ctx.conn, runner), detach_key)


@cli.command("logs")
@click.argument("runner")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the runner ends.")
@click.option("-n", "--tail", type=int, default=None, help="Only the last N lines.")
@pass_app
def logs(app, runner: str, follow: bool, tail: int | None) -> None:
    """Print a runner's output (its log survives the runner)."""
    ctx = app.get()
    r = find(ctx.conn, runner)
    if tail is not None and tail < 0:
        raise InvalidInput("--tail must not be negative")
    path = ctx.paths.runner_log(r.id)
    out = sys.stdout.buffer
    data, position = logfiles.read_tail(path, tail)
    out.write(data)
    out.flush()
    if not follow:
        return
    conn = ctx.conn
    last_check = [0.0]

    def ended() -> bool:
        now = time.monotonic()
        if now - last_check[0] < 0.5:
            return False
        last_check[0] = now
        [current] = reconcile(conn, [get(conn, r.id)])
        return current.state not in ACTIVE

    # resume where the tail stopped (from the top of a log that did not exist yet), so no output falls in between
    for chunk in logfiles.follow(path, start_at_end=False, start=position, stop=ended):
        out.write(chunk)
        out.flush()


def _targets(ctx, refs: tuple[str, ...], all_: bool, project: str | None) -> list[Runner]:
    if refs and (all_ or project):
        raise InvalidInput("name runners or use --all/--project, not both")
    if all_ or project:
        if project is not None:
            from ..projects import get as get_project

            get_project(ctx.conn, project)
        return list_runners(ctx.conn, project=project)
    if not refs:
        raise InvalidInput("name at least one runner (or use --all or --project)")
    return supervisor.resolve(ctx, list(refs))


def _report_stopped(runners: list[Runner], as_json: bool, verb: str) -> None:
    if as_json:
        emit_json([runner_json(r) for r in runners])
        return
    if not runners:
        click.echo("No active runners.")
    for r in runners:
        detail = exit_description(r)
        click.echo(f"{verb} {r.name}" + (f" ({detail})" if detail else "") + ("" if r.state not in ACTIVE else f" [{r.state}]"))


def _stop_command(name: str, help_text: str, *, forced: bool):
    @click.argument("runners", nargs=-1)
    @click.option("--all", "all_", is_flag=True, help="Every active runner.")
    @click.option("-p", "--project", default=None, help="Every active runner of this project.")
    @click.option("--json", "as_json", is_flag=True, help="Print the runners as JSON.")
    @pass_app
    def command(app, runners: tuple[str, ...], all_: bool, project: str | None, as_json: bool, **kw) -> None:
        ctx = app.get()
        targets = _targets(ctx, runners, all_, project)
        if forced:
            done = supervisor.stop(ctx, targets, signal_name="KILL", timeout=0)
        else:
            done = supervisor.stop(ctx, targets, signal_name=kw.get("signal_name"), timeout=kw.get("timeout"), wait=not kw.get("no_wait"))
        _report_stopped(done, as_json, "Killed" if forced else "Stopped")

    command.__doc__ = help_text
    if not forced:
        command = click.option("--no-wait", is_flag=True, help="Return once the stop is requested.")(command)
        command = click.option("-t", "--timeout", type=float, default=None, help="Seconds between the stop signal and SIGKILL.")(command)
        command = click.option("-s", "--signal", "signal_name", default=None, help="Stop signal (default: the runner's, TERM).")(command)
    return cli.command(name)(command)


stop = _stop_command(
    "stop",
    "Stop runners gracefully: the stop signal, a grace period, then SIGKILL of the whole process tree.",
    forced=False,
)
kill = _stop_command("kill", "Kill runners at once: SIGKILL of the whole process tree.", forced=True)


@cli.command("restart")
@click.argument("runners", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the runners as JSON.")
@pass_app
def restart(app, runners: tuple[str, ...], as_json: bool) -> None:
    """Stop runners if they are active, then start their commands again (same name and id)."""
    ctx = app.get()
    done = [supervisor.restart(ctx, r) for r in supervisor.resolve(ctx, list(runners))]
    if as_json:
        emit_json([runner_json(r) for r in done])
        return
    for r in done:
        click.echo(f"{r.name}  {r.short_id}  running  pid {r.agent_pid}")


@cli.command("rm")
@click.argument("runners", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Stop active runners first; remove worktrees even with uncommitted work.")
@click.option(
    "--worktree/--keep-worktree",
    "remove_worktree",
    default=None,
    help="Also remove the runner's git worktree (its branch stays). Asked interactively when not given.",
)
@pass_app
def rm(app, runners: tuple[str, ...], force: bool, remove_worktree: bool | None) -> None:
    """Remove ended runners and their logs (and, if asked, their worktrees)."""
    ctx = app.get()
    for r in supervisor.resolve(ctx, list(runners)):
        drop_tree = remove_worktree
        if r.worktree_path and drop_tree is None:
            drop_tree = sys.stdin.isatty() and click.confirm(f"Remove {r.name}'s worktree {r.worktree_path}?", default=False)
        supervisor.remove(ctx, r, force=force, remove_worktree=bool(drop_tree))
        click.echo(f"Removed {r.name}")
        if r.worktree_path:
            if drop_tree:
                click.echo(f"Removed worktree {r.worktree_path} (branch {r.worktree_branch} kept)")
            else:
                click.echo(f"Kept worktree {r.worktree_path} (branch {r.worktree_branch})")
