"""A restarted Claude runner continues its conversation instead of starting a new one."""

import json
import sys

from stratavore.agents.claude import restart_command

from .conftest import wait_for


def test_restart_command_resumes_only_with_a_transcript(tmp_path):
    command = ["claude", "--session-id", "s1", "-n", "web-1", "--settings", "{}", "--model", "opus"]
    assert restart_command(command, "s2", None) == ["claude", "--session-id", "s2", "-n", "web-1", "--settings", "{}", "--model", "opus"]
    transcript = tmp_path / "s2.jsonl"
    transcript.write_text("{}\n")
    resumed = restart_command(command, "s2", str(transcript))
    assert resumed[:3] == ["claude", "--resume", "s2"] and resumed[-2:] == ["--model", "opus"]
    assert restart_command(resumed, "s3", str(transcript))[1:3] == ["--resume", "s3"]


def test_restarted_runner_resumes_its_session(sv, workdir, home):
    env = {
        "CLAUDE_CONFIG_DIR": str(home / "claude"),
        "STRATAVORE_CLAUDE_COMMAND": f"{sys.executable} -m stratavore simulated-claude",
        "STRATAVORE_SIM_SPEED": "0.05",
    }
    sv("project", "add", "web", str(workdir), "--agent", "claude", check=True, env=env)
    sv("launch", "web", "-e", "STRATAVORE_SIM_AUTOPLAY=hello", "-e", "STRATAVORE_SIM_AUTOPLAY_EVERY=1", check=True, env=env)
    [runner] = json.loads(sv("ps", "--json", env=env).stdout)
    session = runner["session_id"]

    def transcript_written():
        shown = json.loads(sv("session", "show", session, "--json", env=env).stdout)
        return shown["title"] == "hello"

    wait_for(transcript_written, timeout=15)
    sv("restart", "web-1", check=True, env=env)
    [after] = json.loads(sv("ps", "--json", env=env).stdout)
    assert after["state"] == "running" and after["session_id"] == session
    at = after["command"].index("--resume")
    assert after["command"][at + 1] == session
    sv("stop", "web-1", check=True, env=env)
