import json

from .conftest import processes_of


def test_demo_with_cleanup_leaves_nothing_running(sv, home):
    proc = sv("demo", "--count", "2", "--cleanup", check=True, env={"STRATAVORE_SIM_SPEED": "0.2"})
    out = proc.stdout
    assert "$ stratavore ps" in out and "demo-1" in out and "demo-2" in out
    assert "running" in out
    assert "$ stratavore sessions" in out and "claude" in out
    assert "waiting: permission" in out  # demo-1's first prompt asks for permission, and ps shows it
    assert list((home / "data" / "demo-claude" / "projects").glob("*/*.jsonl"))  # transcripts, not in ~/.claude
    assert "$ stratavore usage session" in out and "TOTAL" in out
    assert "event budget.exceeded: 100% of project:demo:day reached" in out  # the simulated agents hit the demo budget
    assert "Allow? (y/n)" in out or "Done:" in out  # the logs section shows the simulated agent's terminal
    assert "stratavore attach demo-1" in out
    assert "Nothing is left running" in out
    assert json.loads(sv("ps", "--json").stdout) == []
    assert processes_of(str(home)) == []


def test_demo_announces_what_it_leaves_running(sv, home):
    out = sv("demo", "--count", "2", check=True, env={"STRATAVORE_SIM_SPEED": "0.2"}).stdout
    running = json.loads(sv("ps", "--json").stdout)
    assert {r["name"] for r in running} == {"demo-1", "demo-2"}
    assert "Left running: demo-1 demo-2" in out
    sv("stop", "--project", "demo", check=True)
    assert json.loads(sv("ps", "--json").stdout) == []
