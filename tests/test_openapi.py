"""The OpenAPI document and schema fuzzing of every operation (IN-03, F12), plus the offline API docs.

schemathesis runs in-process over WSGI, once unauthenticated and once with a customer's bearer token,
with positive and negative data, deterministic (``derandomize``) and bounded for CI. The rate limiter
may answer 429 while fuzzing: that is a documented error (``default`` response) and its body is checked
like any other.

Cases come from schemathesis' public ``APIOperation.as_strategy`` under ``@given``, one Hypothesis run per
operation and mode, rather than ``schemathesis.pytest.from_fixture``: with schemathesis 4.32 on pytest 9.2
the lazy loader fails (it writes ``Node._nodeid``, which pytest 9.2 no longer has). Each failure message
carries schemathesis' minimised reproduction (a curl line).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any
from unittest import SkipTest

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from marketplace.extensions import db
from tests import factories
from tests.stripe_fixtures import localstripe, localstripe_server, stripe_gateway  # noqa: F401 - fixtures

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, negative_data_rejection]
MAX_EXAMPLES = 25  # per operation and generation mode (positive, negative)
MIN_EXAMPLES = 6
CASES_PER_RUN = 800  # shared by every operation of one run, keeping the run bounded as the API grows
PUBLIC_CASES_WITHOUT_TOKEN = 500  # the unauthenticated run: shared by the public operations
SECURED_WITHOUT_TOKEN = 3  # ... and a few per secured operation, which must answer 401 whatever the input
HTTP_METHODS = {"get", "put", "post", "patch", "delete", "head", "options", "trace"}


def _spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    spec: dict[str, Any] = response.get_json()
    return spec


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in spec["paths"].items()
            for method, op in item.items() if method in HTTP_METHODS]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = spec["components"]["schemas"][name]
    return schema


# ---- the document ---------------------------------------------------------------------------------------


def _config() -> schemathesis.Config:
    # the numbers of cases are set per operation below; this only keeps the loaded schema deterministic
    return schemathesis.Config.from_dict({
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
    })


def test_openapi_document_is_valid_openapi_3(app: Flask, client: FlaskClient) -> None:  # IN-03
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=_config())
    schema.validate()  # against the OpenAPI 3.0 meta-schema
    spec = _spec(client)
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] and spec["info"]["version"]
    labels = {op.label for op in (r.ok() for r in schema.get_all_operations())}
    assert labels == {f"{m} {p}" for m, p, _ in _operations(spec)}
    assert len(labels) >= 20


def test_every_operation_is_documented_and_strict(client: FlaskClient) -> None:  # IN-03
    spec = _spec(client)
    problems: list[str] = []
    for method, path, op in _operations(spec):
        label = f"{method} {path}"
        if not (op.get("summary") or "").strip():
            problems.append(f"{label}: no summary")
        if "default" not in op.get("responses", {}):
            problems.append(f"{label}: no default (error) response")
        body = op.get("requestBody")
        if body is None:
            continue
        for media, content in body["content"].items():
            schema = _resolve(spec, content["schema"])
            if schema.get("additionalProperties") is not False:
                problems.append(f"{label} {media}: request body accepts unknown fields")
            for name, prop in schema.get("properties", {}).items():
                nested = _resolve(spec, prop.get("items", prop) if prop.get("type") == "array" else prop)
                for candidate in [nested, *[_resolve(spec, s) for s in nested.get("allOf", [])]]:
                    if candidate.get("type") == "object" and candidate.get("additionalProperties") is not False:
                        problems.append(f"{label}: nested object {name!r} accepts unknown fields")
    assert problems == []


def test_error_responses_use_the_one_error_shape(client: FlaskClient) -> None:  # IN-03
    spec = _spec(client)
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    detail = _resolve(spec, error["properties"]["error"])
    assert set(detail["required"]) == {"code", "message", "details"}
    for method, path, op in _operations(spec):
        default = op["responses"]["default"]
        if "$ref" in default:
            default = spec["components"]["responses"][default["$ref"].rsplit("/", 1)[-1]]
        ref = default["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/Error"), f"{method} {path}"


# ---- fuzzing every operation ------------------------------------------------------------------------------


@pytest.fixture
def api_schema(app: Flask) -> Any:
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=_config())


@pytest.fixture
def customer_headers(app: Flask, client: FlaskClient) -> Callable[[], dict[str, str]]:
    """A customer's bearer header; if fuzzing revoked it (logout, a password change), a new session."""
    from marketplace.users import sessions
    from marketplace.users.models import SessionChannel

    with app.app_context():
        person = factories.make_customer()
    token = {"value": factories.api_login(client, person)["access_token"]}
    settings_ = app.config["SETTINGS"]

    def headers() -> dict[str, str]:
        with app.app_context():
            if sessions.find_active(token["value"], SessionChannel.API, settings_) is None:
                issued = sessions.start_session(person.user(), SessionChannel.API, settings_)
                db.session.commit()
                token["value"] = issued.access_token
        return factories.bearer(token["value"])

    return headers


