"""Output for people (aligned tables, short durations) and for scripts (JSON)."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from typing import Any

import click

from ..runners import Runner, exit_description
from ..states import ACTIVE, RunnerState


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells]
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def size(num: int | None) -> str:
    if num is None:
        return "-"
    value = float(num)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit in ("B", "K") else f"{value:.1f}{unit}"
        value /= 1024
    return str(num)


def state_text(runner: Runner) -> str:
    if runner.state in (RunnerState.EXITED, RunnerState.STOPPED) or (
        runner.state == RunnerState.BACKOFF and (runner.exit_code is not None or runner.exit_signal)
    ):
        detail = exit_description(runner)
        if runner.state == RunnerState.BACKOFF:
            return f"backoff ({detail}, restart {runner.restarts})"
        return f"{runner.state} ({detail})" if detail else str(runner.state)
    if runner.state == RunnerState.RUNNING and runner.agent_status:
        # what the agent is doing matters more than "running": working, waiting for you, idle
        detail = f": {runner.agent_status_detail}" if runner.agent_status_detail else ""
        return f"{runner.agent_status}{detail}"
    return str(runner.state)


def display_command(runner: Runner) -> list[str]:
    """The command as the user asked for it: for Claude, `claude` and the user's own arguments
    (the session id, name and per-run hook settings are Stratavore's and the same for every run)."""
    command = runner.command
    if runner.agent == "claude" and "--settings" in command:
        return ["claude", *command[command.index("--settings") + 2 :]]
    return command


def command_text(command: list[str], width: int = 40) -> str:
    text = shlex.join(command)
    return text if len(text) <= width else text[: width - 1] + "…"


def runner_rows(runners: Sequence[Runner], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = []
    for r in runners:
        if r.state in ACTIVE:
            age = duration(now - r.started_at) if r.started_at else "-"
        else:
            age = f"{duration(now - r.ended_at)} ago" if r.ended_at else "-"
        rows.append(
            [
                r.name,
                r.short_id,
                r.project,
                r.agent,
                state_text(r),
                r.agent_pid if r.state in ACTIVE else "-",
                age,
                f"{r.cpu_percent:.0f}%" if r.cpu_percent is not None and r.state in ACTIVE else "-",
                size(r.rss_bytes) if r.state in ACTIVE else "-",
                r.restarts,
                command_text(display_command(r)),
            ]
        )
    return table(["NAME", "ID", "PROJECT", "AGENT", "STATUS", "PID", "UPTIME", "CPU", "MEM", "RESTARTS", "COMMAND"], rows)


def runner_json(runner: Runner, now: float | None = None) -> dict[str, Any]:
    data = runner.to_dict()
    now = time.time() if now is None else now
    data["heartbeat_age"] = round(now - runner.heartbeat_at, 3) if runner.heartbeat_at else None
    return data
