"""The price table: figures, model-id matching, costs, overrides and their errors."""

from __future__ import annotations

import sqlite3

import pytest

from stratavore import pricing
from stratavore.errors import ConfigError

# USD per million tokens: input / output / cache write 5m / cache write 1h / cache read (issue 4)
EXPECTED = {
    "claude-sonnet-4-20250514": (3, 15, 3.75, 6, 0.30),
    "claude-sonnet-4-5-20250929": (3, 15, 3.75, 6, 0.30),
    "claude-sonnet-4-6": (3, 15, 3.75, 6, 0.30),
    "claude-opus-4-20250514": (15, 75, 18.75, 30, 1.50),
    "claude-opus-4-1": (15, 75, 18.75, 30, 1.50),
    "claude-opus-4-5-20251101": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-6": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-7": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-8": (5, 25, 6.25, 10, 0.50),
    "claude-opus-5": (5, 25, 6.25, 10, 0.50),
    "claude-opus-5-5": (4, 20, 5, 8, 0.20),
    "claude-haiku-4-5-20251001": (1, 5, 1.25, 2, 0.10),
    "claude-3-5-haiku-20241022": (0.80, 4, 1, 1.60, 0.08),
    "claude-sonnet-5": (2, 10, 2.5, 4, 0.20),
    "claude-sonnet-5-5": (2, 10, 2.5, 4, 0.10),
    "claude-haiku-5-5": (0.10, 0.50, 0.125, 0.20, 0.01),
    "claude-fable-5": (10, 50, 12.5, 20, 1.00),
    "claude-mythos-5": (10, 50, 12.5, 20, 1.00),
    "claude-fable-5-1": (10, 50, 12.5, 20, 0.25),
    "claude-mythos-5-1": (10, 50, 12.5, 20, 0.25),
    "claude-fable-5-2": (8, 40, 10, 16, 0.20),
    "claude-mythos-5-2": (8, 40, 10, 16, 0.20),
}


@pytest.fixture(scope="module")
def table() -> pricing.PriceTable:
    return pricing.load(None)


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_shipped_figures(table, model):
    price = table.lookup(model)
    assert price is not None, model
    rates = price.base
    assert (rates.input, rates.output, rates.cache_write_5m, rates.cache_write_1h, rates.cache_read) == pytest.approx(EXPECTED[model])


@pytest.mark.parametrize(
    "model,key",
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("us.anthropic.claude-opus-4-1-20250805-v1:0", "claude-opus-4-1"),
        ("claude-sonnet-4-5-20250929[1m]", "claude-sonnet-4-5"),
        ("Claude-Opus-4-6", "claude-opus-4-6"),
        ("claude-opus-4-0", "claude-opus-4"),
        ("claude-haiku-3-5", "claude-3-5-haiku"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
    ],
)
def test_model_ids_match_robustly(table, model, key):
    assert table.lookup(model).model == key


@pytest.mark.parametrize("model", ["claude-nonexistent-9", "gpt-5", "", None, "claude-opus", "claude-sonnet-4-5-extra"])
def test_unknown_models_have_no_price(table, model):
    assert table.lookup(model) is None
    assert table.cost(model, 1000, 1000, 0, 0, 0, False) is None


def test_cost_of_every_token_kind(table):
    # 1M of each kind: the sum of the five rates
    assert table.cost("claude-sonnet-4-5-20250929", 10**6, 10**6, 10**6, 10**6, 10**6, False) == pytest.approx(3 + 15 + 3.75 + 6 + 0.30)
    assert table.cost("claude-opus-4-1", 1000, 200, 5000, 2000, 300, False) == pytest.approx(
        (1000 * 15 + 200 * 75 + 5000 * 18.75 + 2000 * 30 + 300 * 1.5) / 1e6
    )


def test_fast_mode_multiplies_the_whole_cost(table):
    assert table.lookup("claude-opus-4-6").fast_multiplier == 6
    assert table.lookup("claude-opus-4-8").fast_multiplier == 2
    assert table.cost("claude-opus-4-6", 100, 50, 0, 0, 100, True) == pytest.approx(0.0108)  # (500+1250+50)e-6 x 6
    assert table.cost("claude-opus-4-6", 100, 50, 0, 0, 100, False) == pytest.approx(0.0018)
    # no fast tier known: fast costs the same as standard
    assert table.cost("claude-sonnet-4-5", 100, 50, 0, 0, 0, True) == table.cost("claude-sonnet-4-5", 100, 50, 0, 0, 0, False)


