"""Plugins: loading, isolation of failures, blocking, launch rewriting, commands, on_event."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from stratavore import consumers, db, events, notify, plugins, supervisor
from stratavore.runners import get

from .conftest import wait_for


@pytest.fixture(autouse=True)
def no_real_keyring(home, monkeypatch):
    monkeypatch.setenv("STRATAVORE_KEYRING", "off")


def write_plugin(ctx, name: str, source: str) -> None:
    folder = plugins.plugins_dir(ctx.paths)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


WRAP = """
    from stratavore.hookspecs import hookimpl

    @hookimpl
    def rewrite_launch(agent, command, env):
        if env.get("NO_WRAP"):
            return None
        return ["sh", "-c", 'echo "wrapped by plugin"; exec "$@"', "wrap", *command]
"""

BROKEN_IMPORT = """
    raise RuntimeError("this plugin cannot even load")
"""

RAISES = """
    from stratavore.hookspecs import hookimpl

    @hookimpl
    def rewrite_launch(command):
        raise ValueError("boom in rewrite")

    @hookimpl
    def on_event(event):
        raise ValueError("boom in on_event")
"""

UNKNOWN_HOOK = """
    from stratavore.hookspecs import hookimpl

    @hookimpl
    def no_such_hook():
        pass
"""

RECORDS = """
    import json, os
    from stratavore.hookspecs import hookimpl

    @hookimpl
    def on_event(event):
        with open(os.environ["STRATAVORE_HOME"] + "/seen.jsonl", "a") as f:
            f.write(json.dumps([event.seq, event.event_id, event.type]) + "\\n")
"""

COMMAND = """
    import click
    from stratavore.hookspecs import hookimpl

    @click.command("hello")
    def hello():
        \"\"\"Say hello from a plugin.\"\"\"
        click.echo("hello from a plugin")

    @hookimpl
    def register_commands(cli):
        cli.add_command(hello)
