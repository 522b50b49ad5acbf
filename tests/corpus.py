"""A generator of realistic Claude Code transcripts, for the accounting tests and the benchmark.

What it writes mirrors what Claude Code 2.x leaves under ``<root>/projects/``:
- one file per session, ``<encoded cwd>/<session uuid>.jsonl``, plus subagent files
  ``<encoded cwd>/<session uuid>/subagents/agent-<id>.jsonl`` (every line ``isSidechain: true``);
- user prompts, tool results (the bulk of the bytes), system and snapshot lines without usage;
- one assistant line per content block, each repeating ``message.id``, ``requestId`` and the usage
  snapshot, with output tokens growing until the last block (so only the largest copy may count);
- ``/btw`` sidechain replays of an earlier message under a new requestId (to be dropped), and
  sidechain-only answers (to be counted);
- resumed sessions whose new file starts with a copy of the earlier session's lines (duplicates
  across files);
- 5-minute and 1-hour cache writes, fast mode, several model generations, unknown models;
- gaps of more than five hours (nights), so 5-hour blocks and gap blocks appear;
- junk: a line cut mid-write, lines that are not JSON, usage lines with missing or invalid fields.

Everything is seeded, so the same arguments always write the same bytes.
"""

from __future__ import annotations

import json
import os
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

# (model id, weight, fast-mode share). Kept to per-entry token counts ccusage prices like we do; see
# test_ccusage.py for the models where it differs.
MODELS: list[tuple[str, float, float]] = [
    ("claude-sonnet-4-5-20250929", 20, 0.0),
    ("claude-sonnet-4-20250514", 4, 0.0),
    ("claude-sonnet-4-6", 8, 0.0),
    ("claude-opus-4-1-20250805", 3, 0.0),
    ("claude-opus-4-20250514", 1, 0.0),
    ("claude-opus-4-5-20251101", 5, 0.0),
    ("claude-opus-4-6", 6, 0.3),
    ("claude-opus-4-7", 3, 0.2),
    ("claude-opus-4-8", 3, 0.3),
    ("claude-opus-5", 3, 0.3),
    ("claude-haiku-4-5-20251001", 6, 0.0),
    ("claude-3-5-haiku-20241022", 2, 0.0),
    ("claude-sonnet-5", 4, 0.0),
    ("claude-fable-5", 1, 0.0),
    ("claude-fable-5-1", 1, 0.0),
    ("claude-mythos-5", 1, 0.0),
    ("claude-mythos-5-1", 1, 0.0),
    # ccusage 20.0.24 prices these at $0 offline
    ("claude-opus-5-5", 3, 0.0),
    ("claude-sonnet-5-5", 3, 0.0),
    ("claude-haiku-5-5", 2, 0.0),
    ("claude-fable-5-2", 1, 0.0),
    ("claude-mythos-5-2", 1, 0.0),
    # priced by nobody
    ("claude-nonexistent-9", 0.3, 0.0),
]
CCUSAGE_UNPRICED = {
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-haiku-5-5",
    "claude-fable-5-2",
    "claude-mythos-5-2",
    "claude-nonexistent-9",
}
SUBAGENT_MODELS = ["claude-haiku-4-5-20251001", "claude-sonnet-4-5-20250929", "claude-haiku-5-5"]
PROJECT_PATHS = [f"/home/dev/src/{name}" for name in ("web", "api", "infra", "mobile_app", "docs site", "ml.pipeline", "cli", "billing")]
VERSION = "2.1.197"
WORDS = (
    "the function returns a list of values and we check each one before writing the file to disk so that "
    "nothing is lost when the process stops halfway through an update of the database schema migration test"
).split()


def encode_cwd(cwd: str) -> str:
    """Claude Code's project directory name for a cwd (every non-alphanumeric character becomes '-')."""
    return re.sub(r"[^a-zA-Z0-9]", "-", cwd)


