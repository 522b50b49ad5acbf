"""The HTTP API on a real server on loopback (and a real daemon where it matters), driven with httpx."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail

from stratavore import apiauth, apispec, db, events, projects
from stratavore.api import ApiServer
from stratavore.config import load_settings
from stratavore.errors import ConfigError

from .conftest import wait_for

NO_KEYRING = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}


@pytest.fixture(autouse=True)
def no_keyring(monkeypatch: pytest.MonkeyPatch):
    """Never touch a developer's real keyring: the file fallback, unless a test sets a backend."""
    for key, value in NO_KEYRING.items():
        monkeypatch.setenv(key, value)
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(previous)


def start_server(ctx, **settings) -> ApiServer:
    ctx.settings = replace(ctx.settings, **{"api_rate_limit": 0.0, **settings})
    _ = ctx.conn  # the database exists before the API opens it
    server = ApiServer(ctx, port=0)
    server.start()
    return server


@pytest.fixture
def server(ctx):
    srv = start_server(ctx)
    yield srv
    srv.stop(timeout=2)


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.api.token}"}, timeout=30) as c:
        yield c


def spec_operations():
    for path, item in apispec.document()["paths"].items():
        for method in item:
            if method != "parameters":
                yield method.upper(), path


def concrete(path: str) -> str:
    return path.replace("{name}", "web").replace("{runner}", "web-1").replace("{session_id}", "abc")


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == code and body["error"], body
    assert "Traceback" not in response.text
    return body


# -- the document --------------------------------------------------------------------------------


def test_openapi_document_matches_the_routes_served(server, client):
    routes = {(r.method, r.template) for r in server.api.router.routes}
    assert routes == set(spec_operations())
    doc = client.get("/openapi.json").json()
    assert doc == json.loads(json.dumps(apispec.document()))
    assert doc["openapi"].startswith("3.")
    for method, path in spec_operations():
        operation = doc["paths"][path][method.lower()]
        assert operation["summary"] and operation["operationId"]
        for status, response in operation["responses"].items():
            if status != "204":
                assert "schema" in next(iter(response["content"].values())), (method, path, status)
        if method in ("POST", "PATCH") and "requestBody" in operation:
            assert "schema" in operation["requestBody"]["content"]["application/json"]
    # a route not in the document is not served: unknown paths are 404, undocumented methods 405
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    response = client.put("/v1/projects")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"


# -- auth, limits ----------------------------------------------------------------------------------


def test_every_route_but_health_needs_the_token(server):
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        for method, path in spec_operations():
            for headers in ({}, {"Authorization": "Bearer sva_wrong"}, {"Authorization": f"Basic {server.api.token}"}):
                response = anonymous.request(method, concrete(path), headers=headers, json={})
                if path == "/health":
                    assert response.status_code == 200
                else:
                    assert_error(response, 401, "unauthorized")
                    assert response.headers["www-authenticate"].startswith("Bearer")
        # unknown routes do not tell an anonymous caller what exists
        assert_error(anonymous.get("/v1/nothing"), 401, "unauthorized")


def test_metrics_without_token_only_when_configured(ctx):
    server = start_server(ctx, metrics_auth=False)
    try:
        response = httpx.get(server.url + "/metrics")
        assert response.status_code == 200 and "stratavore" in response.text
        assert_error(httpx.get(server.url + "/v1/runners"), 401, "unauthorized")
    finally:
        server.stop(timeout=2)


def test_token_file_fallback_is_private_and_stable(ctx, sv):
    ctx.paths.ensure()
    token = apiauth.load_token(ctx.paths)
    path = apiauth.token_file(ctx.paths)
    assert token.startswith("sva_") and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert apiauth.load_token(ctx.paths) == token
    assert sv("api", "token", check=True, env=NO_KEYRING).stdout.strip() == token
    assert str(path) in sv("api", "token", "--where", check=True, env=NO_KEYRING).stdout
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        apiauth.load_token(ctx.paths)


class MemoryKeyring(KeyringBackend):
    priority = 10  # type: ignore[assignment]

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.items.get((service, username))

    def set_password(self, service, username, password):
        self.items[(service, username)] = password

    def delete_password(self, service, username):
        self.items.pop((service, username), None)


