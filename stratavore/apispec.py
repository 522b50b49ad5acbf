"""The OpenAPI 3 document of the HTTP API, served at ``/openapi.json``.

It is the contract, not a by-product: the server validates query parameters and request bodies
against the schemas below (so a request the document calls invalid is refused with 422, and one it
calls valid is never refused for its shape), tests check that every route the server answers is
here and nothing else is, and the test suite fuzzes the server from it.
"""

from __future__ import annotations

from typing import Any

from . import __version__
from .states import RunnerState

ERRORS = {
    "400": "bad_request: the body is not JSON, or the request is malformed",
    "401": "unauthorized: no token, or a wrong one",
    "403": "forbidden: a runner token used beyond its runner's own reports",
    "404": "not_found: no such project, runner, session, budget or route",
    "405": "method_not_allowed",
    "409": "conflict or quota_exceeded: a duplicate name, an active runner, a full project",
    "411": "length_required: a body without Content-Length",
    "413": "payload_too_large",
    "422": "invalid_input, ambiguous or launch_failed: a value the schema or Stratavore refuses",
    "429": "rate_limited: too many requests from this client; see Retry-After",
    "503": "database_busy or unavailable: try again (Retry-After)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "nullable": True, **extra}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict[str, Any]:
    out = {}
    for code in ("401", "429", *codes):
        out[code] = {"description": ERRORS[code], "content": {"application/json": {"schema": _ref("Error")}}}
    return out


def _query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **extra}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}, "description": description}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


BOOL = {"type": "boolean"}
RUNNER_REF = _path("runner", "Runner name, id, or an unambiguous prefix of its id.")
PROJECT_REF = _path("name", "Project name.")
NAME = {"type": "string", "minLength": 1, "maxLength": 63}
SIGNAL = {"type": "string", "minLength": 1, "maxLength": 16, "description": "TERM, SIGTERM, term or 15"}

# -- usage reports: the JSON of `stratavore usage ... --json`, shaped like ccusage's ----------------------

INT = {"type": "integer"}
NUM = {"type": "number"}
STRINGS = {"type": "array", "items": {"type": "string"}}
TOKEN_COUNTS = {
    "inputTokens": INT,
    "outputTokens": INT,
    "cacheCreationTokens": INT,
    "cacheReadTokens": INT,
    "totalTokens": INT,
    "totalCost": {"type": "number", "description": "USD; models without a price are left out (see unpricedModels)."},
}
COUNT_NAMES = list(TOKEN_COUNTS)


def _row(key: str | None = None, **extra: Any) -> dict[str, Any]:
    """A report row: its key field(s), the token counts, modelsUsed and modelBreakdowns."""
    props = {**extra, **TOKEN_COUNTS, "modelsUsed": STRINGS, "modelBreakdowns": {"type": "array", "items": _ref("UsageModelBreakdown")}}
    return {"type": "object", "required": [*([key] if key else []), *COUNT_NAMES, "modelsUsed", "modelBreakdowns"], "properties": props}


def _report(key: str, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [key, "totals"],
        "properties": {key: {"type": "array", "items": row}, "totals": _ref("UsageTotals")},
    }


SESSION_ROW = _row(
    "sessionId",
    sessionId={"type": "string"},
    projectPath={"type": "string"},
    project={"type": "string", "description": "The Stratavore project, or 'unassigned'."},
    runnerId=_nullable("string"),
    firstActivity={"type": "string", "description": "ISO 8601, UTC."},
    lastActivity={"type": "string", "description": "ISO 8601, UTC."},
)
PROJECT_ROW = _row("project", project={"type": "string", "description": "The Stratavore project, or 'unassigned'."})

