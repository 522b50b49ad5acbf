"""`stratavore budget ...`"""

from __future__ import annotations

import click

from .. import budgets as budget_store
from . import cli, pass_app
from .render import emit_json, table


@cli.group("budget")
def budget() -> None:
    """Spending limits that warn, refuse launches and interrupt or stop agents."""


@budget.command("set")
@click.option("--global", "is_global", is_flag=True, help="Limit everything this node spends.")
@click.option("--project", default=None, help="Limit one project.")
@click.option("--runner", default=None, help="Limit one runner.")
@click.option("--usd", type=float, default=None, help="Limit in US dollars.")
@click.option("--tokens", type=int, default=None, help="Limit in tokens (input, output and cache).")
@click.option("--period", type=click.Choice(budget_store.PERIODS), default="month", show_default=True, help="Budget period.")
@click.option("--timezone", default=None, help="Time zone of day/week/month boundaries (default: local).")
@click.option("--warn", default=None, help="Warning thresholds in percent, e.g. 80 or 50,80,95 (default 80).")
@click.option(
    "--action",
    type=click.Choice(budget_store.ACTIONS),
    default="notify",
    show_default=True,
    help="At 100 %: new launches are always refused; running agents are interrupted, stopped, or only notified about.",
)
@click.option("--name", default=None, help="Budget name (default: scope, target and period).")
@click.option("--json", "as_json", is_flag=True, help="Print the budget as JSON.")
@pass_app
def budget_set(app, is_global, project, runner, usd, tokens, period, timezone, warn, action, name, as_json) -> None:
    """Create or replace a budget."""
    chosen = [s for s, v in (("global", is_global), ("project", project), ("runner", runner)) if v]
    if len(chosen) != 1:
        from ..errors import InvalidInput

        raise InvalidInput("choose one scope: --global, --project NAME or --runner NAME")
    b = budget_store.set_budget(
        app.get().conn,
        scope=chosen[0],
        target=project or runner,
        usd=usd,
        tokens=tokens,
        period=period,
        timezone=timezone,
        warn=warn,
        action=action,
        name=name,
    )
    if as_json:
        emit_json(b.to_dict())
    else:
        click.echo(f"Budget {b.name}: {_limits(b)} per {b.period}, warn at {','.join(map(str, b.warn_percents))}%, action {b.action}")


def _limits(b: budget_store.Budget) -> str:
    parts = []
    if b.limit_usd:
        parts.append(f"${b.limit_usd:,.2f}")
    if b.limit_tokens:
        parts.append(f"{b.limit_tokens:,} tokens")
    return " and ".join(parts)


@budget.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def budget_list(app, as_json: bool) -> None:
    """Budgets with what their current period has spent."""
    standings = budget_store.standings(app.get().conn)
    if as_json:
        emit_json([s.to_dict() for s in standings])
        return
    if not standings:
        click.echo("No budgets. Set one: stratavore budget set --project web --usd 20 --period day")
        return
    rows = []
    for s in standings:
        spent = []
        if s.budget.limit_usd:
            spent.append(f"${s.spent_usd:,.2f}")
        if s.budget.limit_tokens:
            spent.append(f"{s.spent_tokens:,} tok")
        rows.append([s.budget.name, _limits(s.budget), s.period_key, " / ".join(spent), f"{s.percent:.0f}%", s.budget.action])
    click.echo(table(["BUDGET", "LIMIT", "PERIOD", "SPENT", "USED", "ACTION"], rows))


@budget.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def budget_show(app, name: str, as_json: bool) -> None:
    """One budget and where it stands."""
    conn = app.get().conn
    s = budget_store.standing(conn, budget_store.get(conn, name))
    if as_json:
        emit_json(s.to_dict())
        return
    b = s.budget
    lines = [
        ("name", b.name),
        ("scope", f"{b.scope}{' ' + str(b.target) if b.target else ''}"),
        ("limit", f"{_limits(b)} per {b.period}" + (f" ({b.timezone})" if b.timezone else "")),
        ("period", s.period_key),
        ("spent", f"${s.spent_usd:,.4f}, {s.spent_tokens:,} tokens" + (f" ({s.unpriced_entries} unpriced)" if s.unpriced_entries else "")),
        ("used", f"{s.percent:.1f}%"),
        ("warn at", ", ".join(f"{p}%" for p in b.warn_percents)),
        ("action", b.action),
    ]
    click.echo("\n".join(f"{k + ':':<10}{v}" for k, v in lines))


@budget.command("rm")
@click.argument("name")
@pass_app
def budget_rm(app, name: str) -> None:
    """Remove a budget."""
    budget_store.remove(app.get().conn, name)
    click.echo(f"Removed budget {name}")
