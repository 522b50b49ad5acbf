"""Claude Code integration with real processes: the simulated Claude Code on a real PTY, its hooks, its
registry and transcripts, sessions, resume, agent presets, and the real `claude --help`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pexpect
import psutil
import pytest

from stratavore import agents
from stratavore.agents.claude import encode_cwd, hook_command
from stratavore.config import Settings
from tests.conftest import SV, assert_clean_error, wait_for

SIM = shlex.join([sys.executable, "-m", "stratavore", "simulated-claude"])
REQUIRED_HOOKS = {"SessionStart", "UserPromptSubmit", "Stop", "Notification", "PermissionRequest", "SessionEnd"}
DETACH = b"\x1d"


@pytest.fixture(autouse=True)
def claude_dir(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Claude Code's config root inside the test's home; the simulated Claude Code as `claude`, 20x faster."""
    path = home / "claude"
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(path))
    monkeypatch.setenv("STRATAVORE_CLAUDE_COMMAND", SIM)
    monkeypatch.setenv("STRATAVORE_SIM_SPEED", "0.05")
    return path


@pytest.fixture
def web(sv, workdir: Path) -> Path:
    sv("project", "add", "web", str(workdir), check=True)
    return workdir


@pytest.fixture
def attach():
    """`stratavore attach NAME` on a fresh pseudo-terminal; every client is closed at the end."""
    children: list[pexpect.spawn] = []

    def spawn(*args: str) -> pexpect.spawn:
        child = pexpect.spawn(SV[0], [*SV[1:], *args], dimensions=(40, 160), timeout=10, env=dict(os.environ))
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.close(force=True)


# -- helpers -------------------------------------------------------------------------------------


def launch(sv, *args: str, project: str = "web") -> dict:
    proc = sv("launch", project, "--json", *args, check=True)
    [runner] = json.loads(proc.stdout)["started"]
    return runner


def ps(sv, *args: str) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(sv("ps", "--json", *args, check=True).stdout)}


def db_query(home: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    """Read the database directly: no status refresh, no CLI start-up in the way."""
    conn = sqlite3.connect(home / "data" / "stratavore.db", timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def agent_status(home: Path, runner_id: str) -> tuple[str | None, str | None]:
    [row] = db_query(home, "SELECT agent_status, agent_status_detail FROM runners WHERE id=?", (runner_id,))
    return row["agent_status"], row["agent_status_detail"]


def status_events(home: Path, runner_id: str) -> list[tuple[str, dict]]:
    rows = db_query(
        home,
        "SELECT type, payload FROM events WHERE aggregate_id=? AND type IN ('runner.working','runner.waiting','runner.idle') ORDER BY seq",
        (runner_id,),
    )
    return [(r["type"].split(".", 1)[1], json.loads(r["payload"])) for r in rows]


def events_of(home: Path, runner_id: str, type_: str) -> list[dict]:
    rows = db_query(home, "SELECT payload FROM events WHERE aggregate_id=? AND type=? ORDER BY seq", (runner_id, type_))
    return [json.loads(r["payload"]) for r in rows]


def wait_status_events(home: Path, runner_id: str, count: int, timeout: float = 10) -> list[tuple[str, dict]]:
    return wait_for(lambda: len(found := status_events(home, runner_id)) >= count and found, timeout)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_registry(claude_dir: Path, pid: int, **fields) -> Path:
    folder = claude_dir / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "kind": "interactive", "version": "2.1.330", **fields}))
    os.replace(tmp, path)
    return path


def expected_transcript(claude_dir: Path, cwd: str, session_id: str) -> Path:
    # Claude Code's rule for short ASCII paths, written out independently of encode_cwd
    return claude_dir / "projects" / re.sub(r"[^A-Za-z0-9]", "-", os.path.realpath(cwd)) / f"{session_id}.jsonl"


def prompt(child: pexpect.spawn, text: str) -> None:
    """Type a prompt that needs no permission and wait for the answer and the next prompt (its Stop hook has run)."""
    child.send(text + "\r")
    child.expect_exact(f"Done: {text}")
    child.expect_exact("> ")


def detach(child: pexpect.spawn) -> None:
    child.send(DETACH)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


# -- launching Claude ----------------------------------------------------------------------------