def _dump(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Manifest:
    """What was written: enough for tests to know what to expect without re-deriving it."""

    files: int = 0
    lines: int = 0
    bytes: int = 0
    junk_lines: int = 0
    sessions: list[str] = field(default_factory=list)


class _Writer:
    def __init__(self, rng: random.Random, manifest: Manifest, replays: bool = True) -> None:
        self.rng = rng
        self.manifest = manifest
        self.replays = replays
        self.text_pool = [" ".join(rng.choice(WORDS) for _ in range(n)) for n in (8, 20, 60, 150, 400, 900)]

    def text(self, approx_words: int) -> str:
        pool = self.text_pool
        pick = min(range(len(pool)), key=lambda i: abs(len(pool[i].split()) - approx_words))
        return pool[pick]


@dataclass
class _Call:
    """One API response: the lines of its content blocks share message.id, requestId and usage."""

    lines: list[str]
    message_id: str
    request_id: str


class _Session:
    def __init__(self, w: _Writer, session_id: str, cwd: str, start: datetime, model: str, fast_share: float) -> None:
        self.w = w
        self.rng = w.rng
        self.id = session_id
        self.cwd = cwd
        self.t = start
        self.model = model
        self.fast_share = fast_share
        self.context = self.rng.randint(8_000, 20_000)
        self.one_hour_cache = self.rng.random() < 0.35
        self.calls: list[_Call] = []
        self.parent_uuid: str | None = None

    def envelope(self, kind: str, sidechain: bool = False) -> dict:
        record = {
            "parentUuid": self.parent_uuid,
            "isSidechain": sidechain,
            "userType": "external",
            "cwd": self.cwd,
            "sessionId": self.id,
            "version": VERSION,
            "gitBranch": "main",
            "type": kind,
            "uuid": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "timestamp": self.t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.t.microsecond // 1000:03d}Z",
        }
        self.parent_uuid = record["uuid"]
        return record

    def tick(self, low: float, high: float) -> None:
        self.t += timedelta(seconds=self.rng.uniform(low, high))

    def user_prompt(self) -> str:
        record = self.envelope("user")
        record["message"] = {"role": "user", "content": self.w.text(self.rng.choice((8, 20, 60)))}
        return _dump(record)

    def tool_result(self) -> str:
        record = self.envelope("user")
        body = self.w.text(self.rng.choice((60, 150, 400, 900, 900)))
        record["message"] = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": body}]}
        record["toolUseResult"] = {"stdout": body[:2000], "stderr": "", "interrupted": False}
        return _dump(record)

    def other_line(self) -> str:
        kind = self.rng.choice(("system", "file-history-snapshot", "progress"))
        if kind == "file-history-snapshot":
            return _dump({"type": kind, "messageId": str(uuid.UUID(int=self.rng.getrandbits(128))), "snapshot": {"trackedFileBackups": {}}})
        record = self.envelope(kind)
        record["content"] = self.w.text(20)
        return _dump(record)

    def usage(self, input_tokens: int, output: int, cache_write: int, one_hour: int, speed: str) -> dict:
        usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": self.context,
            "output_tokens": output,
            "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
            "service_tier": "standard",
            "cache_creation": {"ephemeral_1h_input_tokens": one_hour, "ephemeral_5m_input_tokens": cache_write - one_hour},
            "inference_geo": "",
            "iterations": [],
            "speed": speed,
        }
        return usage

    def api_call(self, *, sidechain: bool = False, model: str | None = None) -> _Call:
        """The lines of one streamed response: one per content block, output tokens growing."""
        rng = self.rng
        model = model or self.model
        speed = "fast" if rng.random() < self.fast_share else "standard"
        message_id = f"msg_{rng.getrandbits(80):020x}"
        request_id = f"req_{rng.getrandbits(80):020x}"
        cache_write = rng.randint(200, 6_000)
        one_hour = cache_write if self.one_hour_cache else 0
        if self.one_hour_cache and rng.random() < 0.2:
            one_hour = cache_write // 2  # both kinds in one response
        input_tokens = rng.randint(1, 60)
        final_output = rng.randint(20, 2_500)
        blocks = rng.choice((1, 2, 2, 3, 3, 4))
        lines = []
        for i in range(blocks):
            self.tick(0.5, 6)
            record = self.envelope("assistant", sidechain)
            kind = ("thinking", "text", "tool_use", "tool_use")[i] if blocks > 1 else "text"
            if kind == "tool_use":
                block = {
                    "type": "tool_use",
                    "id": f"toolu_{rng.getrandbits(64):016x}",
                    "name": "Bash",
                    "input": {"command": self.w.text(8)},
                }
            else:
                block = {"type": kind, kind: self.w.text(rng.choice((20, 60, 150)))}
            output = final_output if i == blocks - 1 else max(1, final_output * (i + 1) // (blocks + 1) - 1)
            record["message"] = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [block],
                "stop_reason": None if i < blocks - 1 else "end_turn",
                "stop_sequence": None,
                "usage": self.usage(input_tokens, output, cache_write, one_hour, speed),
            }
            record["requestId"] = request_id
            lines.append(_dump(record))
        self.context = min(self.context + cache_write + final_output, 180_000)
        call = _Call(lines, message_id, request_id)
        self.calls.append(call)
        return call

    def synthetic_error(self) -> str:
        """What Claude Code writes itself when the API fails: model <synthetic>, zero usage."""
        self.tick(0.5, 2)
        record = self.envelope("assistant")
        record["message"] = {
            "id": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "type": "message",
            "role": "assistant",
            "model": "<synthetic>",
            "content": [{"type": "text", "text": "API Error: Connection error."}],
            "stop_reason": "stop_sequence",
            "stop_sequence": "",
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }
        record["isApiErrorMessage"] = True
        return _dump(record)

    def sidechain_replay(self) -> list[str]:
        """A /btw side question replays an earlier response under a new requestId: must not count twice."""
        original = self.rng.choice(self.calls)
        request_id = f"req_{self.rng.getrandbits(80):020x}"
        out = []
        for line in original.lines:
            record = json.loads(line)
            record["isSidechain"] = True
            record["requestId"] = request_id
            record["message"]["usage"]["cache_read_input_tokens"] += 50_000
            out.append(_dump(record))
        return out


