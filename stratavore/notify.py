"""Notifications: routing events to channels (ntfy, Telegram, webhooks, the desktop, plugins' own).

Each configured channel is an outbox consumer of its own (``notify:<name>``): its own cursor, its own
retries, its own parked events, so a channel that is down delays nobody else.

Routing: a channel receives the event types it was added with (default :data:`DEFAULT_EVENTS`;
``runner.*`` matches a prefix). A runner waiting for input alerts once per wait (``runner.waiting``
is emitted once per change of status) and not again for the same runner within ``notify_cooldown``
seconds. ``runner.idle`` alerts when an agent finishes its turn, not when a fresh one first reports.
A flood is summarised: when more events are pending than a channel may still send in the current
``notify_flood_window`` (``notify_flood_max`` messages per window), they go out as one summary
message rather than one by one.

Storage: the non-secret part of a channel (kind, options such as the ntfy topic or the webhook
format, the event types) is a row of ``notify_channels`` in SQLite; its secrets (tokens, webhook
URLs) are in the keyring under ``notify.<name>`` (see :mod:`stratavore.secretstore`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from . import consumers, db, secretstore
from .consumers import Consumer, DeliveryError, PermanentError, Unit
from .errors import Conflict, InvalidInput, NotFound, StratavoreError
from .events import Event
from .names import validate_name

if TYPE_CHECKING:
    from .context import Context
    from .paths import Paths
    from .plugins import PluginHost

log = logging.getLogger("stratavore.notify")

DEFAULT_EVENTS = (
    "runner.waiting",
    "runner.idle",
    "runner.failed",
    "runner.lost",
    "budget.warning",
    "budget.exceeded",
    "daemon.started",
    "daemon.stopped",
)
HIGH_PRIORITY = {"runner.waiting", "runner.failed", "runner.lost", "budget.exceeded"}
CONSUMER_PREFIX = "notify:"
HTTP_TIMEOUT = 5.0
SUMMARY_LINES = 10


class NotificationFailed(StratavoreError):
    """A notification could not be sent (``notify test``)."""


# -- what channels send ----------------------------------------------------------------------------


@dataclass
class Message:
    title: str
    body: str
    priority: str = "default"  # "default" or "high"
    tags: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # the events behind it (Event.to_dict())

    @property
    def text(self) -> str:
        return f"{self.title}\n{self.body}" if self.body else self.title

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "body": self.body,
            "priority": self.priority,
            "tags": self.tags,
            "event_ids": [e["event_id"] for e in self.events],
            "events": self.events,
        }


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    secret: bool = False
    required: bool = False
    default: str | None = None
    choices: tuple[str, ...] = ()


class Channel:
    """Base class of a channel kind. Plugins return subclasses from ``notification_channels()``."""

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, name: str, config: dict[str, str]) -> None:
        self.name = name
        self.config = config

    @classmethod
    def validate(cls, values: dict[str, str | None]) -> dict[str, str]:
        """Fill defaults, check required options and choices; returns the complete config."""
        known = {o.name for o in cls.options}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInput(f"{cls.kind} channels have no option {unknown[0]!r}; they take: {', '.join(sorted(known)) or 'none'}")
        config: dict[str, str] = {}
        for option in cls.options:
            value = values.get(option.name)
            if value is None or value == "":
                value = option.default
            if value is None:
                if option.required:
                    raise InvalidInput(f"{cls.kind} channels need --{option.name.replace('_', '-')}")
                continue
            if option.choices and value not in option.choices:
                raise InvalidInput(f"--{option.name.replace('_', '-')} must be one of {', '.join(option.choices)}, not {value!r}")
            config[option.name] = str(value)
        return config

    def target(self) -> str:
        """Where messages go, without secrets (for ``notify list``)."""
        return self.kind

    def send(self, message: Message) -> None:
        """Send one message; raise :class:`DeliveryError` (``permanent=True`` when retrying is useless)."""
        raise NotImplementedError


_client: Any = None


def http_post(
    url: str,
    *,
    json_body: Any = None,
    content: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> Any:
    """POST and classify failures: network errors, timeouts, 408, 429 and 5xx are retried; other 4xx are permanent."""
    global _client
    import httpx

    if _client is None:
        _client = httpx.Client(timeout=timeout, follow_redirects=False, headers={"User-Agent": "stratavore"})
    try:
        response = _client.post(url, json=json_body, content=content, headers=headers)
    except httpx.TimeoutException as e:
        raise DeliveryError(f"timed out after {timeout:g}s ({type(e).__name__})") from None
    except httpx.HTTPError as e:
        raise DeliveryError(f"{type(e).__name__}: {e}") from None
    if response.status_code < 300:
        return response
    detail = response.text.strip().replace("\n", " ")[:200]
    error = f"HTTP {response.status_code}{': ' + detail if detail else ''}"
    if response.status_code in (408, 425, 429) or response.status_code >= 500:
        raise DeliveryError(error, retry_after=_retry_after(response))
    raise PermanentError(error)


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        try:
            value = response.json().get("parameters", {}).get("retry_after")  # Telegram's own way
        except (ValueError, AttributeError):
            return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


# -- describing events -----------------------------------------------------------------------------


def describe(event: Event, project: str | None = None) -> Message:
    """One event as a message."""
    p = event.payload
    name = p.get("name") or event.aggregate_id[:8]
    where = f" ({project})" if project else ""
    t = event.type
    if t == "runner.waiting":
        title, body = f"{name} is waiting for you{where}", p.get("detail") or "waiting for input"
    elif t == "runner.idle":
        title, body = f"{name} is idle{where}", p.get("detail") or "finished its turn"
    elif t == "runner.working":
        title, body = f"{name} is working{where}", p.get("detail") or ""
    elif t in ("runner.failed", "runner.lost", "runner.exited", "runner.stopped"):
        verb = {"runner.failed": "failed", "runner.lost": "was lost", "runner.exited": "exited", "runner.stopped": "stopped"}[t]
        details = [p.get("reason")]
        if p.get("exit_signal"):
            details.append(f"killed by {p['exit_signal']}")
        elif p.get("exit_code") is not None:
            details.append(f"exit code {p['exit_code']}")
        title, body = f"{name} {verb}{where}", "; ".join(d for d in details if d)
    elif t.startswith("budget."):
        title, body = _budget(t, p)
    elif t == "daemon.started":
        title, body = "Stratavore daemon started", f"pid {p.get('pid')}, {p.get('adopted', 0)} runner(s) adopted"
    elif t == "daemon.stopped":
        title, body = "Stratavore daemon stopped", f"pid {p.get('pid')}"
    else:
        title = f"{t}: {name}"
        body = ", ".join(f"{k}={v}" for k, v in sorted(p.items()) if k != "name" and v is not None)
    priority = "high" if t in HIGH_PRIORITY else "default"
    return Message(title, body, priority, [t.split(".")[-1]], [event.to_dict()])


def _budget(event_type: str, p: dict[str, Any]) -> tuple[str, str]:
    level = "exceeded" if event_type == "budget.exceeded" else "warning"
    percent = f" at {p['percent']:g}%" if isinstance(p.get("percent"), int | float) else ""
    title = f"Budget {level}: {p.get('name') or 'budget'}{percent}"
    spent = []
    if p.get("limit_usd") is not None:
        spent.append(f"${p.get('spent_usd') or 0:.2f} of ${p['limit_usd']:.2f}")
    if p.get("limit_tokens") is not None:
        spent.append(f"{p.get('spent_tokens') or 0:,} of {p['limit_tokens']:,} tokens")
    scope = p.get("scope")
    where = f"{scope} {p['target']}" if scope and p.get("target") else scope
    details = ["; ".join(spent), where, f"period {p['period']}" if p.get("period") else None]
    if p.get("action") and level == "exceeded":
        details.append(f"action: {p['action']}")
    return title, ", ".join(d for d in details if d)


def summarise(events: list[Event], projects: dict[str, str]) -> Message:
    """Many events as one message: a line each for the first few, then a count."""
    lines = []
    for event in events[:SUMMARY_LINES]:
        one = describe(event, projects.get(event.aggregate_id))
        when = dt.datetime.fromtimestamp(event.created_at).strftime("%H:%M:%S")
        lines.append(f"{when} {one.title}" + (f": {one.body}" if one.body else ""))
    if len(events) > SUMMARY_LINES:
        lines.append(f"... and {len(events) - SUMMARY_LINES} more (stratavore events)")
    kinds = sorted({e.type for e in events})
    priority = "high" if any(e.type in HIGH_PRIORITY for e in events) else "default"
    title = f"Stratavore: {len(events)} events ({', '.join(kinds)})"
    return Message(title, "\n".join(lines), priority, ["summary"], [e.to_dict() for e in events])


def _project_names(conn: sqlite3.Connection, events: Iterable[Event]) -> dict[str, str]:
    ids = sorted({e.aggregate_id for e in events if e.aggregate_type == "runner"})
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = conn.execute(f"SELECT r.id, p.name FROM runners r JOIN projects p ON p.id = r.project_id WHERE r.id IN ({marks})", ids)
    return {r[0]: r[1] for r in rows}


# -- configured channels ---------------------------------------------------------------------------


@dataclass
class ChannelRecord:
    name: str
    kind: str
    config: dict[str, str]
    events: list[str]
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ChannelRecord:
        return cls(row["name"], row["kind"], json.loads(row["config"]), json.loads(row["events"]), row["created_at"], row["updated_at"])


def secret_key(name: str) -> str:
    return f"notify.{name}"


def list_channels(conn: sqlite3.Connection) -> list[ChannelRecord]:
    return [ChannelRecord.from_row(r) for r in conn.execute("SELECT * FROM notify_channels ORDER BY name")]


def get_channel(conn: sqlite3.Connection, name: str) -> ChannelRecord:
    row = conn.execute("SELECT * FROM notify_channels WHERE name=?", (name,)).fetchone()
    if row is None:
        known = ", ".join(c.name for c in list_channels(conn))
        raise NotFound(
            f"no notification channel named {name!r}" + (f"; channels: {known}" if known else "; add one with `stratavore notify add`")
        )
    return ChannelRecord.from_row(row)


def _check_events(types: Iterable[str]) -> list[str]:
    out = []
    for t in types:
        t = t.strip()
        if not t:
            continue
        head = t[:-1] if t.endswith("*") else t
        if not head or not all(c.isalnum() or c in "._-" for c in head):
            raise InvalidInput(f"invalid event type {t!r}; e.g. runner.waiting or 'runner.*'")
        out.append(t)
    return out or list(DEFAULT_EVENTS)


def add_channel(
    ctx: Context,
    kinds: dict[str, type[Channel]],
    kind: str,
    values: dict[str, str | None],
    *,
    name: str | None = None,
    events: Iterable[str] = (),
) -> ChannelRecord:
    """Configure a channel: non-secret options in SQLite, secrets in the keyring. Starts at the newest event."""
    cls = kinds.get(kind)
    if cls is None:
        raise InvalidInput(f"unknown channel kind {kind!r}; known: {', '.join(sorted(kinds)) or 'none'}")
    name = name or kind
    validate_name("channel", name)
    config = cls.validate(values)
    secret_names = {o.name for o in cls.options if o.secret}
    public = {k: v for k, v in config.items() if k not in secret_names}
    secrets = {k: v for k, v in config.items() if k in secret_names}
    types = _check_events(events)
    conn = ctx.conn
    if conn.execute("SELECT 1 FROM notify_channels WHERE name=?", (name,)).fetchone():
        raise Conflict(f"a channel named {name!r} already exists; remove it first or pick another --name")
    if secrets:
        secretstore.put(ctx.paths, secret_key(name), json.dumps(secrets))
    now = db.now()
    with db.write(conn):
        if conn.execute("SELECT 1 FROM notify_channels WHERE name=?", (name,)).fetchone():
            raise Conflict(f"a channel named {name!r} already exists")
        conn.execute(
            "INSERT INTO notify_channels(name, kind, config, events, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            (name, kind, json.dumps(public, sort_keys=True), json.dumps(types), now, now),
        )
        consumers.forget(conn, CONSUMER_PREFIX + name)
        consumers.register(conn, CONSUMER_PREFIX + name)
    return get_channel(conn, name)


def remove_channel(ctx: Context, name: str) -> ChannelRecord:
    conn = ctx.conn
    record = get_channel(conn, name)
    with db.write(conn):
        conn.execute("DELETE FROM notify_channels WHERE name=?", (name,))
        consumers.forget(conn, CONSUMER_PREFIX + name)
    secretstore.delete(ctx.paths, secret_key(name))
    return record


def build_channel(paths: Paths, kinds: dict[str, type[Channel]], record: ChannelRecord) -> Channel:
    cls = kinds.get(record.kind)
    if cls is None:
        raise NotificationFailed(
            f"channel {record.name!r} is of kind {record.kind!r}, which no loaded plugin provides (stratavore plugins list)"
        )
    config = dict(record.config)
    if any(o.secret for o in cls.options):
        raw = secretstore.get(paths, secret_key(record.name))
        if raw:
            config.update(json.loads(raw))
    return cls(record.name, config)


def send_test(ctx: Context, host: PluginHost, name: str) -> Channel:
    record = get_channel(ctx.conn, name)
    channel = build_channel(ctx.paths, host.channel_kinds(), record)
    message = Message(
        "Stratavore test notification",
        f"Channel {name!r} ({channel.target()}) works. Sent at {dt.datetime.now().strftime('%H:%M:%S')}.",
        tags=["test"],
    )
    try:
        channel.send(message)
    except DeliveryError as e:
        raise NotificationFailed(f"channel {name!r} ({channel.target()}): {e}") from None
    return channel


# -- the consumer ----------------------------------------------------------------------------------


def _matches(event_type: str, patterns: Iterable[str]) -> bool:
    return any(event_type.startswith(p[:-1]) if p.endswith("*") else event_type == p for p in patterns)


class ChannelConsumer(Consumer):
    """Delivers one channel's events: routing, the waiting cooldown, flood summaries."""

    def __init__(self, record: ChannelRecord, channel: Channel, *, cooldown: float, flood_max: int, flood_window: float) -> None:
        self.record = record
        self.channel = channel
        self.name = CONSUMER_PREFIX + record.name
        self.cooldown = cooldown
        self.flood_max = max(1, flood_max)
        self.flood_window = flood_window
        self.sent: deque[float] = deque()

    def wants(self, event: Event) -> bool:
        return _matches(event.type, self.record.events)

    def _last_alert(self, conn: sqlite3.Connection, event: Event) -> float | None:
        # from the delivery records, so the cooldown survives a daemon restart
        row = conn.execute(
            "SELECT MAX(e.created_at) FROM consumer_deliveries d JOIN events e ON e.seq = d.seq"
            " WHERE d.consumer=? AND e.type=? AND e.aggregate_id=? AND e.seq < ?",
            (self.name, event.type, event.aggregate_id, event.seq),
        ).fetchone()
        return row[0]

    def plan(self, conn: sqlite3.Connection, events: list[Event], now: float) -> list[Unit]:
        keep: list[Event] = []
        quiet: dict[str, float] = {}
        for event in events:
            if event.type == "runner.idle" and not event.payload.get("previous"):
                continue  # an agent that just started is idle: nothing finished, nothing to say
            if event.type == "runner.waiting" and self.cooldown > 0:
                last = quiet.get(event.aggregate_id)
                if last is None:
                    last = self._last_alert(conn, event)
                if last is not None and event.created_at - last < self.cooldown:
                    continue  # alerted about this runner's waiting moments ago
                quiet[event.aggregate_id] = event.created_at
            keep.append(event)
        if not keep:
            return [Unit([], events[-1].seq)]
        while self.sent and self.sent[0] <= now - self.flood_window:
            self.sent.popleft()
        room = self.flood_max - len(self.sent)
        if len(keep) <= room:
            units, last = [], 0
            for event in keep:
                units.append(Unit([event], event.seq))
                last = event.seq
            # what was muted after the last kept event is passed over too
            if events[-1].seq > last:
                units.append(Unit([], events[-1].seq))
            return units
        if room >= 1:
            # a flood: everything pending, as one message
            return [Unit(keep, events[-1].seq)]
        # the window's quota is spent: hold everything until it frees up, then summarise
        first = keep[0]
        skipped = [e for e in events if e.seq < first.seq]
        return [Unit([], skipped[-1].seq)] if skipped else []

    def deliver(self, conn: sqlite3.Connection, events: list[Event]) -> None:
        projects = _project_names(conn, events)
        if len(events) == 1:
            message = describe(events[0], projects.get(events[0].aggregate_id))
        else:
            message = summarise(events, projects)
        self.channel.send(message)

    def delivered(self, events: list[Event], now: float) -> None:
        self.sent.append(now)


