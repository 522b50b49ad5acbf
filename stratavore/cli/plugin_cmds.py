"""The plugins command, and the commands plugins add to the command line."""

from __future__ import annotations

import click

from .. import plugins as plugins_mod
from ..paths import resolve_paths
from . import cli, pass_app
from .render import emit_json, table

_loaded_commands = False


def add_plugin_commands(group: click.Group) -> None:
    """Let plugins add their commands (once); free when only the bundled plugins exist."""
    global _loaded_commands
    if _loaded_commands:
        return
    _loaded_commands = True
    try:
        paths = resolve_paths()
        if not plugins_mod.has_external_plugins(paths):
            return
        plugins_mod.load(paths, bundled=False).register_commands(group)
    except Exception as e:  # noqa: BLE001 - a plugin must never break the command line
        click.echo(f"Warning: plugin commands could not be loaded: {e}", err=True)


@cli.group("plugins")
def plugins() -> None:
    """Plugins: bundled, from installed packages (entry points) and from the config dir's plugins folder."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def plugins_list(app, as_json: bool) -> None:
    """Loaded plugins: name, source, status (loaded, blocked, error), hooks, and any error."""
    ctx = app.get()
    host = plugins_mod.load(ctx.paths)
    conn = ctx.conn
    infos = [info.to_dict() for info in host.plugins]
    for info in infos:
        # a plugin's on_event failures show on its consumer cursor
        row = conn.execute("SELECT last_error FROM consumer_cursors WHERE consumer=?", (f"plugin:{info['name']}",)).fetchone()
        info["last_event_error"] = row["last_error"] if row else None
    if as_json:
        emit_json({"plugins": infos, "folder": str(plugins_mod.plugins_dir(ctx.paths))})
        return
    rows = [[i["name"], i["source"], i["status"], ",".join(i["hooks"]), i["error"] or i["last_event_error"] or ""] for i in infos]
    click.echo(table(["NAME", "SOURCE", "STATUS", "HOOKS", "ERROR"], rows))
    click.echo(f"\nPlugin folder: {plugins_mod.plugins_dir(ctx.paths)}  (block plugins with {plugins_mod.DISABLE_ENV}=name,...)")
