"""Stratavore's figures against an independent implementation: ccusage 20.0.24 (`npm install -g ccusage@20.0.24`).

Both read the same generated corpus. Tokens must match exactly and cost to the cent, per day (in
several time zones), week, month, session and 5-hour block, for every model ccusage prices.

Where ccusage 20.0.24 is wrong we differ on purpose, and the tests at the end pin both figures:
- offline it prices claude-opus-5-5, claude-sonnet-5-5, claude-haiku-5-5, claude-fable-5-2 and
  claude-mythos-5-2 at $0 (``missingPricing``); we price them from our table. The comparisons run with
  those models set to $0 in a copy of our table, and our own figure is checked by hand;
- it charges Sonnet 4/4.5 tokens of one kind beyond 200k in one response at a higher rate (a tier
  LiteLLM lists); Claude Code's own catalog has no such tier, and neither do we. The corpus keeps
  Sonnet responses under 200k tokens of each kind;
- its weekly, monthly, session and block reports count some ``/btw`` sidechain replays of a message
  that its own daily report (and we) drop, so their totals can exceed its daily totals. Those reports
  are compared on a corpus without replays; the daily comparison covers replays.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stratavore import db, pricing, transcripts, usage
from tests.corpus import CCUSAGE_UNPRICED, generate
from tests.test_transcripts import line, write

CCUSAGE = shutil.which("ccusage")
VERSION = "20.0.24"
pytestmark = pytest.mark.skipif(
    CCUSAGE is None, reason=f"ccusage not found on PATH (npm install -g ccusage@{VERSION}; .ci/run installs it)"
)
CENT = 0.005
ZONES = ["UTC", "Asia/Kolkata", "America/New_York"]


def ccusage(root: Path, *args: str) -> dict:
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "CLAUDE_CONFIG_DIR": str(root), "NO_COLOR": "1", "LANG": "C.UTF-8"}
    proc = subprocess.run([CCUSAGE, "claude", *args, "--json", "--offline"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ccusage_prices() -> pricing.PriceTable:
    """Our table with the models ccusage cannot price offline set to $0, as ccusage counts them."""
    table = pricing.load(None)
    for model in CCUSAGE_UNPRICED:
        price = table.lookup(model)
        if price is not None:
            zero = pricing.Rates(0, 0, 0, 0, 0)
            table = pricing.with_model(table, pricing.ModelPrice(price.model, zero, price.fast_multiplier, None, None, "test"))
    return table


class Side:
    """A corpus, ingested by us into our own database."""

    def __init__(self, root: Path, database: Path) -> None:
        self.root = root
        self.conn = db.connect(database)
        transcripts.ingest(self.conn, [root], ccusage_prices())


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    proc = subprocess.run([CCUSAGE, "--version"], capture_output=True, text=True, timeout=60)
    if VERSION not in proc.stdout:
        pytest.skip(f"ccusage {VERSION} is needed for this comparison, found {proc.stdout.strip() or proc.stderr.strip()}")


@pytest.fixture(scope="module")
def with_replays(tmp_path_factory) -> Side:
    base = tmp_path_factory.mktemp("cc-replays")
    generate(base / "claude", target_bytes=4_000_000, seed=11, days=20)
    return Side(base / "claude", base / "sv.db")


@pytest.fixture(scope="module")
def without_replays(tmp_path_factory) -> Side:
    base = tmp_path_factory.mktemp("cc-plain")
    generate(base / "claude", target_bytes=4_000_000, seed=12, days=20, sidechain_replays=False)
    return Side(base / "claude", base / "sv.db")


def assert_same(ours: dict, theirs: dict, where: str) -> None:
    for key in ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens", "totalTokens"):
        assert ours[key] == theirs[key], (where, key, ours[key], theirs[key])
    assert abs(ours["totalCost"] - theirs["totalCost"]) < CENT, (where, ours["totalCost"], theirs["totalCost"])
    assert sorted(ours["modelsUsed"]) == sorted(theirs["modelsUsed"]), where


@pytest.mark.parametrize("zone", ZONES)
def test_days_match(with_replays, zone):
    theirs = ccusage(with_replays.root, "daily", "-z", zone)
    ours = usage.period_report(with_replays.conn, "daily", usage.Filters(tz=usage.parse_timezone(zone)))
    assert [d["date"] for d in ours["daily"]] == [d["date"] for d in theirs["daily"]]
    assert len(ours["daily"]) >= 15
    for mine, other in zip(ours["daily"], theirs["daily"], strict=True):
        assert_same(mine, other, mine["date"])
    assert_same({**ours["totals"], "modelsUsed": []}, {**theirs["totals"], "modelsUsed": []}, "totals")


@pytest.mark.parametrize("period,key", [("weekly", "week"), ("monthly", "month")])
def test_weeks_and_months_match(without_replays, period, key):
    theirs = ccusage(without_replays.root, period, "-z", "UTC")
    ours = usage.period_report(without_replays.conn, period, usage.Filters(tz=usage.parse_timezone("UTC")))
    assert [w[key] for w in ours[period]] == [w[key] for w in theirs[period]]
    for mine, other in zip(ours[period], theirs[period], strict=True):
        assert_same(mine, other, mine[key])


def test_sessions_match(without_replays):
    theirs = {s["sessionId"]: s for s in ccusage(without_replays.root, "session", "-z", "UTC")["sessions"]}
    ours = {s["sessionId"]: s for s in usage.session_report(without_replays.conn, usage.Filters())["sessions"]}
    assert set(ours) == set(theirs) and len(ours) > 10
    for sid, mine in ours.items():
        assert_same(mine, theirs[sid], sid)
        assert (mine["projectPath"], mine["lastActivity"]) == (theirs[sid]["projectPath"], theirs[sid]["lastActivity"])


def test_blocks_match(without_replays):
    theirs = ccusage(without_replays.root, "blocks")["blocks"]
    ours = usage.block_report(without_replays.conn, usage.Filters())["blocks"]
    assert any(b["isGap"] for b in ours)
    assert [b["id"] for b in ours] == [b["id"] for b in theirs]
    for mine, other in zip(ours, theirs, strict=True):
        for key in ("startTime", "endTime", "actualEndTime", "isGap", "isActive", "entries", "tokenCounts", "totalTokens"):
            assert mine[key] == other[key], (mine["id"], key)
        assert abs(mine["costUSD"] - other["costUSD"]) < CENT, mine["id"]
        assert sorted(mine["models"]) == sorted(other["models"]), mine["id"]


# --- where ccusage 20.0.24 is wrong: its figure and ours, by hand ---------------------------------------

HAND_PRICED = {
    # model: ($ for 1M input + 100k output + 10k 5m writes + 20k 1h writes + 500k reads, by hand from the table)
    "claude-opus-5-5": 4 + 0.1 * 20 + 0.01 * 5 + 0.02 * 8 + 0.5 * 0.20,
    "claude-sonnet-5-5": 2 + 0.1 * 10 + 0.01 * 2.5 + 0.02 * 4 + 0.5 * 0.10,
    "claude-fable-5-2": 8 + 0.1 * 40 + 0.01 * 10 + 0.02 * 16 + 0.5 * 0.20,
    "claude-mythos-5-2": 8 + 0.1 * 40 + 0.01 * 10 + 0.02 * 16 + 0.5 * 0.20,
    # Haiku 5.5's prompt is over 100k tokens here, so its long-context rates apply: 0.5 / 2.5 / 0.625 / 1 / 0.05
    "claude-haiku-5-5": 0.5 + 0.1 * 2.5 + 0.01 * 0.625 + 0.02 * 1 + 0.5 * 0.05,
}


@pytest.mark.parametrize("model", sorted(HAND_PRICED))
def test_models_ccusage_prices_at_zero(tmp_path, model):
    claude = tmp_path / "claude"
    write(claude, "-w/s1.jsonl", [line(model=model, inp=1_000_000, out=100_000, c5=10_000, c1=20_000, cr=500_000)])
    theirs = ccusage(claude, "daily", "-z", "UTC")
    assert theirs["daily"][0]["totalCost"] == 0 and theirs["daily"][0]["modelBreakdowns"][0]["missingPricing"] is True
    conn = db.connect(tmp_path / "sv.db")
    transcripts.ingest(conn, [claude], pricing.load(None))
    ours = usage.period_report(conn, "daily", usage.Filters(tz=usage.parse_timezone("UTC")))
    assert ours["daily"][0]["totalCost"] == pytest.approx(HAND_PRICED[model])
    assert "unpricedModels" not in ours["totals"]


def test_sonnet_long_prompts_have_no_200k_tier(tmp_path):
    claude = tmp_path / "claude"
    write(claude, "-w/s1.jsonl", [line(model="claude-sonnet-4-5-20250929", inp=300_000, out=0)])
    theirs = ccusage(claude, "daily", "-z", "UTC")
    assert theirs["totals"]["totalCost"] == pytest.approx(1.20)  # 200k x $3 + 100k x $6
    conn = db.connect(tmp_path / "sv.db")
    transcripts.ingest(conn, [claude], pricing.load(None))
    assert usage.period_report(conn, "daily", usage.Filters())["totals"]["totalCost"] == pytest.approx(0.90)  # 300k x $3


def test_sidechain_replays_count_once_unlike_ccusage_sessions(tmp_path):
    claude = tmp_path / "claude"
    write(
        claude,
        "-w/s1.jsonl",
        [
            line("msg_1", "req_1", out=20, ts="2026-01-10T09:00:00.000Z"),
            line("msg_1", "req_1", out=20, ts="2026-01-10T09:00:01.000Z"),  # a second content block, same usage
            line("msg_1", "req_btw", out=20, cr=5000, sidechain=True, ts="2026-01-10T09:00:01.000Z"),  # the /btw replay
        ],
    )
    daily, sessions = ccusage(claude, "daily", "-z", "UTC"), ccusage(claude, "session", "-z", "UTC")
    assert (daily["totals"]["inputTokens"], sessions["totals"]["inputTokens"]) == (100, 200)  # ccusage disagrees with itself
    conn = db.connect(tmp_path / "sv.db")
    transcripts.ingest(conn, [claude], pricing.load(None))
    assert usage.session_report(conn, usage.Filters())["totals"]["inputTokens"] == 100
    assert usage.period_report(conn, "daily", usage.Filters())["totals"]["cacheReadTokens"] == 0


def test_lines_without_request_id_merge_by_message_and_session(tmp_path):
    claude = tmp_path / "claude"
    write(claude, "-w/s1.jsonl", [line("msg_1", None, out=10), line("msg_1", None, out=20), line("msg_1", None, out=5, session="s9")])
    write(claude, "-w/s2.jsonl", [line("msg_1", None, out=30), line("msg_1", None, out=7, session="s2")])
    theirs = ccusage(claude, "daily", "-z", "UTC")["totals"]
    conn = db.connect(tmp_path / "sv.db")
    transcripts.ingest(conn, [claude], pricing.load(None))
    ours = usage.period_report(conn, "daily", usage.Filters(tz=usage.parse_timezone("UTC")))["totals"]
    assert (ours["inputTokens"], ours["outputTokens"]) == (theirs["inputTokens"], theirs["outputTokens"]) == (300, 42)
