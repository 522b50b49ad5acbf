"""Agent sessions (Claude Code conversations) and the live status agents report.

Status comes from the agent, never from its screen: Claude Code's hooks (installed per run with
``--settings``) report each turn, prompt and permission request, and its live-process registry
(``sessions/<pid>.json``) is read as a second source. A ``/clear`` or a fork starts a new session
id, which SessionStart reports with its ``source``: the runner follows it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import db, events
from .config import Settings
from .errors import NotFound
from .runners import Runner, set_agent_status, update_fields
from .states import ACTIVE

TITLE_LENGTH = 80


@dataclass(frozen=True)
class Session:
    id: str
    agent: str
    runner_id: str | None
    project_id: int | None
    cwd: str
    transcript_path: str | None
    title: str | None
    status: str | None
    status_detail: str | None
    source: str | None
    parent_session_id: str | None
    started_at: float | None
    last_activity_at: float | None
    ended_at: float | None
    end_reason: str | None
    version: int
    runner: str | None = None
    project: str | None = None
    external: bool = False

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Session:
        keys = set(row.keys())
        return cls(**{f: row[f] for f in cls.__dataclass_fields__ if f in keys and f != "external"})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SELECT = (
    "SELECT sessions.*, runners.name AS runner, projects.name AS project FROM sessions"
    " LEFT JOIN runners ON runners.id = sessions.runner_id LEFT JOIN projects ON projects.id = sessions.project_id"
)


def get(conn: sqlite3.Connection, session_id: str) -> Session:
    row = conn.execute(f"{_SELECT} WHERE sessions.id=?", (session_id,)).fetchone()
    if row is None:
        rows = conn.execute(f"{_SELECT} WHERE sessions.id LIKE ? LIMIT 2", (session_id + "%",)).fetchall()
        if len(rows) == 1:
            return Session.from_row(rows[0])
        raise NotFound(f"no session {session_id!r} (see `stratavore sessions --all`)")
    return Session.from_row(row)


def list_sessions(conn: sqlite3.Connection, *, project: str | None = None) -> list[Session]:
    sql = _SELECT
    params: list[Any] = []
    if project is not None:
        sql += " WHERE projects.name=?"
        params.append(project)
    sql += " ORDER BY COALESCE(sessions.last_activity_at, sessions.started_at) DESC"
    return [Session.from_row(r) for r in conn.execute(sql, params)]


def record_launch(conn: sqlite3.Connection, runner: Runner, session_id: str, transcript_path: str | None, source: str) -> None:
    """The session a Claude runner starts with, known before the agent runs (inside the launch transaction)."""
    _upsert(
        conn,
        session_id,
        runner_id=runner.id,
        project_id=runner.project_id,
        cwd=runner.cwd,
        transcript_path=transcript_path,
        source=source,
        started_at=db.now(),
    )


def _upsert(conn: sqlite3.Connection, session_id: str, **values: Any) -> None:
    exists = conn.execute("SELECT 1 FROM sessions WHERE id=?", (session_id,)).fetchone()
    values = {k: v for k, v in values.items() if v is not None}
    if exists:
        if values:
            assignments = ", ".join(f"{k}=?" for k in values)
            conn.execute(f"UPDATE sessions SET {assignments}, version=version+1 WHERE id=?", (*values.values(), session_id))
        return
    values.setdefault("cwd", "")
    columns = ["id", *values]
    conn.execute(f"INSERT INTO sessions({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", (session_id, *values.values()))


# -- hook events -------------------------------------------------------------------------------


# what each hook says about the agent: (status, detail) or None for "no change"
def _status_for(event: str, payload: dict[str, Any]) -> tuple[str, str | None] | None:
    if event == "UserPromptSubmit":
        return ("working", None)
    if event == "PostToolUse":
        return ("working", None)
    if event in ("Stop", "SessionStart"):
        return ("idle", None)
    if event == "PermissionRequest":
        tool = payload.get("tool_name")
        return ("waiting", f"permission: {tool}" if tool else "permission prompt")
    if event == "Notification":
        kind = payload.get("notification_type")
        if kind == "permission_prompt":
            return ("waiting", "permission prompt")
        if kind == "elicitation_dialog":
            return ("waiting", "question")
        if kind == "idle_prompt":
            return ("idle", None)
    return None


def apply_hook(conn: sqlite3.Connection, payload: dict[str, Any], runner_id: str | None, *, at: float | None = None) -> None:
    """Apply one Claude Code hook event to the runner and session it concerns (one transaction)."""
    event = str(payload.get("hook_event_name") or "")
    session_id = payload.get("session_id")
    if not event or not isinstance(session_id, str) or not session_id:
        return
    when = db.now() if at is None else at
    with db.write(conn):
        runner = None
        if runner_id:
            runner = conn.execute(
                "SELECT id, project_id, session_id, state, cwd, version, name FROM runners WHERE id=?", (runner_id,)
            ).fetchone()
        values: dict[str, Any] = {
            "cwd": payload.get("cwd"),
            "transcript_path": payload.get("transcript_path"),
            "last_activity_at": when,
        }
        if runner is not None:
            values.update(runner_id=runner["id"], project_id=runner["project_id"])
        if event == "SessionStart":
            source = payload.get("source")
            values.update(source=source, started_at=when, status="idle")
            if runner is not None and runner["session_id"] and runner["session_id"] != session_id:
                # /clear, a fork or a resume moved the agent to a new session: follow it
                values["parent_session_id"] = runner["session_id"] if source in ("clear", "fork", "compact") else None
                _upsert(conn, session_id, **values)
                _end_session(conn, runner["session_id"], when, f"continued in {session_id}")
                version = runner["version"] + 1
                update_fields(conn, runner["id"], session_id=session_id, version=version)
                events.append(
                    conn,
                    "runner",
                    runner["id"],
                    version,
                    "runner.session_changed",
                    {"name": runner["name"], "session_id": session_id, "previous": runner["session_id"], "source": source},
                    at=when,
                )
            elif runner is not None and not runner["session_id"]:
                update_fields(conn, runner["id"], session_id=session_id)
        elif event == "UserPromptSubmit":
            prompt = payload.get("prompt")
            if isinstance(prompt, str) and prompt.strip():
                current = conn.execute("SELECT title FROM sessions WHERE id=?", (session_id,)).fetchone()
                if current is None or not current["title"]:
                    values["title"] = _title(prompt)
        elif event == "SessionEnd":
            values.update(ended_at=when, end_reason=payload.get("reason"), status="ended")
        status = _status_for(event, payload)
        if status is not None and event != "SessionEnd":
            values.update(status=status[0], status_detail=status[1])
        _upsert(conn, session_id, **values)
        if status is not None and runner is not None and (runner["session_id"] in (None, session_id) or event == "SessionStart"):
            set_agent_status(conn, runner["id"], status[0], status[1], at=when, payload={"session_id": session_id, "hook": event})


def _end_session(conn: sqlite3.Connection, session_id: str, when: float, reason: str) -> None:
    conn.execute(
        "UPDATE sessions SET ended_at=COALESCE(ended_at, ?), end_reason=COALESCE(end_reason, ?), status='ended' WHERE id=?",
        (when, reason, session_id),
    )


def _title(prompt: str) -> str:
    line = " ".join(prompt.strip().split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1] + "…"


# -- second sources: the live-process registry and output activity -------------------------------


def refresh_statuses(conn: sqlite3.Connection, settings: Settings, runners: list[Runner]) -> None:
    """Bring agent statuses up to date from sources other than hooks (cheap; run when rows are shown).

    Claude runners: the registry file of the agent's pid, when it is newer than the last hook.
    Other agents: output activity recorded by the keeper (working while output flows).
    """
    active = [r for r in runners if r.state in ACTIVE and r.agent_pid]
    if not active:
        return
    registry: dict[int, dict[str, Any]] = {}
    if any(r.agent == "claude" for r in active):
        from .agents.claude import read_registry

        registry = {entry["pid"]: entry for entry in read_registry(settings)}
    now = db.now()
    changes: list[tuple[str, str, str | None, float]] = []
    for runner in active:
        if runner.agent == "claude":
            entry = registry.get(runner.agent_pid or -1)
            if entry and entry.get("stratavoreStatus"):
                updated = entry.get("updatedEpoch") or now
                if runner.agent_status_at is None or updated > runner.agent_status_at:
                    detail = entry.get("waitingFor") if entry["stratavoreStatus"] == "waiting" else None
                    if (entry["stratavoreStatus"], detail) != (runner.agent_status, runner.agent_status_detail):
                        changes.append((runner.id, entry["stratavoreStatus"], detail, updated))
        elif runner.last_output_at is not None:
            quiet_for = now - runner.last_output_at
            status = "working" if quiet_for < settings.idle_after else "idle"
            if status != runner.agent_status:
                changes.append((runner.id, status, None, now))
    if changes:
        with db.write(conn):
            for runner_id, status, detail, at in changes:
                set_agent_status(conn, runner_id, status, detail, at=at)


def discover_external(settings: Settings, known: set[str]) -> list[Session]:
    """Claude sessions Stratavore did not start: live ones from the registry, the rest from transcripts."""
    from .agents.claude import config_dir, read_registry

    found: dict[str, Session] = {}
    for entry in read_registry(settings):
        sid = entry.get("sessionId")
        if isinstance(sid, str) and sid not in known:
            found[sid] = _external(sid, entry.get("cwd") or "", None, entry.get("updatedEpoch"), entry.get("stratavoreStatus"))
            found[sid] = _with(found[sid], title=entry.get("name"), status_detail=entry.get("waitingFor"))
    projects_dir = config_dir(settings) / "projects"
    try:
        folders = list(os.scandir(projects_dir))
    except OSError:
        folders = []
    for folder in folders:
        if not folder.is_dir():
            continue
        try:
            files = list(os.scandir(folder.path))
        except OSError:
            continue
        for f in files:
            if not f.name.endswith(".jsonl") or not f.is_file():
                continue
            sid = f.name[:-6]
            if sid in known or sid in found:
                continue
            cwd, title = _peek_transcript(Path(f.path))
            found[sid] = _with(_external(sid, cwd, f.path, f.stat().st_mtime, None), title=title)
    return sorted(found.values(), key=lambda s: s.last_activity_at or 0, reverse=True)


def _external(sid: str, cwd: str, transcript: str | None, last: float | None, status: str | None) -> Session:
    return Session(sid, "claude", None, None, cwd, transcript, None, status, None, None, None, None, last, None, None, 0, external=True)


def _with(session: Session, **changes: Any) -> Session:
    data = asdict(session)
    data.update({k: v for k, v in changes.items() if v is not None})
    return Session(**data)


def _peek_transcript(path: Path, max_lines: int = 50) -> tuple[str, str | None]:
    """The cwd and a title (summary record, else the first user prompt) from a transcript's head."""
    cwd, title = "", None
    try:
        with open(path, "rb") as f:
            for _, line in zip(range(max_lines), f, strict=False):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict):
                    continue
                cwd = cwd or record.get("cwd") or ""
                if record.get("type") == "summary" and record.get("summary"):
                    title = str(record["summary"])
                elif title is None and record.get("type") == "user":
                    content = (record.get("message") or {}).get("content")
                    if isinstance(content, str) and content.strip():
                        title = _title(content)
                if cwd and title:
                    break
    except OSError:
        pass
    return cwd, title