PROBE = """
import json, os, sqlite3, sys
conn = sqlite3.connect(os.path.join(os.environ["STRATAVORE_HOME"], "data", "stratavore.db"), timeout=5)
runner_session = conn.execute("SELECT session_id FROM runners WHERE id=?", (os.environ["STRATAVORE_RUNNER_ID"],)).fetchone()[0]
row = conn.execute("SELECT runner_id, transcript_path FROM sessions WHERE id=?", (runner_session,)).fetchone()
conn.close()
with open(os.environ["PROBE_OUT"], "w") as f:
    json.dump({"argv": sys.argv[1:], "runner_session": runner_session, "session_row": row}, f)
os.execv(sys.executable, [sys.executable, "-m", "stratavore", "simulated-claude", *sys.argv[1:]])
"""


def test_launch_builds_the_documented_command_and_knows_the_session_first(sv, home, claude_dir, web, attach, monkeypatch):
    # `claude` is a probe that records its argv and what the database said when it started, then runs the simulation
    probe, probe_out = home / "probe.py", home / "probe.json"
    probe.write_text(PROBE)
    monkeypatch.setenv("STRATAVORE_CLAUDE_COMMAND", shlex.join([sys.executable, str(probe)]))
    real_cwd = home / "my_web app.v2"
    real_cwd.mkdir()
    link = home / "link"
    link.symlink_to(real_cwd)  # the transcript path follows the realpath, not the path given

    runner = launch(
        sv,
        "--agent",
        "claude",
        "--name",
        "claude-one",
        "--cwd",
        str(link),
        "-e",
        f"PROBE_OUT={probe_out}",
        "--",
        "--model",
        "opus",
        "--verbose",
    )
    sid = runner["session_id"]
    assert uuid.UUID(sid).version == 4 and str(uuid.UUID(sid)) == sid
    assert runner["agent"] == "claude" and runner["cwd"] == str(link)

    seen = wait_for(lambda: read_json(probe_out))
    argv = seen["argv"]
    assert argv[:6] == ["--session-id", sid, "-n", "claude-one", "--settings", argv[5]]
    assert argv[6:] == ["--model", "opus", "--verbose"], "user arguments after `--` come last, unchanged"
    assert runner["command"][-len(argv) :] == argv
    # the session was on the runner and in the sessions table before the agent ran, with its transcript path
    transcript = expected_transcript(claude_dir, str(link), sid)
    assert transcript.parent.name == re.sub(r"[^A-Za-z0-9]", "-", str(home)) + "-my-web-app-v2"
    assert seen["runner_session"] == sid
    assert seen["session_row"] == [runner["id"], str(transcript)]

    settings = json.loads(argv[5])
    assert REQUIRED_HOOKS <= set(settings["hooks"])
    for event, groups in settings["hooks"].items():
        [handler] = [h for g in groups for h in g["hooks"]]
        assert handler["type"] == "command" and handler["command"] == hook_command(), event
        assert 0 < handler["timeout"] <= 60
        # the agent waits for every hook (a few ms): each notes its time before the next starts, so events applied
        # late never undo newer ones; an async PostToolUse could land after the turn's Stop and leave "working"
        assert not handler.get("async"), event

    assert not transcript.exists(), "no transcript before the first prompt"
    child = attach("attach", "claude-one")
    child.expect_exact(f"session {sid}")
    prompt(child, "hello there")
    records = [json.loads(line) for line in wait_for(lambda: transcript.exists() and transcript.read_text().splitlines())]
    assert {r["sessionId"] for r in records} == {sid}
    assert records[0]["type"] == "user" and records[0]["message"]["content"] == "hello there"
    assert records[0]["cwd"] == str(real_cwd)
    detach(child)
    shown = json.loads(sv("session", "show", sid, "--json", check=True).stdout)
    assert shown["transcript_path"] == str(transcript) and shown["runner"] == "claude-one"
    assert wait_for(lambda: json.loads(sv("session", "show", sid, "--json").stdout)["title"] == "hello there")
    sv("stop", "claude-one", check=True)


