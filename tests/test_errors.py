"""Bad input: a one-line error, a meaningful exit code, no traceback, nothing stored lost."""

from __future__ import annotations

import json
import sqlite3
import subprocess

from stratavore import db, projects
from stratavore.errors import ExitCode

from .conftest import SV, assert_clean_error


def test_unknown_project(sv, workdir):
    assert_clean_error(sv("launch", "nope", "--", "sleep", "1"), ExitCode.NOT_FOUND, "no project named 'nope'")
    assert_clean_error(sv("project", "show", "nope"), ExitCode.NOT_FOUND, "no project named 'nope'")


def test_unknown_runner(sv, project):
    for command in (["stop", "ghost"], ["attach", "ghost"], ["logs", "ghost"], ["rm", "ghost"], ["restart", "ghost"]):
        assert_clean_error(sv(*command), ExitCode.NOT_FOUND, "no runner named 'ghost'")


def test_ambiguous_prefix(sv, ctx, project):
    for suffix in ("1", "2"):
        with db.write(ctx.conn):
            ctx.conn.execute(
                "INSERT INTO runners(id, name, project_id, command, cwd, state, created_at) VALUES (?, ?, ?, ?, ?, 'exited', 0)",
                (f"abc{suffix}" + "0" * 29, f"r{suffix}", project.id, '["true"]', project.path),
            )
    assert_clean_error(sv("logs", "abc"), ExitCode.INVALID_INPUT, "matches several runners (r1, r2)")
    assert sv("logs", "abc1").returncode == 0


def test_invalid_names(sv, workdir):
    for bad in ("bad name", "_x", "a/b", "x" * 64, "..", "a..b"):
        assert_clean_error(sv("project", "add", bad, str(workdir)), ExitCode.INVALID_INPUT, "invalid project name")
    sv("project", "add", "web", str(workdir), check=True)
    assert_clean_error(sv("launch", "web", "--name", "no way", "--", "true"), ExitCode.INVALID_INPUT, "invalid runner name")


def test_missing_path(sv, home):
    assert_clean_error(sv("project", "add", "web", str(home / "nowhere")), ExitCode.INVALID_INPUT, "does not exist")
    (home / "file").write_text("x")
    assert_clean_error(sv("project", "add", "web", str(home / "file")), ExitCode.INVALID_INPUT, "not a directory")


def test_duplicate_project_keeps_the_first(sv, workdir, home):
    sv("project", "add", "web", str(workdir), check=True)
    other = home / "other"
    other.mkdir()
    assert_clean_error(sv("project", "add", "web", str(other)), ExitCode.CONFLICT, "already exists")
    shown = json.loads(sv("project", "show", "web", "--json", check=True).stdout)
    assert shown["path"] == str(workdir)


def test_command_not_found_is_recorded_as_failed(sv, project):
    proc = sv("launch", "web", "--", "no-such-command-xyz")
    assert proc.returncode == ExitCode.LAUNCH_FAILED
    assert "command not found: no-such-command-xyz" in proc.stderr
    assert "Traceback" not in proc.stderr
    [runner] = json.loads(sv("ps", "--all", "--json", check=True).stdout)
    assert runner["state"] == "failed"
    assert runner["reason"] == "command not found: no-such-command-xyz"


def test_missing_command(sv, project):
    assert_clean_error(sv("launch", "web", "--count", "0", "--", "true"), ExitCode.INVALID_INPUT, "--count")
    assert_clean_error(sv("launch", "web"), 2, "no command given")
    assert_clean_error(sv("launch", "web", "--count", "x", "--", "true"), 2, "'x' is not a valid integer")


def test_quota_exceeded(sv, workdir):
    sv("project", "add", "web", str(workdir), "--max-runners", "2", check=True)
    sv("launch", "web", "--count", "2", "--", "sleep", "300", check=True)
    assert_clean_error(sv("launch", "web", "--", "sleep", "300"), ExitCode.QUOTA_EXCEEDED, "allows 2 active runner(s); 2 active")
    assert len(json.loads(sv("ps", "--json").stdout)) == 2


def test_global_quota(sv, workdir):
    sv("project", "add", "web", str(workdir), check=True)
    proc = sv("launch", "web", "--count", "3", "--", "sleep", "300", env={"STRATAVORE_MAX_RUNNERS": "2"})
    assert_clean_error(proc, ExitCode.QUOTA_EXCEEDED, "the global limit is 2")
    assert json.loads(sv("ps", "--all", "--json").stdout) == []