def test_token_lives_in_the_keyring_when_there_is_one(ctx):
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    token = apiauth.load_token(ctx.paths)
    assert backend.items == {("stratavore", str(ctx.paths.data_dir)): token}
    assert not apiauth.token_file(ctx.paths).exists()
    assert apiauth.load_token(ctx.paths) == token


def test_rate_limit_answers_429_with_retry_after(ctx):
    server = start_server(ctx, api_rate_limit=5.0)  # bursts of 10
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.api.token}"}) as c:
            codes = [c.get("/v1/projects").status_code for _ in range(15)]
            assert codes[:10] == [200] * 10 and 429 in codes[10:]
            limited = c.get("/v1/projects")
            assert_error(limited, 429, "rate_limited")
            assert int(limited.headers["retry-after"]) >= 1
            # other clients have buckets of their own
            assert httpx.get(server.url + "/health").status_code == 200
            time.sleep(0.3)
            assert c.get("/v1/projects").status_code == 200
    finally:
        server.stop(timeout=2)


def test_request_size_limit(client, workdir):
    big = {"name": "web", "path": str(workdir), "agent": "x" * (1024 * 1024)}
    response = client.post("/v1/projects", json=big)
    assert_error(response, 413, "payload_too_large")
    assert response.headers.get("connection") == "close"
    # hooks may be larger (Claude Code posts tool output), up to 4 MiB
    hook = {"hook_event_name": "PostToolUse", "session_id": "s1", "tool_response": "y" * (2 * 1024 * 1024)}
    assert client.post("/v1/hooks/claude", json=hook).status_code == 204
    assert_error(client.post("/v1/hooks/claude", json={**hook, "tool_response": "y" * (5 * 1024 * 1024)}), 413, "payload_too_large")


def test_bad_bodies_are_4xx_never_5xx(client, workdir):
    assert_error(client.post("/v1/projects", content=b"{not json"), 400, "bad_request")
    assert_error(client.post("/v1/projects", content=b'{"name": "a", "path": NaN}'), 400, "bad_request")
    assert_error(client.post("/v1/projects", content=b'{"name": "a\\ud800", "path": "/"}'), 400, "bad_request")
    assert_error(client.post("/v1/projects", json={"name": "web"}), 422, "invalid_input")
    assert_error(client.post("/v1/projects", json={"name": "web", "path": str(workdir), "color": 1}), 422, "invalid_input")
    assert_error(client.post("/v1/projects", json={"name": 5, "path": str(workdir)}), 422, "invalid_input")
    assert_error(client.post("/v1/projects", json={"name": "a\x00", "path": str(workdir)}), 422, "invalid_input")
    assert_error(client.post("/v1/projects", json=[1, 2]), 422, "invalid_input")
    assert_error(client.get("/v1/events", params={"after": "x"}), 422, "invalid_input")
    assert_error(client.get("/v1/events", params={"limit": 0}), 422, "invalid_input")
    assert_error(client.get("/v1/runners", params={"state": "dancing"}), 422, "invalid_input")
    assert_error(client.get("/v1/runners", params={"all": "maybe"}), 422, "invalid_input")
    assert_error(client.post("/v1/heartbeats", json={"heartbeats": []}), 422, "invalid_input")
    assert_error(client.post("/v1/hooks/claude", json={"hook_event_name": "Stop", "session_id": {"x": 1}}), 422, "invalid_input")


# -- projects, runners, sessions, events ------------------------------------------------------------


def test_projects_routes(client, workdir):
    created = client.post("/v1/projects", json={"name": "web", "path": str(workdir), "max_runners": 1})
    assert created.status_code == 201 and created.json()["max_runners"] == 1
    assert_error(client.post("/v1/projects", json={"name": "web", "path": str(workdir)}), 409, "conflict")
    assert_error(client.post("/v1/projects", json={"name": "bad name", "path": str(workdir)}), 422, "invalid_input")
    assert_error(client.post("/v1/projects", json={"name": "api", "path": "/no/such/dir"}), 422, "invalid_input")
    assert_error(client.post("/v1/projects", json={"name": "api", "path": str(workdir), "agent": "nope"}), 422, "invalid_input")
    assert [p["name"] for p in client.get("/v1/projects").json()["projects"]] == ["web"]
    assert client.get("/v1/projects/web").json()["active_runners"] == 0
    assert_error(client.get("/v1/projects/nope"), 404, "not_found")
    updated = client.patch("/v1/projects/web", json={"max_runners": 0, "agent": "claude"})
    assert updated.status_code == 200 and updated.json()["max_runners"] is None and updated.json()["default_agent"] == "claude"
    assert_error(client.patch("/v1/projects/web", json={}), 422, "invalid_input")
    assert_error(client.patch("/v1/projects/nope", json={"max_runners": 2}), 404, "not_found")
    assert client.delete("/v1/projects/web").json() == {"removed": "web"}
    assert_error(client.delete("/v1/projects/web"), 404, "not_found")


