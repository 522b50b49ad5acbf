"""Ingestion of Claude Code transcripts: incremental reads, replaced files, dedup rules, skipped lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stratavore import pricing, projects, transcripts
from tests.corpus import append_session_lines, generate

PRICES = pricing.load(None)
T0 = "2026-01-10T09:00:00.000Z"


def line(
    message_id: str | None = "msg_1",
    request_id: str | None = "req_1",
    *,
    model: str = "claude-sonnet-4-5-20250929",
    ts: str = T0,
    inp: int = 100,
    out: int = 10,
    c5: int = 0,
    c1: int = 0,
    cr: int = 0,
    sidechain: bool = False,
    speed: str = "standard",
    cwd: str = "/work/web",
    session: str = "s1",
) -> str:
    record = {
        "parentUuid": None,
        "isSidechain": sidechain,
        "userType": "external",
        "cwd": cwd,
        "sessionId": session,
        "version": "2.1.197",
        "type": "assistant",
        "uuid": "u",
        "timestamp": ts,
        "message": {
            "model": model,
            "content": [{"type": "text", "text": "hi"}],
            "usage": {
                "input_tokens": inp,
                "cache_creation_input_tokens": c5 + c1,
                "cache_read_input_tokens": cr,
                "output_tokens": out,
                "cache_creation": {"ephemeral_5m_input_tokens": c5, "ephemeral_1h_input_tokens": c1},
                "speed": speed,
            },
        },
    }
    if message_id is not None:
        record["message"]["id"] = message_id
    if request_id is not None:
        record["requestId"] = request_id
    return json.dumps(record, separators=(",", ":"))


@pytest.fixture
def claude(tmp_path: Path) -> Path:
    return tmp_path / "claude"


def write(claude: Path, rel: str, lines: list[str], mode: str = "w", newline: bool = True) -> Path:
    path = claude / "projects" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write("\n".join(lines) + ("\n" if newline and lines else ""))
    return path


def ingest(ctx, claude: Path, prices: pricing.PriceTable = PRICES, **kwargs) -> transcripts.IngestStats:
    return transcripts.ingest(ctx.conn, [claude], prices, **kwargs)


def quarters_match_entries(conn) -> bool:
    """The per-quarter-hour sums the triggers keep equal a fresh sum over the entries."""
    columns = "input_tokens, output_tokens, cache_5m_tokens, cache_1h_tokens, cache_read_tokens"
    sums = ", ".join(f"sum({c})" for c in columns.split(", "))
    fresh = conn.execute(
        f"SELECT ts / 900000, coalesce(model, ''), coalesce(speed, ''), count(*), {sums}, round(total(cost_usd), 9), sum(cost_usd IS NULL)"
        " FROM usage_entries GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).fetchall()
    kept = conn.execute(
        f"SELECT quarter, model, speed, entries, {columns}, round(cost_usd, 9), unpriced FROM usage_quarters"
        " WHERE entries > 0 ORDER BY 1, 2, 3"
    ).fetchall()
    return [tuple(r) for r in fresh] == [tuple(r) for r in kept]


def totals(ctx) -> tuple:
    row = ctx.conn.execute(
        "SELECT count(*), total(input_tokens), total(output_tokens), total(cache_5m_tokens), total(cache_1h_tokens),"
        " total(cache_read_tokens) FROM usage_entries"
    ).fetchone()
    return tuple(int(v) for v in row)


def test_one_line_per_content_block_counts_once_with_the_largest_usage(ctx, claude):
    write(claude, "-work-web/s1.jsonl", [line(out=1), line(out=50), line(out=300), line("msg_2", "req_2", out=7)])
    stats = ingest(ctx, claude)
    assert (stats.files, stats.entries, stats.stored, stats.duplicates, stats.skipped) == (1, 4, 2, 2, 0)
    assert totals(ctx) == (2, 200, 307, 0, 0, 0)


def test_cache_writes_keep_their_kind_and_old_lines_count_as_5_minute(ctx, claude):
    flat_only = json.loads(line("msg_3", "req_3", inp=0, out=0))
    flat_only["message"]["usage"] = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 700}
    write(claude, "-work-web/s1.jsonl", [line(c5=100, c1=2000), json.dumps(flat_only)])
    ingest(ctx, claude)
    assert totals(ctx)[3:5] == (800, 2000)
    cost = ctx.conn.execute("SELECT cost_usd FROM usage_entries WHERE message_id='msg_1'").fetchone()[0]
    assert cost == pytest.approx((100 * 3 + 10 * 15 + 100 * 3.75 + 2000 * 6) / 1e6)


def test_appended_lines_are_the_only_ones_read(ctx, claude):
    path = write(claude, "-work-web/s1.jsonl", [line(), line("msg_2", "req_2")])
    first = ingest(ctx, claude)
    size = path.stat().st_size
    assert first.bytes_read == size
    again = ingest(ctx, claude)
    assert (again.files_read, again.bytes_read, again.entries) == (0, 0, 0)
    write(claude, "-work-web/s1.jsonl", [line("msg_3", "req_3", out=5)], mode="a")
    third = ingest(ctx, claude)
    assert third.bytes_read == path.stat().st_size - size
    assert (third.entries, third.stored) == (1, 1)
    assert totals(ctx)[0] == 3


def test_a_line_cut_mid_write_is_read_once_complete(ctx, claude):
    full = line("msg_2", "req_2", out=40)
    path = write(claude, "-work-web/s1.jsonl", [line()])
    with open(path, "a") as f:
        f.write(full[:60])  # the writer is halfway through the line
    stats = ingest(ctx, claude)
    assert (stats.entries, stats.skipped) == (1, 0)
    with open(path, "a") as f:
        f.write(full[60:] + "\n")
    stats = ingest(ctx, claude)
    assert (stats.entries, stats.stored, stats.skipped) == (1, 1, 0)
    assert totals(ctx)[:3] == (2, 200, 50)


def test_a_complete_last_line_without_newline_is_taken(ctx, claude):
    path = write(claude, "-work-web/s1.jsonl", [line(), line("msg_2", "req_2")], newline=False)
    assert ingest(ctx, claude).stored == 2
    with open(path, "a") as f:
        f.write("\n" + line("msg_3", "req_3") + "\n")
    stats = ingest(ctx, claude)
    assert (stats.stored, stats.skipped) == (1, 0)


def test_replaced_and_truncated_files_are_read_again_without_double_counting(ctx, claude):
    path = write(claude, "-work-web/s1.jsonl", [line(), line("msg_2", "req_2"), line("msg_3", "req_3")])
    ingest(ctx, claude)
    # truncated: shorter than what was read
    write(claude, "-work-web/s1.jsonl", [line()])
    stats = ingest(ctx, claude)
    assert (stats.files_reset, stats.stored) == (1, 0)
    # replaced by a new file (new inode) with other content at least as long
    os.unlink(path)
    write(claude, "-work-web/s1.jsonl", [line("msg_9", "req_9", out=77), line(), line("msg_2", "req_2"), line("msg_3", "req_3")])
    stats = ingest(ctx, claude)
    assert (stats.files_reset, stats.stored, stats.duplicates) == (1, 1, 3)
    # rewritten in place with the same length but different first bytes
    text = path.read_bytes()
    path.write_bytes(text.replace(b"msg_9", b"msg_8"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    stats = ingest(ctx, claude)
    assert (stats.files_reset, stats.stored) == (1, 1)
    assert totals(ctx)[0] == 5  # what was seen once is kept
    assert quarters_match_entries(ctx.conn)


def test_usage_outlives_deleted_transcripts(ctx, claude):
    path = write(claude, "-work-web/s1.jsonl", [line(), line("msg_2", "req_2")])
    ingest(ctx, claude)
    path.unlink()
    stats = ingest(ctx, claude)
    assert stats.files_missing == 1
    assert totals(ctx)[0] == 2
    assert ctx.conn.execute("SELECT missing_since IS NOT NULL FROM transcript_files").fetchone()[0] == 1


def test_bad_lines_are_skipped_and_counted(ctx, claude):
    good = json.loads(line("msg_2", "req_2"))
    bad_tokens = json.loads(line("msg_3", "req_3"))
    bad_tokens["message"]["usage"]["input_tokens"] = "12"
    no_input = json.loads(line("msg_4", "req_4"))
    del no_input["message"]["usage"]["input_tokens"]
    lines = [
        line(),
        'not json at all, but it mentions "usage"',
        line("msg_5", "req_5")[:80],  # cut mid-write, then the writer went on
        json.dumps(bad_tokens),
        json.dumps(no_input),
        json.dumps({**good, "timestamp": "yesterday"}),
        json.dumps({**good, "version": None}),
        json.dumps({**good, "requestId": ""}),
        json.dumps({**good, "version": "abc"}),
        json.dumps({"type": "user", "message": {"role": "user", "content": 'what does "usage" mean?'}}),  # valid, not usage
        '{"type":"summary","summary":"no usage here"}',
        "[1, 2]",
        "",
        line("msg_6", "req_6"),
    ]
    write(claude, "-work-web/s1.jsonl", lines)
    stats = ingest(ctx, claude)
    assert (stats.entries, stats.stored, stats.skipped) == (2, 2, 9)
    assert ctx.conn.execute("SELECT skipped_lines FROM transcript_files").fetchone()[0] == 9


def test_sidechain_replays_are_dropped_and_sidechain_answers_count(ctx, claude):
    write(
        claude,
        "-work-web/s1.jsonl",
        [
            line("msg_side", "req_a", sidechain=True, out=5),  # a sidechain-only answer, twice, under two requestIds
            line("msg_side", "req_b", sidechain=True, out=9),
            line(out=10),
            line("msg_1", "req_replay", sidechain=True, cr=50_000),  # /btw replays the parent message
        ],
    )
    ingest(ctx, claude)
    assert totals(ctx)[:3] == (2, 200, 19)
    # a main-chain copy of a message seen only as a sidechain replaces it, even in a later run
    write(claude, "-work-web/s1.jsonl", [line("msg_side", "req_main", out=3)], mode="a")
    ingest(ctx, claude)
    rows = ctx.conn.execute("SELECT message_id, is_sidechain, output_tokens FROM usage_entries ORDER BY message_id").fetchall()
    assert [tuple(r) for r in rows] == [("msg_1", 0, 10), ("msg_side", 0, 3)]
    assert quarters_match_entries(ctx.conn)


def test_keys_without_request_id_or_message_id(ctx, claude):
    write(
        claude,
        "-work-web/s1.jsonl",
        [
            line("msg_1", None, out=1),
            line("msg_1", None, out=2),  # same message, no requestId: one response (as ccusage 20.0.24)
            line("msg_1", "req_1", out=3),  # a different key
            line(None, "req_1", out=4),
            line(None, "req_1", out=5),  # no message.id: never merged
        ],
    )
    # without requestId, the line's sessionId tells copies (merged) from other responses (kept)
    write(claude, "-work-web/s2.jsonl", [line("msg_1", None, out=6, session="s2"), line("msg_1", None, out=1, session="s1")])
    ingest(ctx, claude)
    assert totals(ctx)[:3] == (5, 500, 20)
    # reading the file again from the start (it was replaced) adds nothing
    path = claude / "projects/-work-web/s1.jsonl"
    text = path.read_text()
    path.unlink()
    path.write_text(text)
    assert ingest(ctx, claude).stored == 0


def test_a_response_copied_into_several_files_counts_once(ctx, claude):
    copied = line("msg_1", "req_1", out=10)
    write(claude, "-work-web/aaa.jsonl", [copied])
    write(claude, "-work-web/bbb.jsonl", [copied, line("msg_2", "req_2")])  # a resumed session
    ingest(ctx, claude)
    rows = ctx.conn.execute("SELECT session_id, count(*) FROM usage_entries GROUP BY 1 ORDER BY 1").fetchall()
    assert [tuple(r) for r in rows] == [("aaa", 1), ("bbb", 1)]  # a tie goes to the first file in path order


def test_subagent_files_roll_up_into_their_session(ctx, claude):
    write(claude, "-work-web/s1.jsonl", [line()])
    write(claude, "-work-web/s1/subagents/agent-a1.jsonl", [line("msg_sub", "req_sub", sidechain=True, session="s1")])
    ingest(ctx, claude)
    assert [tuple(r) for r in ctx.conn.execute("SELECT DISTINCT session_id, project_dir FROM usage_entries")] == [("s1", "-work-web")]


def test_unknown_models_have_no_cost(ctx, claude):
    write(claude, "-work-web/s1.jsonl", [line(model="claude-nonexistent-9"), line("msg_2", "req_2", model="<synthetic>", inp=0, out=0)])
    ingest(ctx, claude)
    rows = dict(ctx.conn.execute("SELECT model, cost_usd FROM usage_entries").fetchall())
    assert rows == {"claude-nonexistent-9": None, "<synthetic>": 0}


def test_stored_costs_follow_price_changes(ctx, claude, home):
    write(claude, "-work-web/s1.jsonl", [line(model="claude-nonexistent-9", inp=1_000_000, out=0)])
    ingest(ctx, claude)
    (ctx.paths.config_dir).mkdir(parents=True, exist_ok=True)
    (ctx.paths.config_dir / "prices.toml").write_text(
        '["claude-nonexistent-9"]\ninput = 7\noutput = 1\ncache_write_5m = 1\ncache_write_1h = 1\ncache_read = 1\n'
    )
    ingest(ctx, claude, prices=pricing.load(ctx.paths.config_dir))
    assert ctx.conn.execute("SELECT cost_usd FROM usage_entries").fetchone()[0] == pytest.approx(7.0)
    assert quarters_match_entries(ctx.conn)


def test_attribution_to_runner_project_and_unassigned(ctx, claude, tmp_path):
    web = tmp_path / "web"
    (web / "sub").mkdir(parents=True)
    project = projects.add(ctx.conn, "web", web)
    ctx.conn.execute(
        "INSERT INTO runners(id, name, project_id, command, cwd, state, created_at) VALUES ('r1', 'web-1', ?, '[]', ?, 'exited', 0)",
        (project.id, str(web)),
    )
    ctx.conn.execute("INSERT INTO sessions(id, runner_id, project_id, cwd) VALUES ('known', 'r1', ?, ?)", (project.id, str(web)))
    write(claude, "-x/known.jsonl", [line("m1", "r1", cwd="/somewhere/else", session="known")])
    write(claude, "-x/inside.jsonl", [line("m2", "r2", cwd=str(web / "sub"), session="inside")])
    write(claude, "-x/outside.jsonl", [line("m3", "r3", cwd=str(tmp_path / "webby"), session="outside")])
    ingest(ctx, claude)
    rows = {r[0]: (r[1], r[2]) for r in ctx.conn.execute("SELECT session_id, project_id, runner_id FROM usage_entries")}
    assert rows == {"known": (project.id, "r1"), "inside": (project.id, None), "outside": (None, None)}
    # a project added later claims the sessions under it
    (tmp_path / "webby").mkdir()
    other = projects.add(ctx.conn, "webby", tmp_path / "webby")
    ingest(ctx, claude)
    assert ctx.conn.execute("SELECT project_id FROM usage_entries WHERE session_id='outside'").fetchone()[0] == other.id


def test_roots_from_flag_environment_or_home(tmp_path):
    env = {"HOME": str(tmp_path), "CLAUDE_CONFIG_DIR": f"{tmp_path}/a, {tmp_path}/b"}
    assert transcripts.claude_roots(None, env) == [tmp_path / "a", tmp_path / "b"]
    assert transcripts.claude_roots(f"{tmp_path}/c,{tmp_path}/c", env) == [tmp_path / "c"]
    assert transcripts.claude_roots(None, {"HOME": str(tmp_path)}) == [tmp_path / ".claude"]


def test_generated_corpus_in_a_process_pool_equals_inline(ctx, claude, tmp_path, monkeypatch):
    generate(claude, target_bytes=3_000_000, seed=5)
    monkeypatch.setattr(transcripts, "POOL_THRESHOLD", 0)
    monkeypatch.setattr(transcripts, "TASK_BYTES", 256 * 1024)  # files span several tasks
    pooled = ingest(ctx, claude, workers=2)
    expected = totals(ctx)
    from stratavore import db

    inline_conn = db.connect(tmp_path / "inline.db")
    inline = transcripts.ingest(inline_conn, [claude], PRICES, workers=0)
    assert (pooled.entries, pooled.stored, pooled.skipped) == (inline.entries, inline.stored, inline.skipped)
    assert pooled.skipped > 0 and pooled.duplicates > 0
    row = inline_conn.execute(
        "SELECT count(*), total(input_tokens), total(output_tokens), total(cache_5m_tokens), total(cache_1h_tokens),"
        " total(cache_read_tokens) FROM usage_entries"
    ).fetchone()
    assert tuple(int(v) for v in row) == expected
    # a running session appends: only the new lines are read
    path = next((claude / "projects").glob("*/*.jsonl"))
    new = append_session_lines(path, calls=3)
    stats = ingest(ctx, claude)
    assert stats.files_read == 1 and stats.lines == len(new)
    assert stats.stored == 3
    assert quarters_match_entries(ctx.conn) and quarters_match_entries(inline_conn)