def test_encode_cwd_follows_claude_codes_rules():
    # the first two are the examples in Claude Code's own behaviour; the rest were computed with its
    # JavaScript (replace every non-[A-Za-z0-9] UTF-16 unit, cut at 200, add base36 |Java hash|)
    assert encode_cwd("/tmp/demo_beta") == "-tmp-demo-beta"
    assert encode_cwd("/Users/me/My Project.v2/über") == "-Users-me-My-Project-v2--ber"
    assert encode_cwd("/home/u/rocket-\U0001f680-app") == "-home-u-rocket----app"  # an emoji is two UTF-16 units
    assert encode_cwd("/x/" + "a" * 197) == "-x-" + "a" * 197  # exactly 200: not cut
    assert encode_cwd("/x/" + "a" * 198) == "-x-" + "a" * 197 + "-ikcxza"
    deep = "/srv/" + "deep/" * 45 + "end"
    assert encode_cwd(deep) == ("-srv-" + "deep-" * 45)[:200] + "-p3dav5"
    assert encode_cwd("/srv/" + "ü" * 220) == ("-srv-" + "-" * 220)[:200] + "-np4p89"
    emoji = encode_cwd("/proj/" + "\U0001f680x" * 70)
    assert len(emoji) == 207 and emoji.endswith("--x---h1fzib")  # hashed over UTF-16 units, not code points
    assert encode_cwd("/w/" + "Zz9_" * 60).endswith("Zz9-Z-cvx0y9")  # a negative hash: its absolute value


# -- live status from hooks ----------------------------------------------------------------------


def test_status_follows_hooks_and_waiting_shows_within_a_second(sv, home, claude_dir, web, attach, monkeypatch):
    # real-time pauses (0.3-0.5 s), so each hook is applied before the next one starts, even on a busy machine
    monkeypatch.setenv("STRATAVORE_SIM_SPEED", "1")
    hook_log = home / "hooks.log"
    monkeypatch.setenv("STRATAVORE_SIM_HOOK_LOG", str(hook_log))
    runner = launch(sv, "--agent", "claude")
    rid, name = runner["id"], runner["name"]
    registry = claude_dir / "sessions" / f"{runner['agent_pid']}.json"

    [(status, payload)] = wait_status_events(home, rid, 1)
    assert (status, payload["hook"]) == ("idle", "SessionStart")
    assert ps(sv)[name]["agent_status"] == "idle"

    child = attach("attach", name)
    child.expect_exact("> ")
    prompt(child, "explain the code")
    found = wait_status_events(home, rid, 3)
    assert [(s, p["hook"]) for s, p in found] == [("idle", "SessionStart"), ("working", "UserPromptSubmit"), ("idle", "Stop")]

    # a permission prompt: from the agent entering "waiting" to `stratavore ps` showing it, daemon or not
    assert not (home / "run" / "daemon.pid").exists()
    child.send("please edit app.py\r")
    entered = wait_for(lambda: (d := read_json(registry)) and d["status"] == "waiting" and d["statusUpdatedAt"] / 1000, interval=0.002)
    while (shown := ps(sv)[name])["agent_status"] != "waiting":
        assert time.time() - entered < 10
    ps_latency = time.time() - entered
    assert shown["agent_status_detail"].startswith("permission")
    row = next(line for line in sv("ps", check=True).stdout.splitlines() if line.startswith(name + " "))
    assert "waiting: permission" in row
    child.expect_exact("Allow? (y/n)")
    child.send("y\r")
    child.expect_exact("Edited app.py")
    child.expect_exact("Done: please edit app.py")
    wait_status_events(home, rid, 7)

    # a second wait, watched in the database only: the hooks alone, no `ps` to read the registry
    child.send("now edit the tests\r")
    entered = wait_for(lambda: (d := read_json(registry)) and d["status"] == "waiting" and d["statusUpdatedAt"] / 1000, interval=0.002)
    wait_for(lambda: agent_status(home, rid)[0] == "waiting", interval=0.002)
    hook_latency = time.time() - entered
    child.expect_exact("Allow? (y/n)")
    child.send("n\r")
    child.expect_exact("Edit declined")
    child.expect_exact("Done: now edit the tests")
    found = wait_status_events(home, rid, 10)
    detach(child)

    statuses = [s for s, _ in found]
    assert statuses == ["idle", "working", "idle", "working", "waiting", "working", "idle", "working", "waiting", "idle"], found
    # Notification and PermissionRequest both fired for each wait, yet each wait is one runner.waiting event
    fired = [line.split()[0] for line in hook_log.read_text().splitlines()]
    assert fired.count("Notification") == 2 and fired.count("PermissionRequest") == 2, fired
    assert found[8][1]["hook"] in ("Notification", "PermissionRequest")
    assert found[5][1]["hook"] == "PostToolUse" and found[6][1]["hook"] == "Stop"
    assert ps(sv)[name]["agent_status"] == "idle"
    print(f"\nwaiting -> `stratavore ps`: {ps_latency * 1000:.0f} ms; waiting -> database via hooks: {hook_latency * 1000:.0f} ms")
    assert ps_latency < 1.0, f"ps showed waiting {ps_latency:.3f}s after the agent started waiting"
    assert hook_latency < 1.0, f"the hooks recorded waiting {hook_latency:.3f}s after the agent started waiting"
    sv("stop", name, check=True)


