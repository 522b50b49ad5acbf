"""Notification latency: from an event's commit to the channel's receiver, through the real daemon.

A webhook channel points at an HTTP server on loopback; a running daemon (its consumers job) delivers.
Each sample commits one `runner.waiting` event (for a fresh runner id, so the cooldown does not mute
it) and times until the receiver has it. Target: under 1 s.

    python bench/notify.py                 # 30 events
    python bench/notify.py --events 100 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30, help="how many events to time")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between events")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="svbench", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATAVORE_")}
    # no flood summaries and no cooldown: every event is its own message
    env.update(STRATAVORE_HOME=str(home), STRATAVORE_KEYRING="off", STRATAVORE_NOTIFY_FLOOD_MAX="100000")
    os.environ.clear()
    os.environ.update(env)

    arrivals: dict[str, float] = {}
    arrived = threading.Condition()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            now = time.time()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            with arrived:
                for event in body.get("events", []):
                    arrivals.setdefault(event["event_id"], now)
                arrived.notify_all()

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    sv = [sys.executable, "-m", "stratavore"]

    from stratavore import db, events
    from stratavore.context import Context

    subprocess.run([*sv, "notify", "add", "webhook", "--url", url, "--on", "runner.waiting"], check=True, env=env, capture_output=True)
    subprocess.run([*sv, "daemon", "start"], check=True, env=env, capture_output=True)
    latencies: list[float] = []
    try:
        ctx = Context.load()
        conn = ctx.conn
        time.sleep(1.0)  # let the daemon settle
        for _ in range(args.events):
            with db.write(conn):
                events.append(conn, "runner", uuid.uuid4().hex, 1, "runner.waiting", {"name": "bench", "detail": "permission prompt"})
            committed = time.time()
            event_id = events.list_events(conn, last=1)[0].event_id
            with arrived:
                if not arrived.wait_for(lambda event_id=event_id: event_id in arrivals, timeout=10):
                    raise SystemExit(f"event {event_id} never arrived")
            latencies.append(arrivals[event_id] - committed)
            time.sleep(args.gap)
    finally:
        subprocess.run([*sv, "daemon", "stop"], env=env, capture_output=True)
        server.shutdown()
        subprocess.run(["rm", "-rf", str(home)])
    latencies.sort()
    result = {
        "events": len(latencies),
        "median_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
        "target_ms": 1000,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"notification latency, event commit -> webhook receiver, {result['events']} events: "
            f"median {result['median_ms']} ms, p95 {result['p95_ms']} ms, max {result['max_ms']} ms (target < 1000 ms)"
        )
    return 0 if result["max_ms"] < 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
