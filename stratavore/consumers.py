"""Outbox consumers: each reads the event log in ``seq`` order behind its own cursor.

Delivery is at least once. A consumer that fails is retried with capped exponential backoff and full
jitter (its cursor row holds the attempt count and the time of the next attempt, so a restart keeps
the schedule). An event that keeps failing, or fails with a permanent error, is **parked** in
``parked_events`` with its error and the consumer moves on: one poison event never blocks the rest.
``stratavore events --failed`` lists parked events and ``stratavore events retry`` queues them again.

Consumers are idempotent by ``event_id``: every delivered event is recorded in
``consumer_deliveries`` with the cursor, and an event recorded there is never delivered again by the
same consumer (a rewound cursor, a retried event that had been delivered meanwhile).

Delivered events are pruned once they are older than ``event_retention_days`` and every consumer's
cursor has passed them, in chunks, one short transaction each.

Tables (migration "consumers" in :mod:`stratavore.db`)::

    consumer_cursors(consumer, last_seq, updated_at, attempts, next_attempt_at, last_error, delivered)
    parked_events(id, consumer, seq, event_id, type, error, attempts, parked_at, queued, next_attempt_at)
    consumer_deliveries(consumer, event_id, seq)

A consumer is a :class:`Consumer`: ``wants`` filters events, ``plan`` groups them into delivery
units (a notification channel sends a flood as one summary), ``deliver`` delivers one unit and
raises to have it retried. Other readers of the log (the SSE stream, sync) may keep just a cursor
with :func:`register` and :func:`advance`, so that pruning waits for them too.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import db
from .events import Event

log = logging.getLogger("stratavore.consumers")

BACKOFF_INITIAL = 0.5
DAY = 86400.0
PRUNE_CHUNK = 1000
# a cursor nobody has moved for this long (a removed plugin) no longer holds back pruning
STALE_CURSOR_DAYS = 30.0


class DeliveryError(Exception):
    """A delivery failed. ``permanent`` errors are parked at once; others are retried.

    ``retry_after`` (seconds) is honoured when the receiver asked for it (HTTP 429, Retry-After).
    """

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """A delivery that can never succeed as it is (bad credentials, a rejected payload): park it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


@dataclass
class Unit:
    """Events delivered together (one message), and how far the cursor moves once they are.

    A unit with no events only moves the cursor: the consumer chose to skip what it covers.
    """

    events: list[Event]
    covers_to: int


class Consumer:
    """Base class of an outbox consumer. Subclasses set ``name`` and implement :meth:`deliver`."""

    name: str = ""
    batch_size: int = 200

    def wants(self, event: Event) -> bool:
        """Whether this consumer delivers ``event`` at all; the others are passed over."""
        return True

    def plan(self, conn: sqlite3.Connection, events: list[Event], now: float) -> list[Unit]:
        """Group pending wanted events (in seq order, none delivered yet) into units, in order.

        Events after the last unit stay pending for a later pass (a consumer holding back a flood).
        """
        return [Unit([e], e.seq) for e in events]

    def deliver(self, conn: sqlite3.Connection, events: list[Event]) -> None:
        """Deliver one unit. Raise :class:`DeliveryError` (or anything) to have it retried."""
        raise NotImplementedError

    def delivered(self, events: list[Event], now: float) -> None:
        """Called after a unit was delivered and recorded (bookkeeping such as rate windows)."""


@dataclass
class Policy:
    max_attempts: int = 8
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = 60.0

    def delay(self, attempts: int, retry_after: float | None = None, rng: Callable[[float, float], float] = random.uniform) -> float:
        """Full jitter: a uniform delay between 0 and the capped exponential step."""
        step = min(self.backoff_max, self.backoff_initial * 2 ** max(0, attempts - 1))
        delay = rng(0.0, step)
        return max(delay, min(retry_after, self.backoff_max)) if retry_after else delay


@dataclass
class Cursor:
    consumer: str
    last_seq: int
    updated_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None
    delivered: int


@dataclass
class PassResult:
    delivered: int = 0
    parked: int = 0
    failed: int = 0
    skipped: int = 0
    backing_off: bool = False
    errors: list[str] = field(default_factory=list)


# -- cursors ---------------------------------------------------------------------------------------