USAGE_SCHEMAS: dict[str, Any] = {
    "UsageTotals": {
        "type": "object",
        "required": COUNT_NAMES,
        "properties": {**TOKEN_COUNTS, "unpricedModels": {**STRINGS, "description": "Models without a price (their cost is unknown)."}},
    },
    "UsageModelBreakdown": {
        "type": "object",
        "required": ["modelName", "inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens", "cost"],
        "properties": {
            "modelName": {"type": "string", "description": "<model>-fast for fast mode."},
            "inputTokens": INT,
            "outputTokens": INT,
            "cacheCreationTokens": INT,
            "cacheReadTokens": INT,
            "cost": NUM,
            "missingPricing": BOOL,
        },
    },
    "UsageDaily": _report("daily", _row("date", date={"type": "string", "description": "YYYY-MM-DD"})),
    "UsageWeekly": _report("weekly", _row("week", week={"type": "string", "description": "The Sunday the week starts on."})),
    "UsageMonthly": _report("monthly", _row("month", month={"type": "string", "description": "YYYY-MM"})),
    "UsageSessions": _report("sessions", SESSION_ROW),
    "UsageProjects": _report("projects", PROJECT_ROW),
    "UsageModels": _report(
        "models",
        {
            "type": "object",
            "required": ["model", *COUNT_NAMES, "entries"],
            "properties": {"model": {"type": "string"}, **TOKEN_COUNTS, "entries": INT, "missingPricing": BOOL},
        },
    ),
    "UsageBlocks": {
        "type": "object",
        "required": ["blocks"],
        "properties": {
            "blocks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "startTime", "endTime", "isActive", "isGap", "entries", "tokenCounts", "totalTokens", "costUSD"],
                    "properties": {
                        "id": {"type": "string"},
                        "startTime": {"type": "string"},
                        "endTime": {"type": "string"},
                        "actualEndTime": _nullable("string"),
                        "isActive": BOOL,
                        "isGap": BOOL,
                        "entries": INT,
                        "tokenCounts": {
                            "type": "object",
                            "properties": {
                                k: INT for k in ("inputTokens", "outputTokens", "cacheCreationInputTokens", "cacheReadInputTokens")
                            },
                        },
                        "totalTokens": INT,
                        "costUSD": NUM,
                        "models": STRINGS,
                        "burnRate": _nullable(
                            "object",
                            properties={"tokensPerMinute": NUM, "tokensPerMinuteForIndicator": NUM, "costPerHour": NUM},
                        ),
                        "projection": _nullable("object", properties={"totalTokens": INT, "totalCost": NUM, "remainingMinutes": INT}),
                    },
                },
            }
        },
    },
    "UsageOverview": {
        "type": "object",
        "required": ["periods", "topProjects", "topSessions"],
        "properties": {
            "periods": {
                "type": "object",
                "required": ["today", "week", "month"],
                "properties": {
                    name: {
                        "allOf": [
                            _ref("UsageTotals"),
                            {"type": "object", "required": ["since"], "properties": {"since": {"type": "string"}}},
                        ]
                    }
                    for name in ("today", "week", "month")
                },
            },
            "topProjects": {"type": "array", "items": PROJECT_ROW, "description": "This month's, costliest first."},
            "topSessions": {"type": "array", "items": SESSION_ROW, "description": "This month's, costliest first."},
        },
    },
    "PriceTable": {
        "type": "object",
        "required": ["version", "overrides", "models"],
        "properties": {
            "version": {"type": "string"},
            "overrides": _nullable("string", description="The overrides file in use."),
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["model", "input", "output", "cache_write_5m", "cache_write_1h", "cache_read", "fast_multiplier", "source"],
                    "properties": {
                        "model": {"type": "string"},
                        **{k: {"type": "number", "description": "USD per million tokens"} for k in ("input", "output")},
                        **{k: NUM for k in ("cache_write_5m", "cache_write_1h", "cache_read", "fast_multiplier")},
                        "long_context": {"type": "object", "description": "Rates above `above_tokens` prompt tokens."},
                        "source": {"type": "string", "description": "'table' or the overrides file."},
                    },
                },
            },
        },
    },
    "IngestStats": {
        "type": "object",
        "required": ["roots", "files", "files_read", "entries", "stored", "seconds"],
        "properties": {
            "roots": STRINGS,
            **{
                k: INT
                for k in (
                    "files",
                    "files_read",
                    "files_reset",
                    "files_missing",
                    "bytes_read",
                    "lines",
                    "entries",
                    "stored",
                    "duplicates",
                    "skipped",
                )
            },
            "seconds": NUM,
        },
    },
}

# -- budgets: the JSON of `stratavore budget ... --json` ----------------------------------------------------

