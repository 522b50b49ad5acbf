"""Projects: a named directory that runners are launched in, with its own runner quota."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import db, events
from .errors import Conflict, InvalidInput, NotFound
from .names import validate_name
from .states import ACTIVE_VALUES


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    path: str
    max_runners: int | None
    default_agent: str | None
    created_at: float
    updated_at: float
    version: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Project:
        return cls(
            id=row["id"],
            name=row["name"],
            path=row["path"],
            max_runners=row["max_runners"],
            default_agent=row["default_agent"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            version=row["version"],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_path(path: str | os.PathLike[str]) -> str:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise InvalidInput(f"path {str(path)!r} does not exist")
    if not resolved.is_dir():
        raise InvalidInput(f"path {str(path)!r} is not a directory")
    return str(resolved.resolve())


def _check_limit(max_runners: int | None) -> int | None:
    if max_runners is not None and max_runners < 0:
        raise InvalidInput("--max-runners must be 0 (no limit) or more")
    return max_runners or None


def add(
    conn: sqlite3.Connection,
    name: str,
    path: str | os.PathLike[str],
    *,
    max_runners: int | None = None,
    default_agent: str | None = None,
) -> Project:
    validate_name("project", name)
    real_path = _check_path(path)
    limit = _check_limit(max_runners)
    now = db.now()
    with db.write(conn):
        if conn.execute("SELECT 1 FROM projects WHERE name=?", (name,)).fetchone():
            raise Conflict(f"project {name!r} already exists")
        cur = conn.execute(
            "INSERT INTO projects(name, path, max_runners, default_agent, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            (name, real_path, limit, default_agent, now, now),
        )
        project = Project(cur.lastrowid or 0, name, real_path, limit, default_agent, now, now, 1)
        events.append(
            conn,
            "project",
            name,
            1,
            "project.added",
            {"name": name, "path": real_path, "max_runners": limit, "default_agent": default_agent},
        )
    return project


def get(conn: sqlite3.Connection, name: str) -> Project:
    row = conn.execute("SELECT * FROM projects WHERE name=?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no project named {name!r} (see `stratavore project list`)")
    return Project.from_row(row)


def list_projects(conn: sqlite3.Connection) -> list[Project]:
    return [Project.from_row(r) for r in conn.execute("SELECT * FROM projects ORDER BY name")]


def active_counts(conn: sqlite3.Connection) -> dict[int, int]:
    placeholders = ",".join("?" * len(ACTIVE_VALUES))
    rows = conn.execute(f"SELECT project_id, COUNT(*) FROM runners WHERE state IN ({placeholders}) GROUP BY project_id", ACTIVE_VALUES)
    return {r[0]: r[1] for r in rows}


def update(
    conn: sqlite3.Connection,
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    max_runners: int | None = None,
    default_agent: str | None = None,
) -> Project:
    changes: dict[str, Any] = {}
    if default_agent is not None:
        changes["default_agent"] = default_agent or None
    if path is not None:
        changes["path"] = _check_path(path)
    if max_runners is not None:
        changes["max_runners"] = _check_limit(max_runners)
    if not changes:
        raise InvalidInput("nothing to change: give --path, --max-runners or --agent")
    with db.write(conn):
        project = get(conn, name)
        version = project.version + 1
        assignments = ", ".join(f"{k}=?" for k in changes)
        conn.execute(
            f"UPDATE projects SET {assignments}, updated_at=?, version=? WHERE id=?",
            (*changes.values(), db.now(), version, project.id),
        )
        events.append(conn, "project", name, version, "project.updated", changes)
        return get(conn, name)


def remove(conn: sqlite3.Connection, name: str) -> tuple[Project, list[str]]:
    """Remove a project and its ended runners (whose ids are returned, so their logs can go too).

    Active runners must be stopped first."""
    with db.write(conn):
        project = get(conn, name)
        active = active_counts(conn).get(project.id, 0)
        if active:
            raise Conflict(f"project {name!r} has {active} active runner(s); stop them first or use --force")
        ids = [r[0] for r in conn.execute("SELECT id FROM runners WHERE project_id=?", (project.id,))]
        conn.execute("DELETE FROM runners WHERE project_id=?", (project.id,))
        conn.execute("DELETE FROM projects WHERE id=?", (project.id,))
        events.append(conn, "project", name, project.version + 1, "project.removed", {"name": name, "runners": len(ids)})
    return project, ids
