"""`stratavore project ...`"""

from __future__ import annotations

import click

from .. import projects, supervisor
from . import cli, pass_app
from .render import emit_json, table
from .runner_cmds import _check_agent


@cli.group("project")
def project() -> None:
    """Add, list, change and remove projects (a directory runners start in, with its quota)."""


@project.command("add")
@click.argument("name")
@click.argument("path")
@click.option("--max-runners", type=int, default=None, help="Most runners active at once in this project (0: no limit).")
@click.option("--agent", default=None, help="Default agent for launches in this project (e.g. claude).")
@click.option("--json", "as_json", is_flag=True, help="Print the project as JSON.")
@pass_app
def project_add(app, name: str, path: str, max_runners: int | None, agent: str | None, as_json: bool) -> None:
    """Register directory PATH as project NAME."""
    ctx = app.get()
    p = projects.add(ctx.conn, name, path, max_runners=max_runners, default_agent=_check_agent(ctx, agent))
    if as_json:
        emit_json(p.to_dict())
    else:
        limit = f", at most {p.max_runners} runners" if p.max_runners else ""
        click.echo(f"Added project {p.name} at {p.path}{limit}")


@project.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def project_list(app, as_json: bool) -> None:
    """List projects with their active runner counts."""
    conn = app.get().conn
    items = projects.list_projects(conn)
    counts = projects.active_counts(conn)
    if as_json:
        emit_json([{**p.to_dict(), "active_runners": counts.get(p.id, 0)} for p in items])
        return
    if not items:
        click.echo("No projects yet. Add one: stratavore project add NAME PATH")
        return
    rows = [[p.name, f"{counts.get(p.id, 0)}/{p.max_runners or '-'}", p.path] for p in items]
    click.echo(table(["NAME", "ACTIVE/MAX", "PATH"], rows))


@project.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def project_show(app, name: str, as_json: bool) -> None:
    """Show one project."""
    conn = app.get().conn
    p = projects.get(conn, name)
    active = projects.active_counts(conn).get(p.id, 0)
    if as_json:
        emit_json({**p.to_dict(), "active_runners": active})
        return
    click.echo(
        f"name:         {p.name}\npath:         {p.path}\nmax runners:  {p.max_runners or 'no limit'}\n"
        f"agent:        {p.default_agent or '-'}\nactive:       {active}"
    )


@project.command("set")
@click.argument("name")
@click.option("--path", default=None, help="Move the project to this directory.")
@click.option("--max-runners", type=int, default=None, help="New runner limit (0: no limit).")
@click.option("--agent", default=None, help="New default agent ('' for none).")
@pass_app
def project_set(app, name: str, path: str | None, max_runners: int | None, agent: str | None) -> None:
    """Change a project's path, runner limit or default agent."""
    ctx = app.get()
    p = projects.update(ctx.conn, name, path=path, max_runners=max_runners, default_agent=_check_agent(ctx, agent or None) or agent)
    click.echo(f"Updated project {p.name}: path {p.path}, max runners {p.max_runners or 'no limit'}, agent {p.default_agent or 'none'}")


@project.command("rm")
@click.argument("name")
@click.option("--force", is_flag=True, help="Stop the project's active runners first.")
@pass_app
def project_rm(app, name: str, force: bool) -> None:
    """Remove a project and the records of its ended runners."""
    supervisor.remove_project(app.get(), name, force=force)
    click.echo(f"Removed project {name}")
