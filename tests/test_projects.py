import json

from .conftest import assert_clean_error


def test_project_lifecycle(sv, workdir, home):
    out = sv("project", "add", "web", str(workdir), "--max-runners", "4", check=True).stdout
    assert "Added project web" in out and "at most 4 runners" in out
    listed = json.loads(sv("project", "list", "--json", check=True).stdout)
    assert [(p["name"], p["path"], p["max_runners"], p["active_runners"]) for p in listed] == [("web", str(workdir), 4, 0)]
    moved = home / "moved"
    moved.mkdir()
    sv("project", "set", "web", "--path", str(moved), "--max-runners", "0", check=True)
    shown = json.loads(sv("project", "show", "web", "--json", check=True).stdout)
    assert shown["path"] == str(moved) and shown["max_runners"] is None and shown["version"] == 2
    assert "web" in sv("project", "list", check=True).stdout
    assert_clean_error(sv("project", "set", "web"), 2, "nothing to change")
    sv("project", "rm", "web", check=True)
    assert json.loads(sv("project", "list", "--json", check=True).stdout) == []
    types = [json.loads(line)["type"] for line in sv("events", "--json", check=True).stdout.splitlines()]
    assert types == ["project.added", "project.updated", "project.removed"]


def test_rm_refuses_active_runners_unless_forced(sv, workdir):
    sv("project", "add", "web", str(workdir), check=True)
    sv("launch", "web", "--count", "2", "--", "sleep", "300", check=True)
    assert_clean_error(sv("project", "rm", "web"), 4, "has 2 active runner(s)")
    assert len(json.loads(sv("ps", "--json").stdout)) == 2
    pids = [r["agent_pid"] for r in json.loads(sv("ps", "--json").stdout)]
    sv("project", "rm", "web", "--force", check=True)
    assert json.loads(sv("project", "list", "--json").stdout) == []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().split(") ")[1][0] == "Z"
        except FileNotFoundError:
            pass
