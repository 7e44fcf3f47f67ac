"""The shared web helpers: one strict JSON loader and one multipart parser for every route (issue 7 items 2, 3
and 5; IN-01, IN-02, AZ-08).

The route sweeps read ``app.url_map``, so a new JSON or upload route is covered without editing this file,
and a new upload route that the behaviour test does not know fails it (closed by default).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace import webhelpers
from marketplace.agencies.models import AgencyStatus
from marketplace.permissions import Role
from marketplace.webhelpers import MAX_JSON_DEPTH, json_too_deep, loads_json
from tests.factories import (
    auth_headers,
    book,
    make_agency,
    make_customer,
    make_staff,
    make_vehicle,
    make_verified_customer,
)
from tests.kyc.helpers import give_face_consent, photo

DEEP = b"[" * 1000 + b"]" * 1000  # the body: 2 KB, unauthenticated, was a 500 with a traceback
BODY_METHODS = ("POST", "PUT", "PATCH")


# ---- the depth check ------------------------------------------------------------------------------------


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


# strings full of brackets, quotes and backslashes: only structure counts, never string content
tricky_text = st.text(alphabet='[]{}"\\ab,:', max_size=12)
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=80,
)


def _nest(value: Any, levels: int, key: str) -> Any:
    for i in range(levels):
        value = [value] if i % 3 else {key: value}
    return value


@settings(max_examples=300, deadline=None)
@given(doc=documents, levels=st.integers(0, 2 * MAX_JSON_DEPTH), key=tricky_text)
def test_the_depth_check_is_exact_for_well_formed_json(doc: Any, levels: int, key: str) -> None:  # IN-02
    value = _nest(doc, levels, key)
    text = json.dumps(value, ensure_ascii=False)
    assert json_too_deep(text) == (_depth(value) > MAX_JSON_DEPTH)
    assert json_too_deep(text.encode("utf-16")) == (_depth(value) > MAX_JSON_DEPTH)
    if _depth(value) <= MAX_JSON_DEPTH:
        assert loads_json(text.encode()) == value


@pytest.mark.parametrize("body", [
    DEEP,
    b"[" * 100_000,  # never closed: the decoder would still recurse
    b'{"a":' * 40 + b"1" + b"}" * 40,
    b"[" * 20 + b'"' + b"]" * 30 + b'"' + b"[" * 20,  # brackets in a string do not hide the ones outside
    b'["\\\\"' + b"," + b"[" * 40 + b"]" * 40 + b"]",  # an escaped backslash ends its string
])
def test_deep_bodies_are_refused_without_recursing(body: bytes) -> None:  # IN-02
    with pytest.raises(webhelpers.JsonDepthError):
        loads_json(body)
    assert isinstance(webhelpers.json_error(webhelpers.JsonDepthError()), webhelpers.JsonTooDeep)


@pytest.mark.parametrize("body", [
    b'{"a": "' + b"[" * 5000 + b'"}',  # brackets inside a string
    b'["\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]',  # ... after an escaped quote
    b"[" + b",".join([b"[{}]"] * 5000) + b"]",  # wide and shallow
    b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH,  # exactly the limit
])
def test_wide_or_bracket_filled_bodies_within_the_limit_are_read(body: bytes) -> None:  # IN-02
    assert loads_json(body) == json.loads(body)


def test_recursion_in_the_decoder_is_a_depth_error_too(monkeypatch: pytest.MonkeyPatch) -> None:  # IN-02
    """Belt and braces: should the decoder recurse out anyway (a deep call stack), it is still a ValueError."""
    monkeypatch.setattr(webhelpers, "json_too_deep", lambda data, limit=MAX_JSON_DEPTH: False)
    with pytest.raises(webhelpers.JsonDepthError):
        loads_json(b"[" * 100_000 + b"]" * 100_000)


# ---- every JSON route refuses a deep body: 400 json_too_deep, no 500, nothing logged at ERROR ------------


def _body_locations(app: Flask, rule: Any, method: str) -> set[str]:
    view = app.view_functions[rule.endpoint]
    func = getattr(view.view_class, method.lower(), None) if hasattr(view, "view_class") else view
    parameters = getattr(func, "_apidoc", {}).get("arguments", {}).get("parameters", [])
    return {p["in"] for p in parameters}


def _json_routes(app: Flask) -> list[tuple[str, str, bool]]:
    """(path, method, reads a JSON body) of every API route that takes a body (uploads excepted)."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        if getattr(app.view_functions[rule.endpoint], "_accepts_multipart", False):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: f"x-{m.group(1)}", rule.rule)
        for method in sorted(set(rule.methods or ()) & set(BODY_METHODS)):
            routes.append((path, method, "json" in _body_locations(app, rule, method)))
    return routes


