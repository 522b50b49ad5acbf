"""Settings: built-in defaults < config file (TOML) < environment (STRATAVORE_<NAME>) < flags.

Flags are applied by the CLI on top of the settings this module returns.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, InvalidInput

RESTART_POLICIES = ("no", "on-failure", "always")


@dataclass(frozen=True)
class Settings:
    max_runners: int = 0  # global cap on active runners; 0 means no cap
    stop_signal: str = "TERM"
    stop_timeout: float = 10.0
    restart: str = "no"
    max_restarts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    restart_reset_after: float = 60.0  # a run this long resets the restart counter
    heartbeat_interval: float = 5.0
    reconcile_interval: float = 5.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    detach_key: str = "ctrl-]"
    busy_timeout: float = 5.0
    launch_timeout: float = 10.0
    claude_command: str = "claude"  # how to run Claude Code (a shell-style command line)
    # how Claude runners report hook events: "command" hooks work whether or not the daemon runs;
    # "http" hooks post to the daemon's API (no interpreter start per event) but are lost while it is down
    claude_hooks: str = "command"
    claude_config_dir: str = ""  # default: $CLAUDE_CONFIG_DIR, else ~/.claude
    idle_after: float = 10.0  # agents without hooks count as idle after this long without output
    event_retention_days: float = 7.0  # delivered events older than this are pruned
    notify_cooldown: float = 300.0  # no second "waiting" alert for the same runner within this many seconds
    notify_flood_max: int = 5  # messages per channel per window; beyond that, one summary
    notify_flood_window: float = 60.0
    delivery_max_attempts: int = 8  # an event failing this often is parked (stratavore events --failed)
    delivery_backoff_initial: float = 0.5
    delivery_backoff_max: float = 60.0
    api_host: str = "127.0.0.1"  # the daemon's HTTP API, on loopback only ("" for none: then api_socket only)
    api_port: int = 7878  # 0 picks a free port
    api_socket: str = ""  # a unix socket (0600) to serve the API on as well
    api_rate_limit: float = 50.0  # requests per second per client, bursts of twice that; 0 for no limit
    metrics_auth: bool = True  # /metrics needs the API token too (turn off for a local Prometheus)
    # user-defined agent presets: name -> command template ([agents.NAME] command = [...] in config.toml)
    agent_presets: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def validated(self) -> Settings:
        if self.restart not in RESTART_POLICIES:
            raise ConfigError(f"restart must be one of {', '.join(RESTART_POLICIES)}, not {self.restart!r}")
        parse_signal(self.stop_signal, error=ConfigError)
        parse_detach_key(self.detach_key, error=ConfigError)
        for name in ("max_runners", "max_restarts", "log_backups"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        for name in ("stop_timeout", "backoff_initial", "backoff_max", "busy_timeout", "launch_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        for name in ("heartbeat_interval", "reconcile_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("event_retention_days", "delivery_max_attempts", "notify_flood_max"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("notify_cooldown", "notify_flood_window", "delivery_backoff_initial", "delivery_backoff_max"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.log_max_bytes < 4096:
            raise ConfigError("log_max_bytes must be at least 4096")
        if self.api_host and not is_loopback(self.api_host):
            raise ConfigError(f"api_host must be a loopback address (127.0.0.1, ::1, localhost), not {self.api_host!r}")
        if not 0 <= self.api_port <= 65535:
            raise ConfigError("api_port must be between 0 and 65535")
        if self.claude_hooks not in ("command", "http"):
            raise ConfigError(f"claude_hooks must be command or http, not {self.claude_hooks!r}")
        if self.api_rate_limit < 0:
            raise ConfigError("api_rate_limit must not be negative")
        return self


def is_loopback(host: str) -> bool:
    """The API never listens beyond this machine: its control routes would be remote code execution."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_FIELD_TYPES = {f.name: f.type for f in fields(Settings) if f.name != "agent_presets"}


_KIND_TEXT = {"str": "a string", "bool": "true or false"}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _FIELD_TYPES[name]
    try:
        if kind == "bool":
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.strip().lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except ValueError:
        raise ConfigError(f"{source}: {name} must be {_KIND_TEXT.get(kind, 'a number')}") from None


def load_settings(config_file: Path, environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file.exists():
        import tomllib

        try:
            with open(config_file, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read {config_file}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"invalid TOML in {config_file}: {e}") from None
        presets = data.pop("agents", None)
        if presets is not None:
            values["agent_presets"] = _parse_presets(presets, config_file)
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in _FIELD_TYPES:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[name] = _coerce(name, value, str(config_file))
    for name in _FIELD_TYPES:
        raw = env.get(f"STRATAVORE_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, raw, f"STRATAVORE_{name.upper()}")
    return Settings(**values).validated()


def _parse_presets(table: Any, source: Path) -> dict[str, tuple[str, ...]]:
    from .names import validate_name

    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [agents] must be a table of presets")
    presets = {}
    for name, preset in table.items():
        try:
            validate_name("agent preset", name)
        except InvalidInput as e:
            raise ConfigError(f"{source}: {e}") from None
        command = preset.get("command") if isinstance(preset, dict) else None
        if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
            raise ConfigError(f'{source}: [agents.{name}] needs command = ["program", "arg", ...]')
        presets[name] = tuple(command)
    return presets


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None}).validated()


def parse_signal(name: str | int, error: type[Exception] = InvalidInput) -> signal.Signals:
    """Accept 'TERM', 'SIGTERM', 'term' or '15'."""
    text = str(name).strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise error(f"unknown signal {name!r}") from None


def parse_detach_key(spec: str, error: type[Exception] = InvalidInput) -> bytes:
    """'ctrl-]' -> b'\\x1d'; 'ctrl-a' -> b'\\x01'."""
    text = spec.strip().lower()
    if text.startswith(("ctrl-", "ctrl+", "c-", "^")):
        key = text.split("-", 1)[1] if "-" in text else text[1:]
        if "+" in text and "-" not in text:
            key = text.split("+", 1)[1]
        if len(key) == 1:
            code = ord(key.upper()) ^ 0x40
            if 0 <= code < 32:
                return bytes([code])
    raise error(f"invalid detach key {spec!r}; use the form ctrl-] or ctrl-q")