def register(conn: sqlite3.Connection, name: str, *, start: str | int = "latest") -> Cursor:
    """Create ``name``'s cursor if it has none: at the newest event (``"latest"``), or at a seq."""
    existing = get_cursor(conn, name)
    if existing is not None:
        return existing
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")
    try:
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0] if start == "latest" else int(start)
        conn.execute("INSERT OR IGNORE INTO consumer_cursors(consumer, last_seq, updated_at) VALUES (?, ?, ?)", (name, seq, db.now()))
        if own:
            conn.execute("COMMIT")
    except BaseException:
        if own:
            conn.execute("ROLLBACK")
        raise
    cursor = get_cursor(conn, name)
    assert cursor is not None
    return cursor


def get_cursor(conn: sqlite3.Connection, name: str) -> Cursor | None:
    row = conn.execute("SELECT * FROM consumer_cursors WHERE consumer=?", (name,)).fetchone()
    return Cursor(**dict(row)) if row else None


def list_cursors(conn: sqlite3.Connection) -> list[Cursor]:
    return [Cursor(**dict(r)) for r in conn.execute("SELECT * FROM consumer_cursors ORDER BY consumer")]


def advance(conn: sqlite3.Connection, name: str, seq: int) -> None:
    """Move a cursor forward (never back) to ``seq``, for readers that deliver on their own."""
    with db.write(conn):
        conn.execute(
            "UPDATE consumer_cursors SET last_seq=MAX(last_seq, ?), updated_at=? WHERE consumer=?",
            (seq, db.now(), name),
        )


def forget(conn: sqlite3.Connection, name: str) -> None:
    """Drop a consumer's cursor, parked events and delivery records (a removed channel)."""
    for table in ("consumer_cursors", "parked_events", "consumer_deliveries"):
        conn.execute(f"DELETE FROM {table} WHERE consumer=?", (name,))


def backlog(conn: sqlite3.Connection) -> dict[str, int]:
    """Events each consumer has yet to pass (what it may still deliver, or pass over)."""
    return {
        r["consumer"]: r["waiting"]
        for r in conn.execute(
            "SELECT c.consumer, (SELECT COUNT(*) FROM events e WHERE e.seq > c.last_seq) AS waiting FROM consumer_cursors c"
        )
    }


# -- delivering ------------------------------------------------------------------------------------


