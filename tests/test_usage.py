"""Reports: periods in time zones, sessions, projects, models, 5-hour blocks, and the CLI around them."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from stratavore import pricing, transcripts, usage
from tests.conftest import assert_clean_error
from tests.test_transcripts import line, write

PRICES = pricing.load(None)


def load(ctx, claude, lines_by_file: dict[str, list[str]]) -> None:
    for rel, lines in lines_by_file.items():
        write(claude, rel, lines)
    transcripts.ingest(ctx.conn, [claude], PRICES)


@pytest.fixture
def claude(tmp_path):
    return tmp_path / "claude"


def test_days_follow_the_time_zone_across_daylight_saving(ctx, claude):
    load(
        ctx,
        claude,
        {
            "-w/s1.jsonl": [
                line("m1", "r1", ts="2026-03-28T23:30:00.000Z"),  # Berlin 00:30 on the 29th (CET, +1)
                line("m2", "r2", ts="2026-03-29T22:30:00.000Z"),  # Berlin 00:30 on the 30th (CEST, +2)
                line("m3", "r3", ts="2026-03-29T21:30:00.000Z"),  # Berlin 23:30 on the 29th
            ]
        },
    )
    berlin = usage.period_report(ctx.conn, "daily", usage.Filters(tz=usage.parse_timezone("Europe/Berlin")))
    assert [(d["date"], d["inputTokens"]) for d in berlin["daily"]] == [("2026-03-29", 200), ("2026-03-30", 100)]
    utc = usage.period_report(ctx.conn, "daily", usage.Filters(tz=UTC))
    assert [(d["date"], d["inputTokens"]) for d in utc["daily"]] == [("2026-03-28", 100), ("2026-03-29", 200)]
    kolkata = usage.period_report(ctx.conn, "daily", usage.Filters(tz=usage.parse_timezone("Asia/Kolkata")))  # +05:30
    assert [d["date"] for d in kolkata["daily"]] == ["2026-03-29", "2026-03-30"]


def test_since_until_weeks_and_months(ctx, claude):
    load(
        ctx,
        claude,
        {"-w/s1.jsonl": [line(f"m{i}", f"r{i}", ts=f"2026-01-{day:02d}T12:00:00.000Z") for i, day in enumerate((3, 4, 10, 11, 31))]},
    )
    utc = usage.Filters(tz=UTC)
    weekly = usage.period_report(ctx.conn, "weekly", utc)["weekly"]
    # weeks start on Sunday (2026-01-04 and 2026-01-11 are Sundays), as in ccusage
    assert [(w["week"], w["inputTokens"]) for w in weekly] == [
        ("2025-12-28", 100),
        ("2026-01-04", 200),
        ("2026-01-11", 100),
        ("2026-01-25", 100),
    ]
    monthly = usage.period_report(ctx.conn, "monthly", utc)
    assert [(m["month"], m["inputTokens"]) for m in monthly["monthly"]] == [("2026-01", 500)]
    ranged = usage.period_report(ctx.conn, "daily", usage.Filters(date(2026, 1, 4), date(2026, 1, 10), UTC))
    assert [d["date"] for d in ranged["daily"]] == ["2026-01-04", "2026-01-10"]
    assert ranged["totals"]["inputTokens"] == 200


def test_report_fields_models_and_unpriced(ctx, claude):
    load(
        ctx,
        claude,
        {
            "-w/s1.jsonl": [
                line("m1", "r1", model="claude-opus-4-6", speed="fast", inp=100, out=50, cr=100),
                line("m2", "r2", model="claude-nonexistent-9"),
                line("m3", "r3", model="<synthetic>", inp=0, out=0),
                line("m4", "r4", model="claude-sonnet-4-5-20250929", c5=1000, c1=2000),
            ]
        },
    )
    daily = usage.period_report(ctx.conn, "daily", usage.Filters(tz=UTC))
    day = daily["daily"][0]
    assert set(day) == {
        "date",
        "inputTokens",
        "outputTokens",
        "cacheCreationTokens",
        "cacheReadTokens",
        "totalTokens",
        "totalCost",
        "modelsUsed",
        "modelBreakdowns",
    }
    assert sorted(day["modelsUsed"]) == ["claude-nonexistent-9", "claude-opus-4-6-fast", "claude-sonnet-4-5-20250929"]
    breakdown = {b["modelName"]: b for b in day["modelBreakdowns"]}
    assert breakdown["claude-opus-4-6-fast"]["cost"] == pytest.approx(0.0108)
    assert breakdown["claude-nonexistent-9"]["missingPricing"] is True
    assert "missingPricing" not in breakdown["claude-sonnet-4-5-20250929"]
    assert day["cacheCreationTokens"] == 3000
    assert day["totalTokens"] == 300 + 70 + 100 + 3000
    assert day["totalCost"] == pytest.approx(0.0108 + (100 * 3 + 10 * 15 + 1000 * 3.75 + 2000 * 6) / 1e6)
    assert daily["totals"]["unpricedModels"] == ["claude-nonexistent-9"]
    models = {m["model"]: m for m in usage.model_report(ctx.conn, usage.Filters(tz=UTC))["models"]}
    assert models["claude-nonexistent-9"]["missingPricing"] is True
    assert models["<synthetic>"]["totalCost"] == 0 and "missingPricing" not in models["<synthetic>"]


def test_sessions_and_projects(ctx, claude, tmp_path):
    from stratavore import projects

    (tmp_path / "web").mkdir()
    web = projects.add(ctx.conn, "web", tmp_path / "web")
    load(
        ctx,
        claude,
        {
            "-w/s1.jsonl": [
                line("m1", "r1", cwd=web.path, ts="2026-01-10T09:00:00.000Z"),
                line("m2", "r2", cwd=web.path, ts="2026-01-10T11:00:00.000Z"),
            ],
            "-w/s1/subagents/agent-1.jsonl": [line("m3", "r3", cwd=web.path, sidechain=True, ts="2026-01-10T10:00:00.000Z")],
            "-o/s2.jsonl": [line("m4", "r4", cwd="/elsewhere", out=1000)],
        },
    )
    sessions = {s["sessionId"]: s for s in usage.session_report(ctx.conn, usage.Filters(tz=UTC))["sessions"]}
    assert sessions["s1"]["inputTokens"] == 300
    assert (sessions["s1"]["firstActivity"], sessions["s1"]["lastActivity"]) == ("2026-01-10T09:00:00.000Z", "2026-01-10T11:00:00.000Z")
    assert (sessions["s1"]["projectPath"], sessions["s1"]["project"], sessions["s2"]["project"]) == ("-w", "web", "unassigned")
    found = usage.project_report(ctx.conn, usage.Filters(tz=UTC))["projects"]
    assert [(p["project"], p["inputTokens"]) for p in found] == [("unassigned", 100), ("web", 300)]


def test_blocks_gaps_and_the_active_block(ctx, claude):
    load(
        ctx,
        claude,
        {
            "-w/s1.jsonl": [
                line("m1", "r1", ts="2026-01-10T09:10:00.000Z"),
                line("m2", "r2", ts="2026-01-10T13:59:00.000Z"),
                line("m3", "r3", ts="2026-01-10T14:20:00.000Z"),  # over 5 h after the block's start (09:00)
                line("m4", "r4", ts="2026-01-11T08:00:00.000Z", inp=1000, out=500, cr=2000),  # over 5 h of silence
                line("m5", "r5", ts="2026-01-11T08:40:00.000Z", model="claude-opus-4-6", speed="fast", inp=100, out=50),
            ]
        },
    )
    now = datetime(2026, 1, 11, 9, 20, tzinfo=UTC)
    found = usage.block_report(ctx.conn, usage.Filters(tz=UTC), now=now)["blocks"]
    assert [(b["id"], b["entries"], b["isGap"], b["isActive"]) for b in found] == [
        ("2026-01-10T09:00:00.000Z", 2, False, False),
        ("2026-01-10T14:00:00.000Z", 1, False, False),
        ("gap-2026-01-10T19:20:00.000Z", 0, True, False),
        ("2026-01-11T08:00:00.000Z", 2, False, True),
    ]
    gap, active = found[2], found[3]
    assert (gap["endTime"], gap["actualEndTime"]) == ("2026-01-11T08:00:00.000Z", None)
    assert active["endTime"] == "2026-01-11T13:00:00.000Z"
    assert active["models"] == ["claude-sonnet-4-5-20250929", "claude-opus-4-6-fast"]
    minutes = 40
    assert active["burnRate"]["tokensPerMinute"] == pytest.approx(active["totalTokens"] / minutes)
    assert active["burnRate"]["tokensPerMinuteForIndicator"] == pytest.approx(1650 / minutes)
    assert active["burnRate"]["costPerHour"] == pytest.approx(active["costUSD"] / minutes * 60)
    assert active["projection"]["remainingMinutes"] == 220
    assert active["projection"]["totalTokens"] == round(active["totalTokens"] * (1 + 220 / minutes))
    only = usage.block_report(ctx.conn, usage.Filters(tz=UTC), active_only=True, now=now)["blocks"]
    assert [b["id"] for b in only] == ["2026-01-11T08:00:00.000Z"]


def test_cli_reports_ingest_first_and_print_json(sv, tmp_path):
    claude = tmp_path / "claude"
    write(claude, "-w/s1.jsonl", [line("m1", "r1"), line("m1", "r1", out=40), line("m2", "r2", model="claude-nonexistent-9")])
    daily = json.loads(sv("usage", "daily", "--json", "--claude-dir", str(claude), "-z", "UTC", check=True).stdout)
    assert daily["daily"][0]["date"] == "2026-01-10"
    assert daily["totals"]["outputTokens"] == 50 and daily["totals"]["unpricedModels"] == ["claude-nonexistent-9"]
    # new lines show up in the next report with no explicit import
    write(claude, "-w/s1.jsonl", [line("m3", "r3", out=5)], mode="a")
    again = json.loads(sv("usage", "daily", "--json", "--claude-dir", str(claude), "-z", "UTC", check=True).stdout)
    assert again["totals"]["outputTokens"] == 55
    text = sv("usage", "daily", "--claude-dir", str(claude), "-z", "UTC", check=True).stdout
    assert "TOTAL" in text and "cost unknown for claude-nonexistent-9" in text
    for command in ("weekly", "monthly", "session", "project", "model", "blocks"):
        proc = sv("usage", command, "--claude-dir", str(claude), check=True)
        assert proc.stdout.strip(), command
        data = json.loads(sv("usage", command, "--json", "--claude-dir", str(claude), check=True).stdout)
        assert "blocks" in data or "totals" in data
    overview = sv("usage", "--claude-dir", str(claude), check=True).stdout
    assert "this month" in overview
    # the group's options reach its commands
    grouped = json.loads(sv("usage", "--claude-dir", str(claude), "-z", "Asia/Tokyo", "daily", "--json", check=True).stdout)
    assert grouped["totals"]["outputTokens"] == 55 and grouped["daily"][0]["date"] == "2026-01-10"


def test_cli_import_counts(sv, tmp_path):
    claude = tmp_path / "claude"
    write(claude, "-w/s1.jsonl", [line("m1", "r1"), line("m1", "r1", out=40), "garbage}x", line("m2", "r2")])
    proc = sv("usage", "import", "--claude-dir", str(claude), check=True)
    assert "Read 1 of 1 transcript file(s)" in proc.stdout
    assert "3 usage line(s), 2 new entries, 1 duplicate(s) dropped, 1 line(s) skipped" in proc.stdout
    stats = json.loads(sv("usage", "import", "--json", "--claude-dir", str(claude), check=True).stdout)
    assert (stats["files"], stats["files_read"], stats["entries"]) == (1, 0, 0)


def test_cli_prices(sv, home):
    data = json.loads(sv("usage", "prices", "--json", check=True).stdout)
    assert data["version"] and data["overrides"] is None
    assert {m["model"] for m in data["models"]} >= {"claude-opus-5-5", "claude-sonnet-4-5", "claude-haiku-3-5"} - {"claude-haiku-3-5"}
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "prices.toml").write_text('["claude-opus-5-5"]\ncache_read = 0.3\n')
    text = sv("usage", "prices", check=True).stdout
    assert "override" in text and "Price table" in text


def test_cli_errors_are_one_line(sv, home, tmp_path):
    claude = str(tmp_path / "none")
    assert_clean_error(sv("usage", "daily", "-z", "Mars/Olympus", "--claude-dir", claude), 2, "unknown time zone 'Mars/Olympus'")
    assert_clean_error(sv("usage", "daily", "--since", "yesterday", "--claude-dir", claude), 2, "--since must be a date")
    assert_clean_error(
        sv("usage", "daily", "--since", "2026-02-01", "--until", "2026-01-01", "--claude-dir", claude), 2, "--since must not be after"
    )
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "prices.toml").write_text('["claude-x"]\ninput = 1\n')
    assert_clean_error(sv("usage", "daily", "--claude-dir", claude), 8, "missing output")