def _examples_per_mode(operations: int, budget: int = CASES_PER_RUN) -> int:
    """Cases per operation and mode: a fixed budget per run shared by every operation (bounded for CI,
    deterministic). ``IN03_BUDGET_FACTOR`` (e.g. 10) scales it up for a deeper, nightly run."""
    budget = int(budget * float(os.environ.get("IN03_BUDGET_FACTOR", "1")))
    ceiling = MAX_EXAMPLES * max(1, int(float(os.environ.get("IN03_BUDGET_FACTOR", "1"))))
    return max(MIN_EXAMPLES, min(ceiling, budget // (2 * max(operations, 1))))


def _fuzz(
    app: Flask,
    schema: Any,
    headers: Callable[[], dict[str, str]],
    *,
    examples_for: Callable[[Any], int],
    expect: Callable[[Any, Any], None] | None = None,
) -> tuple[int, list[str]]:
    """Positive and negative cases for every operation; returns (cases run, failures)."""
    from marketplace.extensions import limiter

    failures: list[str] = []
    counter = {"cases": 0}
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"operation cannot be fuzzed: {result.err()}")
            continue
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            with app.app_context():
                limiter.reset()  # each operation gets a fresh budget; 429s still happen within it

            @settings(
                max_examples=examples_for(operation), derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink],
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                counter["cases"] += 1
                response = case.call_and_validate(headers=headers(), checks=CHECKS)
                if expect is not None:
                    expect(case, response)

            try:
                run()
            except (SkipTest, Unsatisfiable):
                if mode is GenerationMode.NEGATIVE:
                    continue  # nothing to negate: the operation takes no input
                raise
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return counter["cases"], failures


def _public(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, p) for m, p, op in _operations(spec) if op.get("security") == []}


def test_fuzz_every_operation_unauthenticated(app: Flask, client: FlaskClient, api_schema: Any) -> None:  # IN-03
    public = _public(_spec(client))
    assert ("POST", "/api/v1/auth/login") in public and ("GET", "/api/v1/me") not in public
    per_mode = _examples_per_mode(len(public), PUBLIC_CASES_WITHOUT_TOKEN)

    def examples_for(operation: Any) -> int:
        # a secured operation answers 401 whatever the input, so a few cases show it; public ones get the budget
        return per_mode if (operation.method.upper(), operation.path) in public else SECURED_WITHOUT_TOKEN

    def expect(case: Any, response: Any) -> None:
        if (case.operation.method.upper(), case.operation.path) not in public:
            # the gate answers before the body is read (415 comes earlier still, for a non-JSON body)
            assert response.status_code in (401, 415), f"{case.operation.label} answered {response.status_code}"

    cases, failures = _fuzz(app, api_schema, dict, examples_for=examples_for, expect=expect)
    assert failures == [], "\n\n".join(failures)
    assert cases > 0