def run_pass(conn: sqlite3.Connection, consumer: Consumer, policy: Policy, *, now: float | None = None) -> PassResult:
    """Deliver what ``consumer`` has pending: re-queued parked events first, then the log after its cursor."""
    now = time.time() if now is None else now
    result = PassResult()
    cursor = register(conn, consumer.name)
    _retry_queued(conn, consumer, policy, now, result)
    if cursor.next_attempt_at > now:
        result.backing_off = True
        return result
    rows = conn.execute("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (cursor.last_seq, consumer.batch_size)).fetchall()
    if not rows:
        return result
    batch = [Event.from_row(r) for r in rows]
    wanted = [e for e in batch if consumer.wants(e)]
    if wanted:
        done = _already_delivered(conn, consumer.name, [e.event_id for e in wanted])
        result.skipped += sum(1 for e in wanted if e.event_id in done)
        wanted = [e for e in wanted if e.event_id not in done]
    units = consumer.plan(conn, wanted, now) if wanted else []
    covered = {e.event_id for u in units for e in u.events}
    position = saved = cursor.last_seq
    attempts = cursor.attempts
    for unit in units:
        if not unit.events:
            position = max(position, unit.covers_to)
            continue
        try:
            consumer.deliver(conn, unit.events)
        except Exception as e:  # noqa: BLE001 - any failure of a consumer is retried or parked, never fatal
            error = _describe(e)
            attempts += 1
            permanent = isinstance(e, DeliveryError) and e.permanent
            result.errors.append(error)
            if permanent or attempts >= policy.max_attempts:
                with db.write(conn):
                    _park(conn, consumer.name, unit.events, error, attempts, now)
                    position = max(position, unit.covers_to)
                    _save_cursor(conn, consumer.name, position, 0, 0.0, error, now)
                saved = position
                result.parked += len(unit.events)
                log.warning("%s: parked %d event(s) after %d attempt(s): %s", consumer.name, len(unit.events), attempts, error)
                attempts = 0
                continue
            retry_after = e.retry_after if isinstance(e, DeliveryError) else None
            with db.write(conn):
                _save_cursor(conn, consumer.name, position, attempts, now + policy.delay(attempts, retry_after), error, now)
            result.failed += len(unit.events)
            result.backing_off = True
            return result
        with db.write(conn):
            _record_deliveries(conn, consumer.name, unit.events)
            position = max(position, unit.covers_to)
            _save_cursor(conn, consumer.name, position, 0, 0.0, None, now, delivered=len(unit.events))
        saved = position
        attempts = 0
        result.delivered += len(unit.events)
        consumer.delivered(unit.events, now)
    pending = [e for e in wanted if e.event_id not in covered and e.seq > position]
    # past everything it does not want, up to the first event it holds back
    end = max(position, pending[0].seq - 1 if pending else batch[-1].seq)
    if end > saved:
        with db.write(conn):
            _save_cursor(conn, consumer.name, end, 0, 0.0, None, now, keep_error=True)
    return result


def _retry_queued(conn: sqlite3.Connection, consumer: Consumer, policy: Policy, now: float, result: PassResult) -> None:
    queued = conn.execute(
        "SELECT p.id, p.attempts, p.event_id, e.* FROM parked_events p JOIN events e ON e.seq = p.seq"
        " WHERE p.consumer=? AND p.queued=1 AND p.next_attempt_at <= ? ORDER BY p.seq",
        (consumer.name, now),
    ).fetchall()
    for row in queued:
        event = Event.from_row(row)
        if _already_delivered(conn, consumer.name, [event.event_id]):
            with db.write(conn):
                conn.execute("DELETE FROM parked_events WHERE id=?", (row["id"],))
            result.skipped += 1
            continue
        try:
            consumer.deliver(conn, [event])
        except Exception as e:  # noqa: BLE001
            error = _describe(e)
            attempts = row["attempts"] + 1
            result.errors.append(error)
            give_up = (isinstance(e, DeliveryError) and e.permanent) or attempts >= policy.max_attempts
            retry_after = e.retry_after if isinstance(e, DeliveryError) else None
            with db.write(conn):
                conn.execute(
                    "UPDATE parked_events SET attempts=?, error=?, queued=?, next_attempt_at=?, parked_at=? WHERE id=?",
                    (attempts, error, 0 if give_up else 1, 0.0 if give_up else now + policy.delay(attempts, retry_after), now, row["id"]),
                )
            result.parked += give_up
            result.failed += not give_up
            continue
        with db.write(conn):
            conn.execute("DELETE FROM parked_events WHERE id=?", (row["id"],))
            _record_deliveries(conn, consumer.name, [event])
            conn.execute(
                "UPDATE consumer_cursors SET delivered=delivered+1, updated_at=? WHERE consumer=?",
                (now, consumer.name),
            )
        result.delivered += 1
        consumer.delivered([event], now)


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, DeliveryError):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _already_delivered(conn: sqlite3.Connection, name: str, event_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        found.update(
            r[0]
            for r in conn.execute(f"SELECT event_id FROM consumer_deliveries WHERE consumer=? AND event_id IN ({marks})", (name, *chunk))
        )
    return found


def _record_deliveries(conn: sqlite3.Connection, name: str, events: Iterable[Event]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO consumer_deliveries(consumer, event_id, seq) VALUES (?, ?, ?)",
        [(name, e.event_id, e.seq) for e in events],
    )


def _park(conn: sqlite3.Connection, name: str, events: list[Event], error: str, attempts: int, now: float) -> None:
    conn.executemany(
        "INSERT INTO parked_events(consumer, seq, event_id, type, error, attempts, parked_at, queued, next_attempt_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0) ON CONFLICT(consumer, event_id) DO UPDATE SET"
        " error=excluded.error, attempts=excluded.attempts, parked_at=excluded.parked_at, queued=0, next_attempt_at=0",
        [(name, e.seq, e.event_id, e.type, error, attempts, now) for e in events],
    )


def _save_cursor(
    conn: sqlite3.Connection,
    name: str,
    seq: int,
    attempts: int,
    next_attempt_at: float,
    error: str | None,
    now: float,
    *,
    delivered: int = 0,
    keep_error: bool = False,
) -> None:
    conn.execute(
        "UPDATE consumer_cursors SET last_seq=MAX(last_seq, ?), attempts=?, next_attempt_at=?,"
        f" last_error={'last_error' if keep_error else '?'}, updated_at=?, delivered=delivered+? WHERE consumer=?",
        (seq, attempts, next_attempt_at, *(() if keep_error else (error,)), now, delivered, name),
    )


# -- parked events ---------------------------------------------------------------------------------


@dataclass
class Parked:
    id: int
    consumer: str
    seq: int
    event_id: str
    type: str
    error: str
    attempts: int
    parked_at: float
    queued: bool

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def list_parked(conn: sqlite3.Connection, *, consumer: str | None = None) -> list[Parked]:
    sql = "SELECT id, consumer, seq, event_id, type, error, attempts, parked_at, queued FROM parked_events"
    rows = conn.execute(sql + (" WHERE consumer=?" if consumer else "") + " ORDER BY seq, consumer", (consumer,) if consumer else ())
    return [Parked(**{**dict(r), "queued": bool(r["queued"])}) for r in rows]


def requeue(conn: sqlite3.Connection, ids: list[int] | None = None) -> int:
    """Queue parked events for another round of attempts (all of them when ``ids`` is None)."""
    with db.write(conn):
        if ids is None:
            cur = conn.execute("UPDATE parked_events SET queued=1, attempts=0, next_attempt_at=0 WHERE queued=0")
        else:
            marks = ",".join("?" * len(ids))
            cur = conn.execute(f"UPDATE parked_events SET queued=1, attempts=0, next_attempt_at=0 WHERE id IN ({marks})", ids)
        return cur.rowcount


# -- retention -------------------------------------------------------------------------------------


def prune(conn: sqlite3.Connection, retention_days: float, *, now: float | None = None, chunk: int = PRUNE_CHUNK) -> int:
    """Delete events older than the retention period that every consumer has passed; returns how many.

    Parked events are kept (they may be retried). Deletes run in chunks, one short write transaction
    each, so a large backlog never holds the write lock for long.
    """
    now = time.time() if now is None else now
    cutoff = now - retention_days * DAY
    stale = now - max(STALE_CURSOR_DAYS, 4 * retention_days) * DAY
    total = 0
    while True:
        with db.write(conn):
            horizon = conn.execute("SELECT MIN(last_seq) FROM consumer_cursors WHERE updated_at >= ?", (stale,)).fetchone()[0]
            if horizon is None:
                horizon = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            seqs = [
                r[0]
                for r in conn.execute(
                    "SELECT seq FROM events WHERE seq <= ? AND created_at < ? AND seq NOT IN (SELECT seq FROM parked_events)"
                    " ORDER BY seq LIMIT ?",
                    (horizon, cutoff, chunk),
                )
            ]
            if seqs:
                marks = ",".join("?" * len(seqs))
                conn.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)
                conn.execute(f"DELETE FROM consumer_deliveries WHERE seq IN ({marks})", seqs)
        total += len(seqs)
        if len(seqs) < chunk:
            return total