def test_launch_stop_restart_logs_and_remove_a_real_runner(client, workdir):
    client.post("/v1/projects", json={"name": "web", "path": str(workdir), "max_runners": 1})
    script = "echo one; echo two; echo three; exec sleep 60"
    launched = client.post("/v1/runners", json={"project": "web", "command": ["sh", "-c", script], "stop_signal": "HUP"})
    assert launched.status_code == 201, launched.text
    [runner] = launched.json()["started"]
    assert runner["state"] == "running" and runner["name"] == "web-1" and runner["agent_pid"]
    assert_error(client.post("/v1/runners", json={"project": "web", "command": ["sleep", "1"]}), 409, "quota_exceeded")
    assert_error(client.post("/v1/runners", json={"project": "nope", "command": ["sleep", "1"]}), 404, "not_found")
    assert_error(client.post("/v1/runners", json={"project": "web"}), 422, "invalid_input")
    assert_error(client.delete("/v1/projects/web"), 409, "conflict")
    assert_error(client.delete("/v1/runners/web-1"), 409, "conflict")

    listed = client.get("/v1/runners").json()["runners"]
    assert [r["name"] for r in listed] == ["web-1"]
    assert set(listed[0]) == set(client.get("/v1/runners/web-1").json())  # the SQL-built list has every field
    assert client.get("/v1/runners", params={"project": "web", "state": "running", "agent": "generic"}).json()["runners"]
    assert client.get("/v1/runners", params={"state": "stopped"}).json()["runners"] == []
    assert_error(client.get("/v1/runners", params={"project": "nope"}), 404, "not_found")
    assert client.get(f"/v1/runners/{runner['id'][:6]}").json()["id"] == runner["id"]
    assert_error(client.get("/v1/runners/nope"), 404, "not_found")

    logs = wait_for(lambda: (t := client.get("/v1/runners/web-1/logs", params={"tail": 2}).text).count("\n") == 2 and t)
    assert logs.split() == ["two", "three"]
    assert client.get("/v1/runners/web-1/logs").headers["content-type"].startswith("text/plain")
    assert_error(client.get("/v1/runners/nope/logs"), 404, "not_found")

    stopped = client.post("/v1/runners/web-1/stop", json={"timeout": 5})
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert client.get("/v1/runners").json()["runners"] == []
    assert [r["state"] for r in client.get("/v1/runners", params={"all": "true"}).json()["runners"]] == ["stopped"]

    restarted = client.post("/v1/runners/web-1/restart")
    assert restarted.status_code == 200 and restarted.json()["state"] == "running"
    killed = client.post("/v1/runners/web-1/kill")
    assert killed.json()["state"] == "stopped" and killed.json()["exit_signal"] == "SIGKILL"
    assert_error(client.post("/v1/runners/nope/kill"), 404, "not_found")
    assert client.delete("/v1/runners/web-1").json()["removed"] == "web-1"
    assert_error(client.get("/v1/runners/web-1"), 404, "not_found")


def test_failed_launch_is_422(client, workdir):
    client.post("/v1/projects", json={"name": "web", "path": str(workdir)})
    assert_error(client.post("/v1/runners", json={"project": "web", "command": ["/no/such/program"]}), 422, "launch_failed")