def test_hook_overhead_seen_by_the_agent(sv, home, web, monkeypatch):
    hook_log = home / "hooks.log"
    monkeypatch.setenv("STRATAVORE_SIM_HOOK_LOG", str(hook_log))
    # paced like a person typing (a prompt every 0.3 s, answered in 0.25 s): each hook is measured on its own,
    # not queued behind the detached work of the one before on a 2-CPU machine
    monkeypatch.setenv("STRATAVORE_SIM_SPEED", "0.5")
    prompts = [f"task number {i}" for i in range(6)]
    runner = launch(
        sv, "--agent", "claude", "-e", "STRATAVORE_SIM_AUTOPLAY=" + "|".join(prompts), "-e", "STRATAVORE_SIM_AUTOPLAY_EVERY=0.6"
    )

    # SessionStart, then UserPromptSubmit and Stop for each prompt: 13 hooks a batch
    def batch(count: int) -> list[float]:
        lines = wait_for(lambda: hook_log.exists() and len(x := hook_log.read_text().splitlines()) >= count and x, timeout=30)
        return [float(line.split()[1]) for line in lines[count - 13 : count]]

    durations = batch(13)
    medians = [statistics.median(durations)]
    while medians[-1] >= 50 and len(medians) < 3:
        # another batch before judging: a burst of load from elsewhere on the machine is not a regression
        durations = batch(13 * (len(medians) + 1))
        medians.append(statistics.median(durations))
    sv("stop", runner["name"], check=True)
    median = min(medians)
    print(f"\nhook overhead seen by the agent: median {median:.1f} ms (batch medians {[round(m, 1) for m in medians]})")
    assert median < 50, f"median hook duration over 50 ms in every batch: {medians}; last batch: {durations}; load {os.getloadavg()}"
    # the hooks did their work
    assert ("working", "UserPromptSubmit") in [(s, p["hook"]) for s, p in status_events(home, runner["id"])]
    assert json.loads(sv("session", "show", runner["session_id"], "--json", check=True).stdout)["title"].startswith("task number ")


