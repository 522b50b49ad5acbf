"""Outbox consumers: cursors, retries with backoff, parking, idempotency, pruning."""

from __future__ import annotations

import time

import pytest

from stratavore import consumers, db, events
from stratavore.consumers import Consumer, DeliveryError, PermanentError, Policy


def emit(conn, count: int = 1, type: str = "test.thing", at: float | None = None) -> list[int]:
    with db.write(conn):
        for i in range(count):
            events.append(conn, "test", f"agg{i}", 1, type, {"i": i}, at=at)
    return [e.seq for e in events.list_events(conn, last=count)]


class Recorder(Consumer):
    def __init__(self, name: str = "rec", fail: object = None) -> None:
        self.name = name
        self.got: list[str] = []
        self.fail = fail  # a callable(event) -> exception or None

    def deliver(self, conn, evs):
        for e in evs:
            if self.fail is not None:
                error = self.fail(e)
                if error is not None:
                    raise error
            self.got.append(e.event_id)


FAST = Policy(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)


def test_delivers_in_order_once_and_the_cursor_survives(ctx):
    conn = ctx.conn
    consumers.register(conn, "rec", start=0)
    seqs = emit(conn, 5)
    rec = Recorder()
    result = consumers.run_pass(conn, rec, FAST)
    assert result.delivered == 5
    assert rec.got == [e.event_id for e in events.list_events(conn)]
    assert consumers.get_cursor(conn, "rec").last_seq == seqs[-1]
    # a new process (a restarted daemon) starts from the cursor
    again = Recorder()
    assert consumers.run_pass(db.connect(ctx.paths.db_path), again, FAST).delivered == 0
    assert again.got == []


def test_a_new_consumer_starts_at_the_newest_event(ctx):
    emit(ctx.conn, 3)
    rec = Recorder()
    consumers.run_pass(ctx.conn, rec, FAST)
    assert rec.got == []
    emit(ctx.conn, 1)
    consumers.run_pass(ctx.conn, rec, FAST)
    assert len(rec.got) == 1


def test_transient_failure_backs_off_then_delivers(ctx):
    conn = ctx.conn
    consumers.register(conn, "rec", start=0)
    emit(conn, 2)
    failures = {"left": 2}

    def flaky(event):
        if failures["left"]:
            failures["left"] -= 1
            return DeliveryError("HTTP 500")
        return None

    rec = Recorder(fail=flaky)
    policy = Policy(max_attempts=5, backoff_initial=10.0, backoff_max=10.0)
    now = time.time()
    first = consumers.run_pass(conn, rec, policy, now=now)
    assert first.failed == 1 and first.backing_off
    cursor = consumers.get_cursor(conn, "rec")
    assert cursor.attempts == 1 and cursor.last_error == "HTTP 500"
    assert now <= cursor.next_attempt_at <= now + 10.0
    # too early: nothing is tried
    assert consumers.run_pass(conn, rec, policy, now=cursor.next_attempt_at - 0.001).backing_off
    assert failures["left"] == 1
    consumers.run_pass(conn, rec, policy, now=now + 11)
    assert consumers.get_cursor(conn, "rec").attempts == 2
    result = consumers.run_pass(conn, rec, policy, now=now + 22)
    assert result.delivered == 2 and len(rec.got) == 2
    cursor = consumers.get_cursor(conn, "rec")
    assert cursor.attempts == 0 and cursor.last_error is None


def test_poison_event_is_parked_and_the_rest_flow(ctx):
    conn = ctx.conn
    consumers.register(conn, "rec", start=0)
    seqs = emit(conn, 3)
    poison = events.list_events(conn)[1].event_id
    rec = Recorder(fail=lambda e: ValueError("cannot format this") if e.event_id == poison else None)
    for _ in range(5):
        consumers.run_pass(conn, rec, FAST)
    assert len(rec.got) == 2 and poison not in rec.got
    [parked] = consumers.list_parked(conn)
    assert (parked.consumer, parked.seq, parked.attempts) == ("rec", seqs[1], 3)
    assert parked.error == "ValueError: cannot format this"
    assert consumers.get_cursor(conn, "rec").last_seq == seqs[-1]
    # retried on request: delivered once it works
    rec.fail = None
    assert consumers.requeue(conn, [parked.id]) == 1
    assert consumers.run_pass(conn, rec, FAST).delivered == 1
    assert rec.got[-1] == poison
    assert consumers.list_parked(conn) == []


def test_permanent_error_is_parked_at_once(ctx):
    conn = ctx.conn
    consumers.register(conn, "rec", start=0)
    emit(conn, 2)
    rec = Recorder(fail=lambda e: PermanentError("HTTP 401: bad token") if e.payload["i"] == 0 else None)
    result = consumers.run_pass(conn, rec, Policy(max_attempts=100))
    assert result.parked == 1 and result.delivered == 1
    assert consumers.list_parked(conn)[0].attempts == 1


