"""`stratavore demo`: a tour on the embedded database, with no agent account needed."""

from __future__ import annotations

import time
from collections.abc import Callable

from . import logs, projects, supervisor
from .context import Context
from .daemon import self_command
from .errors import NotFound
from .runners import Runner, get

DEMO_PROJECT = "demo"


def demo_agent_command() -> list[str]:
    return [*self_command(), "demo-agent"]


def run(ctx: Context, count: int, say: Callable[[str], None], show_table: Callable[[list[Runner]], None]) -> list[Runner]:
    """Launch ``count`` demo runners and show what Stratavore sees. Returns the runners left running."""
    conn = ctx.conn
    try:
        project = projects.get(conn, DEMO_PROJECT)
    except NotFound:
        folder = ctx.paths.data_dir / "demo-project"
        folder.mkdir(parents=True, exist_ok=True)
        project = projects.add(conn, DEMO_PROJECT, folder)
        say(f"$ stratavore project add {DEMO_PROJECT} {folder}")
    say(f"$ stratavore launch {DEMO_PROJECT} --count {count} -- {' '.join(demo_agent_command())}")
    result = supervisor.launch(ctx, project.name, demo_agent_command(), supervisor.LaunchOptions(count=count))
    for r in result.started:
        say(f"{r.name}  {r.short_id}  running  pid {r.agent_pid}")
    time.sleep(2.0)
    say("\n$ stratavore ps")
    show_table([get(ctx.conn, r.id) for r in result.started])
    first = result.started[0]
    say(f"\n$ stratavore logs {first.name} --tail 3")
    say(logs.tail(ctx.paths.runner_log(first.id), 3).decode(errors="replace").rstrip())
    return result.started