def hook_processes(home: Path) -> list[psutil.Process]:
    """Hook commands of this test still running (the agent's foreground ones and their detached children)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            code = [arg for arg in proc.info["cmdline"] or [] if arg.startswith("import sys;") and "stratavore.hook import main" in arg]
            if not code or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("STRATAVORE_HOME") == str(home):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_a_granted_permission_never_leaves_the_runner_working(sv, home, web, attach):
    # regression: PostToolUse ran async, so its event could note a later time than the turn's Stop, win, and
    # leave the runner "working" after the turn (up to a third of turns on a busy machine)
    runner = launch(sv, "--agent", "claude")
    rid = runner["id"]
    child = attach("attach", runner["name"])
    child.expect_exact("> ")
    for turn in range(8):
        child.send(f"edit file {turn}\r")
        child.expect_exact("Allow? (y/n)")
        child.send("y\r")
        child.expect_exact(f"Done: edit file {turn}")
        child.expect_exact("> ")  # the turn is over: its Stop hook has run
        wait_for(lambda: not hook_processes(home))
        assert agent_status(home, rid) == ("idle", None), f"turn {turn}: {status_events(home, rid)[-4:]}"
    detach(child)
    assert status_events(home, rid)[-1][1]["hook"] == "Stop"


def test_clear_moves_the_runner_to_the_new_session(sv, home, web, attach):
    runner = launch(sv, "--agent", "claude")
    rid, name, old = runner["id"], runner["name"], runner["session_id"]
    child = attach("attach", name)
    child.expect_exact(f"session {old}")
    prompt(child, "first conversation")
    child.send("/clear\r")
    child.expect(r"\(new session ([0-9a-f-]{36})\)")
    new = child.match.group(1).decode()
    assert new != old
    detach(child)

    changed = wait_for(lambda: events_of(home, rid, "runner.session_changed"))
    assert changed == [{"name": name, "session_id": new, "previous": old, "source": "clear"}]
    assert ps(sv)[name]["session_id"] == new
    before = wait_for(lambda: (s := json.loads(sv("session", "show", old, "--json").stdout))["ended_at"] and s)
    assert before["status"] == "ended" and before["title"] == "first conversation"
    after = json.loads(sv("session", "show", new, "--json", check=True).stdout)
    assert after["parent_session_id"] == old and after["runner"] == name and after["source"] == "clear"
    assert after["ended_at"] is None
    sv("stop", name, check=True)


# -- hooks must never break the agent ------------------------------------------------------------


def run_hook(payload, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    started = time.monotonic()
    proc = subprocess.run(
        ["/bin/sh", "-c", hook_command()], input=data, capture_output=True, text=True, env={**os.environ, **env}, timeout=10
    )
    return proc, time.monotonic() - started


def test_hook_exits_at_once_when_the_database_is_locked(sv, home, web):
    runner = launch(sv, "--agent", "claude")
    rid, sid = runner["id"], runner["session_id"]
    wait_status_events(home, rid, 1)
    spool = home / "run" / "hook-spool.jsonl"
    locker = sqlite3.connect(home / "data" / "stratavore.db", timeout=5, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        payload = {"hook_event_name": "UserPromptSubmit", "session_id": sid, "prompt": "written while locked", "cwd": runner["cwd"]}
        proc, took = run_hook(payload, {"STRATAVORE_RUNNER_ID": rid})
        assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
        assert took < 1.0, f"the hook kept the agent waiting {took:.3f}s"
        # the detached child gives up on the lock and keeps the event
        wait_for(spool.exists, timeout=5)
        assert json.loads(spool.read_text().splitlines()[0])["payload"] == payload
        assert locker.execute("SELECT agent_status FROM runners WHERE id=?", (rid,)).fetchone()[0] == "idle"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # garbage on stdin is no reason to fail the agent either
    for junk in ("not json", "[1, 2]", ""):
        proc, took = run_hook(junk, {"STRATAVORE_RUNNER_ID": rid})
        assert proc.returncode == 0 and took < 1.0
    # the next hook applies the spooled event first (this one changes no status by itself)
    proc, took = run_hook(
        {"hook_event_name": "Notification", "notification_type": "auth_success", "session_id": sid}, {"STRATAVORE_RUNNER_ID": rid}
    )
    assert proc.returncode == 0 and took < 1.0
    wait_for(lambda: agent_status(home, rid)[0] == "working")
    assert not spool.exists()
    assert status_events(home, rid)[-1] == (
        "working",
        {"name": runner["name"], "status": "working", "previous": "idle", "session_id": sid, "hook": "UserPromptSubmit"},
    )
    assert json.loads(sv("session", "show", sid, "--json", check=True).stdout)["title"] == "written while locked"
    sv("stop", runner["name"], check=True)


def test_hook_exits_at_once_when_the_database_is_missing(sv, home):
    fresh = home / "fresh"  # a Stratavore home whose database does not exist (yet)
    env = {"STRATAVORE_HOME": str(fresh)}
    sid = str(uuid.uuid4())
    proc, took = run_hook({"hook_event_name": "PermissionRequest", "session_id": sid, "tool_name": "Bash", "cwd": str(home)}, env)
    assert proc.returncode == 0 and took < 1.0, (proc, took)
    assert not (fresh / "data" / "stratavore.db").exists(), "a hook must not create the database"
    spool = fresh / "run" / "hook-spool.jsonl"
    wait_for(spool.exists, timeout=5)
    sv("ps", env=env, check=True)  # the database now exists
    proc, took = run_hook({"hook_event_name": "Stop", "session_id": str(uuid.uuid4())}, {**env, "STRATAVORE_HOOK_SYNC": "1"})
    assert proc.returncode == 0 and took < 1.0
    assert not spool.exists()
    found = {s["id"]: s for s in json.loads(sv("sessions", "--json", env=env, check=True).stdout)}
    assert found[sid]["status"] == "waiting" and found[sid]["status_detail"] == "permission: Bash" and found[sid]["cwd"] == str(home)


# -- the registry as a second source, external sessions --------------------------------------------


def test_registry_is_a_second_source_and_stale_files_are_ignored(sv, home, claude_dir, web):
    runner = launch(sv, "--agent", "claude")
    rid, name, pid = runner["id"], runner["name"], runner["agent_pid"]
    wait_status_events(home, rid, 1)
    own = wait_for(lambda: read_json(claude_dir / "sessions" / f"{pid}.json"))
    base = {"sessionId": runner["session_id"], "cwd": runner["cwd"], "startedAt": own["startedAt"], "name": name}
    now_ms = int(time.time() * 1000)

    # newer than the last hook: the registry says waiting, and ps shows it
    write_registry(claude_dir, pid, **base, status="waiting", waitingFor="worker request", updatedAt=now_ms, statusUpdatedAt=now_ms)
    shown = ps(sv)[name]
    assert (shown["agent_status"], shown["agent_status_detail"]) == ("waiting", "worker request")
    [(status, payload)] = status_events(home, rid)[1:]
    assert status == "waiting" and "hook" not in payload
    # older than what is known: ignored
    old_ms = int((shown["agent_status_at"] - 60) * 1000)
    write_registry(claude_dir, pid, **base, status="busy", updatedAt=old_ms, statusUpdatedAt=old_ms)
    assert ps(sv)[name]["agent_status"] == "waiting"
    # written for an earlier process with the same pid (started an hour before this one): ignored
    later_ms = now_ms + 1000
    write_registry(
        claude_dir, pid, **{**base, "startedAt": now_ms - 3_600_000}, status="idle", updatedAt=later_ms, statusUpdatedAt=later_ms
    )
    assert ps(sv)[name]["agent_status"] == "waiting"
    write_registry(claude_dir, pid, **base, status="idle", updatedAt=later_ms, statusUpdatedAt=later_ms)
    assert ps(sv)[name]["agent_status"] == "idle"

    # a registry file of a dead process is not a session
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = str(uuid.uuid4())
    write_registry(claude_dir, dead.pid, sessionId=stale, cwd=str(home), startedAt=now_ms, status="waiting", updatedAt=now_ms)
    listed = {s["id"] for s in json.loads(sv("sessions", "--all", "--json", check=True).stdout)}
    assert runner["session_id"] in listed and stale not in listed
    sv("stop", name, check=True)


def test_external_sessions_are_listed_with_all(sv, home, claude_dir, web):
    runner = launch(sv, "--agent", "claude")
    wait_status_events(home, runner["id"], 1)
    outsider = subprocess.Popen(["sleep", "60"])
    try:
        live = str(uuid.uuid4())
        started = int(time.time() * 1000)
        write_registry(
            claude_dir, outsider.pid, sessionId=live, cwd=str(web), startedAt=started, name="by hand",
            status="waiting", waitingFor="permission prompt", updatedAt=started,
        )  # fmt: skip
        past = str(uuid.uuid4())
        old_dir = claude_dir / "projects" / "-srv-old-checkout"
        old_dir.mkdir(parents=True)
        first = {
            "type": "user",
            "cwd": "/srv/old-checkout",
            "sessionId": past,
            "message": {"role": "user", "content": "fix the flaky test"},
        }
        (old_dir / f"{past}.jsonl").write_text(json.dumps(first) + "\n" + json.dumps({"type": "assistant", "sessionId": past}) + "\n")

        mine = [s["id"] for s in json.loads(sv("sessions", "--json", check=True).stdout)]
        assert mine == [runner["session_id"]]
        everything = {s["id"]: s for s in json.loads(sv("sessions", "--all", "--json", check=True).stdout)}
        assert set(everything) == {runner["session_id"], live, past}
        assert not everything[runner["session_id"]]["external"]
        assert everything[live]["external"] and everything[live]["runner"] is None
        assert (everything[live]["status"], everything[live]["cwd"], everything[live]["title"]) == ("waiting", str(web), "by hand")
        assert everything[past]["external"] and everything[past]["cwd"] == "/srv/old-checkout"
        assert everything[past]["title"] == "fix the flaky test"
        assert everything[past]["transcript_path"] == str(old_dir / f"{past}.jsonl")
        table = sv("sessions", "--all", check=True).stdout
        assert table.count("(external)") == 2 and live[:8] in table and past[:8] in table
        assert past[:8] not in sv("sessions", check=True).stdout
    finally:
        outsider.kill()
        outsider.wait()
    sv("stop", runner["name"], check=True)


# -- sessions and resume ---------------------------------------------------------------------------


def test_sessions_show_and_resume(sv, home, claude_dir, web, attach):
    runner = launch(sv, "--agent", "claude")
    name, sid = runner["name"], runner["session_id"]
    child = attach("attach", name)
    child.expect_exact(f"session {sid}")
    prompt(child, "add a health check endpoint")
    detach(child)
    transcript = expected_transcript(claude_dir, str(web), sid)
    assert transcript.exists()

    [listed] = json.loads(sv("sessions", "--project", "web", "--json", check=True).stdout)
    for key in ("id", "runner", "project", "cwd", "transcript_path", "title", "status", "started_at", "last_activity_at", "cost_usd"):
        assert key in listed, key
    assert (listed["id"], listed["runner"], listed["project"], listed["cwd"]) == (sid, name, "web", str(web))
    assert listed["transcript_path"] == str(transcript) and listed["title"] == "add a health check endpoint"
    assert listed["started_at"] <= listed["last_activity_at"] <= time.time()
    table = sv("sessions", check=True).stdout
    assert sid[:8] in table and name in table and "add a health check endpoint" in table
    shown = sv("session", "show", sid[:8], check=True).stdout
    assert re.search(rf"^id:\s+{sid}$", shown, re.M) and re.search(r"^title:\s+add a health check endpoint$", shown, re.M)
    assert_clean_error(sv("session", "show", "ffffffff"), 3, "no session 'ffffffff'")
    assert_clean_error(sv("resume", sid), 4, f"already running in {name}")

    sv("stop", name, check=True)
    # resume: `claude --resume <id>` in the recorded directory, same session id on a new runner
    child = attach("resume", sid, "--attach")
    child.expect_exact(f"session {sid}")
    prompt(child, "and a readiness check")
    detach(child)
    [resumed] = ps(sv).values()
    assert resumed["name"] != name and resumed["session_id"] == sid and resumed["cwd"] == str(web)
    command = resumed["command"]
    assert command[command.index("--resume") + 1] == sid and "--session-id" not in command
    assert json.loads(sv("session", "show", sid, "--json", check=True).stdout)["runner"] == resumed["name"]
    assert [json.loads(x)["message"]["content"] for x in transcript.read_text().splitlines() if '"type":"user"' in x] == [
        "add a health check endpoint",
        "and a readiness check",
    ]
    sv("stop", resumed["name"], check=True)

    # without its transcript a session cannot be resumed, and no runner is made
    transcript.rename(transcript.with_suffix(".moved"))
    before = len(ps(sv, "--all"))
    assert_clean_error(sv("resume", sid), 3, "has no transcript")
    assert len(ps(sv, "--all")) == before


def test_resume_refuses_a_session_whose_directory_is_gone(sv, home, claude_dir):
    gone = home / "gone"
    gone.mkdir()
    sv("project", "add", "api", str(gone), check=True)
    runner = launch(sv, "--agent", "claude", project="api")
    wait_status_events(home, runner["id"], 1)
    sv("stop", runner["name"], check=True)
    shutil.rmtree(gone)
    assert_clean_error(sv("resume", runner["session_id"]), 2, "no longer exists")
    assert list(ps(sv, "--all")) == [runner["name"]]


def test_simulated_claude_refuses_a_missing_transcript(home):
    # the stand-in behaves like Claude Code: --resume of an unknown session is an error, not a fresh start
    missing = str(uuid.uuid4())
    proc = subprocess.run(
        [*SV, "simulated-claude", "--resume", missing], capture_output=True, text=True, timeout=20, cwd=home, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 1 and f"No conversation found with session ID: {missing}" in proc.stdout


# -- other agents: presets and status from output activity -------------------------------------------

FAKE_AGENT = """#!/bin/sh
echo "fake-agent-args:$*"
while [ -e "$FLOW" ]; do echo tick; sleep 0.05; done
echo quiet
exec sleep 60
"""


@pytest.fixture
def fake_bin(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH directory with a `codex` that prints while $FLOW exists, then goes quiet."""
    folder = home / "bin"
    folder.mkdir()
    script = folder / "codex"
    script.write_text(FAKE_AGENT)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def log_of(sv, name: str) -> str:
    return sv("logs", name, check=True).stdout


