"""Model prices: a versioned table shipped with Stratavore, overridable per user.

The table (``stratavore/data/prices.json``) gives, per model, USD per million tokens for input,
output, 5-minute cache writes, 1-hour cache writes and cache reads, a fast-mode multiplier and, where
the model has one, a long-context tier. ``prices.toml`` in the config directory overrides or adds
models::

    ["claude-opus-5-5"]
    input = 4
    output = 20
    cache_write_5m = 5
    cache_write_1h = 8
    cache_read = 0.2
    fast_multiplier = 2            # optional

A model missing from both is *unknown*: its cost is None and reports list it, so that nothing is
ever priced at $0 by accident.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError

OVERRIDES_FILE = "prices.toml"
RATE_NAMES = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
PER_TOKEN = 1_000_000


@dataclass(frozen=True)
class Rates:
    """USD per million tokens."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float


@dataclass(frozen=True)
class ModelPrice:
    model: str
    base: Rates
    fast_multiplier: float = 1.0
    long_context: Rates | None = None
    long_context_above: int | None = None  # prompt tokens (input + cache writes + reads) beyond which long_context applies
    source: str = "table"  # "table" or the overrides file

    def cost(self, input_tokens: int, output_tokens: int, cache_5m: int, cache_1h: int, cache_read: int, fast: bool) -> float:
        rates = self.base
        if self.long_context is not None and self.long_context_above is not None:
            if input_tokens + cache_5m + cache_1h + cache_read > self.long_context_above:
                rates = self.long_context
        # the same expression, in the same order, as cost_sql(): stored and recomputed costs agree exactly
        total = (
            input_tokens * rates.input
            + output_tokens * rates.output
            + cache_5m * rates.cache_write_5m
            + cache_1h * rates.cache_write_1h
            + cache_read * rates.cache_read
        ) / PER_TOKEN
        return total * self.fast_multiplier if fast else total

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model, **asdict(self.base), "fast_multiplier": self.fast_multiplier, "source": self.source}
        if self.long_context is not None:
            data["long_context"] = {"above_tokens": self.long_context_above, **asdict(self.long_context)}
        return data


@dataclass(frozen=True)
class PriceTable:
    version: str
    models: dict[str, ModelPrice]
    aliases: dict[str, str] = field(default_factory=dict)
    overrides_file: str | None = None

    @property
    def fingerprint(self) -> str:
        """Changes whenever any price changes, so stored costs can be recomputed."""
        data = json.dumps({k: v.to_dict() for k, v in sorted(self.models.items())}, sort_keys=True)
        return hashlib.sha256(f"{self.version}\n{data}".encode()).hexdigest()[:16]

    def lookup(self, model: str | None) -> ModelPrice | None:
        if not model:
            return None
        return _lookup(self, model)

    def cost(
        self, model: str | None, input_tokens: int, output_tokens: int, cache_5m: int, cache_1h: int, cache_read: int, fast: bool
    ) -> float | None:
        price = self.lookup(model)
        if price is None:
            return None
        return price.cost(input_tokens, output_tokens, cache_5m, cache_1h, cache_read, fast)

    def __hash__(self) -> int:  # lets lookups be cached per table
        return id(self)


_PREFIX = re.compile(r"^(?:[a-z0-9_-]+[./])*(?=claude-)")  # anthropic., us.anthropic., vertex_ai/
_SUFFIXES = (
    re.compile(r"\[[0-9a-z]+\]$"),  # [1m]
    re.compile(r"-v\d+(?::\d+)?$"),  # bedrock -v1:0
    re.compile(r"[@-]\d{8}$"),  # -20250929, @20250929
    re.compile(r"-latest$"),
)


def normalise(model: str) -> str:
    """The table key a model id should match: no provider prefix, no date or version suffix."""
    name = model.strip().lower()
    name = _PREFIX.sub("", name)
    changed = True
    while changed:
        changed = False
        for pattern in _SUFFIXES:
            stripped = pattern.sub("", name)
            if stripped != name:
                name, changed = stripped, True
    return name


@lru_cache(maxsize=4096)
def _lookup(table: PriceTable, model: str) -> ModelPrice | None:
    for candidate in (model, normalise(model)):
        key = table.aliases.get(candidate, candidate)
        if key in table.models:
            return table.models[key]
    return None