def _is_public(app: Flask, path: str, method: str) -> bool:
    adapter = app.url_map.bind("localhost")
    endpoint, _ = adapter.match(path, method=method)
    gates: dict[str, str] = app.extensions["route_gates"]
    view = app.view_functions[endpoint]
    return gates.get(endpoint.rpartition(".")[0]) == "public" or getattr(view, "_gate_exempt", None) == "public"


@pytest.fixture
def signed_in(app: Flask, client: FlaskClient) -> Iterator[dict[str, dict[str, str]]]:
    with app.app_context():
        agency = make_agency()
        yield {"customer": auth_headers(client, make_customer()),
               "agency": auth_headers(client, make_staff(Role.AGENCY_OWNER, agency=agency))}


def test_every_json_route_refuses_a_deep_body(app: Flask, client: FlaskClient, signed_in: dict[str, Any],
                                              caplog: pytest.LogCaptureFixture) -> None:  # IN-02, issue 7 item 2
    routes = _json_routes(app)
    assert len([r for r in routes if r[2]]) >= 25, routes  # the sweep sees the routes it means to
    answers: dict[tuple[str, str, str], tuple[int, str]] = {}
    with caplog.at_level(logging.WARNING):
        for path, method, reads_json in routes:
            public = _is_public(app, path, method)
            callers: dict[str, dict[str, str]] = {"anonymous": {}}
            if reads_json and not public:  # routes without a body parameter never read one, and may act
                callers["signed in"] = signed_in["agency" if re.match(r"/api/v1/agency(/|$)", path) else "customer"]
            for who, headers in callers.items():
                response = client.open(path, method=method, data=DEEP, content_type="application/json",
                                       headers=headers)
                answers[(who, method, path)] = (response.status_code,
                                                (response.get_json() or {}).get("error", {}).get("code", ""))
    reads = {(method, path): reads_json for path, method, reads_json in routes}
    problems = []
    for (who, method, path), (status, code) in answers.items():
        expected: tuple[int, str] | None = (400, "json_too_deep")
        if who == "anonymous" and not _is_public(app, path, method):
            expected = (401, "unauthenticated")  # the gate answers before anything reads the body
        elif not reads[(method, path)]:
            expected = None  # a public route without a JSON body: anything but a 5xx
        if (expected is not None and (status, code) != expected) or status >= 500:
            problems.append(f"{who} {method} {path}: {status} {code}, expected {expected}")
    assert problems == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


def test_a_deep_body_is_refused_where_the_rate_limiter_reads_it_first(client: FlaskClient) -> None:  # IN-04
    """Login's limit is keyed by the e-mail in the body: the key function reads it before the view does."""
    for body in (DEEP, b'{"email": ' + b"[" * 5000 + b"]" * 5000 + b"}", b"[" * 1_000_000):
        response = client.post("/api/v1/auth/login", data=body, content_type="application/json")
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "json_too_deep"


# ---- one multipart parser for every upload route ----------------------------------------------------------


def test_every_upload_route_reads_its_body_with_the_one_multipart_parser(app: Flask) -> None:  # issue 7 item 5
    """Uploads are declared with ``upload_arguments``: a ``multipart`` body, and marked as taking one.

    ``location="files"`` (or ``form``) would read only part of the body, so an extra field passed unseen
    (the selfie route did); no route may use them.
    """
    uploads = []
    for rule in app.url_map.iter_rules():
        for method in sorted(set(rule.methods or ()) & set(BODY_METHODS)):
            locations = _body_locations(app, rule, method)
            marked = getattr(app.view_functions[rule.endpoint], "_accepts_multipart", False)
            assert not locations & {"files", "form", "json_or_form"}, (rule.rule, locations)
            assert marked == ("multipart" in locations), (rule.rule, locations, marked)
            if marked:
                uploads.append(rule.rule)
    assert len(uploads) >= 4, uploads


Part = tuple[str | None, str | None, bytes]  # name (None: no name at all), file name (None: a field), data


