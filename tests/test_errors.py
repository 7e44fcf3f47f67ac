"""One error shape everywhere, strict input handling and the security headers (IN-01, IN-02, IN-05,
AZ-08, PV-05). Every failure is ``{"error": {"code", "message", "details", "request_id"}}``.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketplace.extensions import db, limiter
from tests.factories import auth_headers, bearer, make_customer, registration_body, table_rows

LOGIN = "/api/v1/auth/login"
REGISTER = "/api/v1/auth/register"
ME = "/api/v1/me"


def error(response: Any) -> dict[str, Any]:
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) == {"code", "message", "details", "request_id"}, err
    assert isinstance(err["code"], str) and isinstance(err["message"], str) and isinstance(err["details"], dict)
    # every error names its request, and the same id is in the response header (and the logs)
    assert err["request_id"] and err["request_id"] == response.headers["X-Request-ID"]
    uuid.UUID(err["request_id"])
    return err


def no_internals(response: Any) -> None:
    text = response.get_data(as_text=True)
    for leak in ("Traceback", "File \"", "werkzeug", "sqlalchemy", "marketplace/", ".py", "Exception"):
        assert leak not in text, leak


# ---- the shape of every error ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/does-not-exist", "/api/v2/me", "/nothing-here", "/api/v1/me/extra/x"])
def test_unknown_paths_get_404_not_found(client, path):  # IN-05
    response = client.get(path)
    assert response.status_code == 404
    assert error(response)["code"] == "not_found"
    no_internals(response)


def test_request_id_is_echoed_only_when_it_is_a_uuid(client):  # IN-05, PV-04
    given_id = str(uuid.uuid4())
    response = client.get("/api/v1/nope", headers={"X-Request-ID": given_id})
    assert error(response)["request_id"] == given_id
    for forged_id in ('abc {"level": "ERROR", "message": "forged"}', "1234", given_id + "x", "x" * 500):
        forged = client.get("/api/v1/nope", headers={"X-Request-ID": forged_id})
        request_id = error(forged)["request_id"]
        assert request_id != forged_id and uuid.UUID(request_id)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", LOGIN),
        ("PUT", LOGIN),
        ("GET", LOGIN),
        ("PATCH", "/api/v1/auth/register"),
        ("TRACE", LOGIN),
        ("TRACE", ME),
        ("TRACE", "/api/v1/ping"),
        ("POST", ME),
        ("PUT", "/api/v1/me/consents"),
    ],
)
def test_unsupported_methods_get_405(client, method, path):  # IN-05
    response = client.open(path, method=method, headers={"Authorization": "Bearer secret-token-value"})
    assert response.status_code == 405
    assert error(response)["code"] == "method_not_allowed"
    assert "Allow" in response.headers
    assert "TRACE" not in response.headers["Allow"]
    # TRACE must not reflect the request (no cross-site tracing of credentials)
    assert "secret-token-value" not in response.get_data(as_text=True)
    no_internals(response)


def test_body_over_max_content_length_is_413_before_the_view_runs(app, client, app_ctx, monkeypatch):  # IN-01
    from marketplace.users import service

    headers = auth_headers(client, make_customer())
    calls: list[str] = []
    monkeypatch.setattr(service, "login_api", lambda *a, **k: calls.append("login"))
    monkeypatch.setattr(service, "update_profile", lambda *a, **k: calls.append("update"))
    limit = app.config["MAX_CONTENT_LENGTH"]
    big = b'{"email": "a@example.com", "password": "' + b"x" * limit + b'"}'
    response = client.post(LOGIN, data=big, content_type="application/json")
    assert response.status_code == 413
    assert error(response)["code"] == "payload_too_large"
    # the same on an authenticated JSON route
    response = client.patch(ME, data=b'{"full_name": "' + b"x" * limit + b'"}', content_type="application/json",
                            headers=headers)
    assert response.status_code == 413
    assert error(response)["code"] == "payload_too_large"
    assert calls == []


def test_chunked_body_without_a_length_is_cut_off_at_the_limit(app, client):  # IN-01
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = b'{"email": "a@example.com", "password": "' + b"x" * (limit + 10) + b'"}'
    response = client.post(
        LOGIN,
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert error(response)["code"] == "payload_too_large"
    # a small chunked body is read in full
    small = client.post(
        LOGIN,
        input_stream=io.BytesIO(b'{"email": "nobody@example.com", "password": "Wrong-Password-000"}'),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert small.status_code == 401
    assert error(small)["code"] == "invalid_credentials"


@pytest.mark.parametrize("size", [1024 * 1024, 10 * 1024 * 1024])
def test_large_bodies_under_the_limit_are_validated_not_crashed(client, size):  # IN-01
    body = json.dumps({"email": "a" * size + "@example.com", "password": "x"})
    response = client.post(LOGIN, data=body, content_type="application/json")
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "validation_error"
    assert "email" in err["details"]["fields"]
    assert len(response.get_data()) < 10_000  # the input is not echoed back


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ({"email": "a@example.com", "password": "Saffron-Dune-Falcon-42"}, None),  # a form post
        ("email=a@example.com&password=x", "application/x-www-form-urlencoded"),
        ('{"email": "a@example.com", "password": "x"}', "text/plain"),
        ('{"email": "a@example.com", "password": "x"}', "multipart/form-data; boundary=x"),
        ("<login><email>a@example.com</email></login>", "application/xml"),
    ],
)
def test_non_json_bodies_on_json_routes_get_415(client, data, content_type):  # IN-05
    kwargs: dict[str, Any] = {"data": data}
    if content_type:
        kwargs["content_type"] = content_type
    response = client.post(LOGIN, **kwargs)
    assert response.status_code == 415
    err = error(response)
    assert err["code"] == "unsupported_media_type"
    assert err["details"] == {"expected": "application/json"}


def test_validation_errors_name_every_bad_field(client):  # IN-05
    response = client.post(REGISTER, json={"email": 7, "date_of_birth": "2023-02-30"})
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "validation_error"
    fields = err["details"]["fields"]
    for name in ("full_name", "date_of_birth", "nationality", "email", "phone", "address", "password",
                 "accepted_terms_version", "accepted_privacy_version"):
        assert name in fields, name
    assert all(isinstance(v, list | dict) for v in fields.values())


@pytest.mark.parametrize("body", [[], "a string", 42, None, True])
def test_a_json_body_that_is_not_an_object_is_a_validation_error(client, body):  # IN-02
    response = client.post(LOGIN, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 422
    assert error(response)["code"] == "validation_error"


def test_unknown_fields_are_named(client):  # AZ-08
    response = client.post(LOGIN, json={"email": "a@example.com", "password": "x", "role": "admin",
                                        "is_admin": True})
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "unknown_field"
    assert err["details"]["unknown"] == ["is_admin", "role"]


def test_unknown_nested_fields_are_refused(client, app):  # AZ-08
    body = registration_body()
    body["address"] = {**body["address"], "owner_id": 1}
    before = table_rows(app, "users")
    response = client.post(REGISTER, json=body)
    assert response.status_code == 422
    assert "owner_id" in json.dumps(error(response)["details"])
    assert table_rows(app, "users") == before


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"email": "a@example.com",}',
        b"{'email': 'a@example.com'}",
        b'{"email": "a@example.com" "password": "x"}',
        b"\xff\xfe\x00{",
        b'{"email": NaN}',
        b'{"email": "a@example.com", "email": "b@example.com", "password": "x"}',
        b'{"email": "a@example.com", "password": "x", "password": "y"}',
    ],
)
def test_malformed_json_and_duplicate_keys_get_400(client, raw):  # IN-02
    response = client.post(LOGIN, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert error(response)["code"] == "malformed_json"
    no_internals(response)


def test_duplicate_keys_in_nested_objects_and_on_patch_are_refused(app, client, app_ctx):  # IN-02
    headers = auth_headers(client, make_customer())
    before = table_rows(app, "users")
    raw = b'{"address": {"city": "Abu Dhabi", "city": "Sharjah"}}'
    response = client.patch(ME, data=raw, content_type="application/json", headers=headers)
    assert response.status_code == 400
    assert error(response)["code"] == "malformed_json"
    raw = b'{"full_name": "Name One", "full_name": "Name Two"}'
    response = client.patch(ME, data=raw, content_type="application/json", headers=headers)
    assert response.status_code == 400
    assert table_rows(app, "users") == before


@pytest.mark.parametrize("value", [1, 0, 1.0, "true", "x", "", None, [], {}])
def test_booleans_are_json_booleans_only(app, client, app_ctx, value):  # IN-02
    person = make_customer()
    headers = auth_headers(client, person)
    before = table_rows(app, "users", "auth_sessions", "consents")
    for path, body, method in (
        ("/api/v1/me/notification-preferences", {"email": value}, "PATCH"),
        ("/api/v1/auth/logout", {"all_sessions": value}, "POST"),
    ):
        response = client.open(path, method=method, json=body, headers=headers)
        assert response.status_code == 422, (path, value)
        err = error(response)
        assert err["code"] == "validation_error"
        assert list(err["details"]["fields"]) == list(body)
    assert table_rows(app, "users", "auth_sessions", "consents") == before
    # registration: marketing_opt_in is never read from 1 or "yes"
    reg = client.post(REGISTER, json=registration_body(marketing_opt_in=value))
    assert reg.status_code == 422
    assert list(error(reg)["details"]["fields"]) == ["marketing_opt_in"]


@pytest.mark.parametrize("value", [True, False, 1, 0, 1.5, None, [], {}, ["a@example.com"]])
def test_strings_are_json_strings_only(app, client, value):  # IN-02
    for body, field in (({"email": value, "password": "Saffron-Dune-Falcon-42"}, "email"),
                        ({"email": "a@example.com", "password": value}, "password")):
        response = client.post(LOGIN, json=body)
        assert response.status_code == 422, body
        err = error(response)
        assert err["code"] == "validation_error"
        assert list(err["details"]["fields"]) == [field]
    before = table_rows(app, "users")
    reg = client.post(REGISTER, json=registration_body(full_name=value))
    assert reg.status_code == 422
    assert list(error(reg)["details"]["fields"]) == ["full_name"]
    assert table_rows(app, "users") == before


def test_page_size_is_never_read_from_a_boolean(app, client, app_ctx):  # IN-02
    headers = auth_headers(client, make_customer())
    for value in ("true", "false", "1.0", "1e3", " 5", "0x10"):
        response = client.get("/api/v1/me/notifications", query_string={"limit": value}, headers=headers)
        assert response.status_code == 422, value
        assert error(response)["code"] == "validation_error"


# ---- mass assignment (AZ-08, Hypothesis) --------------------------------------------------------

FORBIDDEN_FIELDS = ["price", "total", "amount", "fee", "status", "kyc_status", "role", "agency_id", "owner_id",
                    "deposit", "noticed_at", "stripe_customer", "stripe_customer_id", "stripe_payment_method"]
json_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**31), max_value=2**31), st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False), st.just("admin"), st.just("approved"),
    st.lists(st.integers(), max_size=3),
)
extra_fields = st.dictionaries(st.sampled_from(FORBIDDEN_FIELDS), json_values, min_size=1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extras=extra_fields)
def test_registration_refuses_mass_assignment(app, extras):  # AZ-08, enforces P-01
    client = app.test_client()
    with app.app_context():
        limiter.reset()  # every example is a fresh client; the registration limit is tested elsewhere
    body = registration_body()
    before = table_rows(app, "users", "consents", "outbox_messages", "one_time_tokens")
    response = client.post(REGISTER, json={**body, **extras})
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "unknown_field"
    assert err["details"]["unknown"] == sorted(extras)
    assert table_rows(app, "users", "consents", "outbox_messages", "one_time_tokens") == before


@pytest.fixture
def signed_in(app: Flask) -> Iterator[dict[str, str]]:
    client = app.test_client()
    with app.app_context():
        person = make_customer()
        yield auth_headers(client, person)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extras=extra_fields, valid=st.sampled_from([
    {"full_name": "Changed Name"},
    {"address": {"city": "Sharjah"}},
    {"nationality": "FR"},
    {"emergency_contact": {"name": "Someone Else", "phone": "+971501112233"}},
]))
def test_profile_patch_refuses_mass_assignment(app, signed_in, extras, valid):  # AZ-08, enforces P-03
    client = app.test_client()
    before = table_rows(app, "users", "role_assignments", "consents", "auth_sessions")
    response = client.patch(ME, json={**valid, **extras}, headers=signed_in)
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "unknown_field"
    assert err["details"]["unknown"] == sorted(extras)
    assert table_rows(app, "users", "role_assignments", "consents", "auth_sessions") == before
    assert client.get(ME, headers=signed_in).get_json()["status"] == "active"


# ---- unexpected failures: 500 with nothing inside (IN-05) ----------------------------------------


@pytest.fixture
def crashing_app(app: Flask, app_overrides: dict[str, Any]) -> Iterator[Flask]:
    """A separate app with a route that raises; the session app is left as it was."""
    from marketplace import create_app

    other = create_app(dict(app_overrides), start_background=False)

    def explode() -> Any:
        raise RuntimeError("db password=hunter2 at /srv/internal/path.py")

    other.add_url_rule("/api/v1/_test/explode", "explode", explode, methods=["GET", "POST"])
    yield other
    with other.app_context():
        db.engine.dispose()


def test_an_exception_in_a_view_is_a_bare_500_and_is_logged_with_the_request_id(
        crashing_app, caplog):  # IN-05
    client = crashing_app.test_client()
    with caplog.at_level(logging.ERROR, logger="marketplace"):
        response = client.get("/api/v1/_test/explode")
        posted = client.post("/api/v1/_test/explode", json={"x": 1})
    assert response.status_code == 500
    assert posted.status_code == 500
    err = error(response)
    assert err["code"] == "internal_error"
    assert err["details"] == {}
    text = response.get_data(as_text=True)
    for leak in ("hunter2", "RuntimeError", "/srv/internal", "Traceback", "password"):
        assert leak not in text
    no_internals(response)
    assert response.headers["Cache-Control"] == "no-store"

    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert logged, "the failure was not logged"
    assert any(getattr(r, "request_id", None) == err["request_id"] for r in logged)
    assert any(getattr(r, "request_id", None) == error(posted)["request_id"] for r in logged)


def test_the_session_app_does_not_have_the_crashing_route(app, client):
    assert "explode" not in app.view_functions
    assert client.get("/api/v1/_test/explode").status_code == 404


# ---- security headers (IN-06, PV-05) ------------------------------------------------------------


def _check_headers(response: Any) -> None:
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'self'" in csp
    assert "object-src 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Server" not in response.headers or "Werkzeug" not in response.headers["Server"]


def test_security_headers_on_success_error_and_authenticated_responses(app, client, app_ctx):  # IN-06, PV-05
    person = make_customer()
    tokens = client.post(LOGIN, json={"email": person.email, "password": person.password})
    assert tokens.status_code == 200
    responses = [
        client.get("/api/v1/ping"),
        client.get("/api/v1/legal/consent-texts"),
        tokens,  # tokens must never be cached
        client.get(ME, headers=bearer(tokens.get_json()["access_token"])),
        client.get(ME),
        client.get("/api/v1/nope"),
        client.post(LOGIN, data="x", content_type="text/plain"),
        client.open(LOGIN, method="TRACE"),
    ]
    for response in responses:
        _check_headers(response)


def test_unknown_nested_field_is_named_with_its_path(client):  # AZ-08
    from tests.factories import registration_body

    body = registration_body()
    body["address"]["price"] = 1
    response = client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "unknown_field"
    assert error["details"]["unknown"] == ["address.price"]


def test_phone_numbers_take_ascii_digits_only(client):
    from tests.factories import registration_body

    response = client.post("/api/v1/auth/register", json=registration_body(phone="+٩٧١٥٠١٢٣٤٥٦٧"))
    assert response.status_code == 422


# ---- an error handler never fails (issue 7 item 3) --------------------------------------------------------


def _deep_dict(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"x": ["Unknown field."]}
    for _ in range(levels):
        value = {"nested": value}
    return value


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


# what a handler may meet: None and non-string keys, bytes, nested and deep objects, huge strings and numbers
ODD_VALUES: list[Any] = [
    None,
    {None: ["Unknown field."], "a": ["Unknown field."]},
    {"multipart": {None: ["Unknown field."], "image": ["Missing data for required field."], "": ["Unknown field."]}},
    {"json": {1: ["Unknown field."], (1, 2): "x", b"key": [b"\xff\xfe"], "ok": {3: ["Unknown field."]}}},
    {"files": "Unknown field.", "query": None, "form": [None, 1]},
    [None, 1, b"\xff", {"a": None}],
    b"\xff\xfe raw bytes",
    "x" * 1_000_000,
    {"big": 10**5000, "nan": float("nan"), "inf": float("-inf"), "set": {1, 2}, "obj": object(),
     "bad": _Unprintable()},
    _deep_dict(2000),
    {"x" * 100_000: ["Unknown field."]},
    "Unknown field.",
    12345,
    _Unprintable(),
]


def _odd_exceptions(exc_class: type[BaseException]) -> list[BaseException]:
    from marshmallow import ValidationError
    from werkzeug import exceptions as wz

    from marketplace import errors

    if issubclass(exc_class, errors.AppError):
        headers: Any = {"X-Fine": "1", "X-None": None, "X-Split": "a\r\nSet-Cookie: x=1", 7: "seven", "é": "x"}
        made: list[BaseException] = [errors.AppError(details=v) for v in ODD_VALUES if isinstance(v, dict)]
        made += [errors.Unprocessable("x" * 1_000_000, headers=headers), errors.AppError(b"bytes")]  # type: ignore[arg-type]
        return made
    if issubclass(exc_class, ValidationError):
        return [ValidationError(v) if v is not None else ValidationError("") for v in ODD_VALUES]
    if issubclass(exc_class, wz.HTTPException):
        made = []
        for value in ODD_VALUES:
            unprocessable = wz.UnprocessableEntity()
            unprocessable.data = {"messages": value}  # type: ignore[attr-defined]
            made.append(unprocessable)
            weird = wz.UnprocessableEntity()
            weird.data = value  # type: ignore[attr-defined]
            made.append(weird)
        made += [wz.TooManyRequests(retry_after=5), wz.MethodNotAllowed(valid_methods=["GET"]),
                 wz.HTTPException("no code"), wz.ImATeapot("x" * 100_000), wz.RequestEntityTooLarge()]
        odd_code = wz.BadRequest()
        odd_code.code = 999
        return [*made, odd_code]
    return [RuntimeError("x" * 1_000_000), ValueError(b"\xff"), RecursionError(), Exception(None)]


def _registered_handlers(app: Flask) -> list[tuple[type[BaseException], Any]]:
    found = []
    for by_code in app.error_handler_spec.values():
        for handlers in by_code.values():
            found += list(handlers.items())
    return found


@pytest.mark.parametrize("path", ["/api/v1/me", "/console/kyc"])
def test_every_error_handler_answers_odd_values_with_a_well_formed_error(app, path, caplog):  # IN-05
    handlers = _registered_handlers(app)
    assert {cls.__name__ for cls, _ in handlers} >= {"AppError", "ValidationError", "HTTPException", "Exception"}
    with caplog.at_level(logging.WARNING, logger="marketplace"):
        for exc_class, handler in handlers:
            for exc in _odd_exceptions(exc_class):
                with app.test_request_context(path):
                    from flask import g

                    rid = g.request_id = str(uuid.uuid4())
                    response = app.make_response(handler(exc))
                assert 400 <= response.status_code <= 599, (exc_class, exc)
                assert len(response.get_data()) < 200_000, (exc_class, type(exc))
                if path.startswith("/api/"):
                    body = json.loads(response.get_data())  # strict JSON: no NaN, no bytes
                    assert set(body) == {"error"}
                    err = body["error"]
                    assert isinstance(err["code"], str) and err["code"], exc
                    assert isinstance(err["message"], str) and isinstance(err["details"], dict)
                    assert err["request_id"] == rid
                    assert "\r" not in "".join(f"{k}{v}" for k, v in response.headers.items())
                else:
                    assert response.mimetype == "text/html"
    # every odd value was answered by the handler itself, not by the last-resort fallback
    assert not [r for r in caplog.records if r.getMessage() == "error handler failed"]


def test_the_nameless_part_messages_become_a_sorted_unknown_list(app):  # AZ-08, issue 7 item 3
    from marketplace.errors import validation_details

    code, details = validation_details({"multipart": {None: ["Unknown field."], "zeta": ["Unknown field."],
                                                      "": ["Unknown field."], 3: ["Unknown field."]}})
    assert code == "unknown_field"
    assert details["unknown"] == ["", "3", "zeta"]


def test_a_handler_that_fails_answers_the_fallback_and_logs_it(app, monkeypatch, caplog):  # IN-05
    from marketplace import errors

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the response could not be built")

    monkeypatch.setattr(errors, "jsonify", broken)
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="marketplace"):
        unknown = client.post(LOGIN, json={"email": "a@example.com", "password": "x", "role": "admin"})
        missing = client.get("/api/v1/nothing-here")
    assert unknown.status_code == 422 and missing.status_code == 404
    assert error(unknown) == {"code": "validation_error", "message": errors.Unprocessable.message, "details": {},
                              "request_id": unknown.headers["X-Request-ID"]}
    assert error(missing)["code"] == "not_found"
    assert [r for r in caplog.records if r.getMessage() == "error handler failed" and r.exc_info]
