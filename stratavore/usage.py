"""Usage reports, computed with SQL over the stored entries (see transcripts.py for how they get there).

Every report has the shape of ccusage's ``--json`` output, so scripts written for it keep working:
a top-level list (``daily``, ``weekly``, ``monthly``, ``sessions``, ``projects``, ``models``,
``blocks``) and ``totals``, with ``inputTokens``, ``outputTokens``, ``cacheCreationTokens``,
``cacheReadTokens``, ``totalTokens``, ``totalCost``, ``modelsUsed`` and ``modelBreakdowns``.
As in ccusage, a fast-mode response counts under ``<model>-fast``, ``<synthetic>`` lines (Claude Code's
own error messages) count tokens but name no model, and a model without a price shows
``missingPricing: true`` in its breakdown and in ``totals.unpricedModels``: its cost is unknown, and
is left out of ``totalCost`` rather than counted as $0 silently.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidInput

HOUR_MS = 3_600_000
QUARTER_MS = 900_000  # usage_quarters' step: every time zone's midnight is on a quarter hour
DAY_MS = 86_400_000
UNASSIGNED = "unassigned"
SYNTHETIC = "<synthetic>"
TOKEN_SUMS = (
    "sum(input_tokens) AS input, sum(output_tokens) AS output, sum(cache_5m_tokens + cache_1h_tokens) AS cache_creation,"
    " sum(cache_read_tokens) AS cache_read, total(cost_usd) AS cost, sum(cost_usd IS NULL) AS unpriced, count(*) AS entries"
)


# --- filters and time zones -----------------------------------------------------------------------------


def parse_timezone(name: str | None) -> tzinfo | None:
    """An IANA zone, or None for the system's local time."""
    if not name:
        return None
    try:
        return UTC if name.upper() == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin or UTC") from None


def parse_day(text: str | None, option: str) -> date | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            day = datetime.strptime(text, fmt).date()
        except ValueError:
            continue
        # a day whose neighbours or midnights cannot be represented is no useful bound
        if not date(1971, 1, 1) <= day <= date(9998, 12, 31):
            raise InvalidInput(f"{option} must be a date between 1971 and 9998, not {text!r}")
        return day
    raise InvalidInput(f"{option} must be a date like 2026-11-01 or 20261101, not {text!r}")