def test_sessions_and_events(client, ctx, workdir):
    projects.add(ctx.conn, "web", workdir)
    hook = {"hook_event_name": "UserPromptSubmit", "session_id": "sess-1234", "cwd": str(workdir), "prompt": "fix the login"}
    assert client.post("/v1/hooks/claude", json=hook).status_code == 204
    sessions = client.get("/v1/sessions").json()["sessions"]
    assert [(s["id"], s["title"]) for s in sessions] == [("sess-1234", "fix the login")]
    assert client.get("/v1/sessions/sess-12").json()["id"] == "sess-1234"
    assert_error(client.get("/v1/sessions/zzz"), 404, "not_found")
    assert client.get("/v1/sessions", params={"project": "web"}).json()["sessions"] == []
    assert_error(client.get("/v1/sessions", params={"project": "nope"}), 404, "not_found")

    page = client.get("/v1/events", params={"limit": 1}).json()
    assert [e["type"] for e in page["events"]] == ["project.added"] and page["last_seq"] == page["events"][0]["seq"]
    assert client.get("/v1/events", params={"after": page["last_seq"]}).json()["events"] == []
    assert client.get("/v1/events", params={"type": "runner.*"}).json()["events"] == []
    assert_error(client.get("/v1/events", params={"runner": "nope"}), 404, "not_found")


def read_sse(response: httpx.Response, count: int) -> list[dict]:
    found, current = [], {}
    for line in response.iter_lines():
        if not line:
            if "id" in current:
                found.append(current)
                if len(found) == count:
                    return found
            current = {}
            continue
        key, _, value = line.partition(": ")
        current[key] = value
    return found


def test_event_stream_resumes_from_a_seq(client, ctx, workdir):
    for name in ("a", "b", "c"):
        projects.add(ctx.conn, name, workdir)
    seqs = [e.seq for e in events.list_events(ctx.conn)]
    with client.stream("GET", "/v1/events/stream", params={"after": 0}) as response:
        assert response.headers["content-type"] == "text/event-stream"
        first = read_sse(response, 3)
    assert [int(e["id"]) for e in first] == seqs and first[0]["event"] == "project.added"
    assert json.loads(first[1]["data"])["payload"]["name"] == "b"
    # reconnecting with Last-Event-ID resumes after it, and live events follow
    with client.stream("GET", "/v1/events/stream", headers={"Last-Event-ID": first[1]["id"]}) as response:
        threading.Timer(0.3, lambda: projects.add(ctx.conn, "d", workdir)).start()
        resumed = read_sse(response, 2)
    assert [json.loads(e["data"])["payload"]["name"] for e in resumed] == ["c", "d"]
    with client.stream("GET", "/v1/events/stream", params={"after": seqs[0], "type": "project.added"}) as response:
        assert [json.loads(e["data"])["payload"]["name"] for e in read_sse(response, 2)] == ["b", "c"]
    assert_error(client.get("/v1/events/stream", headers={"Last-Event-ID": "x"}), 422, "invalid_input")


# -- agents reporting: hooks and heartbeats -----------------------------------------------------------


def launch_sleeper(client, workdir, count: int = 1) -> list[dict]:
    client.post("/v1/projects", json={"name": "web", "path": str(workdir)})
    response = client.post("/v1/runners", json={"project": "web", "command": ["sleep", "60"], "count": count})
    assert response.status_code == 201, response.text
    return response.json()["started"]


def test_http_hooks_change_a_runners_status(server, client, workdir):
    [runner] = launch_sleeper(client, workdir)
    token = apiauth.runner_token(server.api.runner_key, runner["name"])
    agent = {"Authorization": f"Bearer {token}", "X-Stratavore-Runner": runner["id"]}

    def hook(event: str, **fields) -> httpx.Response:
        return client.post("/v1/hooks/claude", headers=agent, json={"hook_event_name": event, "session_id": "s-1", **fields})

    assert hook("UserPromptSubmit", prompt="go").status_code == 204
    assert client.get(f"/v1/runners/{runner['id']}").json()["agent_status"] == "working"
    assert hook("PermissionRequest", tool_name="Edit").status_code == 204
    shown = client.get(f"/v1/runners/{runner['id']}").json()
    assert (shown["agent_status"], shown["agent_status_detail"]) == ("waiting", "permission: Edit")
    assert hook("Stop").status_code == 204
    assert client.get(f"/v1/runners/{runner['id']}").json()["agent_status"] == "idle"

    # a runner token opens only its own runner's reports
    assert_error(client.get("/v1/runners", headers=agent), 403, "forbidden")
    other = {"Authorization": f"Bearer {token}", "X-Stratavore-Runner": "f" * 32}
    assert_error(client.post("/v1/hooks/claude", headers=other, json={"hook_event_name": "Stop", "session_id": "s"}), 401, "unauthorized")
    forged = {"Authorization": "Bearer svr_" + "0" * 64, "X-Stratavore-Runner": runner["id"]}
    assert_error(client.post("/v1/hooks/claude", headers=forged, json={"hook_event_name": "Stop", "session_id": "s"}), 401, "unauthorized")
    assert_error(client.post("/v1/heartbeats", headers=agent, json={"heartbeats": [{"runner": "f" * 32}]}), 403, "forbidden")
    assert client.post("/v1/heartbeats", headers=agent, json={"heartbeats": [{"runner": runner["id"]}]}).json()["accepted"] == 1
    # the API token may name any runner, and an unknown one is 404
    unknown = {"X-Stratavore-Runner": "f" * 32}
    assert_error(client.post("/v1/hooks/claude", headers=unknown, json={"hook_event_name": "Stop", "session_id": "s"}), 404, "not_found")


