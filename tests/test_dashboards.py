"""The Grafana dashboards in deploy/grafana: provisioning-ready, and querying only what the collector exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stratavore import consumers, db, metrics, procs
from tests.conftest import REPO

DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
EXPECTED_UIDS = {"stratavore-overview", "stratavore-runners", "stratavore-spend"}
TARGET_LABELS = {"instance", "job"}  # attached by Prometheus at scrape time, not by the collector
# families exported only while their table exists (see stratavore/metrics.py)
CONDITIONAL = {
    **{spec.exposed: "usage_entries" for spec in metrics.USAGE.values()},
    **{spec.exposed: "budgets" for spec in metrics.BUDGETS.values()},
    **{spec.exposed: "consumer_cursors" for spec in metrics.CONSUMERS.values()},
}
SPECS = {spec.exposed: spec for spec in metrics.ALL_SPECS.values()}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf", "nan"}
IDENT = re.compile(r"(?<![\w.$:])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*,)?\s*(\w+)\s*\)\s*$")


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for panel in panels:
        out.append(panel)
        out += all_panels(panel.get("panels", []))
    return out


def expressions(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def matcher_labels(matchers: str | None) -> set[str]:
    return set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers or ""))


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched on) for every series selector of a PromQL expression, or of a
    Grafana ``label_values(metric{...}, label)`` query (whose label must exist on the metric too)."""
    found = LABEL_VALUES.match(expr)
    if found:
        metric, matchers, label = found.groups()
        return [(metric, matcher_labels(matchers) | {label})] if metric else []
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, Grafana variables in them)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries: [5m], [$__rate_interval]
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    out = []
    for name, matchers, call in IDENT.findall(expr):
        if call or name in KEYWORDS:
            continue  # a function, or an operator keyword
        out.append((name, matcher_labels(matchers)))
    return out


def test_selector_parser():
    expr = 'sum by (project) (rate(stratavore_cost_usd_total{instance=~"$instance", model!="x"}[$__rate_interval])) * 3600'
    assert selectors(expr) == [("stratavore_cost_usd_total", {"instance", "model"})]
    expr = "a_b / on (instance, project) group_left c offset 5m and time() - d{e='f'}"
    assert selectors(expr.replace("'", '"')) == [("a_b", set()), ("c", set()), ("d", {"e"})]
    assert selectors('label_values(stratavore_runner_info{project=~"$project"}, runner)') == [
        ("stratavore_runner_info", {"project", "runner"})
    ]


@pytest.fixture
def exported(ctx, project) -> tuple[str, set[str]]:
    """The exposition of a database with every migration applied and a sample in every family its tables allow,
    and the tables present."""
    conn = ctx.conn
    with db.write(conn):
        conn.execute("UPDATE projects SET max_runners = 4")
        conn.execute("INSERT INTO daemon_jobs(job_id, last_started_at, last_duration, runs, failures) VALUES ('reconcile', 1, 0.1, 1, 0)")
        conn.execute(
            "INSERT INTO runners(id, name, project_id, command, cwd, state, created_at, started_at, heartbeat_at, cpu_percent, rss_bytes,"
            " process_count) VALUES ('r1', 'web-1', ?, '[]', '/', 'running', 1, 1, 1, 1.0, 1024, 1)",
            (project.id,),
        )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "usage_entries" in tables:
        with db.write(conn):
            conn.execute(
                "INSERT INTO usage_entries(dedup_key, session_id, project_dir, model, ts, input_tokens, output_tokens, cache_5m_tokens,"
                " cache_1h_tokens, cache_read_tokens, cost_usd, project_id) VALUES ('k', 's', 'd', 'opus', 0, 1, 1, 1, 1, 1, 0.1, ?)",
                (project.id,),
            )
    if "consumer_cursors" in tables:
        consumers.register(conn, "notify", start=0)
    pid, started = procs.identity()
    ctx.paths.daemon_pid_file.write_text(json.dumps({"pid": pid, "started": started}))
    body, _ = metrics.render(ctx)
    return body.decode(), tables


def test_the_three_dashboards_are_provisioning_ready():
    boards = dashboards()
    assert {d["uid"] for d in boards.values()} == EXPECTED_UIDS
    for name, board in boards.items():
        assert board.get("id") is None, f"{name}: a provisioned dashboard must not carry a database id"
        assert board["title"].startswith("Stratavore / ")
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        panels = all_panels(board["panels"])
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels:
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), f"{name}: {panel['title']}"
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{name}: {panel['title']} queries nothing"
            for target in [panel, *panel["targets"]]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, f"{name}: {panel['title']}"
    provider = (REPO / "deploy" / "grafana" / "provisioning" / "stratavore.yaml").read_text()
    assert "type: file" in provider and "apiVersion: 1" in provider


def test_every_metric_and_label_a_dashboard_queries_is_exported(exported):
    text, tables = exported
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    queried = 0
    for name, board in dashboards().items():
        for expr in expressions(board):
            for metric, labels in selectors(expr):
                queried += 1
                where = f"{name}: {metric} in {expr!r}"
                assert metric in SPECS, f"{where}: not a metric Stratavore exports"
                table = CONDITIONAL.get(metric)
                if table is None or table in tables:
                    assert metric in families, f"{where}: not in the exposition although {table or 'its data'} exists"
                unknown = labels - TARGET_LABELS - set(SPECS[metric].labels)
                assert not unknown, f"{where}: no label {sorted(unknown)}"
    assert queried > 50


def test_spend_metrics_are_exported_with_the_migrations_present(exported):
    text, tables = exported
    assert "usage_entries" in tables  # migration 3
    for spec in metrics.USAGE.values():
        assert f"\n{spec.exposed}{{" in text, spec.exposed


def test_promtool_parses_every_dashboard_expression(tmp_path: Path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (Debian package `prometheus`; .ci/run installs it)")
    rules = []
    for board in dashboards().values():
        for expr in expressions(board):
            if LABEL_VALUES.match(expr):
                continue  # a Grafana variable query, not PromQL
            expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$__interval", "1m")
            rules.append({"record": f"dashboard:query_{len(rules)}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))  # JSON is YAML
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