BUDGET_FIELDS: dict[str, Any] = {
    "scope": {"type": "string", "enum": ["global", "project", "runner"]},
    "target": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "description": "The project's name (scope project) or the runner's name, id or id prefix (scope runner); none for global.",
    },
    "usd": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1e12, "description": "Limit in US dollars."},
    "tokens": {
        "type": "integer",
        "minimum": 1,
        "maximum": 9007199254740991,
        "description": "Limit in tokens (input, output and cache).",
    },
    "period": {"type": "string", "enum": ["day", "week", "month", "5h", "lifetime"], "description": "Default month."},
    "timezone": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "description": "IANA zone of day/week/month boundaries (default: local).",
    },
    "warn": {
        "type": "array",
        "minItems": 1,
        "maxItems": 20,
        "items": {"type": "integer", "minimum": 1, "maximum": 99},
        "description": "Warning thresholds in percent (default [80]).",
    },
    "action": {
        "type": "string",
        "enum": ["refuse", "interrupt", "stop", "notify"],
        "description": "At 100 %: new launches are always refused; running agents are interrupted, stopped, or only notified about "
        "(default notify).",
    },
}
BUDGET_SCHEMAS: dict[str, Any] = {
    "Budget": {
        "type": "object",
        "required": ["id", "name", "scope", "target", "limit_usd", "limit_tokens", "period", "timezone", "warn_percents", "action"],
        "properties": {
            "id": INT,
            "name": {"type": "string"},
            "scope": {"type": "string", "enum": ["global", "project", "runner"]},
            "target": _nullable("string", description="Project name, or runner id."),
            "limit_usd": _nullable("number"),
            "limit_tokens": _nullable("integer"),
            "period": {"type": "string"},
            "timezone": _nullable("string"),
            "warn_percents": {"type": "array", "items": INT},
            "action": {"type": "string"},
            "created_at": NUM,
            "version": INT,
        },
    },
    "BudgetStanding": {
        "allOf": [
            _ref("Budget"),
            {
                "type": "object",
                "required": ["period_key", "since", "spent_usd", "spent_tokens", "unpriced_entries", "percent"],
                "properties": {
                    "period_key": {"type": "string", "description": "The current period: 2026-11-21, 2026-W47, 2026-11, 5h-..., lifetime."},
                    "since": {"type": "number", "description": "When the current period began (epoch seconds)."},
                    "spent_usd": NUM,
                    "spent_tokens": INT,
                    "unpriced_entries": INT,
                    "percent": {"type": "number", "description": "Of the limit spent (the larger share when both are set)."},
                },
            },
        ]
    },
    "BudgetList": {
        "type": "object",
        "required": ["budgets"],
        "properties": {"budgets": {"type": "array", "items": _ref("BudgetStanding")}},
    },
    "BudgetSet": {
        "type": "object",
        "additionalProperties": False,
        "required": ["scope"],
        "description": "Give usd and/or tokens.",
        "properties": BUDGET_FIELDS,
    },
    "BudgetCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["scope"],
        "description": "Give usd and/or tokens. Without a name, the budget is named after its scope, target and period.",
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200}, **BUDGET_FIELDS},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code"],
        "properties": {
            "error": {"type": "string", "description": "One line for people."},
            "code": {
                "type": "string",
                "description": "For programs.",
                "enum": [
                    "bad_request",
                    "unauthorized",
                    "forbidden",
                    "not_found",
                    "method_not_allowed",
                    "conflict",
                    "quota_exceeded",
                    "length_required",
                    "payload_too_large",
                    "invalid_input",
                    "ambiguous",
                    "launch_failed",
                    "rate_limited",
                    "database_busy",
                    "unavailable",
                    "config_error",
                    "daemon_error",
                    "internal",
                ],
            },
        },
    },
    "Project": {
        "type": "object",
        "required": ["id", "name", "path", "max_runners", "default_agent", "active_runners"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "path": {"type": "string"},
            "max_runners": _nullable("integer"),
            "default_agent": _nullable("string"),
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
            "version": {"type": "integer"},
            "active_runners": {"type": "integer", "minimum": 0},
        },
    },
    "ProjectList": {"type": "object", "required": ["projects"], "properties": {"projects": {"type": "array", "items": _ref("Project")}}},
    "ProjectCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "path"],
        "properties": {
            "name": NAME,
            "path": {"type": "string", "minLength": 1, "maxLength": 4096, "description": "An existing directory."},
            "max_runners": {"type": "integer", "minimum": 0, "maximum": 100000, "nullable": True, "description": "0 or null: no limit."},
            "agent": _nullable("string", maxLength=63, description="Default agent: claude, codex, aider, gemini, a preset, generic."),
        },
    },
    "ProjectUpdate": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "path": {"type": "string", "minLength": 1, "maxLength": 4096},
            "max_runners": {"type": "integer", "minimum": 0, "maximum": 100000},
            "agent": {"type": "string", "maxLength": 63, "description": "'' clears the default agent."},
        },
    },
    "Runner": {
        "type": "object",
        "required": ["id", "name", "project", "state", "command", "agent"],
        "description": "A supervised runner, as `stratavore ps --json` shows it.",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "project": {"type": "string"},
            "project_id": {"type": "integer"},
            "command": {"type": "array", "items": {"type": "string"}},
            "cwd": {"type": "string"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "state": {"type": "string", "enum": [s.value for s in RunnerState]},
            "reason": _nullable("string"),
            "exit_code": _nullable("integer"),
            "exit_signal": _nullable("string"),
            "restart_policy": {"type": "string"},
            "max_restarts": {"type": "integer"},
            "restarts": {"type": "integer"},
            "stop_signal": {"type": "string"},
            "stop_timeout": {"type": "number"},
            "keeper_pid": _nullable("integer"),
            "agent_pid": _nullable("integer"),
            "created_at": {"type": "number"},
            "started_at": _nullable("number"),
            "ended_at": _nullable("number"),
            "heartbeat_at": _nullable("number"),
            "heartbeat_age": _nullable("number"),
            "cpu_percent": _nullable("number"),
            "rss_bytes": _nullable("integer"),
            "process_count": _nullable("integer"),
            "version": {"type": "integer"},
            "agent": {"type": "string"},
            "session_id": _nullable("string"),
            "agent_status": _nullable("string", enum=["working", "waiting", "idle", None]),
            "agent_status_detail": _nullable("string"),
            "worktree_path": _nullable("string"),
            "worktree_branch": _nullable("string"),
        },
    },
    "RunnerList": {"type": "object", "required": ["runners"], "properties": {"runners": {"type": "array", "items": _ref("Runner")}}},
    "LaunchRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["project"],
        "properties": {
            "project": NAME,
            "command": {
                "type": "array",
                "maxItems": 256,
                "items": {"type": "string", "maxLength": 65536},
                "description": "The command (argv), or the agent's own arguments with `agent`.",
            },
            "agent": {"type": "string", "minLength": 1, "maxLength": 63},
            "name": NAME,
            "count": {"type": "integer", "minimum": 1, "maximum": 100},
            "cwd": {"type": "string", "minLength": 1, "maxLength": 4096},
            "env": {"type": "object", "maxProperties": 256, "additionalProperties": {"type": "string", "maxLength": 65536}},
            "restart": {"type": "string", "enum": ["no", "on-failure", "always"]},
            "max_restarts": {"type": "integer", "minimum": 0, "maximum": 1000000},
            "stop_signal": SIGNAL,
            "stop_timeout": {"type": "number", "minimum": 0, "maximum": 86400},
            "worktree": {"type": "string", "maxLength": 63, "description": "Run in a new git worktree; '' generates its name."},
        },
    },
    "LaunchResult": {
        "type": "object",
        "required": ["started", "failed"],
        "properties": {
            "started": {"type": "array", "items": _ref("Runner")},
            "failed": {
                "type": "array",
                "items": {
                    "allOf": [_ref("Runner"), {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}]
                },
            },
        },
    },
    "StopRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "signal": SIGNAL,
            "timeout": {"type": "number", "minimum": 0, "maximum": 86400, "description": "Seconds between the signal and SIGKILL."},
            "wait": {"type": "boolean", "description": "Answer once the runner has stopped (default) or once the stop is requested."},
        },
    },
    "Removed": {
        "type": "object",
        "required": ["removed"],
        "properties": {"removed": {"type": "string"}, "id": {"type": "string"}},
    },
    "Session": {
        "type": "object",
        "required": ["id", "agent", "cwd"],
        "properties": {
            "id": {"type": "string"},
            "agent": {"type": "string"},
            "runner_id": _nullable("string"),
            "runner": _nullable("string"),
            "project_id": _nullable("integer"),
            "project": _nullable("string"),
            "cwd": {"type": "string"},
            "transcript_path": _nullable("string"),
            "title": _nullable("string"),
            "status": _nullable("string"),
            "status_detail": _nullable("string"),
            "source": _nullable("string"),
            "parent_session_id": _nullable("string"),
            "started_at": _nullable("number"),
            "last_activity_at": _nullable("number"),
            "ended_at": _nullable("number"),
            "end_reason": _nullable("string"),
            "external": {"type": "boolean"},
            "cost_usd": _nullable("number"),
        },
    },
    "SessionList": {"type": "object", "required": ["sessions"], "properties": {"sessions": {"type": "array", "items": _ref("Session")}}},
    "Event": {
        "type": "object",
        "required": ["seq", "event_id", "type", "aggregate_type", "aggregate_id", "payload", "created_at"],
        "properties": {
            "seq": {"type": "integer"},
            "event_id": {"type": "string"},
            "node_id": {"type": "string"},
            "aggregate_type": {"type": "string"},
            "aggregate_id": {"type": "string"},
            "aggregate_version": {"type": "integer"},
            "type": {"type": "string"},
            "payload": {"type": "object"},
            "created_at": {"type": "number"},
        },
    },
    "EventList": {
        "type": "object",
        "required": ["events", "last_seq"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "last_seq": {"type": "integer", "description": "Pass it back as `after` to read on."},
        },
    },
    "HeartbeatBatch": {
        "type": "object",
        "additionalProperties": False,
        "required": ["heartbeats"],
        "properties": {
            "heartbeats": {
                "type": "array",
                "minItems": 1,
                "maxItems": 5000,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["runner"],
                    "properties": {
                        "runner": {"type": "string", "minLength": 1, "maxLength": 64, "description": "The runner's full id."},
                        "cpu_percent": {"type": "number", "minimum": 0, "maximum": 1000000},
                        "rss_bytes": {"type": "integer", "minimum": 0, "maximum": 9007199254740991},
                        "process_count": {"type": "integer", "minimum": 0, "maximum": 10000000},
                    },
                },
            }
        },
    },
    "HeartbeatResult": {
        "type": "object",
        "required": ["accepted", "ignored"],
        "properties": {
            "accepted": {"type": "integer", "description": "Heartbeats written (and durable: fsynced before this answer)."},
            "ignored": {"type": "array", "items": {"type": "string"}, "description": "Runner ids that are unknown or not active."},
        },
    },
    "HookEvent": {
        "type": "object",
        "description": "A Claude Code hook event, as Claude Code posts it (hook_event_name, session_id, ...).",
        # the fields Stratavore reads must have these types; any other field passes through
        "properties": {
            name: {"type": "string"}
            for name in (
                "hook_event_name",
                "session_id",
                "cwd",
                "transcript_path",
                "source",
                "reason",
                "prompt",
                "tool_name",
                "notification_type",
            )
        },
    },
    **USAGE_SCHEMAS,
    **BUDGET_SCHEMAS,
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]}, "version": {"type": "string"}},
    },
    "HealthDb": {
        "type": "object",
        "required": ["status", "reachable", "writable", "migrations_current", "schema_version", "expected_schema_version"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "reachable": {"type": "boolean"},
            "writable": {"type": "boolean"},
            "migrations_current": {"type": "boolean"},
            "schema_version": _nullable("integer"),
            "expected_schema_version": {"type": "integer"},
            "error": _nullable("string"),
        },
    },
}