def test_heartbeat_batches_are_durable_and_coalesced(server, client, ctx, workdir):
    runners = launch_sleeper(client, workdir, count=3)
    ids = [r["id"] for r in runners]
    assert [r["name"] for r in client.get("/v1/runners").json()["runners"]] == ["web-1", "web-2", "web-3"]
    before = server.api.heartbeats.transactions
    batch = {"heartbeats": [{"runner": i, "cpu_percent": 12.5, "rss_bytes": 4096, "process_count": 2} for i in ids]}
    response = client.post("/v1/heartbeats", json={"heartbeats": [*batch["heartbeats"], {"runner": "nope"}]})
    assert response.json() == {"accepted": 3, "ignored": ["nope"]}
    # acknowledged means committed: another connection sees it at once
    reader = sqlite3.connect(ctx.paths.db_path)
    rows = reader.execute("SELECT cpu_percent, rss_bytes, process_count, heartbeat_at FROM runners").fetchall()
    assert {r[:3] for r in rows} == {(12.5, 4096, 2)} and all(r[3] for r in rows)
    assert server.api.heartbeats.transactions == before + 1

    # many requests at once share transactions (group commit), and each is answered once written
    results: list[int] = []

    def post() -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.api.token}"}) as c:
            for _ in range(10):
                results.append(c.post("/v1/heartbeats", json={"heartbeats": [{"runner": ids[0]}]}).json()["accepted"])

    start = server.api.heartbeats.transactions
    threads = [threading.Thread(target=post) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1] * 160
    assert server.api.heartbeats.transactions - start < 160
    reader.close()


def test_health_db_reports_an_unusable_database(client, ctx):
    healthy = client.get("/health/db")
    assert healthy.status_code == 200 and healthy.json()["status"] == "ok"
    # the write lock held elsewhere: reachable, not writable
    blocker = sqlite3.connect(ctx.paths.db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        locked = client.get("/health/db")
    finally:
        blocker.execute("ROLLBACK")
    assert locked.status_code == 503
    assert locked.json()["reachable"] is False or locked.json()["writable"] is False
    assert locked.json()["error"]
    # migrations not current
    blocker.execute(f"PRAGMA user_version={db.SCHEMA_VERSION + 1}")
    stale = client.get("/health/db")
    assert stale.status_code == 503 and stale.json()["migrations_current"] is False
    assert stale.json()["schema_version"] == db.SCHEMA_VERSION + 1
    blocker.execute(f"PRAGMA user_version={db.SCHEMA_VERSION}")
    blocker.close()
    # not a database at all
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ctx.paths.db_path}{suffix}").unlink(missing_ok=True)
    ctx.paths.db_path.write_bytes(b"this is not sqlite" * 100)
    broken = client.get("/health/db")
    assert broken.status_code == 503 and broken.json()["reachable"] is False
    assert httpx.get(f"{client.base_url}/health").status_code in (200, 503)


def test_unix_socket_is_private(ctx):
    path = ctx.paths.runtime_dir / "api.sock"
    ctx.paths.ensure()
    ctx.settings = replace(ctx.settings, api_rate_limit=0.0)
    _ = ctx.conn
    server = ApiServer(ctx, host="", socket_path=str(path))
    server.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://stratavore") as c:
            assert c.get("/health").json()["status"] == "ok"
            assert c.get("/v1/projects").status_code == 401
            assert c.get("/v1/projects", headers={"Authorization": f"Bearer {server.api.token}"}).json() == {"projects": []}
        assert apiauth.read_info(ctx.paths).socket == str(path)
    finally:
        server.stop(timeout=2)
    assert not path.exists() and apiauth.read_info(ctx.paths) is None


