"""Git worktrees that give a runner its own checkout and branch."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import Conflict, InvalidInput, StratavoreError
from .names import validate_name

BRANCH_PREFIX = "stratavore/"


class GitError(StratavoreError):
    """A git command failed."""


@dataclass(frozen=True)
class Worktree:
    path: str
    branch: str
    repo: str


def _git(*args: str, cwd: str | os.PathLike[str]) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise GitError("git is not installed") from None
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise GitError(f"git {args[0]}: {message}")
    return proc.stdout.strip()


def repository_root(path: str) -> str:
    try:
        return _git("rev-parse", "--show-toplevel", cwd=path)
    except GitError:
        raise InvalidInput(f"{path} is not inside a git repository; --worktree needs one") from None


def create(project_path: str, worktrees_dir: Path, name: str) -> tuple[Worktree, str]:
    """A new worktree on a new branch ``stratavore/<name>``; returns it and the cwd inside it
    that corresponds to ``project_path`` (a project may be a subfolder of its repository)."""
    validate_name("worktree", name)
    root = repository_root(project_path)
    path = worktrees_dir / name
    if path.exists():
        raise Conflict(f"worktree {name!r} already exists at {path}")
    branch = BRANCH_PREFIX + name
    if _git("branch", "--list", branch, cwd=root):
        raise Conflict(f"branch {branch!r} already exists; pick another worktree name")
    path.parent.mkdir(parents=True, exist_ok=True)
    _git("worktree", "add", "-b", branch, str(path), cwd=root)
    relative = os.path.relpath(os.path.realpath(project_path), os.path.realpath(root))
    cwd = path if relative == "." else path / relative
    return Worktree(str(path), branch, root), str(cwd)


def uncommitted_changes(path: str) -> list[str]:
    return [line for line in _git("status", "--porcelain", cwd=path).splitlines() if line.strip()]


def remove(worktree: Worktree, *, force: bool = False) -> None:
    """Remove the worktree (the branch and its commits stay). Refuses uncommitted work unless forced."""
    if not Path(worktree.path).exists():
        _git("worktree", "prune", cwd=worktree.repo)
        return
    if not force:
        dirty = uncommitted_changes(worktree.path)
        if dirty:
            raise Conflict(f"worktree {worktree.path} has {len(dirty)} uncommitted change(s); commit them or use --force to discard them")
    _git("worktree", "remove", *(["--force"] if force else []), worktree.path, cwd=worktree.repo)


def discard_new(worktree: Worktree) -> None:
    """Undo :func:`create` for a launch that did not happen."""
    try:
        _git("worktree", "remove", "--force", worktree.path, cwd=worktree.repo)
        _git("branch", "-D", worktree.branch, cwd=worktree.repo)
    except GitError:
        pass