def _encode(parts: list[Part]) -> tuple[bytes, str]:
    boundary = "cj-test-boundary"
    out = io.BytesIO()
    for name, filename, data in parts:
        disposition = "form-data"
        if name is not None:
            disposition += f'; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode())
        if filename is not None:
            out.write(b"Content-Type: image/jpeg\r\n")
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _inspection_open(client: FlaskClient, agency: Any) -> tuple[str, dict[str, str]]:
    """A booking of ``agency`` at the counter with its pick-up inspection recorded (photos may be added)."""
    from sqlalchemy import select

    from marketplace.bookings.models import Booking
    from marketplace.extensions import db, utcnow
    from marketplace.handover.models import Handover, Inspection

    staff = make_staff(Role.AGENCY_STAFF, agency=agency)
    reference = book(client, auth_headers(client, make_verified_customer()), make_vehicle(agency))
    booking = db.session.execute(select(Booking).where(Booking.reference == reference)).scalar_one()
    db.session.add(Handover(booking_id=booking.id, agency_id=agency.id, stage="matched", reveals=1))
    db.session.add(Inspection(booking_id=booking.id, agency_id=agency.id, kind="pickup", mileage_km=1, fuel_eighths=8,
                              damage=[], recorded_by_id=staff.user_id, recorded_at=utcnow()))
    db.session.commit()
    return reference, auth_headers(client, staff)


def _returned(client: FlaskClient, agency: Any) -> tuple[str, Any, dict[str, str], dict[str, str]]:
    """A booking of ``agency`` handed over and returned an hour ago (charges may be raised on it): its
    reference, the manager, the manager's and the customer's API headers."""
    from datetime import timedelta

    from sqlalchemy import select

    from marketplace.bookings.models import Booking
    from marketplace.extensions import db, utcnow
    from marketplace.handover.models import Handover

    manager = make_staff(Role.AGENCY_MANAGER, agency=agency)
    customer = auth_headers(client, make_verified_customer())
    reference = book(client, customer, make_vehicle(agency))
    booking = db.session.execute(select(Booking).where(Booking.reference == reference)).scalar_one()
    db.session.add(Handover(booking_id=booking.id, agency_id=agency.id, stage="returned", reveals=1,
                            handed_over_at=utcnow() - timedelta(hours=3), returned_at=utcnow() - timedelta(hours=1)))
    db.session.commit()
    return reference, manager, auth_headers(client, manager), customer


def _charge_parts(image: Part, incurred_at: str) -> list[Part]:
    return [("kind", None, b"fuel"), ("amount", None, b"15750"), ("description", None, b"A quarter tank"),
            ("incurred_at", None, incurred_at.encode()), ("evidence", *image[1:])]


@pytest.fixture
def uploads(app: Flask, client: FlaskClient) -> Iterator[dict[str, tuple[str, dict[str, str], list[Part]]]]:
    """endpoint -> (path, headers, the parts of a valid upload) for every upload route."""
    image = ("image", "photo.jpg", photo(1200, 900))
    with app.app_context():
        customer = auth_headers(client, make_customer())
        give_face_consent(client, customer)
        pending = make_agency(status=AgencyStatus.PENDING)
        active = make_agency()
        car = make_vehicle(active)
        counter, desk = _inspection_open(client, active)
        returned, _manager, raiser, renter = _returned(client, active)
        from marketplace.extensions import utcnow

        incurred = (utcnow().replace(microsecond=0)).isoformat()
        body, content_type = _encode(_charge_parts(image, incurred))
        noticed = client.post(f"/api/v1/agency/bookings/{returned}/charges", data=body, content_type=content_type,
                              headers=raiser)
        assert noticed.status_code == 201, noticed.get_json()
        yield {
            "agency_charges.raise_charge": (
                f"/api/v1/agency/bookings/{returned}/charges", raiser, _charge_parts(image, incurred)),
            "charges.dispute": (
                f"/api/v1/charges/{noticed.get_json()['id']}/dispute", renter,
                [("reason", None, b"The tank was full, see the photo"), ("file_1", *image[1:])]),
            "agency_handover.add_inspection_photo": (
                f"/api/v1/agency/bookings/{counter}/inspections/pickup/photos", desk, [image]),
            "kyc.upload_selfie": ("/api/v1/me/kyc/selfie", customer, [image]),
            "kyc.upload_document": ("/api/v1/me/kyc/documents", customer, [("kind", None, b"id_front"), image]),
            "agency_api.upload_document": (
                "/api/v1/agency/documents", auth_headers(client, make_staff(Role.AGENCY_OWNER, agency=pending)),
                [("kind", None, b"trade_licence"), image]),
            "agency_fleet.add_photo": (
                f"/api/v1/agency/vehicles/{car.public_id}/photos",
                auth_headers(client, make_staff(Role.AGENCY_OWNER, agency=active)), [image]),
        }


