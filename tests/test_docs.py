"""Every command has help text and appears in README.md."""

from pathlib import Path

import click
import pytest

from stratavore.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _commands(group: click.Group, prefix: str = ""):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        path = f"{prefix}{name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path + " ")


COMMANDS = list(_commands(cli))


@pytest.mark.parametrize("path,command", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_has_help_and_is_documented(path, command):
    assert command.help and len(command.help.strip()) > 10, f"{path} has no help text"
    first = path.split()[0]
    assert f"stratavore {first}" in README, f"`stratavore {path}` is missing from README.md"
    if " " in path:
        assert path.split()[-1] in README


def test_readme_names_the_two_setup_commands():
    assert "pip install . && stratavore demo" in README
    assert "bash scripts/test.sh" in README
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


def test_help_runs(sv):
    for args in (["--help"], ["launch", "--help"], ["project", "--help"], ["daemon", "--help"]):
        proc = sv(*args)
        assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_completion_scripts(sv):
    for shell in ("bash", "zsh", "fish"):
        proc = sv("completion", shell, check=True)
        assert "_STRATAVORE_COMPLETE" in proc.stdout