def test_codex_preset_and_status_from_output(sv, home, web, fake_bin, monkeypatch):
    monkeypatch.setenv("STRATAVORE_HEARTBEAT_INTERVAL", "0.2")
    monkeypatch.setenv("STRATAVORE_IDLE_AFTER", "1")
    flow = home / "flow"
    flow.touch()
    runner = launch(sv, "--agent", "codex", "-e", f"FLOW={flow}", "--", "--full-auto", "fix it")
    rid, name = runner["id"], runner["name"]
    assert runner["agent"] == "codex" and runner["command"] == ["codex", "--full-auto", "fix it"]
    wait_for(lambda: "fake-agent-args:--full-auto fix it" in log_of(sv, name))
    wait_for(lambda: ps(sv)[name]["agent_status"] == "working", timeout=5)
    # working as long as output flows
    for _ in range(3):
        time.sleep(0.3)
        assert ps(sv)[name]["agent_status"] == "working"
    flow.unlink()
    wait_for(lambda: "quiet" in log_of(sv, name))
    wait_for(lambda: ps(sv)[name]["agent_status"] == "idle", timeout=5)
    found = status_events(home, rid)
    assert [s for s, _ in found] == ["working", "idle"], found
    # idle only after idle_after seconds of silence (output is recorded once per heartbeat)
    [idle_at] = [
        r["created_at"] for r in db_query(home, "SELECT created_at FROM events WHERE aggregate_id=? AND type='runner.idle'", (rid,))
    ]
    [last_output] = [r["last_output_at"] for r in db_query(home, "SELECT last_output_at FROM runners WHERE id=?", (rid,))]
    assert idle_at - last_output >= 1 - 0.2, (idle_at, last_output)
    sv("stop", name, check=True)


