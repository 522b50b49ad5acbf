"""The hooks a Stratavore plugin may implement (pluggy, project name ``stratavore``).

A plugin is a module (or any object) with functions marked ``@hookimpl``::

    from stratavore.hookspecs import hookimpl

    @hookimpl
    def rewrite_launch(agent, command, env):
        return ["nice", "-n", "10", *command]

Plugins come from the bundled ``plugins/`` folder (notification channels), the ``stratavore``
entry-point group of installed packages, and ``<config dir>/plugins/*.py``. An implementation may
take any subset of a hook's arguments. A plugin that fails to import or raises in a hook is reported
and skipped; it never stops the daemon or a launch. ``STRATAVORE_DISABLE_PLUGINS=name,other`` blocks
plugins by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .events import Event

PROJECT = "stratavore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def on_event(event: Event) -> None:
    """Called by the daemon for every event of the outbox, in ``seq`` order, at least once.

    Each plugin has its own cursor: a plugin that raises is retried with backoff and, after repeated
    failures (or at once for :class:`stratavore.consumers.PermanentError`), the event is parked and
    the plugin moves on. Deduplicate by ``event.event_id`` if a second delivery matters.
    """


@hookspec
def rewrite_launch(agent: str, command: list[str], env: dict[str, str]) -> list[str] | None:
    """Change the command line a runner is launched with, or return None to leave it as it is.

    Implementations are chained: each receives the command as the previous one left it. ``env`` is
    the runner's extra environment (read only). Called once per launch inside the launch's database
    transaction, so keep it quick and do not touch the database. The rewritten command is the one
    recorded, shown by ``ps`` and used again by ``restart``.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``stratavore`` command line, e.g. ``cli.add_command(my_command)``.

    A command whose name is already taken is refused and reported by ``stratavore plugins list``.
    """


@hookspec
def notification_channels() -> list[Any]:
    """Return channel kinds: subclasses of :class:`stratavore.notify.Channel`.

    Each kind has a unique ``kind`` name (``stratavore notify add KIND``), declares its options (which
    of them are secrets, kept in the keyring) and sends a :class:`stratavore.notify.Message`.
    """
