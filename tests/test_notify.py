"""Notifications through real HTTP receivers on loopback: ntfy, Telegram's Bot API, webhooks."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from stratavore import consumers, db, events, notify, plugins, secretstore
from stratavore.context import Context

from .conftest import wait_for
from .receivers import Receiver


@pytest.fixture(autouse=True)
def no_real_keyring(home, monkeypatch):
    # never write a test's secrets into the keyring of the machine running the tests
    monkeypatch.setenv("STRATAVORE_KEYRING", "off")


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def fast_ctx(**settings) -> Context:
    env = {k: v for k, v in os.environ.items()}
    env.update({f"STRATAVORE_{k.upper()}": str(v) for k, v in settings.items()})
    return Context.load(env)


def emit(conn, type: str, name: str = "web-1", aggregate: str = "r1", **payload) -> None:
    payload.setdefault("previous", "working")
    with db.write(conn):
        events.append(conn, "runner", aggregate, 1, type, {"name": name, **payload})


def kinds(ctx):
    return plugins.load(ctx.paths).channel_kinds()


def dispatcher_for(ctx):
    return notify.build_dispatcher(ctx)


def drain(ctx, dispatcher, rounds: int = 3) -> None:
    for _ in range(rounds):
        dispatcher.run_once(ctx.conn)


def test_ntfy_gets_routed_events_with_title_and_priority(ctx, receiver):
    notify.add_channel(ctx, kinds(ctx), "ntfy", {"topic": "agents", "server": receiver.url})
    emit(ctx.conn, "runner.waiting", detail="permission prompt: Bash")
    emit(ctx.conn, "runner.working")  # not routed by default
    emit(ctx.conn, "runner.failed", aggregate="r2", name="web-2", reason="gave up restarting", exit_code=3)
    drain(ctx, dispatcher_for(ctx))
    first, second = receiver.wait(2)
    assert first.path == "/agents"
    assert first.headers["Title"] == "web-1 is waiting for you"
    assert first.headers["Priority"] == "high"
    assert first.text == "permission prompt: Bash"
    assert second.headers["Title"] == "web-2 failed"
    assert second.text == "gave up restarting; exit code 3"
    assert len(receiver.attempts) == 2


def test_telegram_bot_api_and_the_token_stays_out_of_the_database(ctx, receiver):
    notify.add_channel(ctx, kinds(ctx), "telegram", {"chat_id": "4242", "token": "123:SECRET", "api_url": receiver.url})
    emit(ctx.conn, "runner.lost", reason="the keeper vanished")
    drain(ctx, dispatcher_for(ctx))
    [request] = receiver.wait(1)
    assert request.path == "/bot123:SECRET/sendMessage"
    assert request.json["chat_id"] == "4242"
    assert request.json["text"] == "web-1 was lost\nthe keeper vanished"
    dump = "\n".join(" ".join(map(str, r)) for r in ctx.conn.execute("SELECT * FROM notify_channels"))
    assert "SECRET" not in dump and "4242" in dump
    path = secretstore.secrets_file(ctx.paths)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "123:SECRET" in json.loads(json.loads(path.read_text())["notify.telegram"])["token"]
    notify.remove_channel(ctx, "telegram")
    assert "notify.telegram" not in json.loads(path.read_text())


@pytest.mark.parametrize(
    "fmt,check",
    [
        ("slack", lambda b: b == {"text": "*web-1 is idle*\nfinished its turn"}),
        ("discord", lambda b: b == {"content": "**web-1 is idle**\nfinished its turn"}),
        ("json", lambda b: b["title"] == "web-1 is idle" and b["events"][0]["type"] == "runner.idle" and len(b["event_ids"]) == 1),
    ],
)
def test_webhook_formats(ctx, receiver, fmt, check):
    notify.add_channel(ctx, kinds(ctx), "webhook", {"url": receiver.url + "/hook", "format": fmt})
    emit(ctx.conn, "runner.idle")
    drain(ctx, dispatcher_for(ctx))
    [request] = receiver.wait(1)
    assert request.path == "/hook" and check(request.json)


def test_retries_when_the_receiver_answers_500(ctx, receiver):
    ctx = fast_ctx(delivery_backoff_initial=0.01, delivery_backoff_max=0.05)
    notify.add_channel(ctx, kinds(ctx), "webhook", {"url": receiver.url})
    receiver.script = [500, 503]
    emit(ctx.conn, "runner.waiting")
    emit(ctx.conn, "runner.idle")
    dispatcher = dispatcher_for(ctx)
    wait_for(lambda: dispatcher.run_once(ctx.conn) is not None and len(receiver.requests) == 2, timeout=10)
    assert [r.json["title"] for r in receiver.attempts] == ["web-1 is waiting for you"] * 3 + ["web-1 is idle"]
    cursor = consumers.get_cursor(ctx.conn, "notify:webhook")
    assert cursor.attempts == 0 and cursor.delivered == 2
    assert consumers.list_parked(ctx.conn) == []


def test_retries_while_the_receiver_is_down_then_delivers(ctx):
    ctx = fast_ctx(delivery_backoff_initial=0.01, delivery_backoff_max=0.05, delivery_max_attempts=1000)
    down = Receiver().start()
    port = down.port
    down.stop()  # nothing listens there now: connection refused
    notify.add_channel(ctx, kinds(ctx), "ntfy", {"topic": "t", "server": f"http://127.0.0.1:{port}"})
    emit(ctx.conn, "runner.failed")
    dispatcher = dispatcher_for(ctx)
    wait_for(lambda: dispatcher.run_once(ctx.conn) is not None and (consumers.get_cursor(ctx.conn, "notify:ntfy").attempts or 0) >= 3)
    assert "ConnectError" in consumers.get_cursor(ctx.conn, "notify:ntfy").last_error
    up = Receiver().start(port)
    try:
        wait_for(lambda: dispatcher.run_once(ctx.conn) is not None and up.requests)
        assert up.requests[0].headers["Title"] == "web-1 failed"
    finally:
        up.stop()


def test_poison_is_parked_listed_and_retried_from_the_cli(ctx, receiver, sv):
    notify.add_channel(ctx, kinds(ctx), "webhook", {"url": receiver.url})
    receiver.status = 400  # a permanent rejection: parked at once, the next event still flows
    emit(ctx.conn, "runner.waiting")
    dispatcher = dispatcher_for(ctx)
    dispatcher.run_once(ctx.conn)
    receiver.status = 200
    emit(ctx.conn, "runner.idle", aggregate="r2", name="web-2")
    dispatcher.run_once(ctx.conn)
    assert [r.json["title"] for r in receiver.requests] == ["web-2 is idle"]
    listed = sv("events", "--failed", check=True).stdout
    assert "runner.waiting" in listed and "notify:webhook" in listed and "HTTP 400" in listed
    [parked] = json.loads(sv("events", "--failed", "--json", check=True).stdout)
    assert parked["attempts"] == 1 and parked["consumer"] == "notify:webhook"
    assert "Queued 1" in sv("events", "retry", str(parked["id"]), check=True).stdout
    dispatcher.run_once(ctx.conn)
    assert [r.json["title"] for r in receiver.requests] == ["web-2 is idle", "web-1 is waiting for you"]
    assert "No parked events" in sv("events", "--failed", check=True).stdout
    bad = sv("events", "retry", "999")
    assert bad.returncode == 3 and "no parked event with ID 999" in bad.stderr
    # `stratavore events` itself still works as before
    assert "runner.idle" in sv("events", check=True).stdout


def test_a_waiting_runner_alerts_once_within_the_cooldown(ctx, receiver):
    notify.add_channel(ctx, kinds(ctx), "webhook", {"url": receiver.url})
    dispatcher = dispatcher_for(ctx)
    emit(ctx.conn, "runner.waiting", detail="permission prompt")
    dispatcher.run_once(ctx.conn)
    emit(ctx.conn, "runner.working")
    emit(ctx.conn, "runner.waiting", detail="permission prompt again")
    emit(ctx.conn, "runner.waiting", aggregate="r2", name="web-2")
    emit(ctx.conn, "runner.idle", aggregate="r3", name="web-3", previous=None)  # just started: nothing to say
    dispatcher.run_once(ctx.conn)
    # a restarted daemon remembers the last alert (from the delivery records)
    emit(ctx.conn, "runner.waiting", detail="and again")
    drain(ctx, dispatcher_for(ctx))
    assert [r.json["title"] for r in receiver.requests] == ["web-1 is waiting for you", "web-2 is waiting for you"]
    assert consumers.get_cursor(ctx.conn, "notify:webhook").last_seq == events.last_seq(ctx.conn)


def test_a_flood_is_summarised(ctx, receiver):
    ctx = fast_ctx(notify_flood_max=3, notify_flood_window=60)
    notify.add_channel(ctx, kinds(ctx), "webhook", {"url": receiver.url})
    dispatcher = dispatcher_for(ctx)
    for i in range(25):
        emit(ctx.conn, "runner.failed", aggregate=f"r{i}", name=f"web-{i}", reason="crashed")
    dispatcher.run_once(ctx.conn)
    [summary] = receiver.wait(1)
    body = summary.json
    assert body["title"] == "Stratavore: 25 events (runner.failed)"
    assert len(body["event_ids"]) == 25 and body["priority"] == "high"
    assert "... and 15 more" in body["body"]
    # two more single events fit the window's quota of 3 messages; beyond that they wait
    for i in range(4):
        emit(ctx.conn, "runner.lost", aggregate=f"x{i}", name=f"api-{i}")
        dispatcher.run_once(ctx.conn)
    assert [r.json["title"] for r in receiver.requests[1:]] == ["api-0 was lost", "api-1 was lost"]
    assert consumers.get_cursor(ctx.conn, "notify:webhook").last_seq < events.last_seq(ctx.conn)
    # when the window has room again, what waited goes out: one by one if it fits, else as a summary
    [consumer] = [c for c in dispatcher.source(ctx.conn)]
    consumer.sent.popleft()
    dispatcher.run_once(ctx.conn)
    assert receiver.requests[-1].json["title"] == "Stratavore: 2 events (runner.lost)"
    assert consumers.get_cursor(ctx.conn, "notify:webhook").last_seq == events.last_seq(ctx.conn)


def test_desktop_uses_notify_send(ctx, tmp_path, monkeypatch):
    log = tmp_path / "calls"
    fake = tmp_path / "bin" / "notify-send"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {log}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    notify.add_channel(ctx, kinds(ctx), "desktop", {})
    emit(ctx.conn, "runner.waiting", detail="a question")
    drain(ctx, dispatcher_for(ctx))
    assert log.read_text().splitlines() == ["--app-name=Stratavore", "--urgency=critical", "web-1 is waiting for you", "a question"]


def test_cli_add_list_test_rm(sv, receiver):
    assert sv("notify", "add", "ntfy", "--topic", "agents", "--server", receiver.url, check=True).returncode == 0
    add = sv("notify", "add", "telegram", "--name", "phone", "--chat-id", "7", "--token", "-", "--api-url", receiver.url, input="9:TOK\n")
    assert add.returncode == 0, add.stderr
    sv("notify", "add", "webhook", "--url", receiver.url + "/slack", "--format", "slack", "--on", "runner.*", check=True)
    listed = json.loads(sv("notify", "list", "--json", check=True).stdout)
    assert [(c["name"], c["kind"]) for c in listed] == [("ntfy", "ntfy"), ("phone", "telegram"), ("webhook", "webhook")]
    assert listed[2]["events"] == ["runner.*"]
    assert "TOK" not in sv("notify", "list", check=True).stdout
    for name in ("ntfy", "phone", "webhook"):
        assert "Sent a test notification" in sv("notify", "test", name, check=True).stdout
    assert [r.path for r in receiver.requests] == ["/agents", "/bot9:TOK/sendMessage", "/slack"]
    receiver.status = 401
    failed = sv("notify", "test", "phone")
    assert failed.returncode == 1 and failed.stderr.startswith("Error: channel 'phone'") and "HTTP 401" in failed.stderr
    assert sv("notify", "add", "ntfy", "--topic", "x").returncode == 4  # the name is taken
    assert sv("notify", "add", "ntfy", "--name", "n2", "--url", "http://x").returncode == 2
    assert sv("notify", "add", "pager", "--name", "p").returncode == 2
    assert sv("notify", "rm", "phone", check=True).returncode == 0
    assert sv("notify", "test", "phone").returncode == 3


def test_daemon_delivers_within_a_second_and_resumes_after_a_restart(sv, receiver, ctx):
    sv("notify", "add", "webhook", "--url", receiver.url, check=True)
    sv("daemon", "start", check=True)
    try:
        started = receiver.wait(1)[0]
        assert started.json["events"][0]["type"] == "daemon.started"
        emit(ctx.conn, "runner.waiting", detail="permission prompt")
        t0 = time.time()
        request = receiver.wait(2)[1]
        assert request.json["title"] == "web-1 is waiting for you"
        assert request.at - t0 < 1.0
    finally:
        sv("daemon", "stop", check=True)
    receiver.wait(3)
    assert receiver.requests[2].json["events"][0]["type"] == "daemon.stopped"
    # events while the daemon is down are delivered when it comes back, and nothing twice
    emit(ctx.conn, "runner.failed", aggregate="r9", name="web-9")
    sv("daemon", "start", check=True)
    try:
        receiver.wait(5)
    finally:
        sv("daemon", "stop", check=True)
    receiver.wait(6)
    ids = [r.json["event_ids"][0] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 6
    types = [r.json["events"][0]["type"] for r in receiver.requests]
    assert types == ["daemon.started", "runner.waiting", "daemon.stopped", "runner.failed", "daemon.started", "daemon.stopped"]
    status = json.loads(sv("daemon", "status", "--json").stdout)
    assert "consumers" in {j["job_id"] for j in status["jobs"]}


def test_secrets_use_a_working_keyring_and_never_a_forgetful_one(ctx, monkeypatch):
    import keyring
    from keyring.backend import KeyringBackend
    from keyring.backends import null

    class Memory(KeyringBackend):
        priority = 1
        store: dict = {}

        def get_password(self, service, username):
            return self.store.get((service, username))

        def set_password(self, service, username, password):
            self.store[(service, username)] = password

        def delete_password(self, service, username):
            self.store.pop((service, username), None)

    monkeypatch.delenv("STRATAVORE_KEYRING")
    previous = keyring.get_keyring()
    try:
        keyring.set_keyring(Memory())
        assert secretstore.put(ctx.paths, "k", "v1") == "keyring"
        assert Memory.store == {("stratavore", f"k@{ctx.paths.data_dir}"): "v1"}
        assert secretstore.get(ctx.paths, "k") == "v1"
        assert not secretstore.secrets_file(ctx.paths).exists()
        secretstore.delete(ctx.paths, "k")
        assert secretstore.get(ctx.paths, "k") is None
        keyring.set_keyring(null.Keyring())
        assert secretstore.put(ctx.paths, "k", "v2") == str(secretstore.secrets_file(ctx.paths))
        assert secretstore.get(ctx.paths, "k") == "v2"
    finally:
        keyring.set_keyring(previous)


def test_budget_events_read_well():
    from stratavore.events import Event

    payload = {"name": "daily", "scope": "project", "target": "web", "threshold": 100, "percent": 104.2, "spent_usd": 10.42}
    payload.update(limit_usd=10.0, spent_tokens=5, limit_tokens=None, period="2026-11-22", action="stop")
    message = notify.describe(Event(1, "e", "n", "budget", "daily", 1, "budget.exceeded", payload, 0))
    assert (message.title, message.priority) == ("Budget exceeded: daily at 104.2%", "high")
    assert message.body == "$10.42 of $10.00, project web, period 2026-11-22, action: stop"


def test_http_failures_are_classified(receiver):
    from stratavore.consumers import DeliveryError, PermanentError

    receiver.script = [429, 503, 404]
    with pytest.raises(DeliveryError) as busy:
        notify.http_post(receiver.url, json_body={})
    assert not busy.value.permanent and busy.value.retry_after is None
    with pytest.raises(DeliveryError) as down:
        notify.http_post(receiver.url, json_body={})
    assert not down.value.permanent and str(down.value).startswith("HTTP 503")
    with pytest.raises(PermanentError, match="HTTP 404"):
        notify.http_post(receiver.url, json_body={})
    assert notify.http_post(receiver.url, json_body={}).status_code == 200
