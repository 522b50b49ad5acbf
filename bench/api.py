"""Benchmark of the daemon's HTTP API (targets from issue 5).

1. Sustained heartbeats through the API from 1000 simulated runners, each durable when acknowledged
   (target: 10,000 heartbeats a second). Three shapes: every runner posting its own heartbeat with its
   runner token (one per request), runners posting 10 samples per request, and a relay posting 100
   runners' heartbeats per request with the API token.
2. ``GET /v1/runners`` with 1000 active runners (target: p99 under 20 ms).

A real daemon serves the API in its own process; the 1000 runner rows are written straight into its
database (no processes), their keeper named as this process so reconciliation leaves them alone.
The load generator is asyncio on raw sockets, so that the client costs as little CPU as possible.

    python bench/api.py [--seconds 5] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stratavore import apiauth, db, procs  # noqa: E402
from stratavore.paths import resolve_paths  # noqa: E402

RUNNERS = 1000


def setup(home: Path) -> tuple[list[tuple[str, str]], dict[str, str]]:
    env = {
        **os.environ,
        "STRATAVORE_HOME": str(home),
        "STRATAVORE_API_PORT": "0",
        "STRATAVORE_API_RATE_LIMIT": "0",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
    }
    paths = resolve_paths(env)
    paths.ensure()
    conn = db.connect(paths.db_path)
    pid, started = procs.identity()
    boot = procs.boot_id()
    now = time.time()
    runners = []
    with db.write(conn):
        conn.execute("INSERT INTO projects(name, path, created_at, updated_at) VALUES ('bench', ?, ?, ?)", (str(home), now, now))
        for n in range(RUNNERS):
            runner_id = uuid.uuid4().hex
            name = f"bench-{n + 1}"
            conn.execute(
                "INSERT INTO runners(id, name, project_id, command, cwd, state, created_at, started_at, boot_id, keeper_pid,"
                " keeper_started, heartbeat_at) VALUES (?, ?, 1, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (runner_id, name, json.dumps(["agent", "--flag"]), str(home), now, now, boot, pid, started, now),
            )
            runners.append((runner_id, name))
    conn.close()
    return runners, env


async def heartbeat_load(
    host: str, port: int, requests: list[bytes], seconds: float, connections: int, per_request: int
) -> tuple[int, list[float]]:
    done = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(index: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        i = index
        while time.monotonic() < deadline:
            request = requests[i % len(requests)]
            i += connections
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            at = head.lower().find(b"content-length: ")
            length = int(head[at + 16 : head.find(b"\r\n", at)])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"{status}: {body[:200]!r}")
            accepted = json.loads(body)["accepted"]
            if accepted != per_request:
                raise RuntimeError(f"only {accepted} of {per_request} heartbeats accepted: {body[:200]!r}")
            done += accepted
        writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return done, latencies


def heartbeat_requests(runners: list[tuple[str, str]], key: bytes, token: str, per_request: int, relay: bool) -> list[bytes]:
    out = []
    if relay:
        for start in range(0, len(runners), per_request):
            rows = [
                {"runner": rid, "cpu_percent": 3.5, "rss_bytes": 52428800, "process_count": 4}
                for rid, _ in runners[start : start + per_request]
            ]
            out.append(_post("/v1/heartbeats", {"heartbeats": rows}, {"Authorization": f"Bearer {token}"}))
        return out
    for runner_id, name in runners:
        rows = [{"runner": runner_id, "cpu_percent": 3.5, "rss_bytes": 52428800, "process_count": 4}] * per_request
        headers = {"Authorization": f"Bearer {apiauth.runner_token(key, name)}", "X-Stratavore-Runner": runner_id}
        out.append(_post("/v1/heartbeats", {"heartbeats": rows}, headers))
    return out


def _post(path: str, payload: dict, headers: dict[str, str]) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="Duration of each heartbeat run.")
    parser.add_argument("--connections", type=int, default=64, help="Concurrent keep-alive connections of the load generator.")
    parser.add_argument("--list-requests", type=int, default=300, help="How many GET /v1/runners to time.")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="svbench", dir="/tmp"))
    daemon_started = False
    try:
        runners, env = setup(home)
        subprocess.run([sys.executable, "-m", "stratavore", "daemon", "start"], env=env, check=True, capture_output=True)
        daemon_started = True
        paths = resolve_paths(env)
        info = apiauth.read_info(paths)
        assert info is not None and info.url, "the daemon's API is not listening"
        token = subprocess.run(
            [sys.executable, "-m", "stratavore", "api", "token"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        host, port = info.url.removeprefix("http://").rsplit(":", 1)
        key = bytes.fromhex(info.runner_key)
        print(f"daemon API at {info.url}; {RUNNERS} runners; {os.cpu_count()} CPUs; load: {args.connections} connections")
        print()
        print("1. heartbeats through the API (each acknowledged only once its transaction is fsynced)")
        print(f"   {'shape':<44} {'heartbeats/s':>12} {'requests/s':>11} {'p50 ms':>7} {'p99 ms':>7}")
        for label, per_request, relay in (
            ("each runner its own, 1 per request", 1, False),
            ("each runner its own, 10 samples per request", 10, False),
            ("relay, 100 runners per request (API token)", 100, True),
        ):
            requests = heartbeat_requests(runners, key, token, per_request, relay)
            mark = time.time()
            t0 = time.monotonic()
            count, latencies = asyncio.run(heartbeat_load(host, int(port), requests, args.seconds, args.connections, per_request))
            elapsed = time.monotonic() - t0
            rates = f"{count / elapsed:>12,.0f} {len(latencies) / elapsed:>11,.0f}"
            print(f"   {label:<44} {rates} {pct(latencies, 0.5):>7.1f} {pct(latencies, 0.99):>7.1f}")
            # every acknowledged heartbeat is in the database, seen from another connection
            reader = sqlite3.connect(paths.db_path)
            fresh = reader.execute("SELECT COUNT(*) FROM runners WHERE heartbeat_at >= ?", (mark,)).fetchone()[0]
            reader.close()
            assert fresh == RUNNERS, f"only {fresh} runners show the heartbeats acknowledged"

        print()
        print(f"2. GET /v1/runners with {RUNNERS} active runners ({args.list_requests} requests, one keep-alive connection)")
        client = http.client.HTTPConnection(host, int(port))
        times = []
        size = 0
        for i in range(args.list_requests + 20):
            t0 = time.perf_counter()
            client.request("GET", "/v1/runners", headers={"Authorization": f"Bearer {token}"})
            response = client.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - t0
            assert response.status == 200, body[:200]
            if i >= 20:  # the first few warm the caches
                times.append(elapsed)
                size = len(body)
        runners_listed = len(json.loads(body)["runners"])
        client.close()
        print(
            f"   {runners_listed} runners, {size / 1024:.0f} KiB: p50 {pct(times, 0.5):.1f} ms, p99 {pct(times, 0.99):.1f} ms,"
            f" max {max(times) * 1000:.1f} ms, mean {statistics.mean(times) * 1000:.1f} ms (target: p99 under 20 ms)"
        )
    finally:
        if daemon_started:
            subprocess.run([sys.executable, "-m", "stratavore", "daemon", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
