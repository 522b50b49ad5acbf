"""Usage reports and budgets over the HTTP API: the same JSON as the CLI's --json, from real transcripts."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from stratavore import apispec, projects

from .test_api import assert_error, no_keyring, start_server  # noqa: F401 - the fixture applies here too


def line(
    message_id: str, ts: str, *, model: str = "claude-sonnet-4-5-20250929", inp: int = 100, out: int = 10, cwd: str, session: str
) -> str:
    """One assistant line of a Claude Code transcript, as Claude Code 2.x writes it."""
    usage = {
        "input_tokens": inp,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": out,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "speed": "standard",
    }
    record = {
        "parentUuid": None,
        "isSidechain": False,
        "userType": "external",
        "cwd": cwd,
        "sessionId": session,
        "version": "2.1.197",
        "type": "assistant",
        "uuid": f"u-{message_id}",
        "timestamp": ts,
        "requestId": f"req-{message_id}",
        "message": {"id": message_id, "model": model, "role": "assistant", "content": [{"type": "text", "text": "hi"}], "usage": usage},
    }
    return json.dumps(record)


def transcript(claude: Path, cwd: Path, session: str, lines: list[str], mode: str = "w") -> Path:
    path = claude / "projects" / str(cwd).replace("/", "-") / f"{session}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write("".join(item + "\n" for item in lines))
    return path


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.fixture
def claude(home, monkeypatch) -> Path:
    path = home / "claude"
    path.mkdir()
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(path))
    return path


@pytest.fixture
def server(ctx, claude):
    srv = start_server(ctx)
    yield srv
    srv.stop(timeout=2)


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.api.token}"}, timeout=30) as c:
        yield c


@pytest.fixture
def history(ctx, claude, workdir, tmp_path) -> dict[str, str]:
    """Two sessions: one in project web (January, and a minute ago), one outside every project with an unpriced model."""
    projects.add(ctx.conn, "web", workdir)
    recent = iso(datetime.now(UTC) - timedelta(minutes=1))
    transcript(
        claude,
        workdir,
        "sess-web",
        [
            line("m1", "2026-01-03T12:00:00.000Z", cwd=str(workdir), session="sess-web"),
            line("m2", "2026-01-04T12:00:00.000Z", inp=200, cwd=str(workdir), session="sess-web"),
            line("m3", "2026-01-11T12:00:00.000Z", model="claude-opus-4-6", cwd=str(workdir), session="sess-web"),
            line("m4", recent, inp=1000, out=500, cwd=str(workdir), session="sess-web"),
        ],
    )
    elsewhere = tmp_path / "elsewhere"
    transcript(
        claude,
        elsewhere,
        "sess-out",
        [
            line("o1", "2026-01-04T13:00:00.000Z", model="claude-nonexistent-9", cwd=str(elsewhere), session="sess-out"),
            line("o2", "2026-02-01T09:00:00.000Z", cwd=str(elsewhere), session="sess-out"),
        ],
    )
    return {"recent": recent}


def cli_json(sv, claude: Path, *args: str):
    return json.loads(sv(*args, "--json", env={"CLAUDE_CONFIG_DIR": str(claude)}, check=True).stdout)


# -- usage -----------------------------------------------------------------------------------------


def test_usage_reports_are_the_clis_json(client, sv, claude, history):
    utc = {"timezone": "UTC"}
    daily = client.get("/v1/usage/daily", params=utc)
    assert daily.status_code == 200, daily.text
    days = daily.json()
    assert [d["date"] for d in days["daily"]][:4] == ["2026-01-03", "2026-01-04", "2026-01-11", "2026-02-01"]
    assert days["totals"]["unpricedModels"] == ["claude-nonexistent-9"]
    assert days == cli_json(sv, claude, "usage", "daily", "-z", "UTC")
    ranged = {**utc, "since": "2026-01-04", "until": "20260110"}
    assert client.get("/v1/usage/daily", params=ranged).json() == cli_json(
        sv, claude, "usage", "daily", "-z", "UTC", "-s", "2026-01-04", "-u", "20260110"
    )
    assert client.get("/v1/usage/daily", params=ranged).json()["totals"]["inputTokens"] == 300
    weekly = client.get("/v1/usage/weekly", params={**utc, "until": "2026-01-31"}).json()
    assert [(w["week"], w["inputTokens"]) for w in weekly["weekly"]] == [("2025-12-28", 100), ("2026-01-04", 300), ("2026-01-11", 100)]
    monthly = client.get("/v1/usage/monthly", params={**utc, "until": "2026-02-28"}).json()
    assert [(m["month"], m["totalTokens"]) for m in monthly["monthly"]] == [("2026-01", 540), ("2026-02", 110)]

    sessions = client.get("/v1/usage/sessions", params=utc).json()
    assert {s["sessionId"]: s["project"] for s in sessions["sessions"]} == {"sess-web": "web", "sess-out": "unassigned"}
    assert sessions == cli_json(sv, claude, "usage", "session", "-z", "UTC")
    only = client.get("/v1/usage/sessions", params={"id": "sess-out"}).json()["sessions"]
    assert [s["sessionId"] for s in only] == ["sess-out"]
    assert client.get("/v1/usage/projects", params=utc).json() == cli_json(sv, claude, "usage", "project", "-z", "UTC")
    models = client.get("/v1/usage/models").json()
    assert {m["model"]: m.get("missingPricing", False) for m in models["models"]}["claude-nonexistent-9"] is True
    assert models == cli_json(sv, claude, "usage", "model")
    overview = client.get("/v1/usage", params=utc).json()
    assert overview["periods"]["today"]["inputTokens"] == 1000 and overview["topProjects"][0]["project"] == "web"
    assert overview == cli_json(sv, claude, "usage", "-z", "UTC")

    blocks = client.get("/v1/usage/blocks").json()["blocks"]
    assert any(b["isGap"] for b in blocks) and blocks[-1]["isActive"]
    [active] = client.get("/v1/usage/blocks", params={"active": "true"}).json()["blocks"]
    assert active["isActive"] and active["totalTokens"] == 1500 and active["burnRate"] is None  # one entry: no rate yet

    prices = client.get("/v1/usage/prices").json()
    assert prices == cli_json(sv, claude, "usage", "prices")
    assert prices["version"] and any(m["model"].startswith("claude-sonnet") for m in prices["models"])


def test_reports_read_new_lines_first_and_import_counts(client, claude, workdir, history):
    assert client.get("/v1/usage/monthly", params={"since": "2026-03-01", "until": "2026-03-31"}).json()["monthly"] == []
    transcript(claude, workdir, "sess-web", [line("m5", "2026-03-02T10:00:00.000Z", cwd=str(workdir), session="sess-web")], mode="a")
    march = client.get("/v1/usage/monthly", params={"since": "2026-03-01", "until": "2026-03-31", "timezone": "UTC"}).json()
    assert [(m["month"], m["inputTokens"]) for m in march["monthly"]] == [("2026-03", 100)]
    transcript(claude, workdir, "sess-new", [line("n1", "2026-03-03T10:00:00.000Z", cwd=str(workdir), session="sess-new")])
    imported = client.post("/v1/usage/import")
    assert imported.status_code == 200, imported.text
    stats = imported.json()
    assert (stats["files"], stats["files_read"], stats["stored"], stats["roots"]) == (3, 1, 1, [str(claude)])
    assert client.post("/v1/usage/import").json()["stored"] == 0


def test_concurrent_reports_share_the_ingest(client, server, claude, workdir, history):
    transcript(
        claude, workdir, "sess-many", [line(f"x{i}", "2026-04-01T10:00:00.000Z", cwd=str(workdir), session="sess-many") for i in range(200)]
    )
    results: list[tuple[int, int]] = []

    def report() -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.api.token}"}, timeout=30) as c:
            r = c.get("/v1/usage/daily", params={"since": "2026-04-01", "until": "2026-04-01", "timezone": "UTC"})
            results.append((r.status_code, r.json()["totals"]["inputTokens"] if r.status_code == 200 else -1))

    threads = [threading.Thread(target=report) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(200, 20_000)] * 8


def test_usage_input_errors(client, history):
    for params in (
        {"since": "yesterday"},
        {"until": "2026-13-01"},
        {"since": "2026-02-01", "until": "2026-01-01"},
        {"until": "99991231"},  # the day after it does not exist
        {"timezone": "Mars/Olympus_Mons"},
    ):
        assert_error(client.get("/v1/usage/daily", params=params), 422, "invalid_input")
    assert_error(client.get("/v1/usage", params={"timezone": "Nowhere"}), 422, "invalid_input")
    assert_error(client.get("/v1/usage/blocks", params={"active": "maybe"}), 422, "invalid_input")
    assert_error(client.get("/v1/usage/sessions", params={"since": "x" * 11}), 422, "invalid_input")
    assert_error(client.get("/v1/usage/hourly"), 404, "not_found")
    assert_error(client.post("/v1/usage/daily"), 405, "method_not_allowed")


# -- budgets ---------------------------------------------------------------------------------------


def test_budget_routes(client, sv, claude, history):
    body = {"scope": "project", "target": "web", "usd": 20, "period": "day", "warn": [80, 50], "action": "interrupt"}
    created = client.post("/v1/budgets", json=body)
    assert created.status_code == 201, created.text
    budget = created.json()
    assert (budget["name"], budget["warn_percents"], budget["limit_usd"], budget["version"]) == ("project:web:day", [50, 80], 20, 1)
    replaced = client.post("/v1/budgets", json={**body, "usd": 30})
    assert replaced.status_code == 200 and replaced.json()["limit_usd"] == 30 and replaced.json()["version"] == 2

    put = client.put("/v1/budgets/cap", json={"scope": "global", "tokens": 1000, "period": "lifetime", "timezone": "Europe/Berlin"})
    assert put.status_code == 201 and put.json()["name"] == "cap" and put.json()["limit_tokens"] == 1000
    assert client.put("/v1/budgets/cap", json={"scope": "global", "tokens": 2000, "period": "lifetime"}).status_code == 200

    # standings count what has been ingested (the reports ingest; budgets read as `budget list` does)
    client.post("/v1/usage/import")
    listed = client.get("/v1/budgets").json()
    assert listed == {"budgets": cli_json(sv, claude, "budget", "list")}
    standing = {b["name"]: b for b in listed["budgets"]}
    assert standing["cap"]["spent_tokens"] == 2150 and standing["cap"]["percent"] > 100
    assert standing["project:web:day"]["spent_tokens"] == 1500 and standing["project:web:day"]["spent_usd"] > 0
    shown = client.get("/v1/budgets/project:web:day").json()
    assert shown == cli_json(sv, claude, "budget", "show", "project:web:day")
    assert shown["action"] == "interrupt" and shown["period_key"]

    types = [e["type"] for e in client.get("/v1/events", params={"type": "budget.*"}).json()["events"]]
    assert types == ["budget.set"] * 4
    assert client.delete("/v1/budgets/cap").json() == {"removed": "cap"}
    assert_error(client.get("/v1/budgets/cap"), 404, "not_found")
    assert_error(client.delete("/v1/budgets/cap"), 404, "not_found")
    assert [b["name"] for b in client.get("/v1/budgets").json()["budgets"]] == ["project:web:day"]


def test_budget_errors(client, history):
    for body in (
        {"scope": "global"},  # no limit
        {"scope": "global", "usd": 0},
        {"scope": "global", "usd": -5},
        {"scope": "global", "tokens": 0},
        {"scope": "global", "usd": 5, "target": "web"},
        {"scope": "project", "usd": 5},
        {"scope": "everything", "usd": 5},
        {"scope": "global", "usd": 5, "warn": [100]},
        {"scope": "global", "usd": 5, "warn": []},
        {"scope": "global", "usd": 5, "period": "year"},
        {"scope": "global", "usd": 5, "action": "explode"},
        {"scope": "global", "usd": 5, "timezone": "Mars/Base"},
        {"scope": "global", "usd": "5"},
        {"scope": "global", "usd": 5, "colour": "red"},
        {"usd": 5},
    ):
        assert_error(client.post("/v1/budgets", json=body), 422, "invalid_input")
    assert_error(client.put("/v1/budgets/x", json={"scope": "global", "usd": 5, "name": "y"}), 422, "invalid_input")
    assert_error(client.put("/v1/budgets/" + "n" * 201, json={"scope": "global", "usd": 5}), 422, "invalid_input")
    assert_error(client.post("/v1/budgets", json={"scope": "project", "target": "nope", "usd": 5}), 404, "not_found")
    assert_error(client.post("/v1/budgets", json={"scope": "runner", "target": "nope", "usd": 5}), 404, "not_found")
    assert_error(client.post("/v1/budgets", content=b"{oops"), 400, "bad_request")
    assert_error(client.post("/v1/budgets"), 422, "invalid_input")
    assert_error(client.get("/v1/budgets/nope"), 404, "not_found")
    assert_error(client.patch("/v1/budgets/nope", json={}), 405, "method_not_allowed")
    assert client.get("/v1/budgets").json() == {"budgets": []}


def test_usage_and_budget_routes_need_the_token(server):
    new = [(m, p) for p, item in apispec.PATHS.items() if p.startswith(("/v1/usage", "/v1/budgets")) for m in item if m != "parameters"]
    assert len(new) == 15
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        for method, path in new:
            response = anonymous.request(method.upper(), path.replace("{name}", "cap"), json={"scope": "global", "usd": 1})
            assert_error(response, 401, "unauthorized")
