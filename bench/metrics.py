#!/usr/bin/env python3
"""Time a scrape of Stratavore's Prometheus metrics with many runners (target: under 100 ms with 1000).

Rows are written straight into a fresh database in a temporary STRATAVORE_HOME (no processes are
started): RUNNERS active runners with heartbeats, CPU and memory spread over PROJECTS projects, as
many ended ones, EVENTS events, a few daemon jobs, and USAGE_ROWS usage entries when the usage table
exists. Then ``stratavore.metrics.render`` (what ``/metrics`` serves) runs SCRAPES times.

Run:  python bench/metrics.py [--runners 1000] [--usage-rows 20000] [--events 20000] [--scrapes 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = ("claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-5", "unknown-model")


def populate(ctx, runners: int, projects: int, events: int, usage_rows: int) -> dict[str, int]:
    from stratavore import db

    conn = ctx.conn
    now = time.time()
    rng = random.Random(1)
    node = db.node_id(conn)
    with db.write(conn):
        for p in range(projects):
            conn.execute(
                "INSERT INTO projects(name, path, max_runners, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (f"proj{p}", f"/src/proj{p}", 200 if p % 2 else None, now, now),
            )
        project_ids = [r[0] for r in conn.execute("SELECT id FROM projects")]
        rows = []
        for i in range(runners * 2):
            active = i < runners
            rows.append(
                (uuid.uuid4().hex, f"runner-{i}", project_ids[i % projects], '["claude"]', "/src", "running" if active else "exited",
                 "claude" if i % 3 else "generic", rng.choice(("working", "waiting", "idle", None)), now - 3600, now - 1800,
                 now - rng.random() * 5 if active else None, rng.random() * 150, rng.randint(10, 900) << 20, rng.randint(1, 12))
            )  # fmt: skip
        conn.executemany(
            "INSERT INTO runners(id, name, project_id, command, cwd, state, agent, agent_status, created_at, started_at, heartbeat_at,"
            " cpu_percent, rss_bytes, process_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO events(event_id, node_id, aggregate_type, aggregate_id, aggregate_version, type, payload, created_at)"
            " VALUES (?, ?, 'runner', ?, 1, 'runner.running', '{}', ?)",
            ((uuid.uuid4().hex, node, f"r{i % runners}", now) for i in range(events)),
        )
        for job in ("reconcile", "wal_checkpoint", "agent_status", "ingest"):
            conn.execute(
                "INSERT INTO daemon_jobs(job_id, last_started_at, last_duration, runs, failures) VALUES (?, ?, 0.01, 100, 1)", (job, now)
            )
        has_usage = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='usage_entries'").fetchone()
        if has_usage:
            conn.executemany(
                "INSERT INTO usage_entries(dedup_key, session_id, project_dir, model, ts, input_tokens, output_tokens, cache_5m_tokens,"
                " cache_1h_tokens, cache_read_tokens, cost_usd, project_id) VALUES (?, ?, 'd', ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                ((f"m{i}\x1er{i}", f"s{i % 500}", rng.choice(MODELS), int(now * 1000) - i, 3, rng.randint(50, 2000), 1200, 40_000,
                  None if i % 50 == 0 else 0.02, rng.choice([*project_ids, None])) for i in range(usage_rows)),
            )  # fmt: skip
    return {"usage_rows": usage_rows if has_usage else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, default=1000, help="active runners (as many ended ones are added)")
    parser.add_argument("--projects", type=int, default=20)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--usage-rows", type=int, default=20_000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="svbench-metrics-")
    os.environ["STRATAVORE_HOME"] = home
    try:
        from stratavore import metrics
        from stratavore.context import Context

        ctx = Context.load()
        facts = populate(ctx, args.runners, args.projects, args.events, args.usage_rows)
        t0 = time.perf_counter()
        body, _ = metrics.render(ctx)
        cold = time.perf_counter() - t0
        times = []
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            body, _ = metrics.render(ctx)
            times.append(time.perf_counter() - t0)
        times.sort()
        result = {
            "active_runners": args.runners,
            "ended_runners": args.runners,
            "events": args.events,
            **facts,
            "scrapes": args.scrapes,
            "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
            "bytes": len(body),
            "first_ms": round(cold * 1000, 2),
            "median_ms": round(statistics.median(times) * 1000, 2),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 2),
            "max_ms": round(times[-1] * 1000, 2),
            "target_ms": 100,
        }
        ctx.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['active_runners']} active + {result['ended_runners']} ended runners, {result['events']} events,"
            f" {result['usage_rows']} usage rows: {result['series']} series, {result['bytes']} bytes"
        )
        print(f"first scrape {result['first_ms']} ms; over {args.scrapes} scrapes: median {result['median_ms']} ms,"
              f" p99 {result['p99_ms']} ms, max {result['max_ms']} ms (target < 100 ms)")  # fmt: skip
    return 0 if result["p99_ms"] < 100 else 1


if __name__ == "__main__":
    sys.exit(main())
