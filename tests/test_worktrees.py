"""`launch --worktree` and `rm --worktree/--keep-worktree` against real git repositories."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import assert_clean_error, wait_for

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}
SLEEP = ["--", "sleep", "60"]


@pytest.fixture(autouse=True)
def isolated(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(home / "claude"))
    monkeypatch.setenv("STRATAVORE_CLAUDE_COMMAND", shlex.join([sys.executable, "-m", "stratavore", "simulated-claude"]))
    monkeypatch.setenv("STRATAVORE_SIM_SPEED", "0.05")
    # git must never find a repository above the test's home
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(home.parent))
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)


def git(*args: str, cwd: Path | str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture
def repo(sv, workdir: Path) -> Path:
    """A git repository with one commit, added as project `web`."""
    git("init", "-q", "-b", "main", cwd=workdir)
    (workdir / "README.md").write_text("hello\n")
    git("add", "README.md", cwd=workdir)
    git("commit", "-q", "-m", "initial", cwd=workdir)
    sv("project", "add", "web", str(workdir), check=True)
    return workdir


def launch(sv, *args: str, project: str = "web") -> dict:
    [runner] = json.loads(sv("launch", project, "--json", *args, check=True).stdout)["started"]
    return runner


def runners(sv) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(sv("ps", "--all", "--json", check=True).stdout)}


def worktree_paths(repo: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in git("worktree", "list", "--porcelain", cwd=repo).splitlines() if line.startswith("worktree ")]


def branch_exists(repo: Path, branch: str) -> bool:
    return bool(git("branch", "--list", branch, cwd=repo))


def test_worktree_gives_the_runner_its_own_checkout_and_branch(sv, home, repo):
    runner = launch(sv, "--agent", "claude", "--worktree", "fix-login", "--", "--model", "opus")
    tree = home / "data" / "worktrees" / "web" / "fix-login"
    assert runner["worktree_path"] == str(tree) and runner["cwd"] == str(tree)
    assert runner["worktree_branch"] == "stratavore/fix-login" and runner["repo_path"] == str(repo)
    assert runner["command"][-2:] == ["--model", "opus"]
    assert str(tree) in worktree_paths(repo)
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=tree) == "stratavore/fix-login"
    assert (tree / "README.md").read_text() == "hello\n"
    assert psutil.Process(runner["agent_pid"]).cwd() == os.path.realpath(tree)
    # Claude files the session under the worktree's own path
    session = json.loads(sv("session", "show", runner["session_id"], "--json", check=True).stdout)
    assert session["transcript_path"] == str(
        home / "claude" / "projects" / re.sub(r"[^A-Za-z0-9]", "-", str(tree)) / f"{runner['session_id']}.jsonl"
    )

    # the same name again: a clean refusal, and no second runner
    assert_clean_error(sv("launch", "web", "--worktree", "fix-login", *SLEEP), 4, "worktree 'fix-login' already exists")
    assert list(runners(sv)) == [runner["name"]]

    sv("stop", runner["name"], check=True)
    out = sv("rm", runner["name"], "--keep-worktree", check=True).stdout
    assert f"Kept worktree {tree} (branch stratavore/fix-login)" in out
    assert tree.is_dir() and str(tree) in worktree_paths(repo) and branch_exists(repo, "stratavore/fix-login")
    assert runners(sv) == {}


def test_worktree_outside_a_git_repository_is_refused(sv, home, workdir):
    sv("project", "add", "plain", str(workdir), check=True)
    assert_clean_error(sv("launch", "plain", "--worktree", "x", *SLEEP), 2, "is not inside a git repository; --worktree needs one")
    assert runners(sv) == {}
    assert not (home / "data" / "worktrees" / "plain" / "x").exists()


def test_rm_removes_worktrees_but_never_uncommitted_work_without_force(sv, home, repo):
    clean = launch(sv, "--name", "clean", "--worktree", "clean-one", *SLEEP)
    dirty = launch(sv, "--name", "dirty", "--worktree", "dirty-one", *SLEEP)
    clean_tree, dirty_tree = Path(clean["worktree_path"]), Path(dirty["worktree_path"])
    # work committed on the worktree's branch survives its removal
    (clean_tree / "feature.txt").write_text("done\n")
    git("add", "feature.txt", cwd=clean_tree)
    git("commit", "-q", "-m", "feature", cwd=clean_tree)
    (dirty_tree / "README.md").write_text("changed\n")
    (dirty_tree / "notes.txt").write_text("unsaved\n")
    sv("stop", "--all", check=True)

    assert_clean_error(sv("rm", "dirty", "--worktree"), 4, "has 2 uncommitted change(s)")
    assert "dirty" in runners(sv) and (dirty_tree / "notes.txt").read_text() == "unsaved\n"

    out = sv("rm", "clean", "--worktree", check=True).stdout
    assert f"Removed worktree {clean_tree} (branch stratavore/clean-one kept)" in out
    assert not clean_tree.exists() and str(clean_tree) not in worktree_paths(repo)
    assert git("log", "--format=%s", "stratavore/clean-one", cwd=repo).splitlines() == ["feature", "initial"]

    sv("rm", "dirty", "--worktree", "--force", check=True)
    assert not dirty_tree.exists() and branch_exists(repo, "stratavore/dirty-one")
    assert runners(sv) == {}
    assert (repo / "README.md").read_text() == "hello\n", "the main checkout is untouched"


def test_worktree_of_a_subfolder_project_with_a_generated_name(sv, home, repo):
    sub = repo / "services" / "api"
    sub.mkdir(parents=True)
    (sub / "app.py").write_text("print('api')\n")
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "api", cwd=repo)
    sv("project", "add", "api", str(sub), check=True)
    runner = launch(sv, "--worktree", *SLEEP, project="api")
    tree = Path(runner["worktree_path"])
    assert tree.parent == home / "data" / "worktrees" / "api" and tree.name.startswith("api-")
    assert runner["worktree_branch"] == f"stratavore/{tree.name}" and runner["repo_path"] == str(repo)
    # the runner works in the same subfolder of its own checkout
    assert runner["cwd"] == str(tree / "services" / "api") and (tree / "services" / "api" / "app.py").exists()
    assert psutil.Process(runner["agent_pid"]).cwd() == os.path.realpath(tree / "services" / "api")
    sv("stop", runner["name"], check=True)
    # without a tty and without --worktree/--keep-worktree, rm keeps the worktree
    out = sv("rm", runner["name"], input="", check=True).stdout
    assert "Kept worktree" in out and tree.is_dir()
    wait_for(lambda: runners(sv) == {})
