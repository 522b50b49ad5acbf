"""A simulated Claude Code, for the demo and the tests: no account, no network, same contract.

It honours the flags Stratavore passes (``--session-id``, ``--resume``, ``-n``, ``--settings``,
``--model``), writes its transcript in Claude Code's JSONL schema at Claude Code's path (one line per
content block, repeating ``message.id``, ``requestId`` and the usage), runs the hooks from
``--settings`` the way Claude Code runs them (JSON on stdin, matchers, timeouts, async), and keeps a
``sessions/<pid>.json`` registry file. Prompts come from the terminal, one per line; a prompt that
mentions "edit" or "permission" asks for permission first. ``/clear`` starts a new session,
``/exit`` ends. ``STRATAVORE_SIM_AUTOPLAY="prompt|prompt|..."`` types prompts by itself, and
``STRATAVORE_SIM_SPEED`` scales every delay (0.1 is ten times faster).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

VERSION = "2.1.330"
DEFAULT_MODEL = "claude-sonnet-4-5-20250929"
PERMISSION_WORDS = ("edit", "permission", "write", "delete")


def _config_dir() -> Path:
    raw = os.environ.get("CLAUDE_CONFIG_DIR", "")
    first = raw.split(",")[0].strip() if raw else ""
    return Path(first).expanduser() if first else Path.home() / ".claude"


def _iso(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class SimulatedClaude:
    def __init__(self, args: argparse.Namespace) -> None:
        from .agents.claude import encode_cwd

        self.cwd = os.path.realpath(os.getcwd())
        self.config = _config_dir()
        self.project_dir = self.config / "projects" / encode_cwd(self.cwd)
        self.name = args.name or ""
        self.model = args.model or os.environ.get("STRATAVORE_SIM_MODEL", DEFAULT_MODEL)
        self.speed = float(os.environ.get("STRATAVORE_SIM_SPEED", "1"))
        self.hooks = _load_settings(args.settings).get("hooks", {}) if args.settings else {}
        self.hook_log = os.environ.get("STRATAVORE_SIM_HOOK_LOG")
        self.registry = self.config / "sessions" / f"{os.getpid()}.json"
        self.started_ms = int(time.time() * 1000)
        self.status = "idle"
        self.waiting_for: str | None = None
        self.last_uuid: str | None = None
        self.rng = random.Random(os.getpid())
        self.source = "startup"
        if args.resume:
            self.session_id = args.resume
            if not self.transcript.exists():
                print(f"No conversation found with session ID: {args.resume}", flush=True)
                sys.exit(1)
            self.source = "resume"
        else:
            self.session_id = args.session_id or str(uuid.uuid4())

    @property
    def transcript(self) -> Path:
        return self.project_dir / f"{self.session_id}.jsonl"

    # -- outputs --------------------------------------------------------------------------------

    def write_registry(self) -> None:
        self.registry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        now_ms = int(time.time() * 1000)
        data = {
            "pid": os.getpid(),
            "sessionId": self.session_id,
            "cwd": self.cwd,
            "startedAt": self.started_ms,
            "version": VERSION,
            "kind": "interactive",
            "name": self.name,
            "status": self.status,
            "updatedAt": now_ms,
            "statusUpdatedAt": now_ms,
        }
        if self.waiting_for:
            data["waitingFor"] = self.waiting_for
        tmp = self.registry.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.registry)

    def set_status(self, status: str, waiting_for: str | None = None) -> None:
        self.status, self.waiting_for = status, waiting_for
        self.write_registry()

    def record(self, entry: dict[str, Any]) -> None:
        self.project_dir.mkdir(parents=True, exist_ok=True)
        base = {
            "parentUuid": self.last_uuid,
            "isSidechain": False,
            "userType": "external",
            "cwd": self.cwd,
            "sessionId": self.session_id,
            "version": VERSION,
            "gitBranch": "",
            "uuid": str(uuid.uuid4()),
            "timestamp": _iso(),
        }
        base.update(entry)
        self.last_uuid = base["uuid"]
        with open(self.transcript, "a") as f:
            f.write(json.dumps(base, separators=(",", ":")) + "\n")

    def hook(self, event: str, **fields: Any) -> None:
        groups = self.hooks.get(event) or []
        payload = {
            "session_id": self.session_id,
            "transcript_path": str(self.transcript),
            "cwd": self.cwd,
            "permission_mode": "default",
            "hook_event_name": event,
            **fields,
        }
        target = {
            "Notification": fields.get("notification_type"),
            "PermissionRequest": fields.get("tool_name"),
            "PostToolUse": fields.get("tool_name"),
            "PreToolUse": fields.get("tool_name"),
            "SessionStart": fields.get("source"),
            "SessionEnd": fields.get("reason"),
        }.get(event)
        data = json.dumps(payload).encode()
        env = {**os.environ, "CLAUDE_PROJECT_DIR": self.cwd, "CLAUDECODE": "1", "CLAUDE_CODE_SESSION_ID": self.session_id}
        for group in groups:
            matcher = group.get("matcher") or ""
            if matcher not in ("", "*") and (target is None or not re.fullmatch(matcher, str(target))):
                continue
            for handler in group.get("hooks", []):
                if handler.get("type") == "http":
                    self.post_hook(event, handler, data)
                    continue
                if handler.get("type") != "command":
                    continue
                t0 = time.monotonic()
                proc = subprocess.Popen(["/bin/sh", "-c", handler["command"]], stdin=subprocess.PIPE, env=env, cwd=self.cwd)
                try:
                    proc.stdin.write(data)  # type: ignore[union-attr]
                    proc.stdin.close()  # type: ignore[union-attr]
                except BrokenPipeError:
                    pass
                if handler.get("async"):
                    continue
                # a blocking wait, like Claude Code's: Popen.wait(timeout=...) polls in steps of up to 50 ms,
                # which would add up to 50 ms to every hook measured
                timer = threading.Timer(float(handler.get("timeout", 60)), proc.kill)
                timer.start()
                try:
                    proc.wait()
                finally:
                    timer.cancel()
                if self.hook_log:
                    with open(self.hook_log, "a") as f:
                        f.write(f"{event} {(time.monotonic() - t0) * 1000:.2f}\n")

    def post_hook(self, event: str, handler: dict[str, Any], data: bytes) -> None:
        """An http hook, as Claude Code sends one: the event's JSON POSTed to the URL, $VAR in headers taken
        from the environment only for names in allowedEnvVars (others become empty); a failure never stops us."""
        import urllib.request

        allowed = set(handler.get("allowedEnvVars") or [])

        def expand(value: str) -> str:
            return re.sub(r"\$\{?(\w+)\}?", lambda m: os.environ.get(m.group(1), "") if m.group(1) in allowed else "", value)

        headers = {"Content-Type": "application/json", **{k: expand(str(v)) for k, v in (handler.get("headers") or {}).items()}}
        request = urllib.request.Request(str(handler.get("url")), data=data, headers=headers, method="POST")
        t0 = time.monotonic()
        try:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=float(handler.get("timeout", 60))).read()
        except (OSError, ValueError):
            pass
        if self.hook_log:
            with open(self.hook_log, "a") as f:
                f.write(f"{event} {(time.monotonic() - t0) * 1000:.2f}\n")

    def pause(self, seconds: float) -> None:
        time.sleep(seconds * self.speed)

    # -- the conversation -----------------------------------------------------------------------

    def start(self) -> None:
        self.write_registry()
        self.hook("SessionStart", source=self.source, model=self.model)
        print(f"✻ Claude Code (simulated) {VERSION} — session {self.session_id}", flush=True)
        print(f"  cwd: {self.cwd}", flush=True)

    def end(self, reason: str) -> None:
        self.hook("SessionEnd", reason=reason)

    def answer(self, prompt: str, read_line) -> None:
        self.record({"type": "user", "message": {"role": "user", "content": prompt}})
        self.hook("UserPromptSubmit", prompt=prompt)
        self.set_status("busy")
        print("● Thinking…", flush=True)
        self.pause(0.5)
        if any(word in prompt.lower() for word in PERMISSION_WORDS):
            self.assistant_turn([{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": "Edit", "input": {}}])
            self.set_status("waiting", "permission prompt")
            self.hook("Notification", notification_type="permission_prompt", message="Claude needs your permission to use Edit")
            self.hook("PermissionRequest", tool_name="Edit", tool_input={"file_path": "app.py"})
            print("Claude wants to edit app.py. Allow? (y/n) ", end="", flush=True)
            reply = read_line()
            allowed = reply is not None and reply.strip().lower().startswith("y")
            self.set_status("busy")
            if allowed:
                self.hook("PostToolUse", tool_name="Edit", tool_input={"file_path": "app.py"}, tool_response={"ok": True})
            print("● Edited app.py" if allowed else "● Edit declined", flush=True)
            self.pause(0.3)
        self.assistant_turn(
            [
                {"type": "thinking", "thinking": "…"},
                {"type": "text", "text": f"Done: {prompt[:60]}"},
            ]
        )
        print(f"● Done: {prompt[:60]}", flush=True)
        self.set_status("idle")
        self.hook("Stop", stop_hook_active=False, last_assistant_message=f"Done: {prompt[:60]}")

    def assistant_turn(self, blocks: list[dict[str, Any]]) -> None:
        """One API response: a line per content block, repeating message.id, requestId and the usage."""
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        input_tokens = self.rng.randint(3, 40)
        cache_write = self.rng.randint(500, 5000)
        cache_read = self.rng.randint(5000, 40000)
        for index, block in enumerate(blocks):
            output = 10 + 150 * (index + 1) + self.rng.randint(0, 50)
            usage = {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": cache_write,
                "cache_read_input_tokens": cache_read,
                "output_tokens": output,
                "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                "service_tier": "standard",
                "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": cache_write},
                "speed": "standard",
            }
            self.record(
                {
                    "type": "assistant",
                    "requestId": request_id,
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [block],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": usage,
                    },
                }
            )

    def clear(self) -> None:
        self.end("clear")
        self.session_id = str(uuid.uuid4())
        self.last_uuid = None
        self.write_registry()
        self.hook("SessionStart", source="clear", model=self.model)
        print(f"(new session {self.session_id})", flush=True)


def _load_settings(value: str) -> dict[str, Any]:
    text = value if value.lstrip().startswith("{") else Path(value).read_text()
    data = json.loads(text)
    return data if isinstance(data, dict) else {}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="claude", add_help=True)
    parser.add_argument("--session-id")
    parser.add_argument("-r", "--resume")
    parser.add_argument("-n", "--name")
    parser.add_argument("--settings")
    parser.add_argument("--model")
    args, _ = parser.parse_known_args(argv)
    sim = SimulatedClaude(args)

    def cleanup(*_: Any) -> None:
        sim.registry.unlink(missing_ok=True)

    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    sim.start()
    script = [p for p in os.environ.get("STRATAVORE_SIM_AUTOPLAY", "").split("|") if p.strip()]
    autoplay_every = float(os.environ.get("STRATAVORE_SIM_AUTOPLAY_EVERY", "4"))

    def read_line(timeout: float | None = None) -> str | None:
        ready, _, _ = select.select([sys.stdin], [], [], timeout)
        if not ready:
            return ""
        line = sys.stdin.readline()
        return None if line == "" else line.rstrip("\n")

    turn = 0
    while True:
        print("> ", end="", flush=True)
        timeout = autoplay_every * sim.speed if script else None
        line = read_line(timeout)
        if line is None:
            sim.end("other")
            return 0
        if line == "" and script:
            line = script[turn % len(script)]
            turn += 1
            print(line, flush=True)
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            sim.end("prompt_input_exit")
            return 0
        if line == "/clear":
            sim.clear()
            continue
        sim.answer(line, lambda: read_line(None))
