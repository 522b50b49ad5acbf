import json
import os
import subprocess
import time

from .conftest import SV, wait_for


def test_events_filters_and_json(sv, project):
    sv("launch", "web", "--name", "one", "--", "sleep", "300", check=True)
    sv("launch", "web", "--name", "two", "--", "true", check=True)
    sv("stop", "one", check=True)
    lines = [json.loads(line) for line in sv("events", "--json", "--runner", "one", check=True).stdout.splitlines()]
    assert [e["type"] for e in lines] == ["runner.created", "runner.running", "runner.stopping", "runner.stopped"]
    assert all(e["payload"]["name"] == "one" for e in lines)
    seqs = [e["seq"] for e in lines]
    assert seqs == sorted(seqs)
    stopped = [json.loads(x) for x in sv("events", "--json", "--type", "runner.stop*", check=True).stdout.splitlines()]
    assert {e["type"] for e in stopped} == {"runner.stopping", "runner.stopped"}
    last = sv("events", "--last", "1", check=True).stdout.strip().splitlines()
    assert len(last) == 1
    text = sv("events", check=True).stdout
    assert "runner.exited" in text and "two" in text


def test_events_follow_shows_new_events_as_they_happen(sv, project, home):
    follower = subprocess.Popen(
        [*SV, "events", "-f", "--json"],
        env={**os.environ, "STRATAVORE_HOME": str(home)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        sv("launch", "web", "--name", "live", "--", "sleep", "300", check=True)
        seen = []

        def got_running():
            line = follower.stdout.readline()
            seen.append(json.loads(line))
            return seen[-1]["type"] == "runner.running"

        wait_for(got_running, timeout=10)
        assert [e["type"] for e in seen][-2:] == ["runner.created", "runner.running"]
    finally:
        follower.kill()
        follower.wait()
        follower.stdout.close()
