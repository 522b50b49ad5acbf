"""Claude Code: session ids chosen up front, per-run hooks, transcripts, the live-process registry."""

from __future__ import annotations

import json
import os
import re
import shlex
import uuid
from pathlib import Path
from typing import Any

from ..apiauth import HookTarget, hook_target
from ..config import Settings
from ..paths import resolve_paths
from . import LaunchPlan

# the hooks Stratavore installs for each run (with --settings), and what each tells us
HOOK_EVENTS = ("SessionStart", "UserPromptSubmit", "Stop", "Notification", "PermissionRequest", "PostToolUse", "SessionEnd")
# hooks the agent does not wait for; none: each hook notes its time before the agent goes on, and that
# order lets an event applied late never undo a newer one (an async PostToolUse could land after Stop)
ASYNC_HOOKS: frozenset[str] = frozenset()
HOOK_TIMEOUT_SECONDS = 10
MAX_ENCODED_LENGTH = 200


def config_dir(settings: Settings, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    raw = settings.claude_config_dir or env.get("CLAUDE_CONFIG_DIR", "")
    first = raw.split(",")[0].strip() if raw else ""
    return Path(first).expanduser() if first else Path.home() / ".claude"


def _java_hash(text: str) -> int:
    """Claude Code's string hash: Java-style over UTF-16 code units, as a signed 32-bit int."""
    h = 0
    data = text.encode("utf-16-le")
    for i in range(0, len(data), 2):
        unit = data[i] | (data[i + 1] << 8)
        h = (h * 31 + unit) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def encode_cwd(cwd: str) -> str:
    """The directory name Claude Code files a cwd's transcripts under.

    Every character that is not an ASCII letter or digit becomes '-' (per UTF-16 unit, so an emoji
    becomes two); names over 200 characters are cut and suffixed with a hash of the full path.
    """
    units = cwd.encode("utf-16-le")
    chars = []
    for i in range(0, len(units), 2):
        unit = units[i] | (units[i + 1] << 8)
        chars.append(chr(unit) if unit < 128 and chr(unit).isalnum() else "-")
    encoded = "".join(chars)
    if len(encoded) <= MAX_ENCODED_LENGTH:
        return encoded
    return f"{encoded[:MAX_ENCODED_LENGTH]}-{_base36(abs(_java_hash(cwd)))}"


def transcript_path(settings: Settings, cwd: str, session_id: str) -> Path:
    return config_dir(settings) / "projects" / encode_cwd(os.path.realpath(cwd)) / f"{session_id}.jsonl"


def hook_command() -> str:
    """The command Claude Code runs per hook event: the bare interpreter (-S skips site's start-up
    work) and only the standard library plus this package, to keep the agent's wait short."""
    import sys

    if getattr(sys, "frozen", False):
        return shlex.join([sys.executable, "hook"])
    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    code = f"import sys; sys.path.insert(0, {package_parent!r}); from stratavore.hook import main; sys.exit(main())"
    return shlex.join([sys.executable, "-S", "-c", code])


# http hooks name their runner and carry its runner token (which opens only that runner's reports);
# Claude Code fills both in from the agent's environment, so neither appears on the command line
HTTP_HOOK_HEADERS = {"Authorization": "Bearer $STRATAVORE_API_TOKEN", "X-Stratavore-Runner": "$STRATAVORE_RUNNER_ID"}


def hook_settings(command: str, http: HookTarget | None = None) -> dict[str, Any]:
    """Per-run hooks: ``command`` for each event, or, with ``http`` (the daemon's API is up), a POST to
    the API instead, which spares the agent an interpreter start per event."""
    hooks: dict[str, Any] = {}
    for event in HOOK_EVENTS:
        handler: dict[str, Any] = {"type": "command", "command": command, "timeout": HOOK_TIMEOUT_SECONDS}
        if http is not None:
            handler = {"type": "http", "url": http.url, "headers": HTTP_HOOK_HEADERS, "timeout": HOOK_TIMEOUT_SECONDS}
            handler["allowedEnvVars"] = ["STRATAVORE_API_TOKEN", "STRATAVORE_RUNNER_ID"]
        elif event in ASYNC_HOOKS:
            handler["async"] = True
        hooks[event] = [{"hooks": [handler]}]
    return {"hooks": hooks}


def plan(user_args: list[str], settings: Settings, *, runner_name: str, cwd: str, resume_session: str | None) -> LaunchPlan:
    base = shlex.split(settings.claude_command)
    # http hooks only when asked for and the daemon's API is up; command hooks work without the daemon
    target = hook_target(resolve_paths(), runner_name) if settings.claude_hooks == "http" else None
    settings_json = json.dumps(hook_settings(hook_command(), target), separators=(",", ":"))
    if resume_session:
        session_id = resume_session
        command = [*base, "--resume", session_id, "-n", runner_name, "--settings", settings_json, *user_args]
    else:
        session_id = str(uuid.uuid4())
        command = [*base, "--session-id", session_id, "-n", runner_name, "--settings", settings_json, *user_args]
    return LaunchPlan(
        agent="claude",
        command=command,
        session_id=session_id,
        transcript_path=str(transcript_path(settings, cwd, session_id)),
        env={"STRATAVORE_API_TOKEN": target.token} if target else {},
    )


def restart_command(command: list[str], session_id: str, transcript: str | None) -> list[str]:
    """The command a restarted Claude runner runs: it continues ``session_id`` (after /clear, the
    newest session) when that conversation has a transcript, and starts it afresh otherwise (Claude
    Code refuses to resume a session it has no transcript for)."""
    flag = "--resume" if transcript and os.path.isfile(transcript) else "--session-id"
    out = list(command)
    for old in ("--session-id", "--resume"):
        if old in out and out.index(old) + 1 < len(out):
            at = out.index(old)
            out[at : at + 2] = [flag, session_id]
            return out
    return out


# -- the live-process registry: $CLAUDE_CONFIG_DIR/sessions/<pid>.json ----------------------------

REGISTRY_STATUS = {"busy": "working", "idle": "idle", "waiting": "waiting", "shell": "idle"}


def read_registry(settings: Settings) -> list[dict[str, Any]]:
    """Live Claude Code processes, from their registry files; stale files (dead pids) are skipped."""
    from .. import procs

    folder = config_dir(settings) / "sessions"
    entries = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        if not re.fullmatch(r"\d+\.json", name):
            continue
        try:
            data = json.loads((folder / name).read_text())
            pid = int(data.get("pid") or name[:-5])
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        started = procs.start_time(pid)
        if started is None:
            continue
        # a registry file older than the process holding its pid describes an earlier process
        written = _epoch(data.get("startedAt"))
        if written is not None and written + 5 < started:
            continue
        data["pid"] = pid
        data["stratavoreStatus"] = REGISTRY_STATUS.get(str(data.get("status")), None)
        data["updatedEpoch"] = _epoch(data.get("statusUpdatedAt") or data.get("updatedAt"))
        entries.append(data)
    return entries


def _epoch(value: Any) -> float | None:
    """Registry times are epoch milliseconds (or seconds); ISO strings are accepted too."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return value / 1000.0 if value > 1e11 else float(value)
    try:
        from datetime import datetime

        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
