"""Agent adapters: how to build an agent's command line, and where its status comes from.

`claude` understands Claude Code (session ids, hooks, transcripts, resume). `generic` runs any
command; `codex`, `aider` and `gemini` are presets of it, and users add their own in config.toml:

    [agents.mine]
    command = ["my-agent", "--quiet"]

Agents other than Claude report no status of their own: theirs is derived from process state and
output activity (working while output flows, idle after `idle_after` seconds of silence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Settings
from ..errors import InvalidInput

# command templates of the built-in presets; user arguments are appended
PRESETS: dict[str, tuple[str, ...]] = {
    "codex": ("codex",),
    "aider": ("aider",),
    "gemini": ("gemini",),
}


@dataclass
class LaunchPlan:
    agent: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None
    transcript_path: str | None = None


def interrupt_keys(agent: str) -> bytes:
    """What a person types to interrupt the agent's current work: Escape in Claude Code, Ctrl-C elsewhere."""
    return b"\x1b" if agent == "claude" else b"\x03"


def agent_names(settings: Settings) -> list[str]:
    return sorted({"claude", "generic", *PRESETS, *settings.agent_presets})


def plan_launch(
    agent: str,
    user_args: list[str],
    settings: Settings,
    *,
    runner_name: str,
    cwd: str,
    hook_env: dict[str, str] | None = None,
    resume_session: str | None = None,
) -> LaunchPlan:
    """The command line (and session bookkeeping) for launching ``agent`` with ``user_args``."""
    if agent == "claude":
        from .claude import plan

        return plan(user_args, settings, runner_name=runner_name, cwd=cwd, resume_session=resume_session)
    if resume_session is not None:
        raise InvalidInput(f"only Claude sessions can be resumed, not {agent} ones")
    if agent == "generic":
        if not user_args:
            raise InvalidInput("no command given: put it after `--`, e.g. `stratavore launch web -- bash`")
        return LaunchPlan("generic", list(user_args))
    template = settings.agent_presets.get(agent) or PRESETS.get(agent)
    if template is None:
        raise InvalidInput(f"unknown agent {agent!r}; known: {', '.join(agent_names(settings))}")
    return LaunchPlan(agent, [*template, *user_args])
