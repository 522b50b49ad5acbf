"""Desktop notifications: ``notify-send`` (Linux, freedesktop) or ``osascript`` (macOS).

``stratavore notify add desktop``. The daemon must run in your desktop session to reach it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from stratavore.consumers import DeliveryError, PermanentError
from stratavore.hookspecs import hookimpl
from stratavore.notify import Channel, Message


def _applescript_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Desktop(Channel):
    kind = "desktop"
    description = "desktop notifications (notify-send on Linux, osascript on macOS)"
    options = ()

    def target(self) -> str:
        tool = shutil.which("notify-send") or (shutil.which("osascript") if sys.platform == "darwin" else None)
        return f"desktop via {tool or 'nothing: no notify-send or osascript found'}"

    def send(self, message: Message) -> None:
        notify_send = shutil.which("notify-send")
        if notify_send:
            urgency = "critical" if message.priority == "high" else "normal"
            argv = [notify_send, "--app-name=Stratavore", f"--urgency={urgency}", message.title, message.body]
        elif sys.platform == "darwin" and shutil.which("osascript"):
            script = f"display notification {_applescript_string(message.body)} with title {_applescript_string(message.title)}"
            argv = ["osascript", "-e", script]
        else:
            raise PermanentError("no notify-send (Linux) or osascript (macOS) on this machine")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DeliveryError(f"{argv[0]}: {e}") from None
        if proc.returncode != 0:
            raise DeliveryError(f"{argv[0]} exited with {proc.returncode}: {proc.stderr.strip()[:200]}")


@hookimpl
def notification_channels() -> list[type[Channel]]:
    return [Desktop]