@pytest.mark.usefixtures("stripe_gateway")  # payment operations reach a real localstripe: a card setup is a 201
def test_fuzz_every_operation_as_a_customer(
    app: Flask, client: FlaskClient, api_schema: Any, customer_headers: Callable[[], dict[str, str]],
) -> None:  # IN-03
    per_mode = _examples_per_mode(len(_operations(_spec(client))))
    cases, failures = _fuzz(app, api_schema, customer_headers, examples_for=lambda _: per_mode)
    assert failures == [], "\n\n".join(failures)
    assert cases > 0


def _raise(**_: Any) -> Any:
    raise RuntimeError("planted failure")


_PLANTED: dict[str, tuple[str, str, str, Callable[..., Any]]] = {
    # name: (method, path, endpoint, replacement view) -> the check that must catch it
    "server_error": ("GET", "/api/v1/ping", "health.ping", _raise),
    "schema_violation": ("GET", "/api/v1/ping", "health.ping",
                         lambda **_: ({"pong": "yes", "debug": True}, 200)),
    "accepts_invalid_data": ("POST", "/api/v1/auth/password-reset", "auth.password_reset",
                             lambda **_: ({"status": "reset_sent"}, 202)),
}


@pytest.mark.parametrize(("planted", "caught_by"), [
    ("server_error", "Server error"),
    ("schema_violation", "Response violates schema"),
    ("accepts_invalid_data", "Schema-violating request accepted"),
])
def test_the_fuzzing_harness_catches_planted_bugs(
    app: Flask, api_schema: Any, monkeypatch: pytest.MonkeyPatch, planted: str, caught_by: str,
) -> None:  # IN-03 negative control: a harness that cannot see the bug proves nothing
    from marketplace.security import public

    method, path, endpoint, view = _PLANTED[planted]
    monkeypatch.setitem(app.view_functions, endpoint, public(view))  # public, like the views it replaces
    only = api_schema.include(method=method, path=path)
    _, failures = _fuzz(app, only, dict, examples_for=lambda _: MIN_EXAMPLES)
    assert failures, f"the planted {planted} went unnoticed"
    assert any(caught_by in f for f in failures), failures


def test_rate_limited_answers_conform_to_the_spec(app: Flask, client: FlaskClient, api_schema: Any) -> None:
    # IN-03: a 429 is the documented default error, in the one error shape
    limit = int(app.config["SETTINGS"].limits["login_client"].split()[0])
    body = {"email": "nobody@example.com", "password": "x"}
    responses = [client.post("/api/v1/auth/login", json=body) for _ in range(limit + 1)]
    limited = responses[-1]
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert limited.headers.get("Retry-After")
    operation = api_schema["/api/v1/auth/login"]["POST"]
    case = operation.Case(body=body, media_type="application/json")
    case.validate_response(limited, checks=[response_schema_conformance, content_type_conformance])


# ---- the interactive docs work offline --------------------------------------------------------------------


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("src", "href", "data-spec-url"):
            if values.get(key):
                self.urls.append(str(values[key]))
        if tag == "script" and not values.get("src"):
            self._in_script = True

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def test_api_docs_load_every_asset_from_this_server(client: FlaskClient) -> None:
    response = client.get("/api/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert not re.search(r"(https?:)?//", html), "the docs page names an external URL"
    parser = _Assets()
    parser.feed(html)
    assert parser.inline_scripts == 0  # the CSP forbids inline scripts
    assets = [u for u in parser.urls if u != "/api/openapi.json"]
    assert "/api/openapi.json" in parser.urls
    assert assets and all(u.startswith("/api/docs/assets/") for u in assets), assets
    assert any(u.endswith(".js") for u in assets) and any(u.endswith(".css") for u in assets)
    for url in assets:
        with client.get(url) as asset:
            assert asset.status_code == 200, url
            assert asset.get_data(), url
    with client.get("/api/docs/assets/init.js") as asset:
        init = asset.get_data(as_text=True)
    assert "validatorUrl: null" in init  # Swagger UI would otherwise send the spec to validator.swagger.io
    assert "http" not in init
    assert client.get("/api/docs/assets/../../config.py").status_code == 404
    assert client.get("/api/docs/assets/not-an-asset.js").status_code == 404
