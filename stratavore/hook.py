"""`stratavore hook`: Claude Code runs this for each hook event, with the event's JSON on stdin.

It must be quick and must never break the agent: it reads the event, notes the time, and hands the
work to a detached child, so the agent waits only for an interpreter start. It always exits 0. The
child waits at most a moment for a busy database; when the database cannot take the event it spools
it to a file that the next hook (or the daemon) applies, so a status change is late, never lost.
Events carry the time they were received, so one applied late never undoes a newer one.
"""

from __future__ import annotations

import os
import sys
import time

# the agent waits for this process until it forks: it imports only what it needs before that (not json, not typing)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_PAYLOAD = 4 * 1024 * 1024
HOOK_BUSY_TIMEOUT = 0.5
SPOOL_NAME = "hook-spool.jsonl"


def main() -> int:
    at = time.time()
    try:
        raw = sys.stdin.buffer.read(MAX_PAYLOAD)
    except OSError:
        return 0
    if os.environ.get("STRATAVORE_HOOK_SYNC") != "1" and not _detach():
        os._exit(0)  # the parent: the agent may go on (skipping the interpreter's teardown saves a few ms)
    try:
        import json

        payload = json.loads(raw or b"{}")
        if isinstance(payload, dict):
            deliver(payload, os.environ.get("STRATAVORE_RUNNER_ID"), at)
    except Exception:  # noqa: BLE001 - a hook must never fail the agent
        pass
    if os.environ.get("STRATAVORE_HOOK_SYNC") != "1":
        os._exit(0)
    return 0


def _detach() -> bool:
    """Fork; True in the child, which lets go of the agent's pipes (it waits for them to close)."""
    try:
        if os.fork() != 0:
            return False
    except OSError:
        return True  # cannot fork: do the work in the foreground rather than drop it
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return True


def deliver(payload: dict[str, Any], runner_id: str | None, at: float) -> None:
    from .paths import resolve_paths

    paths = resolve_paths()
    record = {"payload": payload, "runner_id": runner_id, "at": at}
    if not paths.db_path.exists():
        _spool(paths.runtime_dir / SPOOL_NAME, record)
        return
    from . import db
    from .sessions import apply_hook

    try:
        conn = db.connect(paths.db_path, busy_timeout=HOOK_BUSY_TIMEOUT, migrate=False)
        try:
            drain_spool(conn, paths.runtime_dir / SPOOL_NAME)
            apply_hook(conn, payload, runner_id, at=at)
        finally:
            conn.close()
    except Exception:  # noqa: BLE001 - busy, locked, or an older schema: keep the event for later
        _spool(paths.runtime_dir / SPOOL_NAME, record)


def _spool(path, record: dict[str, Any]) -> None:
    import json

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
    finally:
        os.close(fd)


def drain_spool(conn, path) -> int:
    """Apply spooled hook events, oldest first; returns how many were applied."""
    if not path.exists():
        return 0
    import json

    from .sessions import apply_hook

    claimed = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        os.rename(path, claimed)
    except OSError:
        return 0  # another process is draining it
    lines = claimed.read_bytes().splitlines()
    applied = 0
    try:
        for index, line in enumerate(lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            try:
                apply_hook(conn, record["payload"], record.get("runner_id"), at=record.get("at"))
            except Exception:  # noqa: BLE001
                # put back what is left, ahead of anything spooled meanwhile
                rest = b"".join(x + b"\n" for x in lines[index:])
                _prepend(path, rest)
                break
            applied += 1
    finally:
        claimed.unlink(missing_ok=True)
    return applied


def _prepend(path, data: bytes) -> None:
    existing = path.read_bytes() if path.exists() else b""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data + existing)
    os.replace(tmp, path)