def test_twenty_simultaneous_launches_against_a_quota_of_five(sv, workdir, home):
    sv("project", "add", "web", str(workdir), "--max-runners", "5", check=True)
    env = {"STRATAVORE_HOME": str(home), "PATH": "/usr/bin:/bin"}
    launches = [
        subprocess.Popen([*SV, "launch", "web", "--", "sleep", "300"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(20)
    ]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in launches]
    for p in launches:
        p.stdout.close()
        p.stderr.close()
    ok = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] == ExitCode.QUOTA_EXCEEDED]
    assert len(ok) == 5, results
    assert len(refused) == 15, results
    assert all("allows 5 active runner(s)" in err for _, err in refused)
    running = json.loads(sv("ps", "--json", check=True).stdout)
    assert len(running) == 5 and all(r["state"] == "running" for r in running)


def test_database_locked_too_long(sv, ctx, workdir):
    projects.add(ctx.conn, "web", workdir)
    blocker = sqlite3.connect(ctx.paths.db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        proc = sv("project", "add", "api", str(workdir), env={"STRATAVORE_BUSY_TIMEOUT": "0.2"})
        assert_clean_error(proc, ExitCode.DATABASE_BUSY, "locked")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    names = [p["name"] for p in json.loads(sv("project", "list", "--json", check=True).stdout)]
    assert names == ["web"]


def test_unreadable_config(sv, home, workdir):
    config = home / "config"
    config.mkdir(exist_ok=True)
    (config / "config.toml").write_text("stop_timeout = [oops\n")
    assert_clean_error(sv("ps"), ExitCode.CONFIG_ERROR, "invalid TOML")
    (config / "config.toml").write_text('stop_timeout = "soon"\n')
    assert_clean_error(sv("ps"), ExitCode.CONFIG_ERROR, "stop_timeout must be a number")
    (config / "config.toml").write_text("no_such_setting = 1\n")
    assert_clean_error(sv("ps"), ExitCode.CONFIG_ERROR, "unknown setting 'no_such_setting'")
    (config / "config.toml").write_text('restart = "sometimes"\n')
    assert_clean_error(sv("ps"), ExitCode.CONFIG_ERROR, "restart must be one of")
    (config / "config.toml").unlink()
    (config / "config.toml").mkdir()
    assert_clean_error(sv("ps"), ExitCode.CONFIG_ERROR, "cannot read")


def test_bad_environment_setting(sv):
    assert_clean_error(sv("ps", env={"STRATAVORE_STOP_TIMEOUT": "later"}), ExitCode.CONFIG_ERROR, "STRATAVORE_STOP_TIMEOUT")


def test_bad_flags(sv, project):
    assert_clean_error(sv("launch", "web", "-e", "NOEQUALS", "--", "true"), ExitCode.INVALID_INPUT, "KEY=VALUE")
    assert_clean_error(sv("launch", "web", "--stop-signal", "NOPE", "--", "true"), ExitCode.INVALID_INPUT, "unknown signal")
    assert_clean_error(sv("stop"), ExitCode.INVALID_INPUT, "name at least one runner")
    assert_clean_error(sv("attach", "x", "--detach-key", "alt-x"), ExitCode.NOT_FOUND, "no runner")
    assert json.loads(sv("ps", "--all", "--json").stdout) == []


def test_newer_database_is_refused(sv, ctx, workdir):
    projects.add(ctx.conn, "web", workdir)
    ctx.conn.execute(f"PRAGMA user_version={db.SCHEMA_VERSION + 1}")
    ctx.close()
    assert_clean_error(sv("ps"), ExitCode.CONFIG_ERROR, "newer than this stratavore knows")


def test_usage_dates_out_of_range(sv):
    assert_clean_error(sv("usage", "daily", "-u", "99991231"), ExitCode.INVALID_INPUT, "between 1971 and 9998")
    assert_clean_error(sv("usage", "daily", "-s", "00010101"), ExitCode.INVALID_INPUT, "between 1971 and 9998")


def test_an_internal_error_is_one_line_with_the_traceback_in_a_log(sv, home):
    # a price table that is not JSON: a packaging fault, not bad input, still no traceback on screen
    import shutil

    from stratavore import pricing

    shipped = pricing.Path(pricing.__file__).parent / "data" / "prices.json"
    backup = home / "prices.json.bak"
    shutil.copy(shipped, backup)
    try:
        shipped.write_text("{not json")
        proc = sv("usage", "prices")
    finally:
        shutil.copy(backup, shipped)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in proc.stderr
    log = home / "logs" / "stratavore-errors.log"
    assert "Traceback" in log.read_text()
