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

import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from unittest import SkipTest
from zoneinfo import ZoneInfo

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
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
            # the gate answers before the body is read (415 comes earlier still, for a non-JSON body); a path
            # parameter outside its documented form matches no route at all (404, before any gate)
            path = case.meta.components.get(ParameterLocation.PATH) if case.meta else None
            allowed = (401, 415, 404) if path is not None and path.mode.is_negative else (401, 415)
            assert response.status_code in allowed, f"{case.operation.label} answered {response.status_code}"

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


# ---- what the document allows is accepted (positive data) -------------------------------------------------
#
# Every request generated from the document must be accepted as to its shape: no 400/413/415/422, no 5xx. Rules
# a JSON Schema cannot state (one field against another, a date against today, a code only the server knows)
# are in the operation's or field's description, and each is listed here once: the stable code it is refused
# with, the fields it names, the operations, and a test of the request that says whether the rule really was
# broken. Any other refusal fails the run: it is a constraint the document does not state.

REFUSALS = {400, 413, 415, 422}
_LEAD, _HORIZON, _MAX_RENTAL = timedelta(hours=1), timedelta(days=365), timedelta(days=30)  # bookings.service
_DUBAI = ZoneInfo("Asia/Dubai")


def _data(case: Any) -> dict[str, Any]:
    body = case.body if isinstance(case.body, dict) else {}
    return {**(case.query or {}), **body}


def _when(value: Any) -> datetime | None:
    from marshmallow import ValidationError, fields

    try:
        return fields.AwareDateTime().deserialize(value) if value is not None else None
    except ValidationError:
        return None


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _before(a: datetime, b: datetime) -> bool:
    try:
        return a < b
    except OverflowError:  # pragma: no cover - an aware datetime at the edge of the calendar
        return True


def _breaks_booking_window(case: Any) -> bool:
    data = _data(case)
    start, end = _when(data.get("starts_at")), _when(data.get("ends_at"))
    if start is None or end is None:
        return False
    now = datetime.now(UTC)
    try:
        start.astimezone(UTC), end.astimezone(UTC)
    except OverflowError:
        return True  # no UTC value at all (0001-01-01T00:00+03:00): outside every window
    return (not _before(start, end) or _before(start, now + _LEAD + timedelta(minutes=1))
            or _before(now + _HORIZON - timedelta(minutes=1), start) or end - start > _MAX_RENTAL)


def _breaks_block_period(case: Any) -> bool:
    data = _data(case)
    start, end = _when(data.get("starts_at")), _when(data.get("ends_at"))
    return start is not None and end is not None and (
        not _before(start, end) or end - start > timedelta(days=90)
        or _before(end, datetime.now(UTC) + timedelta(minutes=1)))


def _breaks_search_combination(case: Any) -> bool:
    q = _data(case)
    has = {k: q.get(k) is not None for k in ("city", "lat", "lng", "starts_at", "ends_at", "radius_km")}
    point = has["lat"] and has["lng"]
    start, end = _when(q.get("starts_at")), _when(q.get("ends_at"))
    low, high = q.get("min_price"), q.get("max_price")
    return (has["lat"] != has["lng"] or has["starts_at"] != has["ends_at"]
            or (start is not None and end is not None and not _before(start, end))
            or (has["radius_km"] and not point) or (q.get("sort") == "distance" and not point)
            or not (has["city"] or has["lat"] or has["lng"])
            or (low is not None and high is not None and int(low) > int(high)))


def _age_out_of_range(case: Any) -> bool:
    born = _day(_data(case).get("date_of_birth"))
    if born is None:
        return False
    today = datetime.now(_DUBAI).date()
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return born > today or not 21 <= years <= 120 or abs(years - 21) <= 1 or abs(years - 120) <= 1


def _document_expired(case: Any) -> bool:
    data, today = _data(case), datetime.now(_DUBAI).date()
    return any((_day(data.get(k)) or today) <= today + timedelta(days=1)
               for k in ("id_document_expiry", "licence_expiry"))


def _number_wrong_for_its_type(case: Any) -> bool:
    data = _data(case)
    number = str(data.get("id_document_number", "")).strip().upper()
    # an Emirates ID's check digit and year of birth, or a passport number in the Emirates ID form
    return data.get("id_document_type") == "emirates_id" or re.fullmatch(r"[A-Z0-9]{6,9}", number) is None


def _password_policy_beyond_length(case: Any) -> bool:
    from marketplace.schemas import NEW_PASSWORD_LENGTH

    data = _data(case)
    password = data.get("password") or data.get("new_password") or (data.get("owner") or {}).get("password")
    low, high = NEW_PASSWORD_LENGTH
    return isinstance(password, str) and low <= len(password) <= high  # the length is in the document