EVENT_FILTERS = [
    _query(
        "type",
        {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 100}, "maxItems": 20},
        "Only events of these types; a trailing * matches a prefix (runner.*).",
        style="form",
        explode=True,
    ),
    _query("runner", {"type": "string", "minLength": 1, "maxLength": 64}, "Only this runner's events (name, id or prefix)."),
]


TIMEZONE = _query(
    "timezone", {"type": "string", "minLength": 1, "maxLength": 64}, "IANA time zone for dates (default: the daemon's local time)."
)
USAGE_RANGE = [
    _query("since", {"type": "string", "minLength": 1, "maxLength": 10}, "First day to include (YYYY-MM-DD or YYYYMMDD)."),
    _query("until", {"type": "string", "minLength": 1, "maxLength": 10}, "Last day to include (YYYY-MM-DD or YYYYMMDD)."),
    TIMEZONE,
]


def _operation(operation_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "responses": responses, **extra}


PATHS: dict[str, dict[str, Any]] = {
    "/health": {
        "get": _operation(
            "health",
            "Liveness: the API answers and the database opens. The one route without a token.",
            {"200": _json(_ref("Health"), "healthy"), "503": _json(_ref("Health"), "the database cannot be used")},
            security=[],
        )
    },
    "/health/db": {
        "get": _operation(
            "healthDb",
            "The database is reachable, writable, and its migrations are current.",
            {"200": _json(_ref("HealthDb"), "healthy"), "503": _json(_ref("HealthDb"), "unhealthy, with details"), **_errors()},
        )
    },
    "/metrics": {
        "get": _operation(
            "metrics",
            "Prometheus metrics. Needs the token unless `metrics_auth = false`.",
            {
                "200": {"description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}},
                **_errors("404"),
            },
        )
    },
    "/openapi.json": {
        "get": _operation("openapi", "This document.", {"200": _json({"type": "object"}, "the OpenAPI document"), **_errors()})
    },
    "/v1/projects": {
        "get": _operation(
            "listProjects", "Projects with their active runner counts.", {"200": _json(_ref("ProjectList"), "projects"), **_errors()}
        ),
        "post": _operation(
            "addProject",
            "Register a directory as a project (`stratavore project add`).",
            {"201": _json(_ref("Project"), "added"), **_errors("400", "409", "411", "413", "422")},
            requestBody=_body(_ref("ProjectCreate")),
        ),
    },
    "/v1/projects/{name}": {
        "parameters": [PROJECT_REF],
        "get": _operation("getProject", "One project.", {"200": _json(_ref("Project"), "the project"), **_errors("404")}),
        "patch": _operation(
            "updateProject",
            "Change a project's path, runner limit or default agent (`stratavore project set`).",
            {"200": _json(_ref("Project"), "updated"), **_errors("400", "404", "411", "413", "422")},
            requestBody=_body(_ref("ProjectUpdate")),
        ),
        "delete": _operation(
            "removeProject",
            "Remove a project and the records of its ended runners; `force` stops active ones first.",
            {"200": _json(_ref("Removed"), "removed"), **_errors("404", "409", "422")},
            parameters=[_query("force", BOOL, "Stop the project's active runners first.")],
        ),
    },
    "/v1/runners": {
        "get": _operation(
            "listRunners",
            "Runners (active ones unless `all`), like `stratavore ps --json`.",
            {"200": _json(_ref("RunnerList"), "runners"), **_errors("404", "422")},
            parameters=[
                _query("project", {"type": "string", "minLength": 1, "maxLength": 63}, "Only this project's runners."),
                _query("all", BOOL, "Include ended runners."),
                _query("state", {"type": "string", "enum": [s.value for s in RunnerState]}, "Only runners in this state."),
                _query("agent", {"type": "string", "minLength": 1, "maxLength": 63}, "Only runners of this agent."),
                _query("status", {"type": "string", "enum": ["working", "waiting", "idle"]}, "Only runners whose agent reports this."),
            ],
        ),
        "post": _operation(
            "launchRunners",
            "Launch runners (`stratavore launch`). 201 when at least one started; failures are listed.",
            {"201": _json(_ref("LaunchResult"), "launched"), **_errors("400", "404", "409", "411", "413", "422", "503")},
            requestBody=_body(_ref("LaunchRequest")),
        ),
    },
    "/v1/runners/{runner}": {
        "parameters": [RUNNER_REF],
        "get": _operation("getRunner", "One runner.", {"200": _json(_ref("Runner"), "the runner"), **_errors("404", "422")}),
        "delete": _operation(
            "removeRunner",
            "Remove an ended runner and its logs (`stratavore rm`).",
            {"200": _json(_ref("Removed"), "removed"), **_errors("404", "409", "422")},
            parameters=[
                _query("force", BOOL, "Stop it first if active; remove its worktree even with uncommitted work."),
                _query("worktree", BOOL, "Also remove its git worktree (the branch stays)."),
            ],
        ),
    },
    "/v1/runners/{runner}/stop": {
        "parameters": [RUNNER_REF],
        "post": _operation(
            "stopRunner",
            "Stop gracefully: the stop signal, a grace period, then SIGKILL of the whole tree.",
            {"200": _json(_ref("Runner"), "the runner after the stop"), **_errors("400", "404", "413", "422")},
            requestBody=_body(_ref("StopRequest"), required=False),
        ),
    },
    "/v1/runners/{runner}/kill": {
        "parameters": [RUNNER_REF],
        "post": _operation(
            "killRunner",
            "SIGKILL the whole process tree now.",
            {"200": _json(_ref("Runner"), "the runner after the kill"), **_errors("404", "422")},
        ),
    },
    "/v1/runners/{runner}/restart": {
        "parameters": [RUNNER_REF],
        "post": _operation(
            "restartRunner",
            "Stop if active, then start the same command again (same name and id).",
            {"200": _json(_ref("Runner"), "the restarted runner"), **_errors("404", "409", "422", "503")},
        ),
    },
    "/v1/runners/{runner}/logs": {
        "parameters": [RUNNER_REF],
        "get": _operation(
            "runnerLogs",
            "The runner's output, across log rotations.",
            {
                "200": {"description": "the log", "content": {"text/plain": {"schema": {"type": "string"}}}},
                **_errors("404", "422"),
            },
            parameters=[_query("tail", {"type": "integer", "minimum": 0, "maximum": 1000000}, "Only the last N lines.")],
        ),
    },
    "/v1/sessions": {
        "get": _operation(
            "listSessions",
            "Agent sessions, newest activity first.",
            {"200": _json(_ref("SessionList"), "sessions"), **_errors("404", "422")},
            parameters=[
                _query("project", {"type": "string", "minLength": 1, "maxLength": 63}, "Only this project's sessions."),
                _query("all", BOOL, "Also sessions Stratavore did not start."),
            ],
        ),
    },
    "/v1/sessions/{session_id}": {
        "parameters": [_path("session_id", "Session id or an unambiguous prefix.")],
        "get": _operation("getSession", "One session.", {"200": _json(_ref("Session"), "the session"), **_errors("404")}),
    },
    "/v1/events": {
        "get": _operation(
            "listEvents",
            "The event log, in seq order, a page at a time.",
            {"200": _json(_ref("EventList"), "events"), **_errors("404", "422")},
            parameters=[
                _query("after", {"type": "integer", "minimum": 0}, "Only events after this seq."),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "At most this many (default 100)."),
                *EVENT_FILTERS,
            ],
        ),
    },
    "/v1/events/stream": {
        "get": _operation(
            "streamEvents",
            "The event log as Server-Sent Events (id = seq, event = type, data = the event as JSON), live. "
            "Resumes after the Last-Event-ID header, else after `after`, else from now.",
            {
                "200": {"description": "an endless event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                **_errors("404", "422"),
            },
            parameters=[
                _query("after", {"type": "integer", "minimum": 0}, "Resume after this seq (0: the whole log)."),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Resume after this seq.",
                },
                *EVENT_FILTERS,
            ],
        ),
    },
    "/v1/hooks/claude": {
        "post": _operation(
            "claudeHook",
            "Receives Claude Code hooks of type http: the body is the hook's JSON. The runner token of the runner "
            "named by X-Stratavore-Runner is accepted as well as the API token.",
            {"204": {"description": "applied"}, **_errors("400", "403", "404", "411", "413", "422", "503")},
            parameters=[
                {
                    "name": "X-Stratavore-Runner",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 64},
                    "description": "The id of the runner the hook comes from (its STRATAVORE_RUNNER_ID).",
                }
            ],
            requestBody=_body(_ref("HookEvent")),
        ),
    },
    **{
        f"/v1/usage/{period}": {
            "get": _operation(
                f"usage{period.title()}",
                f"Usage per {unit}{note}, with per-model breakdowns (`stratavore usage {period} --json`). "
                "New transcript lines are read first.",
                {"200": _json(_ref(f"Usage{period.title()}"), "the report"), **_errors("422", "503")},
                parameters=USAGE_RANGE,
            )
        }
        for period, unit, note in (("daily", "day", ""), ("weekly", "week", " (weeks start on Sunday)"), ("monthly", "month", ""))
    },
    "/v1/usage": {
        "get": _operation(
            "usageOverview",
            "Today, this week and this month, and the month's top projects and sessions (`stratavore usage --json`).",
            {"200": _json(_ref("UsageOverview"), "the overview"), **_errors("422", "503")},
            parameters=[TIMEZONE],
        )
    },
    "/v1/usage/sessions": {
        "get": _operation(
            "usageSessions",
            "Usage per Claude Code session; subagents count toward their parent (`stratavore usage session --json`).",
            {"200": _json(_ref("UsageSessions"), "the report"), **_errors("422", "503")},
            parameters=[*USAGE_RANGE, _query("id", {"type": "string", "minLength": 1, "maxLength": 200}, "Only this session.")],
        )
    },
    "/v1/usage/projects": {
        "get": _operation(
            "usageProjects",
            "Usage per Stratavore project; sessions outside every project are 'unassigned' (`stratavore usage project --json`).",
            {"200": _json(_ref("UsageProjects"), "the report"), **_errors("422", "503")},
            parameters=USAGE_RANGE,
        )
    },
    "/v1/usage/models": {
        "get": _operation(
            "usageModels",
            "Usage per model; fast mode as <model>-fast, models without a price flagged (`stratavore usage model --json`).",
            {"200": _json(_ref("UsageModels"), "the report"), **_errors("422", "503")},
            parameters=USAGE_RANGE,
        )
    },
    "/v1/usage/blocks": {
        "get": _operation(
            "usageBlocks",
            "5-hour billing blocks as ccusage counts them, with burn rate and projection (`stratavore usage blocks --json`).",
            {"200": _json(_ref("UsageBlocks"), "the blocks"), **_errors("422", "503")},
            parameters=[*USAGE_RANGE, _query("active", BOOL, "Only the active block.")],
        )
    },
    "/v1/usage/prices": {
        "get": _operation(
            "usagePrices",
            "The price table in use, USD per million tokens, with any overrides (`stratavore usage prices --json`).",
            {"200": _json(_ref("PriceTable"), "the price table"), **_errors()},
        )
    },
    "/v1/usage/import": {
        "post": _operation(
            "usageImport",
            "Read new transcript lines now and count what was read (`stratavore usage import --json`; reports do this too).",
            {"200": _json(_ref("IngestStats"), "what was read"), **_errors("503")},
        )
    },
    "/v1/budgets": {
        "get": _operation(
            "listBudgets",
            "Budgets with what their current period has spent (`stratavore budget list --json`, as {budgets: [...]}).",
            {"200": _json(_ref("BudgetList"), "budgets"), **_errors()},
        ),
        "post": _operation(
            "setBudget",
            "Create a budget, or replace the one of the same name (`stratavore budget set`).",
            {
                "200": _json(_ref("Budget"), "replaced"),
                "201": _json(_ref("Budget"), "created"),
                **_errors("400", "404", "411", "413", "422", "503"),
            },
            requestBody=_body(_ref("BudgetCreate")),
        ),
    },
    "/v1/budgets/{name}": {
        "parameters": [_path("name", "Budget name.")],
        "get": _operation(
            "getBudget",
            "One budget and where it stands (`stratavore budget show --json`).",
            {"200": _json(_ref("BudgetStanding"), "the budget"), **_errors("404")},
        ),
        "put": _operation(
            "putBudget",
            "Create or replace the budget of this name (`stratavore budget set --name`).",
            {
                "200": _json(_ref("Budget"), "replaced"),
                "201": _json(_ref("Budget"), "created"),
                **_errors("400", "404", "411", "413", "422", "503"),
            },
            requestBody=_body(_ref("BudgetSet")),
        ),
        "delete": _operation(
            "removeBudget",
            "Remove a budget (`stratavore budget rm`).",
            {"200": _json(_ref("Removed"), "removed"), **_errors("404", "503")},
        ),
    },
    "/v1/heartbeats": {
        "post": _operation(
            "heartbeats",
            "A batch of heartbeats from agents that report over HTTP. Batches from many requests are written in one "
            "transaction; the answer comes once they are on disk. A runner token may only report its own runner.",
            {"200": _json(_ref("HeartbeatResult"), "written"), **_errors("400", "403", "411", "413", "422", "503")},
            requestBody=_body(_ref("HeartbeatBatch")),
        ),
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Stratavore API",
            "version": __version__,
            "description": "Drive and watch Stratavore's runners. Every route but /health needs `Authorization: Bearer <token>` "
            '(`stratavore api token`). Errors are JSON: {"error": "...", "code": "..."}.',
        },
        "servers": [{"url": "http://127.0.0.1:7878"}],
        "security": [{"bearer": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "stratavore api token"}},
        },
    }