def test_user_presets_default_agents_and_unknown_agents(sv, home, web, fake_bin):
    config = home / "config" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[agents.mybot]\ncommand = ["{fake_bin / "codex"}", "--from-preset"]\n')
    runner = launch(sv, "--agent", "mybot", "--", "--extra")
    assert runner["agent"] == "mybot" and runner["command"] == [str(fake_bin / "codex"), "--from-preset", "--extra"]
    wait_for(lambda: "fake-agent-args:--from-preset --extra" in log_of(sv, runner["name"]))

    before = set(ps(sv, "--all"))
    assert_clean_error(sv("launch", "web", "--agent", "nosuch"), 2, "unknown agent 'nosuch'")
    assert_clean_error(sv("project", "add", "bad", str(web), "--agent", "nosuch"), 2, "unknown agent 'nosuch'")
    assert set(ps(sv, "--all")) == before

    # a project's default agent is used when launch names none
    api = home / "api"
    api.mkdir()
    sv("project", "add", "api", str(api), "--agent", "claude", check=True)
    default = launch(sv, project="api")
    assert default["agent"] == "claude" and default["command"][default["command"].index("--session-id") + 1] == default["session_id"]
    wait_status_events(home, default["id"], 1)
    # and the built-in presets build their own command lines
    settings = Settings()
    for agent in ("codex", "aider", "gemini"):
        plan = agents.plan_launch(agent, ["--yes"], settings, runner_name="x", cwd=str(api))
        assert (plan.agent, plan.command, plan.session_id) == (agent, [agent, "--yes"], None)
    sv("stop", "--all", check=True)


