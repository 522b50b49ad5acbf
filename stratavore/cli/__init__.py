"""The stratavore command: parse, call the library, render. Errors become messages in one place."""

from __future__ import annotations

import os
import sqlite3
import sys

import click

from .. import __version__
from ..context import Context
from ..errors import ExitCode, StratavoreError

# command name -> the module that defines it; modules load only when their command runs, so a
# launch does not pay for importing every other command
LAZY_COMMANDS = {
    "project": "project_cmds",
    "launch": "runner_cmds",
    "ps": "runner_cmds",
    "attach": "runner_cmds",
    "logs": "runner_cmds",
    "stop": "runner_cmds",
    "kill": "runner_cmds",
    "restart": "runner_cmds",
    "rm": "runner_cmds",
    "sessions": "session_cmds",
    "session": "session_cmds",
    "resume": "session_cmds",
    "events": "system_cmds",
    "daemon": "system_cmds",
    "demo": "system_cmds",
    "config": "system_cmds",
    "completion": "system_cmds",
    "notify": "notify_cmds",
    "plugins": "plugin_cmds",
    "usage": "usage_cmds",
    "budget": "budget_cmds",
    "api": "api_cmds",
}


class Root(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        # the order a newcomer meets the commands in, then any registered elsewhere
        from .plugin_cmds import add_plugin_commands

        add_plugin_commands(self)
        return list(dict.fromkeys([*LAZY_COMMANDS, *self.commands]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            import importlib

            importlib.import_module(f"{__name__}.{LAZY_COMMANDS[cmd_name]}")
        elif cmd_name not in self.commands:
            # perhaps a plugin's command
            from .plugin_cmds import add_plugin_commands

            add_plugin_commands(self)
        return self.commands.get(cmd_name)


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="stratavore")
@click.pass_context
def cli(click_ctx: click.Context) -> None:
    """Stratavore: launch, supervise and account for AI coding agents.

    Runners keep going when this command (or the daemon) exits; attach to them any time.
    State lives in one SQLite database; set STRATAVORE_HOME to use a separate profile.
    """
    click_ctx.obj = LazyContext()


class LazyContext:
    """Load settings only when a command needs them, so `--help` works with a broken config."""

    _ctx: Context | None = None

    def get(self) -> Context:
        if self._ctx is None:
            self._ctx = Context.load()
        return self._ctx


pass_app = click.make_pass_decorator(LazyContext)


def main(argv: list[str] | None = None) -> None:
    try:
        result = cli.main(args=argv, prog_name="stratavore", standalone_mode=False)
    except StratavoreError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(int(e.exit_code))
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        click.echo(f"Error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(int(ExitCode.ERROR))
    except sqlite3.Error as e:
        text = str(e)
        code = ExitCode.DATABASE_BUSY if "locked" in text or "busy" in text else ExitCode.ERROR
        click.echo(f"Error: database: {text}", err=True)
        sys.exit(int(code))
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
    except BrokenPipeError:
        # the reader of our output went away (`stratavore ps | head`); nothing left to say
        sys.stderr.close()
        sys.exit(int(ExitCode.ERROR))
    except Exception as e:  # noqa: BLE001 - a bug: one line for the user, the traceback in a file
        if os.environ.get("STRATAVORE_DEBUG"):
            raise
        click.echo(f"Error: internal error: {type(e).__name__}: {e} (details in {_log_traceback()})", err=True)
        sys.exit(int(ExitCode.ERROR))
    sys.exit(result if isinstance(result, int) else 0)


def _log_traceback() -> str:
    """Append the current exception's traceback to the profile's error log; return where it went."""
    import tempfile
    import time
    import traceback

    try:
        from ..paths import resolve_paths

        folder = resolve_paths().log_dir
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except Exception:  # noqa: BLE001 - even an unusable profile must not hide the error
        from pathlib import Path

        folder = Path(tempfile.gettempdir())
    path = folder / "stratavore-errors.log"
    with open(path, "a") as f:
        f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(sys.argv)}\n{traceback.format_exc()}\n")
    return str(path)
