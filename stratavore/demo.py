"""`stratavore demo`: a tour on the embedded database, with no agent account needed.

The runners are a bundled simulated Claude Code: it writes real transcripts and runs real hooks,
so statuses (working, waiting for permission, idle) and sessions show exactly as they would with
Claude Code. Its files go to a Claude config directory of the demo's own, never to ~/.claude.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import replace

from . import budgets, events, projects, supervisor
from .context import Context
from .daemon import self_command
from .errors import NotFound
from .runners import Runner, get
from .sessions import refresh_statuses

DEMO_PROJECT = "demo"
# small enough for a few simulated turns to cross it, so the tour shows a budget being hit
DEMO_BUDGET_USD = 0.02
# what each simulated agent types by itself; a prompt about editing asks for permission and waits
SCRIPTS = [
    "please edit app.py to add logging|run the tests",
    "explain how the build works|summarise the open issues",
    "list the TODO comments|please edit the README",
]


def run(
    ctx: Context,
    count: int,
    say: Callable[[str], None],
    show_table: Callable[[list[Runner]], None],
    show_sessions: Callable[[], None],
    show_usage: Callable[[], None],
) -> list[Runner]:
    """Launch ``count`` simulated agents and show what Stratavore sees. Returns the runners left running."""
    conn = ctx.conn
    claude_dir = ctx.paths.data_dir / "demo-claude"
    ctx.settings = replace(
        ctx.settings,
        claude_command=shlex.join([*self_command(), "simulated-claude"]),
        claude_config_dir=str(claude_dir),
    )
    try:
        project = projects.get(conn, DEMO_PROJECT)
    except NotFound:
        folder = ctx.paths.data_dir / "demo-project"
        folder.mkdir(parents=True, exist_ok=True)
        project = projects.add(conn, DEMO_PROJECT, folder, default_agent="claude")
        say(f"$ stratavore project add {DEMO_PROJECT} {folder} --agent claude")
    started: list[Runner] = []
    for index in range(count):
        options = supervisor.LaunchOptions(
            agent="claude",
            env={
                "CLAUDE_CONFIG_DIR": str(claude_dir),
                "STRATAVORE_SIM_AUTOPLAY": SCRIPTS[index % len(SCRIPTS)],
                "STRATAVORE_SIM_AUTOPLAY_EVERY": str(1.0 + index),
            },
        )
        result = supervisor.launch(ctx, project.name, [], options)
        started.extend(result.started)
    say(f"$ stratavore launch {DEMO_PROJECT} --agent claude        # x{count}, a simulated Claude Code")
    for r in started:
        say(f"{r.name}  {r.short_id}  running  pid {r.agent_pid}  session {r.session_id}")
    budget = budgets.set_budget(
        ctx.conn, scope="project", target=project.name, usd=DEMO_BUDGET_USD, period="day", warn="50", action="notify"
    )
    say(f"$ stratavore budget set --project {DEMO_PROJECT} --usd {DEMO_BUDGET_USD} --period day --warn 50 --action notify")
    time.sleep(4.0)
    refresh_statuses(ctx.conn, ctx.settings, [get(ctx.conn, r.id) for r in started])
    say("\n$ stratavore ps          # STATUS comes from the agent's own hooks: working, waiting, idle")
    show_table([get(ctx.conn, r.id) for r in started])
    say("\n$ stratavore usage session      # tokens and cost, from the agents' own transcripts")
    show_usage()
    say("\n$ stratavore sessions")
    show_sessions()
    # what every keeper does at each heartbeat, done now so the demo need not wait for one
    budgets.evaluate(ctx.conn)
    standing = budgets.standing(ctx.conn, budgets.get(ctx.conn, budget.name))
    say("\n$ stratavore budget list")
    say(f"{budget.name}: ${standing.spent_usd:.4f} of ${DEMO_BUDGET_USD} spent today ({standing.percent:.0f}%)")
    for event in events.list_events(ctx.conn, types=("budget.warning", "budget.exceeded")):
        say(f"  event {event.type}: {event.payload['threshold']}% of {event.payload['name']} reached")
    first = started[0]
    from . import logs

    say(f"\n$ stratavore logs {first.name} --tail 4")
    say(logs.tail(ctx.paths.runner_log(first.id), 4).decode(errors="replace").rstrip())
    return started