def test_long_context_tier_prices_the_whole_response(table):
    # Haiku 5.5 above 100k prompt tokens (input + cache writes + reads): 0.5 / 2.5 / 0.625 / 1 / 0.05
    below = table.cost("claude-haiku-5-5", 50_000, 1_000, 0, 0, 50_000, False)
    above = table.cost("claude-haiku-5-5", 50_000, 1_000, 0, 0, 50_001, False)
    assert below == pytest.approx((50_000 * 0.10 + 1_000 * 0.50 + 50_000 * 0.01) / 1e6)
    assert above == pytest.approx((50_000 * 0.5 + 1_000 * 2.5 + 50_001 * 0.05) / 1e6)


def test_sonnet_has_no_200k_tier(table):
    # ccusage 20.0.24 charges the excess over 200k tokens of one kind at a higher rate for Sonnet 4/4.5
    # ($1.20 for 300k input); Claude Code's own catalog has no such tier: 300k x $3 = $0.90
    assert table.cost("claude-sonnet-4-5-20250929", 300_000, 0, 0, 0, 0, False) == pytest.approx(0.90)


def test_synthetic_lines_cost_nothing(table):
    assert table.cost("<synthetic>", 10, 10, 0, 0, 0, False) == 0


def test_sql_cost_equals_python_cost(table):
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE usage_entries (model TEXT, speed TEXT, input_tokens INT, output_tokens INT, cache_5m_tokens INT,"
        " cache_1h_tokens INT, cache_read_tokens INT)"
    )
    rows = [
        ("claude-haiku-5-5", "standard", 60_000, 900, 10, 20, 40_000),
        ("claude-haiku-5-5", "fast", 10, 900, 10, 20, 400),
        ("claude-opus-4-6", "fast", 1234, 5678, 91, 11, 12345),
        ("claude-opus-4-6", None, 1234, 5678, 91, 11, 12345),
    ]
    conn.executemany("INSERT INTO usage_entries VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    for row in rows:
        expression, params = pricing.cost_sql(table.lookup(row[0]))
        (sql_cost,) = conn.execute(
            f"SELECT {expression} FROM usage_entries WHERE model=? AND speed IS ? AND input_tokens=?", (*params, row[0], row[1], row[2])
        ).fetchone()
        assert sql_cost == table.cost(row[0], *row[2:], row[1] == "fast")


def test_overrides_change_and_add_models(tmp_path):
    (tmp_path / "prices.toml").write_text(
        '["claude-sonnet-4-5"]\ninput = 4\n\n["claude-nonexistent-9"]\n'
        "input = 1\noutput = 2\ncache_write_5m = 3\ncache_write_1h = 4\ncache_read = 0.5\nfast_multiplier = 3\n"
    )
    table = pricing.load(tmp_path)
    sonnet = table.lookup("claude-sonnet-4-5-20250929")
    assert (sonnet.base.input, sonnet.base.output, sonnet.source) == (4, 15, str(tmp_path / "prices.toml"))
    assert table.cost("claude-nonexistent-9", 10**6, 0, 0, 0, 0, True) == 3
    assert table.fingerprint != pricing.load(None).fingerprint
    assert table.overrides_file == str(tmp_path / "prices.toml")


@pytest.mark.parametrize(
    "text,fragment",
    [
        ('["claude-new"]\ninput = 1\n', "missing output, cache_write_5m, cache_write_1h, cache_read"),
        ('["claude-sonnet-4-5"]\ninput = -1\n', "input must be a number of USD per million tokens"),
        ('["claude-sonnet-4-5"]\ninput = "3"\n', "input must be a number"),
        ('["claude-sonnet-4-5"]\ninptu = 3\n', "unknown key 'inptu'"),
        ('["claude-sonnet-4-5"]\nfast_multiplier = 0\n', "fast_multiplier must be a positive number"),
        ("input = 3\n", "must be a table of rates"),
        ('["claude-sonnet-4-5"\n', "invalid TOML"),
    ],
)
def test_bad_overrides_are_config_errors(tmp_path, text, fragment):
    (tmp_path / "prices.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        pricing.load(tmp_path)
    assert fragment in str(info.value)
    assert "prices.toml" in str(info.value)