_PERIOD_OPS = {"POST /api/v1/bookings/quote", "POST /api/v1/bookings", "PATCH /api/v1/bookings/{reference}",
               "GET /api/v1/vehicles"}  # search applies the booking rules to its period (SEARCH_RULES)
_LISTS = {"GET /api/v1/bookings", "GET /api/v1/me/notifications", "GET /api/v1/agency/staff",
          "GET /api/v1/agency/vehicles", "GET /api/v1/agency/bookings", "GET /api/v1/vehicles",
          "GET /api/v1/invoices", "GET /api/v1/me/invoices", "GET /api/v1/agency/invoices", "GET /api/v1/charges"}
_BIRTH_OPS = {"POST /api/v1/auth/register", "PATCH /api/v1/me", "PUT /api/v1/me/kyc/identity"}
_NEW_PASSWORD_OPS = {"POST /api/v1/auth/register", "POST /api/v1/agencies", "POST /api/v1/me/password",
                     "POST /api/v1/auth/password-reset/confirm"}
_SEARCH_FIELDS = {"city", "lat", "lng", "starts_at", "ends_at", "radius_km", "sort", "max_price"}


@dataclass(frozen=True)
class DocumentedRule:
    """A rule the document states in words (JSON Schema cannot), and how a request breaks it."""

    reason: str
    code: str
    fields: frozenset[str]  # the fields the refusal names (empty: it names none)
    operations: frozenset[str]
    broken_by: Callable[[Any], bool]


DOCUMENTED_RULES = [
    DocumentedRule("booking period: return after pick-up, pick-up 1 hour to a year ahead, at most 30 days",
                   "validation_error", frozenset({"starts_at", "ends_at"}), frozenset(_PERIOD_OPS),
                   _breaks_booking_window),
    DocumentedRule("availability block: end after start, at most 90 days, not already over",
                   "validation_error", frozenset({"ends_at"}),
                   frozenset({"POST /api/v1/agency/vehicles/{vehicle_id}/blocks"}), _breaks_block_period),
    DocumentedRule("search parameters that go together (city or lat+lng, both dates, radius and distance "
                   "need a point, max_price >= min_price)", "validation_error", frozenset(_SEARCH_FIELDS),
                   frozenset({"GET /api/v1/vehicles"}), _breaks_search_combination),
    DocumentedRule("a cursor is only one the server issued for the same list", "validation_error",
                   frozenset({"cursor"}), frozenset(_LISTS), lambda case: _data(case).get("cursor") is not None),
    DocumentedRule("age on today's date in Dubai: 21 to 120", "underage", frozenset(), frozenset(_BIRTH_OPS),
                   _age_out_of_range),
    DocumentedRule("age on today's date in Dubai: 21 to 120 (future or implausible dates)", "validation_error",
                   frozenset({"date_of_birth"}), frozenset(_BIRTH_OPS), _age_out_of_range),
    DocumentedRule("a Stripe event verifies only with Stripe's signature of its raw body", "invalid_signature",
                   frozenset(), frozenset({"POST /api/v1/payments/stripe/webhook"}), lambda case: True),
    DocumentedRule("identity documents must not have expired", "validation_error",
                   frozenset({"id_document_expiry", "licence_expiry"}),
                   frozenset({"PUT /api/v1/me/kyc/identity"}), _document_expired),
    DocumentedRule("the document number's form depends on the document type (Emirates ID: year of birth, "
                   "check digit)", "validation_error", frozenset({"id_document_number"}),
                   frozenset({"PUT /api/v1/me/kyc/identity"}), _number_wrong_for_its_type),
    DocumentedRule("e-mailed codes are only the ones the server sent", "token_invalid", frozenset(),
                   frozenset({"POST /api/v1/auth/verify-email", "POST /api/v1/auth/password-reset/confirm"}),
                   lambda case: True),
    DocumentedRule("password policy beyond its length (distinct characters, common passwords, own name)",
                   "weak_password", frozenset({"password", "new_password", "owner.password"}),
                   frozenset(_NEW_PASSWORD_OPS), _password_policy_beyond_length),
]


def _refused_fields(error: dict[str, Any]) -> set[str]:
    found: dict[str, Any] = (error.get("details") or {}).get("fields") or {}

    def walk(tree: dict[str, Any], prefix: str = "") -> set[str]:
        names: set[str] = set()
        for key, value in tree.items():
            names |= walk(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
        return names

    return walk(found) if isinstance(found, dict) else {"_schema"}


def unstated_refusal(case: Any, response: Any) -> str | None:
    """Why this answer refuses a request the document allows, or ``None`` if it does not (or a documented
    rule, broken by this very request, explains it)."""
    if response.status_code not in REFUSALS:
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} without the error shape"
    label = case.operation.label
    refused = _refused_fields(error)
    rules = [r for r in DOCUMENTED_RULES if label in r.operations and r.code == error["code"] and r.broken_by(case)]
    covered = set().union(*(r.fields for r in rules)) if rules else set()
    if rules and refused <= covered:
        return None
    return f"{response.status_code} {error['code']} {error.get('details')}"