def _junk(rng: random.Random, session: _Session) -> list[str]:
    """Lines a reader must skip and count, never fail on."""
    good = session.api_call().lines[-1]
    session.calls.pop()
    record = json.loads(good)
    choices = [
        good[: len(good) // 2],  # cut mid-write, then the writer went on
        'this is not json but mentions "usage":{ anyway',
        _dump({**record, "message": {**record["message"], "usage": {**record["message"]["usage"], "input_tokens": "12"}}}),
        _dump({**record, "message": {**record["message"], "usage": {"output_tokens": 5}}}),
        _dump({**record, "timestamp": "not a time"}),
        _dump({**record, "version": None}),
    ]
    return [rng.choice(choices)]


def _session_lines(w: _Writer, session: _Session, calls: int, extra_lines: list[str] | None = None) -> Iterator[str]:
    rng = w.rng
    if extra_lines:
        yield from extra_lines
    yield session.user_prompt()
    for _ in range(calls):
        if rng.random() < 0.15:
            session.tick(30, 400)
            yield session.user_prompt()
        if rng.random() < 0.1:
            yield session.other_line()
        yield from session.api_call().lines
        session.tick(1, 20)
        yield session.tool_result()
        if rng.random() < 0.02 and session.calls and w.replays:
            yield from session.sidechain_replay()
        if rng.random() < 0.02:
            yield from session.api_call(sidechain=True).lines  # a sidechain-only answer counts
        if rng.random() < 0.01:
            w.manifest.junk_lines += 1
            yield from _junk(rng, session)
        if rng.random() < 0.005:
            yield session.synthetic_error()


def _pick_model(rng: random.Random) -> tuple[str, float]:
    total = sum(weight for _, weight, _ in MODELS)
    point = rng.uniform(0, total)
    for model, weight, fast in MODELS:
        point -= weight
        if point <= 0:
            return model, fast
    return MODELS[0][0], MODELS[0][2]


def _write(path: Path, lines: list[str], manifest: Manifest) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(data)
    manifest.files += 1
    manifest.lines += len(lines)
    manifest.bytes += len(data)


def generate(
    root: Path | str,
    *,
    target_bytes: int = 2_000_000,
    seed: int = 1,
    start: datetime | None = None,
    days: int = 30,
    sidechain_replays: bool = True,
) -> Manifest:
    """Write transcripts under ``root/projects`` until about ``target_bytes`` are written.

    ``sidechain_replays=False`` leaves out /btw replays, on which ccusage's session and block reports
    disagree with its own daily report (see test_ccusage.py)."""
    root = Path(root)
    rng = random.Random(seed)
    manifest = Manifest()
    w = _Writer(rng, manifest, sidechain_replays)
    start = start or datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    # scale session length with the corpus so that small corpora still have many sessions
    per_session_calls = max(8, min(120, target_bytes // 400_000))
    previous: list[tuple[Path, _Session, list[str]]] = []
    while manifest.bytes < target_bytes:
        day = rng.randrange(days)
        # working hours, sometimes late at night; the night in between makes gaps over 5 hours
        hour = rng.choice((8, 9, 10, 11, 13, 14, 15, 16, 17, 22))
        session_start = start + timedelta(days=day, hours=hour - 8, minutes=rng.randrange(60), seconds=rng.random() * 60)
        cwd = rng.choice(PROJECT_PATHS)
        model, fast = _pick_model(rng)
        session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        session = _Session(w, session_id, cwd, session_start, model, fast)
        copied: list[str] = []
        if previous and rng.random() < 0.08:
            # a resumed session: Claude Code copies the earlier conversation into the new file
            _, earlier, earlier_lines = rng.choice(previous)
            copied = earlier_lines[: rng.randint(1, len(earlier_lines))]
            session.cwd = earlier.cwd
            session.t = max(session.t, earlier.t + timedelta(minutes=5))
        calls = rng.randint(per_session_calls // 2, per_session_calls * 3 // 2)
        lines = list(_session_lines(w, session, calls, copied))
        directory = root / "projects" / encode_cwd(session.cwd)
        path = directory / f"{session_id}.jsonl"
        _write(path, lines, manifest)
        manifest.sessions.append(session_id)
        previous.append((path, session, lines))
        if len(previous) > 50:
            previous.pop(0)
        if rng.random() < 0.3:
            for _ in range(rng.randint(1, 3)):
                agent = _Session(
                    w, session_id, session.cwd, session_start + timedelta(minutes=rng.randrange(30)), rng.choice(SUBAGENT_MODELS), 0
                )
                sub_lines = []
                for _ in range(rng.randint(2, max(3, calls // 4))):
                    for line in agent.api_call(sidechain=True).lines:
                        sub_lines.append(line)
                    sub_lines.append(agent.tool_result())
                _write(directory / session_id / "subagents" / f"agent-{rng.getrandbits(32):08x}.jsonl", sub_lines, manifest)
    return manifest


def append_session_lines(path: Path, *, calls: int = 5, seed: int = 99) -> list[str]:
    """Append new API responses to an existing transcript, as a running session would."""
    lines = path.read_text().splitlines()
    last = json.loads(next(line for line in reversed(lines) if line.startswith("{") and '"timestamp"' in line))
    rng = random.Random(seed)
    w = _Writer(rng, Manifest())
    t = datetime.fromisoformat(last["timestamp"].replace("Z", "+00:00")) + timedelta(minutes=1)
    session = _Session(w, last.get("sessionId", path.stem), last.get("cwd", "/tmp"), t, "claude-sonnet-4-5-20250929", 0)
    new = []
    for _ in range(calls):
        new.extend(session.api_call().lines)
        new.append(session.tool_result())
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in new))
    return new


def corpus_size(root: Path | str) -> int:
    total = 0
    for dirpath, _, names in os.walk(Path(root) / "projects"):
        total += sum(os.path.getsize(os.path.join(dirpath, n)) for n in names if n.endswith(".jsonl"))
    return total
