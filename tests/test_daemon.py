import json

from stratavore import events

from .conftest import assert_clean_error, wait_for


def test_daemon_start_status_stop(sv, ctx, project):
    assert sv("daemon", "status").returncode == 3
    sv("launch", "web", "--", "sleep", "300", check=True)
    out = sv("daemon", "start", check=True, env={"STRATAVORE_RECONCILE_INTERVAL": "0.2"}).stdout
    assert "Daemon started" in out
    assert_clean_error(sv("daemon", "start"), 9, "already running")

    def reconciled():
        status = json.loads(sv("daemon", "status", "--json").stdout)
        jobs = {j["job_id"]: j for j in status["jobs"]}
        return status if "reconcile" in jobs and jobs["reconcile"]["runs"] >= 2 else None

    status = wait_for(reconciled, timeout=15)
    assert status["running"] and status["active_runners"] == 1
    assert "reconcile" in sv("daemon", "status", check=True).stdout
    started = events.list_events(ctx.conn, types=("daemon.started",))
    assert started[-1].payload["adopted"] == 1
    assert "Daemon stopped" in sv("daemon", "stop", check=True).stdout
    assert sv("daemon", "status").returncode == 3
    assert events.list_events(ctx.conn, types=("daemon.stopped",))
    assert_clean_error(sv("daemon", "stop"), 9, "not running")
    # the runner never depended on the daemon
    assert json.loads(sv("ps", "--json").stdout)[0]["state"] == "running"