# -- running many consumers ------------------------------------------------------------------------


class Dispatcher:
    """Runs a changing set of consumers, one pass each per call (a daemon job every fraction of a second).

    ``source(conn)`` returns the consumers to run now (channels are added and removed while the daemon
    runs). A consumer that raises outside its deliveries is logged and skipped for this pass.
    """

    def __init__(self, source: Callable[[sqlite3.Connection], list[Consumer]], policy: Policy, retention_days: float) -> None:
        self.source = source
        self.policy = policy
        self.retention_days = retention_days

    def run_once(self, conn: sqlite3.Connection, *, budget: float | None = None) -> dict[str, PassResult]:
        deadline = None if budget is None else time.monotonic() + budget
        results: dict[str, PassResult] = {}
        for consumer in self.source(conn):
            if deadline is not None and time.monotonic() > deadline:
                break
            try:
                results[consumer.name] = run_pass(conn, consumer, self.policy)
            except Exception:  # noqa: BLE001 - one broken consumer must not stop the others
                log.exception("consumer %s failed outside a delivery", consumer.name)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        return results

    def prune(self, conn: sqlite3.Connection) -> int:
        removed = prune(conn, self.retention_days)
        if removed:
            log.info("pruned %d delivered event(s) older than %g day(s)", removed, self.retention_days)
        return removed