def _image_part(fmt: str) -> Any:
    """Real, small images for the image parts (schemathesis' own samples are not decodable)."""
    from hypothesis import strategies as st
    from PIL import Image

    def encode(args: tuple[int, int, int]) -> bytes:
        width, height, shade = args
        out = io.BytesIO()
        Image.new("RGB", (width, height), (shade, 255 - shade, 90)).save(out, fmt)
        return out.getvalue()

    return st.tuples(st.integers(8, 48), st.integers(8, 48), st.integers(0, 255)).map(encode)


for _media, _fmt in (("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/webp", "WEBP")):
    schemathesis.openapi.media_type(_media, _image_part(_fmt))


def _session_headers(app: Flask, person: Any, *, mfa: bool) -> Callable[[], dict[str, str]]:
    """A bearer header for ``person``; a new session whenever fuzzing ended the last (logout, password)."""
    from marketplace.users import sessions
    from marketplace.users.models import SessionChannel

    settings_ = app.config["SETTINGS"]
    token: dict[str, str] = {}

    def headers() -> dict[str, str]:
        with app.app_context():
            if not token or sessions.find_active(token["value"], SessionChannel.API, settings_) is None:
                issued = sessions.start_session(person.user(), SessionChannel.API, settings_, mfa_done=mfa)
                db.session.commit()
                token["value"] = issued.access_token
        return factories.bearer(token["value"])

    return headers


POSITIVE_CASES = 900  # shared by every operation; about 15 each


