"""Commands for notification channels: notify add, list, rm, test."""

from __future__ import annotations

import sys

import click

from .. import daemon as daemon_mod
from .. import notify as notify_mod
from .. import plugins as plugins_mod
from ..errors import InvalidInput
from . import cli, pass_app
from .render import emit_json, table

# flag -> channel option; a kind rejects the flags it does not take
FLAG_OPTIONS = ("topic", "server", "chat_id", "token", "url", "format", "api_url")


@cli.group("notify")
def notify() -> None:
    """Notification channels (ntfy, Telegram, webhooks, desktop); the daemon sends to them."""


def _kinds(app) -> dict[str, type[notify_mod.Channel]]:
    return plugins_mod.load(app.get().paths).channel_kinds()


def _read_secret(value: str | None) -> str | None:
    if value == "-":
        line = sys.stdin.readline().strip()
        if not line:
            raise InvalidInput("nothing on standard input for an option given as '-'")
        return line
    return value


@notify.command("add")
@click.argument("kind")
@click.option("--name", default=None, help="Channel name (default: the kind), for several channels of one kind.")
@click.option("--topic", default=None, help="ntfy: the topic to publish to.")
@click.option("--server", default=None, help="ntfy: the server (default https://ntfy.sh).")
@click.option("--chat-id", "chat_id", default=None, help="telegram: the chat to write to.")
@click.option("--token", default=None, help="telegram: the bot token; ntfy: an access token. '-' reads it from standard input.")
@click.option("--url", default=None, help="webhook: the URL to POST to. '-' reads it from standard input.")
@click.option("--format", "format_", default=None, help="webhook: json (default), slack or discord.")
@click.option("--api-url", "api_url", default=None, help="telegram: the Bot API server (default https://api.telegram.org).")
@click.option("-o", "--option", "extra", multiple=True, metavar="KEY=VALUE", help="An option of a plugin's channel kind.")
@click.option("--on", "on", multiple=True, metavar="TYPE", help="Event type to send (repeatable; 'runner.*' matches a prefix).")
@pass_app
def notify_add(app, kind: str, name: str | None, extra: tuple[str, ...], on: tuple[str, ...], **flags: str | None) -> None:
    """Add a channel: ntfy --topic T, telegram --chat-id C --token T, webhook --url U [--format slack], desktop.

    By default a channel gets runners waiting for input, idle, failed or lost, budget warnings and
    overruns, and daemon start and stop. Secrets (tokens, webhook URLs) go to the keyring, or to a
    0600 file in the config directory where no keyring works.
    """
    ctx = app.get()
    values: dict[str, str | None] = {}
    for flag in FLAG_OPTIONS:
        value = flags.get("format_" if flag == "format" else flag)
        if value is not None:
            values[flag] = _read_secret(value) if flag in ("token", "url") else value
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"-o takes KEY=VALUE, not {item!r}")
        values[key.replace("-", "_")] = _read_secret(value)
    record = notify_mod.add_channel(ctx, _kinds(app), kind, values, name=name, events=on)
    click.echo(f"Added channel {record.name} ({kind}) for {', '.join(record.events)}")
    if daemon_mod.read_pid_file(ctx) is None:
        click.echo(
            "The daemon sends notifications: start it with `stratavore daemon start`. Try the channel with "
            f"`stratavore notify test {record.name}`."
        )


@notify.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def notify_list(app, as_json: bool) -> None:
    """Configured channels, where they send, which events, and how delivery is going."""
    ctx = app.get()
    conn = ctx.conn
    records = notify_mod.list_channels(conn)
    kinds = _kinds(app) if records else {}
    out = []
    for record in records:
        try:
            target = notify_mod.build_channel(ctx.paths, kinds, record).target()
        except Exception as e:  # noqa: BLE001 - one broken channel must not hide the list
            target = f"unusable: {e}"
        out.append(
            {
                "name": record.name,
                "kind": record.kind,
                "target": target,
                "events": record.events,
                **notify_mod.pending_for(conn, record.name),
            }
        )
    if as_json:
        emit_json(out)
        return
    if not out:
        click.echo("No notification channels; add one with `stratavore notify add ntfy --topic ...`")
        return
    rows = [[c["name"], c["kind"], c["target"], ",".join(c["events"]), c["delivered"], c["parked"], c["last_error"] or ""] for c in out]
    click.echo(table(["NAME", "KIND", "TARGET", "EVENTS", "DELIVERED", "PARKED", "LAST ERROR"], rows))


@notify.command("rm")
@click.argument("name")
@pass_app
def notify_rm(app, name: str) -> None:
    """Remove a channel, its secrets and its delivery state."""
    notify_mod.remove_channel(app.get(), name)
    click.echo(f"Removed channel {name}")


@notify.command("test")
@click.argument("name")
@pass_app
def notify_test(app, name: str) -> None:
    """Send a test message through a channel now (no daemon needed); fails with the channel's error."""
    ctx = app.get()
    channel = notify_mod.send_test(ctx, plugins_mod.load(ctx.paths), name)
    click.echo(f"Sent a test notification to {name} ({channel.target()})")


# -- parked events (for `stratavore events --failed` and `events retry`) ----------------------------


def show_parked(conn, as_json: bool) -> None:
    import datetime as dt

    from .. import consumers

    parked = consumers.list_parked(conn)
    if as_json:
        emit_json([p.to_dict() for p in parked])
        return
    if not parked:
        click.echo("No parked events: every consumer is keeping up.")
        return
    rows = [
        [
            p.id,
            p.seq,
            p.type,
            p.consumer,
            p.attempts,
            "queued" if p.queued else dt.datetime.fromtimestamp(p.parked_at).strftime("%Y-%m-%d %H:%M:%S"),
            p.error,
        ]
        for p in parked
    ]
    click.echo(table(["ID", "SEQ", "TYPE", "CONSUMER", "ATTEMPTS", "PARKED", "ERROR"], rows))


def retry_parked(conn, ids: list[int], all_: bool) -> None:
    from .. import consumers
    from ..errors import NotFound

    if all_ == bool(ids):
        raise InvalidInput("name parked event IDs (see `stratavore events --failed`) or use --all")
    if ids:
        known = {p.id for p in consumers.list_parked(conn)}
        missing = [i for i in ids if i not in known]
        if missing:
            raise NotFound(f"no parked event with ID {missing[0]} (see `stratavore events --failed`)")
    count = consumers.requeue(conn, None if all_ else ids)
    click.echo(f"Queued {count} parked event(s) for delivery; the daemon retries them shortly.")