"""


def test_bundled_channels_load_and_failures_are_isolated(ctx):
    write_plugin(ctx, "broken", BROKEN_IMPORT)
    write_plugin(ctx, "raises", RAISES)
    write_plugin(ctx, "unknown", UNKNOWN_HOOK)
    write_plugin(ctx, "wrap", WRAP)
    host = plugins.load(ctx.paths)
    by_name = {p.name: p for p in host.plugins}
    assert {n for n, p in by_name.items() if p.source == "bundled"} == {"ntfy", "telegram", "webhook", "desktop"}
    assert set(host.channel_kinds()) == {"ntfy", "telegram", "webhook", "desktop"}
    assert by_name["broken"].status == "error" and "this plugin cannot even load" in by_name["broken"].error
    assert by_name["unknown"].status == "error" and "no_such_hook" in by_name["unknown"].error
    assert by_name["raises"].status == "loaded" and by_name["raises"].hooks == ["on_event", "rewrite_launch"]
    # the raising rewrite is skipped, the working one still applies
    assert host.rewrite_launch("generic", ["true"], {}) == ["sh", "-c", 'echo "wrapped by plugin"; exec "$@"', "wrap", "true"]
    assert "boom in rewrite" in by_name["raises"].error


def test_disable_plugins_blocks_by_name(ctx, sv):
    write_plugin(ctx, "wrap", WRAP)
    host = plugins.load(ctx.paths, {"STRATAVORE_DISABLE_PLUGINS": "wrap, telegram"})
    by_name = {p.name: p for p in host.plugins}
    assert by_name["wrap"].status == by_name["telegram"].status == "blocked"
    assert "telegram" not in host.channel_kinds()
    assert host.rewrite_launch("generic", ["true"], {}) == ["true"]
    assert plugins.launch_rewriter(ctx.paths, {"STRATAVORE_DISABLE_PLUGINS": "wrap"}) is None
    listed = json.loads(sv("plugins", "list", "--json", env={"STRATAVORE_DISABLE_PLUGINS": "wrap"}, check=True).stdout)
    assert {p["name"]: p["status"] for p in listed["plugins"]}["wrap"] == "blocked"


def test_rewrite_launch_changes_a_real_launch(ctx, project, sv):
    write_plugin(ctx, "wrap", WRAP)
    out = sv("launch", "web", "--", "sh", "-c", "echo agent ran; sleep 30", check=True)
    assert out.returncode == 0
    [runner] = json.loads(sv("ps", "--json", check=True).stdout)
    assert runner["command"][:2] == ["sh", "-c"] and runner["command"][3] == "wrap"
    wait_for(lambda: "agent ran" in sv("logs", runner["name"]).stdout)
    assert "wrapped by plugin" in sv("logs", runner["name"], check=True).stdout
    # the runner's own environment reaches the hook: this one opts out
    out = sv("launch", "web", "-e", "NO_WRAP=1", "--", "sleep", "30", check=True)
    runners = json.loads(sv("ps", "--json", check=True).stdout)
    assert [r["command"] for r in runners if r["name"] != runner["name"]] == [["sleep", "30"]]
    sv("stop", "--all", check=True)


def test_a_rewrite_that_raises_never_stops_a_launch(ctx, project):
    write_plugin(ctx, "raises", RAISES)
    result = supervisor.launch(ctx, "web", ["sleep", "30"])
    [runner] = result.started
    assert json.loads(ctx.conn.execute("SELECT command FROM runners WHERE id=?", (runner.id,)).fetchone()[0]) == ["sleep", "30"]
    supervisor.stop(ctx, [get(ctx.conn, runner.id)])


def test_a_launch_without_plugins_does_not_import_pluggy(ctx, project, home):
    code = (
        "import sys; from stratavore.context import Context; from stratavore import supervisor\n"
        "ctx = Context.load(); r = supervisor.launch(ctx, 'web', ['true']); print('pluggy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_plugin_commands_join_the_command_line(ctx, sv):
    write_plugin(ctx, "greeter", COMMAND)
    assert sv("hello", check=True).stdout == "hello from a plugin\n"
    assert "hello" in sv("--help", check=True).stdout
    table = sv("plugins", "list", check=True).stdout
    assert "greeter" in table and "register_commands" in table


def test_on_event_runs_in_the_daemon_and_a_raising_plugin_is_parked_not_fatal(ctx, sv):
    write_plugin(ctx, "records", RECORDS)
    write_plugin(ctx, "raises", RAISES)
    write_plugin(ctx, "broken", BROKEN_IMPORT)
    env = {"STRATAVORE_DELIVERY_MAX_ATTEMPTS": "2", "STRATAVORE_DELIVERY_BACKOFF_INITIAL": "0.01"}
    sv("daemon", "start", env=env, check=True)
    try:
        wait_for(lambda: consumers.get_cursor(ctx.conn, "plugin:records"))
        with db.write(ctx.conn):
            events.append(ctx.conn, "runner", "r1", 1, "runner.idle", {"name": "web-1"})
        seen = ctx.paths.data_dir.parent / "seen.jsonl"
        wait_for(lambda: seen.exists() and "runner.idle" in seen.read_text())
        wait_for(lambda: any(p.consumer == "plugin:raises" for p in consumers.list_parked(ctx.conn)))
        [parked] = [p for p in consumers.list_parked(ctx.conn) if p.consumer == "plugin:raises"]
        assert parked.type == "runner.idle" and parked.error == "ValueError: boom in on_event" and parked.attempts == 2
        status = json.loads(sv("daemon", "status", "--json").stdout)
        assert status["running"]
        listed = {p["name"]: p for p in json.loads(sv("plugins", "list", "--json", check=True).stdout)["plugins"]}
        assert listed["raises"]["last_event_error"] == "ValueError: boom in on_event"
        assert listed["broken"]["status"] == "error"
    finally:
        sv("daemon", "stop", check=True)
    first = seen.read_text().splitlines()
    # restarted: the plugin resumes after its cursor, nothing is delivered twice
    sv("daemon", "start", env=env, check=True)
    with db.write(ctx.conn):
        events.append(ctx.conn, "runner", "r1", 2, "runner.working", {"name": "web-1"})
    wait_for(lambda: "runner.working" in seen.read_text())
    sv("daemon", "stop", check=True)
    lines = [json.loads(line) for line in seen.read_text().splitlines()]
    ids = [event_id for _, event_id, _ in lines]
    assert len(ids) == len(set(ids)), lines
    assert [s for s, _, _ in lines] == sorted(s for s, _, _ in lines)
    assert len(lines) > len(first)


def test_sv_entry_point_plugins_are_noticed(tmp_path, monkeypatch, ctx):
    # a distribution on sys.path declaring the group is noticed by the cheap scan, and the cache follows changes
    site = tmp_path / "site"
    dist = site / "myplug-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 1.0\n")
    (site / "myplug.py").write_text(
        "from stratavore.hookspecs import hookimpl\n\n@hookimpl\ndef rewrite_launch(command):\n    return ['env', *command]\n"
    )
    monkeypatch.syspath_prepend(str(site))
    ctx.paths.ensure()
    assert plugins.launch_rewriter(ctx.paths) is None
    time.sleep(0.01)
    (dist / "entry_points.txt").write_text("[stratavore]\nmyplug = myplug\n")
    (site / "touch").write_text("")  # installing changes the directory's mtime
    rewrite = plugins.launch_rewriter(ctx.paths)
    assert rewrite is not None and rewrite("generic", ["true"], {}) == ["env", "true"]
    host = plugins.load(ctx.paths)
    assert {p.name: p.source for p in host.plugins}["myplug"] == "entry point myplug"


def test_cli_plugins_list_runs_without_the_daemon(sv):
    out = sv("plugins", "list", check=True).stdout
    assert "ntfy" in out and "bundled" in out and "Plugin folder:" in out


def test_notify_kinds_come_from_plugins(ctx):
    write_plugin(
        ctx,
        "pager",
        """
        from stratavore.hookspecs import hookimpl
        from stratavore.notify import Channel, Option

        class Pager(Channel):
            kind = "pager"
            options = (Option("number", "who", required=True),)
            sent = []

            def send(self, message):
                Pager.sent.append(message.title)

        @hookimpl
        def notification_channels():
            return [Pager]
        """,
    )
    kinds = plugins.load(ctx.paths).channel_kinds()
    notify.add_channel(ctx, kinds, "pager", {"number": "555"})
    assert notify.list_channels(ctx.conn)[0].config == {"number": "555"}
    with db.write(ctx.conn):
        events.append(ctx.conn, "runner", "r1", 1, "runner.failed", {"name": "web-1"})
    dispatcher = notify.build_dispatcher(ctx)
    dispatcher.run_once(ctx.conn)
    assert sys.modules["stratavore_user_plugin_pager"].Pager.sent == ["web-1 failed"]
