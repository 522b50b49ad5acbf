"""A small program that behaves like a busy interactive agent, for the demo and the tests."""

from __future__ import annotations

import os
import select
import sys
import time

TASKS = [
    "reading the repository layout",
    "planning the change",
    "editing src/app.py",
    "running the tests",
    "summarising the result",
]


def main(interval: float = 1.5) -> int:
    name = os.environ.get("STRATAVORE_RUNNER_NAME", "agent")
    print(f"{name}: demo agent started (pid {os.getpid()}); type a line and press Enter", flush=True)
    step = 0
    next_tick = time.monotonic()
    while True:
        timeout = max(0.0, next_tick - time.monotonic())
        ready, _, _ = select.select([sys.stdin], [], [], timeout)
        if ready:
            line = sys.stdin.readline()
            if not line:
                return 0
            text = line.strip()
            if text in ("quit", "exit"):
                print(f"{name}: bye", flush=True)
                return 0
            print(f"{name}: you said {text!r}", flush=True)
            continue
        print(f"{name}: step {step}: {TASKS[step % len(TASKS)]}", flush=True)
        step += 1
        next_tick = time.monotonic() + interval


if __name__ == "__main__":
    sys.exit(main())