def _rates(data: dict[str, Any], where: str) -> Rates:
    values = {}
    for name in RATE_NAMES:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}: {name} must be a number of USD per million tokens, 0 or more")
        values[name] = float(value)
    return Rates(**values)


def _model_price(model: str, data: dict[str, Any], where: str, source: str, base: ModelPrice | None = None) -> ModelPrice:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table of rates")
    known = {*RATE_NAMES, "fast_multiplier", "long_context", "aliases"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known - {'aliases'}))})")
    if base is not None:
        # an override may change a few rates of a model the table knows
        data = {**asdict(base.base), "fast_multiplier": base.fast_multiplier, **data}
    missing = [name for name in RATE_NAMES if name not in data]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)} (a model the table does not know needs all five rates)")
    fast = data.get("fast_multiplier", 1)
    if isinstance(fast, bool) or not isinstance(fast, int | float) or fast <= 0:
        raise ConfigError(f"{where}: fast_multiplier must be a positive number")
    long_context, above = (base.long_context, base.long_context_above) if base is not None else (None, None)
    if "long_context" in data:
        tier = data["long_context"]
        if not isinstance(tier, dict):
            raise ConfigError(f"{where}: long_context must be a table")
        above = tier.get("above_tokens")
        if isinstance(above, bool) or not isinstance(above, int) or above <= 0:
            raise ConfigError(f"{where}: long_context.above_tokens must be a positive whole number")
        long_context = _rates(tier, f"{where}.long_context")
    return ModelPrice(model, _rates(data, where), float(fast), long_context, above, source)


def _shipped() -> dict[str, Any]:
    text = resources.files("stratavore").joinpath("data/prices.json").read_text(encoding="utf-8")
    return json.loads(text)


def load(config_dir: Path | None = None) -> PriceTable:
    """The shipped table, with ``prices.toml`` from ``config_dir`` applied when it exists."""
    shipped = _shipped()
    models: dict[str, ModelPrice] = {}
    aliases: dict[str, str] = {}
    for model, data in shipped["models"].items():
        models[model] = _model_price(model, data, f"prices.json {model}", "table")
        for alias in data.get("aliases", ()):
            aliases[alias] = model
    overrides_path = None
    if config_dir is not None and (config_dir / OVERRIDES_FILE).exists():
        overrides_path = config_dir / OVERRIDES_FILE
        for model, data in _read_overrides(overrides_path).items():
            if not isinstance(model, str) or not model.strip():
                raise ConfigError(f"{overrides_path}: model names must be non-empty strings")
            key = aliases.get(model, model)
            where = f"{overrides_path}: [{json.dumps(model)}]"
            models[key] = _model_price(key, data, where, str(overrides_path), models.get(key))
    return PriceTable(shipped["version"], models, aliases, str(overrides_path) if overrides_path else None)


def _read_overrides(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML in {path}: {e}") from None


def cost_sql(price: ModelPrice) -> tuple[str, list[float]]:
    """A SQL expression over usage_entries' token columns equal to :meth:`ModelPrice.cost`."""

    def expression(rates: Rates) -> str:
        return "((input_tokens * ? + output_tokens * ? + cache_5m_tokens * ? + cache_1h_tokens * ? + cache_read_tokens * ?) / 1000000.0)"

    def params(rates: Rates) -> list[float]:
        return [rates.input, rates.output, rates.cache_write_5m, rates.cache_write_1h, rates.cache_read]

    base, values = expression(price.base), params(price.base)
    if price.long_context is not None and price.long_context_above is not None:
        sql = (
            "(CASE WHEN input_tokens + cache_5m_tokens + cache_1h_tokens + cache_read_tokens > ? "
            f"THEN {expression(price.long_context)} ELSE {base} END)"
        )
        values = [float(price.long_context_above), *params(price.long_context), *values]
        base = sql
    return f"(CASE WHEN speed = 'fast' THEN {base} * ? ELSE {base} END)", [*values, price.fast_multiplier, *values]


def with_model(table: PriceTable, price: ModelPrice) -> PriceTable:
    """A copy of the table with one model added or replaced (used by tests and what-if tools)."""
    return replace(table, models={**table.models, price.model: price})