class PluginEventConsumer(Consumer):
    """Calls one plugin's ``on_event`` for each event (its own cursor: ``plugin:<name>``)."""

    def __init__(self, host: PluginHost, plugin_name: str) -> None:
        self.host = host
        self.plugin_name = plugin_name
        self.name = f"plugin:{plugin_name}"

    def deliver(self, conn: sqlite3.Connection, events: list[Event]) -> None:
        for event in events:
            self.host.call_one(self.plugin_name, "on_event", event=event)


class NotificationSource:
    """The consumers the daemon runs: one per configured channel, one per plugin with ``on_event``."""

    def __init__(self, ctx: Context, host: PluginHost | None) -> None:
        self.ctx = ctx
        self.host = host
        self.kinds = host.channel_kinds() if host else {}
        self._channels: dict[str, tuple[float, ChannelConsumer]] = {}
        self._broken: dict[str, float] = {}
        self._plugins = [PluginEventConsumer(host, name) for name in host.implementers("on_event")] if host else []

    def __call__(self, conn: sqlite3.Connection) -> list[Consumer]:
        settings = self.ctx.settings
        found: list[Consumer] = []
        names = set()
        for record in list_channels(conn):
            names.add(record.name)
            cached = self._channels.get(record.name)
            if cached and cached[0] == record.updated_at and cached[1].record.created_at == record.created_at:
                found.append(cached[1])
                continue
            if self._broken.get(record.name) == record.updated_at:
                continue
            try:
                channel = build_channel(self.ctx.paths, self.kinds, record)
            except Exception as e:  # noqa: BLE001 - one misconfigured channel must not stop the others
                log.error("channel %s cannot be used: %s", record.name, e)
                self._broken[record.name] = record.updated_at
                continue
            consumer = ChannelConsumer(
                record,
                channel,
                cooldown=settings.notify_cooldown,
                flood_max=settings.notify_flood_max,
                flood_window=settings.notify_flood_window,
            )
            self._channels[record.name] = (record.updated_at, consumer)
            found.append(consumer)
        for gone in set(self._channels) - names:
            del self._channels[gone]
        return found + list(self._plugins)