@dataclass(frozen=True)
class Filters:
    since: date | None = None
    until: date | None = None
    tz: tzinfo | None = None  # None: the system's local time

    def __post_init__(self) -> None:
        if self.since and self.until and self.since > self.until:
            raise InvalidInput("--since must not be after --until")

    def midnight_ms(self, day: date) -> int:
        """The instant a local day starts, in ms since the epoch."""
        if self.tz is None:
            return int(datetime(day.year, day.month, day.day).timestamp() * 1000)
        return int(datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp() * 1000)

    def where(self, column: str = "ts", unit: int = 1) -> tuple[str, list[int]]:
        """A WHERE clause for the date range over ``column``, which counts ``unit`` ms per step."""
        clauses, params = [], []
        if self.since:
            clauses.append(f"{column} >= ?")
            params.append(self.midnight_ms(self.since) // unit)
        if self.until:
            clauses.append(f"{column} < ?")
            params.append(self.midnight_ms(self.until + timedelta(days=1)) // unit)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def offset_ms(self, ms: int) -> int:
        moment = datetime.fromtimestamp(ms / 1000, UTC).astimezone(self.tz) if self.tz else datetime.fromtimestamp(ms / 1000).astimezone()
        offset = moment.utcoffset()
        return int(offset.total_seconds() * 1000) if offset else 0

    def offset_segments(self, first_ms: int, last_ms: int) -> list[tuple[int, int]]:
        """(from_ms, offset_ms) pieces covering [first, last]: the zone's UTC offset changes at most at
        daylight-saving transitions, found by a daily walk and a binary search to the second."""
        segments = [(first_ms, self.offset_ms(first_ms))]
        at = first_ms
        while at < last_ms:
            step = min(at + DAY_MS, last_ms)
            if self.offset_ms(step) != segments[-1][1]:
                low, high = at, step  # offset(low) is the current one, offset(high) the next
                while high - low > 1000:
                    middle = (low + high) // 2
                    if self.offset_ms(middle) == segments[-1][1]:
                        low = middle
                    else:
                        high = middle
                segments.append((high, self.offset_ms(high)))
            at = step
        return segments

    def local_day_sql(self, conn: sqlite3.Connection) -> tuple[str, list[int]]:
        """A SQL expression for the local day of a usage_quarters row (days since 1970-01-01 in this zone)."""
        where, params = self.where("quarter", QUARTER_MS)
        first, last = conn.execute(f"SELECT min(quarter), max(quarter) FROM usage_quarters{where}", params).fetchone()
        ts = f"(quarter * {QUARTER_MS})"
        if first is None:
            return f"({ts} / 86400000)", []
        segments = self.offset_segments(first * QUARTER_MS, last * QUARTER_MS + QUARTER_MS - 1)
        if len(segments) == 1:
            return f"(({ts} + ?) / 86400000)", [segments[0][1]]
        cases, values = [], []
        for (_, offset), (next_start, _) in zip(segments, segments[1:], strict=False):
            cases.append(f"WHEN {ts} < ? THEN ?")
            values += [next_start, offset]
        return f"(({ts} + CASE {' '.join(cases)} ELSE ? END) / 86400000)", [*values, segments[-1][1]]

    def today(self, now: datetime | None = None) -> date:
        now = now or datetime.now(UTC)
        return now.astimezone(self.tz).date() if self.tz else now.astimezone().date()


# --- aggregation ------------------------------------------------------------------------------------------


def model_label(model: str | None, speed: str | None) -> str | None:
    """The name a report lists: none for synthetic or missing models, ``-fast`` for fast mode."""
    if not model or model == SYNTHETIC:
        return None
    return f"{model}-fast" if speed == "fast" else model


@dataclass
class Bucket:
    """Token and cost sums of one report row, with its per-model breakdown."""

    input: int = 0
    output: int = 0
    cache_creation: int = 0
    cache_read: int = 0
    cost: float = 0.0
    entries: int = 0
    models: dict[str, Bucket] = field(default_factory=dict)
    unpriced: set[str] = field(default_factory=set)

    @property
    def total_tokens(self) -> int:
        return self.input + self.output + self.cache_creation + self.cache_read

    def add(self, row: sqlite3.Row | dict[str, Any], label: str | None, detail: bool = True) -> None:
        self.input += row["input"]
        self.output += row["output"]
        self.cache_creation += row["cache_creation"]
        self.cache_read += row["cache_read"]
        self.cost += row["cost"]
        self.entries += row["entries"]
        if label is None:
            return
        if row["unpriced"]:
            self.unpriced.add(label)
        if detail:
            self.models.setdefault(label, Bucket()).add(row, label, detail=False)

    def merge(self, other: Bucket) -> None:
        self.input += other.input
        self.output += other.output
        self.cache_creation += other.cache_creation
        self.cache_read += other.cache_read
        self.cost += other.cost
        self.entries += other.entries
        self.unpriced |= other.unpriced
        for label, bucket in other.models.items():
            self.models.setdefault(label, Bucket()).merge(bucket)

    def counts(self) -> dict[str, Any]:
        return {
            "inputTokens": self.input,
            "outputTokens": self.output,
            "cacheCreationTokens": self.cache_creation,
            "cacheReadTokens": self.cache_read,
            "totalTokens": self.total_tokens,
            "totalCost": self.cost,
        }

    def to_json(self) -> dict[str, Any]:
        breakdowns = []
        for label, bucket in sorted(self.models.items(), key=lambda item: (-item[1].cost, item[0])):
            item = {
                "modelName": label,
                "inputTokens": bucket.input,
                "outputTokens": bucket.output,
                "cacheCreationTokens": bucket.cache_creation,
                "cacheReadTokens": bucket.cache_read,
                "cost": bucket.cost,
            }
            if label in self.unpriced:
                item["missingPricing"] = True
            breakdowns.append(item)
        return {**self.counts(), "modelsUsed": [b["modelName"] for b in breakdowns], "modelBreakdowns": breakdowns}

    def totals_json(self) -> dict[str, Any]:
        data = self.counts()
        if self.unpriced:
            data["unpricedModels"] = sorted(self.unpriced)
        return data


def _grouped(rows: Iterable[sqlite3.Row], key: str) -> dict[Any, Bucket]:
    buckets: dict[Any, Bucket] = {}
    for row in rows:
        buckets.setdefault(row[key], Bucket()).add(row, model_label(row["model"], row["speed"]))
    return buckets


def _total(buckets: Iterable[Bucket]) -> Bucket:
    total = Bucket()
    for bucket in buckets:
        total.merge(bucket)
    return total


# --- period reports ------------------------------------------------------------------------------------

PERIODS = ("daily", "weekly", "monthly")


def _period_key(period: str, day: date) -> str:
    if period == "monthly":
        return day.strftime("%Y-%m")
    if period == "weekly":
        return (day - timedelta(days=(day.weekday() + 1) % 7)).isoformat()  # weeks start on Sunday, as in ccusage
    return day.isoformat()


QUARTER_SUMS = (
    "sum(input_tokens) AS input, sum(output_tokens) AS output, sum(cache_5m_tokens + cache_1h_tokens) AS cache_creation,"
    " sum(cache_read_tokens) AS cache_read, total(cost_usd) AS cost, sum(unpriced) AS unpriced, sum(entries) AS entries"
)


def period_buckets(conn: sqlite3.Connection, period: str, filters: Filters) -> dict[str, Bucket]:
    """Sums per day, week or month, read from the per-quarter-hour sums the triggers keep."""
    day_sql, day_params = filters.local_day_sql(conn)
    where, params = filters.where("quarter", QUARTER_MS)
    rows = conn.execute(
        f"SELECT {day_sql} AS day, nullif(model, '') AS model, nullif(speed, '') AS speed, {QUARTER_SUMS}"
        f" FROM usage_quarters{where} GROUP BY day, model, speed HAVING sum(entries) > 0",
        [*day_params, *params],
    )
    epoch = date(1970, 1, 1)
    buckets: dict[str, Bucket] = {}
    for row in rows:
        key = _period_key(period, epoch + timedelta(days=row["day"]))
        buckets.setdefault(key, Bucket()).add(row, model_label(row["model"], row["speed"]))
    return dict(sorted(buckets.items()))


def period_report(conn: sqlite3.Connection, period: str, filters: Filters) -> dict[str, Any]:
    """``{"daily": [{"date": ..., ...}], "totals": {...}}`` and the weekly/monthly equivalents."""
    field_name = {"daily": "date", "weekly": "week", "monthly": "month"}[period]
    buckets = period_buckets(conn, period, filters)
    return {period: [{field_name: key, **b.to_json()} for key, b in buckets.items()], "totals": _total(buckets.values()).totals_json()}


# --- sessions, projects, models --------------------------------------------------------------------------


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def session_report(conn: sqlite3.Connection, filters: Filters, *, session_id: str | None = None) -> dict[str, Any]:
    where, params = filters.where()
    if session_id:
        where += (" AND" if where else " WHERE") + " session_id = ?"
        params.append(session_id)
    rows = conn.execute(
        f"SELECT session_id, model, speed, {TOKEN_SUMS}, min(ts) AS first, max(ts) AS last, max(project_dir) AS project_dir,"
        f" max(project_id) AS project_id, max(runner_id) AS runner_id FROM usage_entries{where} GROUP BY session_id, model, speed",
        params,
    ).fetchall()
    names = _project_names(conn)
    info: dict[str, dict[str, Any]] = {}
    for row in rows:
        item = info.setdefault(row["session_id"], {"first": row["first"], "last": row["last"], "dir": row["project_dir"], "project": None})
        item["first"], item["last"] = min(item["first"], row["first"]), max(item["last"], row["last"])
        if row["project_id"] is not None:
            item["project"], item["runner"] = names.get(row["project_id"], UNASSIGNED), row["runner_id"]
    buckets = _grouped(rows, "session_id")
    sessions = []
    for sid, bucket in sorted(buckets.items(), key=lambda item: info[item[0]]["last"]):
        item = info[sid]
        sessions.append(
            {
                "sessionId": sid,
                "projectPath": item["dir"],
                "project": item["project"] or UNASSIGNED,
                "runnerId": item.get("runner"),
                "firstActivity": _iso(item["first"]),
                "lastActivity": _iso(item["last"]),
                **bucket.to_json(),
            }
        )
    return {"sessions": sessions, "totals": _total(buckets.values()).totals_json()}


def _project_names(conn: sqlite3.Connection) -> dict[int, str]:
    return {r[0]: r[1] for r in conn.execute("SELECT id, name FROM projects")}


def project_report(conn: sqlite3.Connection, filters: Filters) -> dict[str, Any]:
    where, params = filters.where()
    rows = conn.execute(
        f"SELECT project_id, model, speed, {TOKEN_SUMS} FROM usage_entries{where} GROUP BY project_id, model, speed", params
    )
    names = _project_names(conn)
    buckets = _grouped(rows, "project_id")
    projects = [
        {"project": names.get(pid, UNASSIGNED) if pid is not None else UNASSIGNED, **bucket.to_json()}
        for pid, bucket in sorted(buckets.items(), key=lambda item: -item[1].cost)
    ]
    return {"projects": projects, "totals": _total(buckets.values()).totals_json()}


def model_report(conn: sqlite3.Connection, filters: Filters) -> dict[str, Any]:
    where, params = filters.where()
    rows = conn.execute(f"SELECT model, speed, {TOKEN_SUMS} FROM usage_entries{where} GROUP BY model, speed", params).fetchall()
    total = Bucket()
    models = []
    for row in rows:
        label = model_label(row["model"], row["speed"]) or (row["model"] or "(none)")
        bucket = Bucket()
        bucket.add(row, label, detail=False)
        total.merge(bucket)
        unknown = bool(row["unpriced"]) and row["model"] != SYNTHETIC
        if unknown:
            total.unpriced.add(label)
        models.append({"model": label, **bucket.counts(), "entries": bucket.entries, **({"missingPricing": True} if unknown else {})})
    models.sort(key=lambda m: (-m["totalCost"], m["model"]))
    return {"models": models, "totals": total.totals_json()}


# --- 5-hour blocks ----------------------------------------------------------------------------------------


@dataclass
class Block:
    start: int
    end: int
    first: int = 0
    last: int = 0
    is_gap: bool = False
    bucket: Bucket = field(default_factory=Bucket)
    models: list[str] = field(default_factory=list)

    def to_json(self, now_ms: int) -> dict[str, Any]:
        b = self.bucket
        active = not self.is_gap and now_ms - self.last < self.end - self.start and now_ms < self.end
        data = {
            "id": f"gap-{_iso(self.start)}" if self.is_gap else _iso(self.start),
            "startTime": _iso(self.start),
            "endTime": _iso(self.end),
            "actualEndTime": None if self.is_gap else _iso(self.last),
            "isActive": active,
            "isGap": self.is_gap,
            "entries": b.entries,
            "tokenCounts": {
                "inputTokens": b.input,
                "outputTokens": b.output,
                "cacheCreationInputTokens": b.cache_creation,
                "cacheReadInputTokens": b.cache_read,
            },
            "totalTokens": b.total_tokens,
            "costUSD": b.cost,
            "models": list(self.models),
            "burnRate": None,
            "projection": None,
        }
        minutes = (self.last - self.first) / 60_000
        if active and minutes > 0:
            tokens_per_minute = b.total_tokens / minutes
            cost_per_hour = b.cost / minutes * 60
            remaining = round((self.end - now_ms) / 60_000)
            data["burnRate"] = {
                "tokensPerMinute": tokens_per_minute,
                "tokensPerMinuteForIndicator": (b.input + b.output) / minutes,
                "costPerHour": cost_per_hour,
            }
            data["projection"] = {
                "totalTokens": round(b.total_tokens + tokens_per_minute * remaining),
                "totalCost": round(b.cost + cost_per_hour / 60 * remaining, 2),
                "remainingMinutes": remaining,
            }
        return data


def blocks(conn: sqlite3.Connection, filters: Filters, *, hours: float = 5.0) -> list[Block]:
    """ccusage's billing blocks: a block starts at its first entry's hour (UTC) and lasts ``hours``; an
    entry more than ``hours`` after the block's start or after the previous entry opens a new block,
    and a silence longer than ``hours`` shows as a gap block."""
    length = int(hours * HOUR_MS)
    where, params = filters.where()
    rows = conn.execute(
        "SELECT ts, model, speed, input_tokens AS input, output_tokens AS output, cache_5m_tokens + cache_1h_tokens AS cache_creation,"
        f" cache_read_tokens AS cache_read, coalesce(cost_usd, 0) AS cost, cost_usd IS NULL AS unpriced, 1 AS entries"
        f" FROM usage_entries{where} ORDER BY ts, id",
        params,
    )
    out: list[Block] = []
    current: Block | None = None
    for row in rows:
        ts = row["ts"]
        if current is None or ts - current.start > length or ts - current.last > length:
            if current is not None and ts - current.last > length:
                out.append(Block(start=current.last + length, end=ts, is_gap=True))
            start = ts - ts % HOUR_MS
            current = Block(start=start, end=start + length, first=ts, last=ts)
            out.append(current)
        current.last = ts
        label = model_label(row["model"], row["speed"])
        current.bucket.add(row, label, detail=False)
        if label is not None and label not in current.models:
            current.models.append(label)
    # a gap starts 5 h after the last entry, which can be after the next block's floored start: list
    # by start time, as ccusage does
    out.sort(key=lambda block: block.start)
    return out


def block_report(conn: sqlite3.Connection, filters: Filters, *, active_only: bool = False, now: datetime | None = None) -> dict[str, Any]:
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    items = [b.to_json(now_ms) for b in blocks(conn, filters)]
    if active_only:
        items = [b for b in items if b["isActive"]]
    return {"blocks": items}


# --- the overview -----------------------------------------------------------------------------------------


def overview(conn: sqlite3.Connection, tz: tzinfo | None, *, now: datetime | None = None, top: int = 5) -> dict[str, Any]:
    """Today, this week and this month, and the month's top projects and sessions."""
    today = Filters(tz=tz).today(now)
    week_start = today - timedelta(days=(today.weekday() + 1) % 7)
    month_start = today.replace(day=1)
    periods = {}
    for name, since in (("today", today), ("week", week_start), ("month", month_start)):
        filters = Filters(since=since, until=today, tz=tz)
        periods[name] = {"since": since.isoformat(), **_total(period_buckets(conn, "daily", filters).values()).totals_json()}
    month = Filters(since=month_start, until=today, tz=tz)
    return {
        "periods": periods,
        "topProjects": project_report(conn, month)["projects"][:top],
        "topSessions": sorted(session_report(conn, month)["sessions"], key=lambda s: -s["totalCost"])[:top],
    }


def unpriced(data: dict[str, Any]) -> Sequence[str]:
    return data.get("totals", {}).get("unpricedModels", [])