def test_api_host_must_be_loopback(home):
    config = home / "config.toml"
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        config.write_text(f'api_host = "{host}"\n')
        assert load_settings(config, {}).api_host == host
    for host in ("0.0.0.0", "192.168.1.5", "example.com", "::"):
        config.write_text(f'api_host = "{host}"\n')
        with pytest.raises(ConfigError, match="loopback"):
            load_settings(config, {})
    assert load_settings(config, {"STRATAVORE_API_HOST": "", "STRATAVORE_METRICS_AUTH": "false"}).metrics_auth is False


# -- in the daemon -----------------------------------------------------------------------------------


def test_daemon_serves_the_api_and_drains_on_sigterm(sv, home, workdir):
    env = {**NO_KEYRING, "STRATAVORE_API_PORT": "0"}
    sv("project", "add", "web", str(workdir), check=True)
    sv("launch", "web", "--name", "stubborn", "--", "sh", "-c", "trap '' TERM; echo ready; exec sleep 60", check=True)
    sv("daemon", "start", check=True, env=env)
    url = sv("api", "url", check=True).stdout.strip()
    assert url.startswith("http://127.0.0.1:")
    assert f"API: {url}" in sv("daemon", "status", check=True).stdout
    assert json.loads(sv("daemon", "status", "--json", check=True).stdout)["api"]["url"] == url
    token = sv("api", "token", check=True, env=env).stdout.strip()
    c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert [r["name"] for r in c.get("/v1/runners").json()["runners"]] == ["stubborn"]

    # a stop that takes two seconds is under way when the daemon is told to stop: it still gets its answer
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(r=c.post("/v1/runners/stubborn/stop", json={"timeout": 2})))
    thread.start()
    wait_for(lambda: c.get("/v1/runners/stubborn").json()["state"] == "stopping")
    pid = json.loads((home / "run" / "daemon.pid").read_text())["pid"]
    os.kill(pid, signal.SIGTERM)
    thread.join(20)
    assert result["r"].status_code == 200 and result["r"].json()["state"] == "stopped"
    wait_for(lambda: sv("daemon", "status").returncode == 3, timeout=15)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")
    assert sv("api", "url").returncode == 9
    c.close()


def test_claude_runners_report_over_http_when_asked_and_the_daemon_is_up(sv, home, workdir, monkeypatch):
    import shlex
    import sys

    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(home / "claude"))
    monkeypatch.setenv("STRATAVORE_CLAUDE_COMMAND", shlex.join([sys.executable, "-m", "stratavore", "simulated-claude"]))
    monkeypatch.setenv("STRATAVORE_SIM_SPEED", "0.05")
    env = {**NO_KEYRING, "STRATAVORE_API_PORT": "0", "STRATAVORE_CLAUDE_HOOKS": "http"}
    sv("project", "add", "web", str(workdir), check=True)
    sv("daemon", "start", check=True, env=env)
    runner = json.loads(sv("launch", "web", "--agent", "claude", "--json", check=True, env=env).stdout)["started"][0]
    settings = json.loads(runner["command"][runner["command"].index("--settings") + 1])
    handler = settings["hooks"]["SessionStart"][0]["hooks"][0]
    assert handler["type"] == "http" and handler["url"].endswith("/v1/hooks/claude")
    assert "sva_" not in json.dumps(runner)  # the agent never sees the API token, only its runner token
    token = sv("api", "token", check=True, env=env).stdout.strip()
    url = sv("api", "url", check=True).stdout.strip()
    c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    # SessionStart, posted by the agent to the API, makes it idle
    wait_for(lambda: c.get(f"/v1/runners/{runner['id']}").json()["agent_status"] == "idle", timeout=15)
    assert c.get("/v1/sessions").json()["sessions"][0]["id"] == runner["session_id"]
    sv("daemon", "stop", check=True)
    # with the daemon down, a new Claude runner gets command hooks again
    second = json.loads(sv("launch", "web", "--agent", "claude", "--json", check=True, env=env).stdout)["started"][0]
    settings = json.loads(second["command"][second["command"].index("--settings") + 1])
    assert settings["hooks"]["SessionStart"][0]["hooks"][0]["type"] == "command"
    c.close()
