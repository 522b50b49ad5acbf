"""`stratavore api ...`: the daemon's HTTP API (its token, its address)."""

from __future__ import annotations

import click

from .. import apiauth
from ..errors import DaemonError
from . import cli, pass_app


@cli.group("api")
def api() -> None:
    """The daemon's HTTP API: the token its clients need, and where it listens."""


@api.command("token")
@click.option("--where", is_flag=True, help="Say where the token is kept instead of printing it.")
@pass_app
def api_token(app, where: bool) -> None:
    """Print the API token (made on first use): send it as `Authorization: Bearer <token>`."""
    ctx = app.get()
    ctx.paths.ensure()
    token = apiauth.load_token(ctx.paths)
    click.echo(apiauth.token_location(ctx.paths) if where else token)


@api.command("url")
@pass_app
def api_url(app) -> None:
    """Print where the running daemon's API listens (its URL, or unix:PATH)."""
    info = apiauth.read_info(app.get().paths)
    if info is None:
        raise DaemonError("the daemon is not running (start it with `stratavore daemon start`)")
    if not info.url and not info.socket:
        raise DaemonError(f"the daemon's API is not listening: {info.error or 'see the daemon log'}")
    click.echo(info.url or f"unix:{info.socket}")
