"""The outbox: every state change appends its event here, inside the same transaction."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import db


@dataclass(frozen=True)
class Event:
    seq: int
    event_id: str
    node_id: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    type: str
    payload: dict[str, Any]
    created_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Event:
        return cls(
            seq=row["seq"],
            event_id=row["event_id"],
            node_id=row["node_id"],
            aggregate_type=row["aggregate_type"],
            aggregate_id=row["aggregate_id"],
            aggregate_version=row["aggregate_version"],
            type=row["type"],
            payload=json.loads(row["payload"]),
            created_at=row["created_at"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "node_id": self.node_id,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "aggregate_version": self.aggregate_version,
            "type": self.type,
            "payload": self.payload,
            "created_at": self.created_at,
        }


def append(
    conn: sqlite3.Connection,
    aggregate_type: str,
    aggregate_id: str,
    aggregate_version: int,
    type: str,
    payload: dict[str, Any],
    *,
    at: float | None = None,
) -> None:
    """Record an event. Call only inside :func:`stratavore.db.write`, with the state change it describes."""
    if not conn.in_transaction:
        raise RuntimeError("events.append must run inside the state change's transaction")
    conn.execute(
        "INSERT INTO events(event_id, node_id, aggregate_type, aggregate_id, aggregate_version, type, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            uuid.uuid4().hex,
            db.node_id(conn),
            aggregate_type,
            aggregate_id,
            aggregate_version,
            type,
            json.dumps(payload, separators=(",", ":"), sort_keys=True),
            time.time() if at is None else at,
        ),
    )


def list_events(
    conn: sqlite3.Connection,
    *,
    after_seq: int = 0,
    limit: int | None = None,
    types: tuple[str, ...] = (),
    aggregate_id: str | None = None,
    last: int | None = None,
) -> list[Event]:
    where, params = ["seq > ?"], [after_seq]
    if types:
        clauses = []
        for t in types:
            if t.endswith("*"):
                clauses.append("type LIKE ?")
                params.append(t[:-1] + "%")
            else:
                clauses.append("type = ?")
                params.append(t)
        where.append("(" + " OR ".join(clauses) + ")")
    if aggregate_id:
        where.append("aggregate_id = ?")
        params.append(aggregate_id)
    sql = f"SELECT * FROM events WHERE {' AND '.join(where)}"
    if last is not None:
        rows = conn.execute(sql + " ORDER BY seq DESC LIMIT ?", (*params, last)).fetchall()
        return [Event.from_row(r) for r in reversed(rows)]
    if limit is not None:
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
    else:
        sql += " ORDER BY seq"
    return [Event.from_row(r) for r in conn.execute(sql, params)]


def follow(
    conn: sqlite3.Connection,
    *,
    after_seq: int = 0,
    poll_interval: float = 0.1,
    types: tuple[str, ...] = (),
    aggregate_id: str | None = None,
) -> Iterator[Event]:
    """Yield events as they are committed, forever, in seq order."""
    cursor = after_seq
    while True:
        batch = list_events(conn, after_seq=cursor, limit=500, types=(), aggregate_id=None)
        for event in batch:
            cursor = event.seq
            if _matches(event, types, aggregate_id):
                yield event
        if len(batch) < 500:
            time.sleep(poll_interval)


def _matches(event: Event, types: tuple[str, ...], aggregate_id: str | None) -> bool:
    if aggregate_id and event.aggregate_id != aggregate_id:
        return False
    if not types:
        return True
    return any(event.type.startswith(t[:-1]) if t.endswith("*") else event.type == t for t in types)


def last_seq(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