def test_requeued_event_that_fails_again_is_parked_again(ctx):
    conn = ctx.conn
    consumers.register(conn, "rec", start=0)
    emit(conn, 1)
    rec = Recorder(fail=lambda e: RuntimeError("still broken"))
    for _ in range(3):
        consumers.run_pass(conn, rec, FAST)
    assert consumers.requeue(conn) == 1
    assert consumers.list_parked(conn)[0].queued
    for _ in range(3):
        consumers.run_pass(conn, rec, FAST)
    [parked] = consumers.list_parked(conn)
    assert not parked.queued and parked.attempts == 3


def test_idempotent_by_event_id(ctx):
    conn = ctx.conn
    consumers.register(conn, "rec", start=0)
    emit(conn, 3)
    rec = Recorder()
    consumers.run_pass(conn, rec, FAST)
    # a rewound cursor (a restored database, a crash between delivery and commit of a later unit)
    with db.write(conn):
        conn.execute("UPDATE consumer_cursors SET last_seq=0")
    result = consumers.run_pass(conn, rec, FAST)
    assert result.delivered == 0 and result.skipped == 3
    assert len(rec.got) == 3


def test_backoff_is_capped_exponential_with_full_jitter():
    policy = Policy(backoff_initial=0.5, backoff_max=60.0)
    top = lambda lo, hi: hi  # noqa: E731
    assert [policy.delay(n, rng=top) for n in (1, 2, 3, 4, 8, 20)] == [0.5, 1.0, 2.0, 4.0, 60.0, 60.0]
    assert policy.delay(5, rng=lambda lo, hi: lo) == 0.0
    samples = [policy.delay(4) for _ in range(200)]
    assert all(0 <= s <= 4.0 for s in samples) and max(samples) > 2.0 > min(samples)
    assert policy.delay(1, retry_after=30, rng=top) == 30


def test_prune_respects_retention_the_slowest_consumer_and_parked_events(ctx):
    conn = ctx.conn
    old = time.time() - 10 * consumers.DAY
    seqs = emit(conn, 10, at=old)
    fresh = emit(conn, 2)
    consumers.register(conn, "fast", start=fresh[-1])
    consumers.register(conn, "slow", start=seqs[4])
    with db.write(conn):
        conn.execute(
            "INSERT INTO parked_events(consumer, seq, event_id, type, error, attempts, parked_at) VALUES ('fast', ?, 'x', 't', 'e', 1, 0)",
            (seqs[2],),
        )
    removed = consumers.prune(conn, 7, chunk=2)
    assert removed == 4  # seqs[0..4] but the parked one
    left = [e.seq for e in events.list_events(conn)]
    assert left == [seqs[2], *seqs[5:], *fresh]
    consumers.advance(conn, "slow", fresh[-1])
    assert consumers.prune(conn, 7) == 5  # the fresh ones stay: younger than the retention period
    assert [e.seq for e in events.list_events(conn)] == [seqs[2], *fresh]


def test_a_long_abandoned_cursor_does_not_hold_back_pruning(ctx):
    conn = ctx.conn
    emit(conn, 3, at=time.time() - 10 * consumers.DAY)
    consumers.register(conn, "gone", start=0)
    with db.write(conn):
        conn.execute("UPDATE consumer_cursors SET updated_at=?", (time.time() - 60 * consumers.DAY,))
    assert consumers.prune(conn, 7) == 3


def test_backlog_counts_what_each_consumer_has_left(ctx):
    conn = ctx.conn
    consumers.register(conn, "a", start=0)
    emit(conn, 4)
    consumers.register(conn, "b")
    assert consumers.backlog(conn) == {"a": 4, "b": 0}


def test_a_consumer_breaking_outside_delivery_does_not_stop_the_others(ctx):
    conn = ctx.conn

    class Broken(Recorder):
        def plan(self, conn, evs, now):
            raise RuntimeError("bug")

    good = Recorder("good")
    consumers.register(conn, "good", start=0)
    consumers.register(conn, "broken", start=0)
    emit(conn, 2)
    dispatcher = consumers.Dispatcher(lambda c: [Broken("broken"), good], FAST, 7)
    dispatcher.run_once(conn)
    assert len(good.got) == 2


@pytest.mark.parametrize("count", [450])
def test_large_backlogs_are_read_in_batches(ctx, count):
    conn = ctx.conn
    consumers.register(conn, "rec", start=0)
    emit(conn, count)
    rec = Recorder()
    while consumers.run_pass(conn, rec, FAST).delivered:
        pass
    assert len(rec.got) == count
