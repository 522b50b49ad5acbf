"""Service units that start the daemon at login: a systemd user unit on Linux, a launchd agent on macOS."""

from __future__ import annotations

import os
import plistlib
import shlex
import sys
from pathlib import Path

from .daemon import self_command
from .errors import DaemonError

UNIT_NAME = "stratavore.service"
LAUNCHD_LABEL = "dev.stratavore.daemon"


def _environment() -> dict[str, str]:
    """What the daemon must see to use this very profile."""
    return {k: v for k, v in os.environ.items() if k in ("STRATAVORE_HOME", "STRATAVORE_RUNTIME_DIR", "CLAUDE_CONFIG_DIR")}


def systemd_unit() -> str:
    command = shlex.join([*self_command(), "daemon", "run"])
    env_lines = "".join(f"Environment={shlex.quote(f'{k}={v}')}\n" for k, v in sorted(_environment().items()))
    return (
        "[Unit]\n"
        "Description=Stratavore daemon (scheduled reconciliation, API, metrics, notifications)\n"
        "After=network.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={command}\n"
        f"{env_lines}"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        # the runners' keepers outlive the daemon by design: stopping the service must not take
        # its whole control group (the agents it launched through the API) down with it
        "KillMode=process\n"
        "TimeoutStopSec=20\n\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def launchd_plist() -> bytes:
    return plistlib.dumps(
        {
            "Label": LAUNCHD_LABEL,
            "ProgramArguments": [*self_command(), "daemon", "run"],
            "EnvironmentVariables": _environment(),
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},
            # as with systemd: stopping the agent must leave the runners' keepers alone
            "AbandonProcessGroup": True,
        }
    )


def unit_path(platform: str | None = None) -> Path:
    platform = platform or sys.platform
    if platform == "darwin":
        return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / UNIT_NAME


def unit_text(platform: str | None = None) -> bytes:
    return launchd_plist() if (platform or sys.platform) == "darwin" else systemd_unit().encode()


def install(platform: str | None = None) -> Path:
    path = unit_path(platform)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(unit_text(platform))
    except OSError as e:
        raise DaemonError(f"cannot write {path}: {e.strerror}") from None
    return path


def uninstall(platform: str | None = None) -> Path:
    path = unit_path(platform)
    if not path.exists():
        raise DaemonError(f"no service unit at {path}")
    path.unlink()
    return path


def activation_hint(platform: str | None = None) -> str:
    if (platform or sys.platform) == "darwin":
        return f"launchctl load -w {unit_path(platform)}"
    return f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}"