# -- the real Claude Code ------------------------------------------------------------------------------


def test_every_flag_stratavore_passes_is_in_the_real_claude_help(home):
    claude = shutil.which("claude")
    if claude is None:
        pytest.skip("the real Claude Code CLI is not installed (npm install -g @anthropic-ai/claude-code)")
    env = {**os.environ, "CLAUDE_CONFIG_DIR": str(home / "real-claude"), "DISABLE_AUTOUPDATER": "1"}
    proc = subprocess.run([claude, "--help"], capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    # option lines look like "  -n, --name <name>   ..." or "  --session-id <uuid>   ..."
    known = set()
    for line in proc.stdout.splitlines():
        match = re.match(r"^\s{2}(-[\w-]+(?:,\s*-[\w-]+)*)", line)
        if match:
            known.update(f.strip() for f in match.group(1).split(","))
    assert "--help" in known or "-h" in known, proc.stdout[:500]
    settings = Settings(claude_command="claude")
    fresh = agents.plan_launch("claude", [], settings, runner_name="web-1", cwd=str(home))
    resumed = agents.plan_launch("claude", [], settings, runner_name="web-1", cwd=str(home), resume_session=fresh.session_id)
    passed = {arg for plan in (fresh, resumed) for arg in plan.command[1:] if arg.startswith("-")}
    assert {"--session-id", "-n", "--settings", "--resume"} <= passed
    missing = passed - known
    version = subprocess.run(
        [claude, "--version"], capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    ).stdout.strip()
    assert not missing, f"claude {version} --help lacks {sorted(missing)}"
    assert {"--name", "--session-id", "--resume", "--settings"} <= known
