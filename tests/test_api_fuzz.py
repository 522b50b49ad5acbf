"""The API fuzzed from its own OpenAPI document with schemathesis: valid and invalid requests to every
operation must get a documented status and body, never a 5xx, and nothing but /health answers without
the token. Bounded: a few examples per operation, so the whole run takes seconds."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from stratavore import apispec, projects

from .test_api import no_keyring, start_server  # noqa: F401 - the fixture applies here too
from .test_api_usage import line, transcript

EXAMPLES = 12
ENDLESS = {"/v1/events/stream"}  # an event stream never ends by itself; tests/test_api.py covers it
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance, ignored_auth]


@pytest.fixture
def api(ctx, workdir, home, monkeypatch):
    # usage reports read this transcript (and never the developer's own ~/.claude)
    claude = home / "claude"
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(claude))
    transcript(claude, workdir, "sess-web", [line("m1", "2026-01-03T12:00:00.000Z", cwd=str(workdir), session="sess-web")])
    server = start_server(ctx)
    projects.add(ctx.conn, "web", workdir)
    yield server
    server.stop(timeout=2)


def test_fuzz_every_operation(api):
    schema = schemathesis.openapi.from_dict(apispec.document())
    auth = {"Authorization": f"Bearer {api.api.token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= set(apispec.PATHS) - ENDLESS
    tried = 0
    with httpx.Client(base_url=api.url, timeout=30) as anonymous:
        for operation in operations:
            if operation.path in ENDLESS:
                continue
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                tried += fuzz(operation, mode, api.url, auth, anonymous)
    assert tried >= 100


def fuzz(operation, mode: GenerationMode, base_url: str, auth: dict[str, str], anonymous: httpx.Client) -> int:
    checks = CHECKS + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])
    count = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        nonlocal count
        count += 1
        case.call_and_validate(base_url=base_url, headers=auth, checks=checks)
        if operation.path != "/health":
            # the same request without the token: refused, whatever it asked
            bare = case.as_transport_kwargs(base_url=base_url)
            headers = {k: v for k, v in (bare.get("headers") or {}).items() if k.lower() != "authorization"}
            response = anonymous.request(bare["method"], bare["url"], params=bare.get("params"), headers=headers, content=_content(bare))
            assert response.status_code == 401, (operation.label, response.status_code, response.text)

    try:
        run()
    except Unsatisfiable:
        # nothing in the operation can be made invalid (no parameters, no body)
        assert mode == GenerationMode.NEGATIVE, operation.label
    return count


def _content(kwargs: dict) -> bytes | None:
    if "json" in kwargs:
        import json

        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    return data.encode() if isinstance(data, str) else data
