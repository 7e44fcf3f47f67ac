"""AZ-02: every route has a gate, every public route is listed here, and the API matches its spec.

Adding a route therefore forces a decision: a gated blueprint (``register_gated``), an entry in the
public or pre-MFA list below, and an OpenAPI entry for anything under ``/api/v1``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient

from marketplace.security import Gate, GateKind, public, register_gated
from tests.staff_web import error_code

# (rule, method) of every route anyone may call without signing in. Keep it short and deliberate.
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("/static/<path:filename>", "GET"),
    ("/api/openapi.json", "GET"),
    ("/api/docs", "GET"),
    ("/api/docs/assets/<path:name>", "GET"),
    ("/api/v1", "GET"),  # the API index: links to the docs (issue 7 item 10)
    ("/api/v1/health", "GET"),
    ("/api/v1/ping", "GET"),
    ("/api/v1/legal/consent-texts", "GET"),
    ("/api/v1/auth/register", "POST"),
    ("/api/v1/auth/verify-email", "POST"),
    ("/api/v1/auth/login", "POST"),
    ("/api/v1/auth/refresh", "POST"),
    ("/api/v1/auth/password-reset", "POST"),
    ("/api/v1/auth/password-reset/confirm", "POST"),
    # P-14: car search, a car's public page and its listing photos (no personal data; coordinates not stored)
    ("/api/v1/vehicles", "GET"),
    ("/api/v1/vehicles/<string:vehicle_id>", "GET"),
    ("/api/v1/vehicles/<string:vehicle_id>/photos/<string:photo_id>", "GET"),
    ("/api/v1/payments/stripe/webhook", "POST"),  # Stripe's events: the signature on the raw body is the gate
    ("/api/v1/agencies", "POST"),  # an agency applies to join (P-12); verified by staff before going live
    ("/console/login", "GET"),
    ("/console/login", "POST"),
    ("/console/invitations/accept", "GET"),
    ("/console/invitations/accept", "POST"),
    ("/agency/login", "GET"),
    ("/agency/login", "POST"),
    ("/agency/invitations/accept", "GET"),
    ("/agency/invitations/accept", "POST"),
    # the pages the customer e-mails link to: static HTML whose script calls the public API (issue 7 item 10)
    ("/confirm-email", "GET"),
    ("/reset-password", "GET"),
    # the development mail catcher: 404 unless enabled outside production and asked from loopback (item 11)
    ("/dev/mail", "GET"),
})

# (rule, method) that a staff member may call after the password step but before MFA (AZ-07).
PRE_MFA_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("/api/v1/auth/mfa", "POST"),
    ("/api/v1/auth/logout", "POST"),
    ("/console/mfa", "GET"),
    ("/console/mfa", "POST"),
    ("/console/logout", "POST"),
    ("/agency/mfa", "GET"),
    ("/agency/mfa", "POST"),
    ("/agency/logout", "POST"),
})

_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


# ---- the checks, written once so the negative control runs exactly what the real tests run ----------------


def _blueprint(endpoint: str) -> str | None:
    name, dot, _ = endpoint.rpartition(".")
    return name if dot else None


def _methods(rule: Any) -> list[str]:
    return sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})


def _routes(app: Flask) -> Iterator[tuple[Any, str]]:
    for rule in app.url_map.iter_rules():
        for method in _methods(rule):
            yield rule, method


def ungated_routes(app: Flask) -> list[str]:
    """Rules whose blueprint has no registered gate, or whose gate is not actually installed."""
    gates: dict[str, str] = app.extensions.get("route_gates", {})
    problems = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        blueprint = _blueprint(rule.endpoint)
        if blueprint is None or blueprint not in gates:
            problems.append(f"{rule.rule} ({rule.endpoint}): no gate")
            continue
        if gates[blueprint] == GateKind.PUBLIC:
            continue
        installed = [f for f in app.before_request_funcs.get(blueprint, []) if isinstance(f, Gate)]
        if [g.name for g in installed] != [gates[blueprint]]:
            problems.append(f"{rule.rule} ({rule.endpoint}): gate {gates[blueprint]!r} not installed once")
    return problems


def public_surface(app: Flask) -> set[tuple[str, str]]:
    """(rule, method) reachable without a session: public blueprints, ``@public`` views, static files."""
    gates: dict[str, str] = app.extensions.get("route_gates", {})
    found = set()
    for rule, method in _routes(app):
        view = app.view_functions[rule.endpoint]
        blueprint = _blueprint(rule.endpoint)
        if (rule.endpoint == "static" or getattr(view, "_gate_exempt", None) == "public"
                or (blueprint is not None and gates.get(blueprint) == GateKind.PUBLIC)):
            found.add((rule.rule, method))
    return found


def pre_mfa_surface(app: Flask) -> set[tuple[str, str]]:
    return {(rule.rule, method) for rule, method in _routes(app)
            if getattr(app.view_functions[rule.endpoint], "_gate_exempt", None) == "pre_mfa"}


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def in_api(path: str) -> bool:
    """``/api/v1`` itself (the index) and everything under it."""
    return path == "/api/v1" or path.startswith("/api/v1/")


def api_routes(app: Flask) -> set[tuple[str, str]]:
    return {(_openapi_path(rule.rule), method.lower()) for rule, method in _routes(app) if in_api(rule.rule)}


def spec_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item if method in _HTTP_METHODS}


def _spec(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/api/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


# ---- AZ-02 on the real app --------------------------------------------------------------------------------


def test_every_route_has_a_gate(app: Flask) -> None:
    # AZ-02
    assert ungated_routes(app) == []
    assert len(list(app.url_map.iter_rules())) > 20


def test_public_routes_are_exactly_the_allow_list(app: Flask) -> None:
    # AZ-02: adding a public route (or a method on one) must change this file
    surface = public_surface(app)
    assert surface - PUBLIC_ROUTES == set(), "public routes missing from the allow-list"
    assert PUBLIC_ROUTES - surface == set(), "allow-list names routes that are not public (remove them)"


def test_pre_mfa_routes_are_exactly_the_allow_list(app: Flask) -> None:
    # AZ-02, AZ-07: only the MFA step and sign-out are reachable with a half-finished sign-in
    assert pre_mfa_surface(app) == PRE_MFA_ROUTES


def test_gate_markers_are_known(app: Flask) -> None:
    for rule in app.url_map.iter_rules():
        assert getattr(app.view_functions[rule.endpoint], "_gate_exempt", None) in (None, "public", "pre_mfa"), rule


def test_api_routes_match_the_openapi_document(app: Flask) -> None:
    # AZ-02 (API9 inventory): every /api/v1 rule and method is documented, and nothing else is
    routes = api_routes(app)
    operations = {op for op in spec_operations(_spec(app)) if in_api(op[0])}
    assert routes - operations == set(), "routes missing from the OpenAPI document"
    assert operations - routes == set(), "OpenAPI operations with no route"
    assert len(routes) > 10


def test_spec_has_no_paths_outside_the_api(app: Flask) -> None:
    assert {path for path, _ in spec_operations(_spec(app)) if not in_api(path)} == set()


def _placeholder_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "unknown-id", rule)


def test_every_non_public_api_route_needs_a_token(app: Flask, client: FlaskClient) -> None:
    # AZ-02, AN-07: no token, a bare scheme or a garbage token -> 401 unauthenticated on every route
    checked = 0
    surface = public_surface(app)
    for rule, method in _routes(app):
        if not in_api(rule.rule) or (rule.rule, method) in surface:
            continue
        path = _placeholder_path(rule.rule)
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer cja_not-a-real-token"},
                        {"Authorization": "Basic dXNlcjpwYXNz"}):
            response = client.open(path, method=method, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.status_code)
            assert error_code(response) == "unauthenticated", (method, path, headers)
            assert "Bearer" in response.headers.get("WWW-Authenticate", "")
        checked += 1
    assert checked >= 10


# ---- negative control: the same checks catch an ungated, undocumented or unlisted route -------------------


@pytest.fixture
def second_app(app: Flask, app_overrides: dict[str, Any]) -> Iterator[Flask]:
    from marketplace import create_app
    from marketplace.extensions import db

    other = create_app(app_overrides, start_background=False)
    other.config["TESTING"] = True
    try:
        yield other
    finally:
        with other.app_context():
            db.engine.dispose()


def test_negative_control_checks_see_a_rogue_blueprint(second_app: Flask) -> None:
    # AZ-02: a harness that cannot see the bug proves nothing (TESTING.md section 6, rule 6)
    assert ungated_routes(second_app) == []
    assert public_surface(second_app) == PUBLIC_ROUTES

    rogue = Blueprint("rogue", __name__, url_prefix="/api/v1/rogue")

    @rogue.get("/secrets")
    def secrets() -> dict[str, str]:
        return {"leaked": "yes"}

    second_app.register_blueprint(rogue)  # no register_gated: no gate, no spec entry

    assert ungated_routes(second_app) == ["/api/v1/rogue/secrets (rogue.secrets): no gate"]
    assert ("/api/v1/rogue/secrets", "get") in api_routes(second_app) - spec_operations(_spec(second_app))
    # and the route really is open: exactly the hole the check reports
    response = second_app.test_client().get("/api/v1/rogue/secrets")
    assert response.status_code == 200 and response.get_json() == {"leaked": "yes"}


def test_negative_control_allow_list_sees_a_new_public_view(second_app: Flask) -> None:
    # AZ-02: a gated blueprint with one @public view shows up as a new public route
    extra = Blueprint("extra", __name__, url_prefix="/console/extra")

    @extra.get("/open")
    @public
    def open_page() -> str:
        return "open"

    @extra.get("/closed")
    def closed_page() -> str:
        return "closed"

    register_gated(second_app, extra, Gate(GateKind.CONSOLE))
    assert ungated_routes(second_app) == []
    assert public_surface(second_app) - PUBLIC_ROUTES == {("/console/extra/open", "GET")}
    client = second_app.test_client()
    assert client.get("/console/extra/open").status_code == 200
    assert client.get("/console/extra/closed").status_code == 302  # gated: to the sign-in page


def test_negative_control_gate_recorded_but_not_installed(second_app: Flask) -> None:
    # a registry entry without the before_request hook is reported too
    sneaky = Blueprint("sneaky", __name__, url_prefix="/agency/sneaky")

    @sneaky.get("/")
    def index() -> str:
        return "no gate ran"

    second_app.extensions["route_gates"]["sneaky"] = Gate(GateKind.AGENCY).name
    second_app.register_blueprint(sneaky)
    assert ungated_routes(second_app) == [f"/agency/sneaky/ (sneaky.index): gate {GateKind.AGENCY.value!r} "
                                          "not installed once"]