def build_dispatcher(ctx: Context) -> consumers.Dispatcher:
    """The daemon's consumers: notification channels and plugins' ``on_event``, never failing on a plugin."""
    from . import plugins

    try:
        host: PluginHost | None = plugins.load(ctx.paths)
    except Exception:  # noqa: BLE001
        log.exception("plugins could not be loaded; running without them")
        host = None
    settings = ctx.settings
    policy = consumers.Policy(
        max_attempts=settings.delivery_max_attempts,
        backoff_initial=settings.delivery_backoff_initial,
        backoff_max=settings.delivery_backoff_max,
    )
    return consumers.Dispatcher(NotificationSource(ctx, host), policy, settings.event_retention_days)


def pending_for(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    """A channel's delivery state for ``notify list``: waiting events, parked ones, last error."""
    cursor = consumers.get_cursor(conn, CONSUMER_PREFIX + name)
    parked = conn.execute("SELECT COUNT(*) FROM parked_events WHERE consumer=?", (CONSUMER_PREFIX + name,)).fetchone()[0]
    return {
        "delivered": cursor.delivered if cursor else 0,
        "parked": parked,
        "last_error": cursor.last_error if cursor else None,
        "retrying": bool(cursor and cursor.attempts),
        "next_attempt_in": round(max(0.0, cursor.next_attempt_at - time.time()), 1) if cursor and cursor.attempts else None,
    }