REFUSED: list[Any] = [
    pytest.param([("extra", None, b"1")], ["extra"], id="an unknown field"),
    pytest.param([("extra", "x.jpg", b"\xff\xd8")], ["extra"], id="an unknown file"),
    pytest.param([(None, None, b"value")], [""], id="a field part without a name"),
    pytest.param([(None, "x.jpg", b"\xff\xd8")], [""], id="a file part without a name"),
    pytest.param([("", None, b"value")], [""], id="a part with an empty name"),
    # the 500 of issue 7 item 3: None beside a name made sorted() fail inside the 422 handler
    pytest.param([(None, None, b"a"), ("zeta", None, b"1"), (None, "y.jpg", b"\xff")], ["", "zeta"],
                 id="nameless parts beside an unknown field"),
]


@pytest.mark.parametrize(("extra", "unknown"), REFUSED)
def test_every_upload_route_refuses_unknown_and_nameless_parts(
        app: Flask, client: FlaskClient, uploads: dict[str, Any], extra: list[Part], unknown: list[str],
) -> None:  # AZ-08, issue 7 items 3 and 5
    routes = {rule.endpoint for rule in app.url_map.iter_rules()
              if getattr(app.view_functions[rule.endpoint], "_accepts_multipart", False)}
    assert set(uploads) == routes, "a new upload route: add it to the uploads fixture"
    for endpoint, (path, headers, valid) in uploads.items():
        body, content_type = _encode([*valid, *extra])
        response = client.post(path, data=body, content_type=content_type, headers=headers)
        assert response.status_code == 422, (endpoint, response.get_json())
        error = response.get_json()["error"]
        assert error["code"] == "unknown_field", (endpoint, error)
        assert error["details"]["unknown"] == unknown, (endpoint, error)
    for endpoint, (path, headers, valid) in uploads.items():  # control: the same body without them is taken
        body, content_type = _encode(valid)
        response = client.post(path, data=body, content_type=content_type, headers=headers)
        assert response.status_code == (200 if endpoint == "charges.dispute" else 201), (endpoint, response.get_json())


@pytest.mark.parametrize(("extra", "unknown"), REFUSED)
def test_the_agency_pages_upload_forms_refuse_the_same_parts(
        app: Flask, extra: list[Part], unknown: list[str]) -> None:  # AZ-08, issue 7 item 5
    """The agency app's upload forms go through the same parser: the same refusals, on its error page."""
    from tests.factories import web_login
    from tests.staff_web import error_code, page_csrf

    image = ("image", "photo.jpg", photo(1200, 900))
    with app.app_context():
        pending = make_agency(status=AgencyStatus.PENDING)
        active = make_agency()
        car = make_vehicle(active)
        forms = []
        returned, manager, _raiser, _renter = _returned(app.test_client(), active)
        from marketplace.extensions import utcnow

        client = app.test_client()
        web_login(client, manager, door="agency")
        token = ("csrf_token", None, page_csrf(client, f"/agency/bookings/{returned}").encode())
        incurred = ("incurred_at", None, utcnow().strftime("%Y-%m-%dT%H:%M").encode())  # Dubai is ahead: the past
        forms.append((client, f"/agency/bookings/{returned}/charges",
                      [token, ("kind", None, b"fuel"), ("amount", None, b"157.50"),
                       ("description", None, b"A quarter tank"), incurred, ("evidence", *image[1:])]))
        for agency, page, action, fields in (
                (pending, "/agency/profile", "/agency/profile/documents", [("kind", None, b"trade_licence")]),
                (active, f"/agency/fleet/{car.public_id}", f"/agency/fleet/{car.public_id}/photos", [])):
            client = app.test_client()
            web_login(client, make_staff(Role.AGENCY_OWNER, agency=agency), door="agency")
            token = ("csrf_token", None, page_csrf(client, page).encode())
            forms.append((client, action, [token, *fields, image]))
        for client, action, valid in forms:
            body, content_type = _encode([*valid, *extra])
            response = client.post(action, data=body, content_type=content_type)
            assert response.status_code == 422, action
            assert error_code(response) == "unknown_field", (action, response.get_data(as_text=True)[:300])
        for client, action, valid in forms:  # control: the form as the page sends it is taken
            body, content_type = _encode(valid)
            assert client.post(action, data=body, content_type=content_type).status_code == 302, action


def test_no_view_reads_uploaded_files_but_through_the_one_parser() -> None:  # issue 7 item 5
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readers = [str(path.relative_to(root)) for folder in ("marketplace", "agency_app")
               for path in (root / folder).rglob("*.py") if "request.files" in path.read_text()]
    # the unit of work rewinds every upload's stream before it retries a request; it reads none of them
    assert readers == ["marketplace/transactions.py"]