@pytest.mark.usefixtures("stripe_gateway")  # payment operations reach a real localstripe
def test_what_the_document_allows_is_accepted(app: Flask, client: FlaskClient, api_schema: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # IN-03
    """Positive data from the document, each operation as its natural caller (nobody for public operations,
    an agency owner with MFA for the agency's, a customer for the rest): no refusal the document does not
    state, no 5xx, answers as documented."""
    from marketplace.extensions import limiter
    from marketplace.permissions import Role

    monkeypatch.setattr(limiter, "enabled", False)  # a 429 says nothing about the request's shape
    spec = _spec(client)
    public = _public(spec)
    tags = {(m, p): set(op.get("tags", [])) for m, p, op in _operations(spec)}
    with app.app_context():
        customer = factories.make_customer()
        owner = factories.make_staff(Role.AGENCY_OWNER, agency=factories.make_agency())
    as_customer, as_owner = _session_headers(app, customer, mfa=False), _session_headers(app, owner, mfa=True)

    def headers_for(operation: Any) -> Callable[[], dict[str, str]]:
        key = (operation.method.upper(), operation.path)
        if key in public:
            return dict
        return as_owner if any(t.startswith("agency_") for t in tags[key]) else as_customer

    per_operation = max(MIN_EXAMPLES, min(MAX_EXAMPLES, POSITIVE_CASES // max(len(tags), 1)))
    failures: list[str] = []
    cases = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        try:
            cases += _run_positive(operation, headers_for(operation), per_operation)
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label}: {exc}")
    assert failures == [], "\n\n".join(failures)
    assert cases >= len(tags) * MIN_EXAMPLES


def _run_positive(operation: Any, headers: Callable[[], dict[str, str]], examples: int) -> int:
    """One Hypothesis run of positive cases for ``operation``; returns how many ran."""
    counter = {"cases": 0}

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def run(case: Any) -> None:
        counter["cases"] += 1
        response = case.call_and_validate(
            headers=headers(), checks=[not_a_server_error, response_schema_conformance, content_type_conformance])
        problem = unstated_refusal(case, response)
        assert problem is None, f"valid by the document but refused: {problem}\n{case.as_curl_command()}"

    run()
    return counter["cases"]


def test_the_positive_run_catches_an_unstated_constraint(app: Flask, api_schema: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # IN-03
    # negative control: a rule the document does not state (an e-mail refused for no stated reason) fails the check
    from marshmallow import ValidationError

    from marketplace.security import public

    def refuse(**_: Any) -> Any:
        raise ValidationError({"json": {"email": ["Not from this planet."]}})

    monkeypatch.setitem(app.view_functions, "auth.password_reset", public(refuse))
    operation = api_schema["/api/v1/auth/password-reset"]["POST"]
    case = operation.Case(body={"email": "someone@example.com"}, media_type="application/json")
    response = case.call()
    assert response.status_code == 422
    assert unstated_refusal(case, response) is not None
    # ... while a documented rule broken by the request is tolerated, and only then
    quote = api_schema["/api/v1/bookings/quote"]["POST"]
    late = quote.Case(body={"vehicle_id": "7b89296c-6dcb-4c50-8857-7eb1924770d3", "starts_at": "2000-01-01T10:00:00Z",
                            "ends_at": "2000-01-01T09:00:00Z"}, media_type="application/json")
    answer = {"error": {"code": "validation_error", "details": {"fields": {"ends_at": ["..."]}}}}
    fake = type("R", (), {"status_code": 422, "json": lambda self: answer})()
    assert unstated_refusal(late, fake) is None
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    period = {"starts_at": soon.isoformat(), "ends_at": (soon + timedelta(days=1)).isoformat()}
    fine = quote.Case(body={**late.body, **period}, media_type="application/json")
    assert unstated_refusal(fine, fake) is not None  # the period rule is not broken: the refusal is unstated


def test_new_password_length_is_the_policy(app: Flask) -> None:
    from marketplace.schemas import NEW_PASSWORD_LENGTH
    from marketplace.users import passwords

    assert (passwords.MIN_LENGTH, passwords.MAX_LENGTH) == NEW_PASSWORD_LENGTH


def test_image_uploads_state_every_accepted_type(client: FlaskClient) -> None:  # IN-03
    # car photos were documented as "JPEG or PNG" while WebP is accepted (marketplace.images)
    from pathlib import Path

    from marketplace.images import DEFAULT_ALLOWED_FORMATS, VEHICLE_PHOTO_POLICY

    assert set(VEHICLE_PHOTO_POLICY.allowed_formats) == set(DEFAULT_ALLOWED_FORMATS) == {"JPEG", "PNG", "WEBP"}
    spec = _spec(client)
    parts = 0
    for method, path, op in _operations(spec):
        body = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
        if body is None:
            continue
        schema = _resolve(spec, body["schema"])
        for name, prop in schema["properties"].items():
            if prop.get("format") != "binary":
                continue
            parts += 1
            types = {t.strip() for t in body["encoding"][name]["contentType"].split(",")}
            assert types == {"image/jpeg", "image/png", "image/webp"}, f"{method} {path}"
            assert "JPEG, PNG or WebP" in prop["description"], f"{method} {path}"
        assert "JPEG or PNG" not in str(op), f"{method} {path}"
    assert parts >= 4
    templates = Path(__file__).resolve().parents[1] / "agency_app" / "templates"
    for page in templates.rglob("*.html"):
        text = page.read_text()
        assert "JPEG or PNG" not in text, page
        for accept in re.findall(r'accept="(image/[^"]*)"', text):
            assert "image/webp" in accept.split(","), page


# ---- every documented (path, method) is what the URL map serves -----------------------------------------------


def _sample(param: dict[str, Any]) -> str:
    from hypothesis import find
    from hypothesis import strategies as st

    schema = param.get("schema", {})
    if "enum" in schema:
        return str(schema["enum"][0])
    if schema.get("format") == "uuid":
        return "7b89296c-6dcb-4c50-8857-7eb1924770d3"
    if "pattern" in schema:
        return str(find(st.from_regex(schema["pattern"], fullmatch=True), lambda _: True,
                        settings=settings(database=None)))
    return "sample"


def test_every_documented_path_serves_exactly_its_documented_methods(app: Flask, client: FlaskClient) -> None:
    # IN-03: /api/v1/bookings/quote once also matched /api/v1/bookings/{reference}, so it answered (and its Allow
    # header advertised) GET and PATCH
    spec = _spec(client)
    adapter = app.url_map.bind("localhost")
    problems: list[str] = []
    for path, item in spec["paths"].items():
        documented = {m.upper() for m in item if m in HTTP_METHODS}
        declared = [*item.get("parameters", []),
                    *(p for op in item.values() if isinstance(op, dict) for p in op.get("parameters", []))]
        params = {p["name"]: p for p in declared if p.get("in") == "path"}
        url = re.sub(r"{(\w+)}", lambda m, params=params: _sample(params[m.group(1)]), path)
        served = set(adapter.allowed_methods(url)) - {"HEAD", "OPTIONS"}
        if served != documented:
            problems.append(f"{url}: documented {sorted(documented)}, served {sorted(served)}")
        for method in documented:
            endpoint, _ = adapter.match(url, method=method)
            rule = next(r for r in app.url_map.iter_rules(endpoint) if method in (r.methods or ()))
            if re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule) != path:
                problems.append(f"{method} {url} is served by {rule.rule}, not {path}")
    assert problems == []
    assert set(adapter.allowed_methods("/api/v1/bookings/quote")) == {"OPTIONS", "POST"}
    assert client.get("/api/v1/bookings/quote").status_code == 405


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
