"""`stratavore usage ...`: token and cost reports over Claude Code transcripts.

Every report first ingests what is new in the transcripts (cheap once the history is imported), so
it always reflects them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .. import pricing, transcripts, usage
from . import cli, pass_app
from .render import emit_json, table


def _group_option(name: str, value: str | None) -> str | None:
    # `stratavore usage -z UTC daily` means the same as `stratavore usage daily -z UTC`
    return value if value is not None else click.get_current_context().meta.get("usage", {}).get(name)


def _ingest(app, claude_dir: str | None) -> transcripts.IngestStats:
    claude_dir = _group_option("claude_dir", claude_dir)
    ctx = app.get()
    prices = pricing.load(ctx.paths.config_dir)
    roots = transcripts.claude_roots(claude_dir, default=getattr(ctx.settings, "claude_config_dir", ""))
    return transcripts.ingest(ctx.conn, roots, prices)


def report_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON shaped like ccusage's.")(f)
    f = click.option(
        "--claude-dir", default=None, help="Claude Code config dirs to read, comma-separated (default: CLAUDE_CONFIG_DIR or ~/.claude)."
    )(f)
    f = click.option("-z", "--timezone", "tz_name", default=None, help="IANA time zone for dates (default: local time).")(f)
    f = click.option("-u", "--until", default=None, help="Last day to include (YYYY-MM-DD or YYYYMMDD).")(f)
    f = click.option("-s", "--since", default=None, help="First day to include (YYYY-MM-DD or YYYYMMDD).")(f)
    return f


def _filters(since: str | None, until: str | None, tz_name: str | None) -> usage.Filters:
    tz = usage.parse_timezone(_group_option("tz_name", tz_name))
    return usage.Filters(usage.parse_day(since, "--since"), usage.parse_day(until, "--until"), tz)


def _money(value: float, unpriced: bool = False) -> str:
    return f"${value:,.2f}" + ("*" if unpriced else "")


def _n(value: int) -> str:
    return f"{value:,}"


COUNT_HEADERS = ["INPUT", "OUTPUT", "CACHE WRITE", "CACHE READ", "TOTAL TOKENS", "COST"]


def _counts(item: dict[str, Any]) -> list[str]:
    unpriced = any(b.get("missingPricing") for b in item.get("modelBreakdowns", ())) or bool(item.get("unpricedModels"))
    return [
        _n(item["inputTokens"]),
        _n(item["outputTokens"]),
        _n(item["cacheCreationTokens"]),
        _n(item["cacheReadTokens"]),
        _n(item["totalTokens"]),
        _money(item["totalCost"], unpriced),
    ]


def _models(item: dict[str, Any], width: int = 48) -> str:
    text = ", ".join(item.get("modelsUsed", []))
    return text if len(text) <= width else text[: width - 1] + "…"


def _footnote(data: dict[str, Any]) -> None:
    missing = usage.unpriced(data)
    if missing:
        click.echo(f"* cost unknown for {', '.join(missing)}: not in the price table (see `stratavore usage prices`)")


def _print(data: dict[str, Any], key: str, label: str, headers_first: list[str], first: Callable[[dict[str, Any]], list[str]]) -> None:
    rows = [[*first(item), *_counts(item), _models(item)] for item in data[key]]
    if not rows:
        click.echo("No usage recorded in this range.")
        return
    totals = data["totals"]
    rows.append(["TOTAL", *[""] * (len(headers_first) - 1), *_counts(totals), ""])
    click.echo(table([*headers_first, *COUNT_HEADERS, "MODELS"], rows))
    _footnote(data)


@cli.group("usage", invoke_without_command=True)
@click.option(
    "--claude-dir", default=None, help="Claude Code config dirs to read, comma-separated (default: CLAUDE_CONFIG_DIR or ~/.claude)."
)
@click.option("-z", "--timezone", "tz_name", default=None, help="IANA time zone for dates (default: local time).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def usage_group(click_ctx: click.Context, claude_dir: str | None, tz_name: str | None, as_json: bool) -> None:
    """Tokens and cost from Claude Code transcripts: today, this week, this month, top projects and sessions."""
    if click_ctx.invoked_subcommand is not None:
        click_ctx.meta["usage"] = {"claude_dir": claude_dir, "tz_name": tz_name}
        return
    app = click_ctx.obj
    tz = usage.parse_timezone(tz_name)
    _ingest(app, claude_dir)
    data = usage.overview(app.get().conn, tz)
    if as_json:
        emit_json(data)
        return
    periods = data["periods"]
    rows = [
        [name, periods[key]["since"], *_counts(periods[key])]
        for key, name in (("today", "today"), ("week", "this week"), ("month", "this month"))
    ]
    click.echo(table(["PERIOD", "SINCE", *COUNT_HEADERS], rows))
    if data["topProjects"]:
        click.echo("\nTop projects this month")
        click.echo(
            table(
                ["PROJECT", "TOTAL TOKENS", "COST"],
                [[p["project"], _n(p["totalTokens"]), _money(p["totalCost"])] for p in data["topProjects"]],
            )
        )
    if data["topSessions"]:
        click.echo("\nTop sessions this month")
        rows = [
            [s["sessionId"][:8], s["project"], s["lastActivity"][:16].replace("T", " "), _n(s["totalTokens"]), _money(s["totalCost"])]
            for s in data["topSessions"]
        ]
        click.echo(table(["SESSION", "PROJECT", "LAST ACTIVITY (UTC)", "TOTAL TOKENS", "COST"], rows))
    unknown = sorted({m for p in periods.values() for m in p.get("unpricedModels", [])})
    if unknown:
        click.echo(f"\n* cost unknown for {', '.join(unknown)}: not in the price table (see `stratavore usage prices`)")


def _period_command(period: str, label: str) -> None:
    @usage_group.command(period, help=f"Usage per {label}, with per-model breakdowns.")
    @report_options
    @pass_app
    def command(app, since: str | None, until: str | None, tz_name: str | None, claude_dir: str | None, as_json: bool) -> None:
        filters = _filters(since, until, tz_name)
        _ingest(app, claude_dir)
        data = usage.period_report(app.get().conn, period, filters)
        if as_json:
            emit_json(data)
            return
        key = {"daily": "date", "weekly": "week", "monthly": "month"}[period]
        _print(data, period, label, [key.upper() if period != "weekly" else "WEEK OF"], lambda item: [item[key]])


for _period, _label in (("daily", "day"), ("weekly", "week (weeks start on Sunday)"), ("monthly", "month")):
    _period_command(_period, _label)


@usage_group.command("session")
@report_options
@click.option("-i", "--id", "session_id", default=None, help="Only this session.")
@pass_app
def usage_session(app, since, until, tz_name, claude_dir, as_json: bool, session_id: str | None) -> None:
    """Usage per Claude Code session (subagents count toward their parent session)."""
    filters = _filters(since, until, tz_name)
    _ingest(app, claude_dir)
    data = usage.session_report(app.get().conn, filters, session_id=session_id)
    if as_json:
        emit_json(data)
        return
    _print(
        data,
        "sessions",
        "session",
        ["SESSION", "PROJECT", "LAST ACTIVITY (UTC)"],
        lambda s: [s["sessionId"][:8], s["project"], s["lastActivity"][:16].replace("T", " ")],
    )


@usage_group.command("project")
@report_options
@pass_app
def usage_project(app, since, until, tz_name, claude_dir, as_json: bool) -> None:
    """Usage per Stratavore project (sessions outside every project are "unassigned")."""
    filters = _filters(since, until, tz_name)
    _ingest(app, claude_dir)
    data = usage.project_report(app.get().conn, filters)
    if as_json:
        emit_json(data)
        return
    _print(data, "projects", "project", ["PROJECT"], lambda p: [p["project"]])


@usage_group.command("model")
@report_options
@pass_app
def usage_model(app, since, until, tz_name, claude_dir, as_json: bool) -> None:
    """Usage per model; fast mode shows as <model>-fast, models without a price are flagged."""
    filters = _filters(since, until, tz_name)
    _ingest(app, claude_dir)
    data = usage.model_report(app.get().conn, filters)
    if as_json:
        emit_json(data)
        return
    if not data["models"]:
        click.echo("No usage recorded in this range.")
        return
    rows = []
    for m in data["models"]:
        counts = _counts(m)
        if m.get("missingPricing"):
            counts[-1] = "unknown*"
        rows.append([m["model"], _n(m["entries"]), *counts])
    rows.append(["TOTAL", "", *_counts(data["totals"])])
    click.echo(table(["MODEL", "RESPONSES", *COUNT_HEADERS], rows))
    _footnote(data)


@usage_group.command("blocks")
@report_options
@click.option("-a", "--active", is_flag=True, help="Only the active block, with burn rate and projection.")
@pass_app
def usage_blocks(app, since, until, tz_name, claude_dir, as_json: bool, active: bool) -> None:
    """5-hour billing blocks (as ccusage counts them), with burn rate ($/h, tokens/min) and projection."""
    filters = _filters(since, until, tz_name)
    _ingest(app, claude_dir)
    data = usage.block_report(app.get().conn, filters, active_only=active)
    if as_json:
        emit_json(data)
        return
    if not data["blocks"]:
        click.echo("No active block." if active else "No usage recorded in this range.")
        return
    rows = []
    for b in data["blocks"]:
        start = b["startTime"][:16].replace("T", " ")
        if b["isGap"]:
            rows.append([start, "(gap)", "", "", "", ""])
            continue
        state = "ACTIVE" if b["isActive"] else ""
        rate = projection = ""
        if b["burnRate"]:
            rate = f"{_money(b['burnRate']['costPerHour'])}/h, {b['burnRate']['tokensPerMinute']:,.0f} tok/min"
            projection = f"{_money(b['projection']['totalCost'])} in {b['projection']['remainingMinutes']} min"
        rows.append([start, state, _n(b["totalTokens"]), _money(b["costUSD"]), rate, projection])
    click.echo(table(["BLOCK START (UTC)", "STATE", "TOTAL TOKENS", "COST", "BURN RATE", "PROJECTED"], rows))


@usage_group.command("import")
@click.option(
    "--claude-dir", default=None, help="Claude Code config dirs to read, comma-separated (default: CLAUDE_CONFIG_DIR or ~/.claude)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_app
def usage_import(app, claude_dir: str | None, as_json: bool) -> None:
    """Ingest Claude Code transcripts now and print what was read (reports do this too)."""
    stats = _ingest(app, claude_dir)
    if as_json:
        emit_json(stats.to_dict())
        return
    click.echo(
        f"Read {stats.files_read} of {stats.files} transcript file(s) in {', '.join(stats.roots)} ({stats.bytes_read / 1e6:.1f} MB, "
        f"{stats.seconds:.2f}s): {_n(stats.entries)} usage line(s), {_n(stats.stored)} new entries, "
        f"{_n(stats.duplicates)} duplicate(s) dropped, {_n(stats.skipped)} line(s) skipped"
    )
    if stats.files_reset:
        click.echo(f"{stats.files_reset} file(s) were replaced or truncated and read again from the start")
    if stats.files_missing:
        click.echo(f"{stats.files_missing} known file(s) are gone; their usage is kept")


@usage_group.command("prices")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@pass_app
def usage_prices(app, as_json: bool) -> None:
    """The price table in use (USD per million tokens), with its version and any overrides."""
    ctx = app.get()
    prices = pricing.load(ctx.paths.config_dir)
    models = [p.to_dict() for name, p in sorted(prices.models.items()) if name != usage.SYNTHETIC]
    if as_json:
        emit_json({"version": prices.version, "overrides": prices.overrides_file, "models": models})
        return
    click.echo(
        f"Price table {prices.version}, USD per million tokens"
        + (f"; overrides from {prices.overrides_file}" if prices.overrides_file else "")
    )
    rows = []
    for m in models:
        long_context = m.get("long_context")
        extra = f"above {long_context['above_tokens']:,}: {long_context['input']:g}/{long_context['output']:g}" if long_context else ""
        rates = [f"{m[name]:g}" for name in ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")]
        rows.append([m["model"], *rates, f"x{m['fast_multiplier']:g}", extra, "override" if m["source"] != "table" else ""])
    click.echo(table(["MODEL", "INPUT", "OUTPUT", "CACHE WRITE 5M", "CACHE WRITE 1H", "CACHE READ", "FAST", "LONG CONTEXT", ""], rows))
    click.echo(f"Overrides: {ctx.paths.config_dir / pricing.OVERRIDES_FILE}")
