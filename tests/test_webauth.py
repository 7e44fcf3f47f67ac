"""Staff sign-in through the real console and agency pages: password, TOTP, cookies, CSRF, gates.

Covers AN-03 (one-time codes work once), AN-05 (sessions rotate and die), AN-07 (forged form posts),
AZ-07 (staff routes need completed MFA) and the staff side of P-04.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pyotp
import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from marketplace.audit import AuditEvent
from marketplace.extensions import db, utcnow
from marketplace.notifications import service as notifications
from marketplace.permissions import Role
from marketplace.users.models import AuthSession, StaffInvitation, User
from tests.factories import (
    Person,
    bearer,
    csrf_from,
    make_agency,
    make_customer,
    make_staff,
    next_totp,
    web_login,
)
from tests.staff_web import (
    db_snapshot,
    error_code,
    location,
    mfa_step,
    page_csrf,
    password_step,
    set_cookie_header,
    set_staff_cookie,
    staff_cookie,
    unused_code,
)

DOORS = ["console", "agency"]


def _staff_for(door: str) -> Person:
    if door == "console":
        return make_staff(Role.ADMIN)
    return make_staff(Role.AGENCY_STAFF, agency=make_agency(name="Desert Wheels LLC"))


def _path(response: Any) -> str:
    return urlsplit(location(response)).path


def _session_count() -> int:
    db.session.expire_all()
    return int(db.session.execute(select(func.count()).select_from(AuthSession)).scalar_one())


def _user(person: Person) -> User:
    db.session.expire_all()
    return person.user()


def _cookie_flags_ok(header: str | None) -> None:
    assert header is not None
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in header.split(";")[1:]}
    assert "httponly" in attributes
    assert attributes.get("samesite") == "SameSite=Strict"
    assert attributes.get("path") == "Path=/"


# ---- the happy path ---------------------------------------------------------------------------------


@pytest.mark.parametrize("door", DOORS)
def test_sign_in_with_password_then_totp(app: Flask, client: FlaskClient, app_ctx: None, door: str) -> None:
    # enforces P-04, AN-05: a session cookie after the password, a new one after MFA
    person = _staff_for(door)

    response = password_step(client, person, door)
    assert response.status_code == 302
    assert _path(response) == f"/{door}/mfa"
    _cookie_flags_ok(set_cookie_header(response))
    pre_mfa_cookie = staff_cookie(client)
    assert pre_mfa_cookie

    page = client.get(f"/{door}/mfa")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Two-step verification" in html
    assert "<svg" not in html and "totp-secret" not in html  # enrolled: no QR code or secret again

    response = client.post(f"/{door}/mfa", data={"code": next_totp(person), "csrf_token": csrf_from(html)})
    assert response.status_code == 302
    assert _path(response) == f"/{door}/"
    _cookie_flags_ok(set_cookie_header(response))
    full_cookie = staff_cookie(client)
    assert full_cookie and full_cookie != pre_mfa_cookie  # rotated: no session fixation

    home = client.get(f"/{door}/")
    assert home.status_code == 200
    text = home.get_data(as_text=True)
    assert _user(person).full_name in text
    if door == "agency":
        assert "Desert Wheels LLC" in text

    # the pre-MFA cookie value no longer opens anything
    other = app.test_client()
    set_staff_cookie(other, pre_mfa_cookie)
    response = other.get(f"/{door}/")
    assert response.status_code == 302 and _path(response) == f"/{door}/login"


def test_pages_before_sign_in_redirect_to_login(client: FlaskClient) -> None:
    for door in DOORS:
        for path in (f"/{door}/", f"/{door}/mfa"):
            response = client.get(path)
            assert response.status_code == 302 and _path(response) == f"/{door}/login", path
        page = client.get(f"/{door}/login")
        response = client.post(f"/{door}/mfa", data={"code": "123456",
                                                      "csrf_token": csrf_from(page.get_data(as_text=True))})
        assert response.status_code == 401 and error_code(response) == "unauthenticated"


# ---- first sign-in: enrolment ------------------------------------------------------------------------


@pytest.mark.parametrize(("door", "role"), [("console", Role.KYC_REVIEWER), ("agency", Role.AGENCY_STAFF)])
def test_first_sign_in_enrols_an_authenticator(app: Flask, client: FlaskClient, app_ctx: None, door: str,
                                               role: Role) -> None:
    # enforces P-04: no staff access without a second factor, set up on first sign-in
    agency = make_agency() if door == "agency" else None
    person = make_staff(role, agency=agency, mfa=False)
    assert password_step(client, person, door).status_code == 302

    page = client.get(f"/{door}/mfa")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Set up your authenticator" in html
    qr = re.search(r'<div class="qr">\s*(<svg\b.*?</svg>)\s*</div>', html, re.S)
    assert qr, "the QR code is an inline SVG"
    assert "<img" not in html and "http" not in qr.group(1).replace("http://www.w3.org/", "")
    secret_match = re.search(r'id="totp-secret">([A-Z2-7]+)<', html)
    assert secret_match
    secret = secret_match.group(1)
    assert len(secret) == 32
    # reloading shows the same pending secret (the authenticator already scanned stays valid)
    again = client.get(f"/{door}/mfa").get_data(as_text=True)
    assert f'id="totp-secret">{secret}<' in again

    user = _user(person)
    assert user.totp_enrolled_at is None
    assert user.totp_secret_enc is not None and secret.encode() not in bytes(user.totp_secret_enc)

    # a wrong code does not enrol, and the page keeps the same secret
    response = mfa_step(client, unused_code(secret), door)
    assert response.status_code == 401
    text = response.get_data(as_text=True)
    assert 'role="alert"' in text and f'id="totp-secret">{secret}<' in text
    assert _user(person).totp_enrolled_at is None

    person.totp_secret = secret
    response = mfa_step(client, next_totp(person), door)
    assert response.status_code == 302 and _path(response) == f"/{door}/"
    assert _user(person).totp_enrolled_at is not None
    assert client.get(f"/{door}/").status_code == 200

    # the next sign-in asks for a code and shows no secret
    second = app.test_client()
    assert password_step(second, person, door).status_code == 302
    html = second.get(f"/{door}/mfa").get_data(as_text=True)
    assert "Two-step verification" in html and "totp-secret" not in html and "<svg" not in html
    response = mfa_step(second, next_totp(person), door)
    assert response.status_code == 302 and _path(response) == f"/{door}/"


# ---- AN-03: one-time codes work once -------------------------------------------------------------------


def _reused_audit_rows(person: Person) -> int:
    db.session.expire_all()
    rows = db.session.execute(
        select(AuditEvent).where(AuditEvent.action == "auth:mfa", AuditEvent.outcome == "failed",
                                 AuditEvent.subject_id == person.public_id)
    ).scalars().all()
    return sum(1 for row in rows if json.loads(row.data or "{}").get("reused"))


def _assert_mfa_refused(client: FlaskClient, response: Any, door: str) -> None:
    assert response.status_code == 401
    html = response.get_data(as_text=True)
    assert 'role="alert"' in html and "Two-step verification" in html
    # still only half signed in
    home = client.get(f"/{door}/")
    assert home.status_code == 302 and _path(home) == f"/{door}/mfa"


@pytest.mark.parametrize("door", DOORS)
def test_used_code_is_refused_a_second_time(app: Flask, app_ctx: None, door: str) -> None:
    # AN-03
    person = _staff_for(door)
    first = app.test_client()
    assert password_step(first, person, door).status_code == 302
    code = next_totp(person)
    assert mfa_step(first, code, door).status_code == 302

    second = app.test_client()
    assert password_step(second, person, door).status_code == 302
    _assert_mfa_refused(second, mfa_step(second, code, door), door)
    _assert_mfa_refused(second, mfa_step(second, f"{code[:3]} {code[3:]}", door), door)
    _assert_mfa_refused(second, mfa_step(second, " ".join(code), door), door)
    assert _reused_audit_rows(person) == 3

    # a fresh code still works: the refusals were about reuse, not a lock-out
    response = mfa_step(second, next_totp(person), door)
    assert response.status_code == 302 and _path(response) == f"/{door}/"


def test_used_code_is_refused_after_failed_attempts(app: Flask, app_ctx: None) -> None:
    # AN-03: a failed login and a failed code in between do not make an old code valid again
    person = make_staff(Role.ADMIN)
    first = app.test_client()
    web_login(first, person)
    db.session.expire_all()
    code = pyotp_code_at(person, _user(person).totp_last_counter)

    second = app.test_client()
    response = password_step(second, person, password="Wrong-Password-123")
    assert response.status_code == 401
    assert staff_cookie(second) is None
    assert password_step(second, person).status_code == 302
    _assert_mfa_refused(second, mfa_step(second, unused_code(person.totp_secret or ""), "console"), "console")
    _assert_mfa_refused(second, mfa_step(second, code, "console"), "console")
    _assert_mfa_refused(second, mfa_step(second, f" {code[:2]} {code[2:4]} {code[4:]} ", "console"), "console")
    assert _reused_audit_rows(person) == 2


def pyotp_code_at(person: Person, step: int) -> str:
    """The code of one time step (here: the step the server last accepted)."""
    assert person.totp_secret
    return pyotp.TOTP(person.totp_secret).generate_otp(step)


def test_code_used_on_the_web_is_refused_on_the_api(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # AN-03: one counter per person, whatever the front door
    person = make_staff(Role.KYC_REVIEWER)
    web = app.test_client()
    web_login(web, person)
    db.session.expire_all()
    code = pyotp_code_at(person, _user(person).totp_last_counter)

    tokens = client.post("/api/v1/auth/login", json={"email": person.email, "password": person.password}).get_json()
    assert tokens["mfa_required"] is True
    for attempt in (code, f"{code[:3]} {code[3:]}"):
        response = client.post("/api/v1/auth/mfa", json={"code": attempt}, headers=bearer(tokens["access_token"]))
        assert response.status_code == 401, response.get_json()
        assert error_code(response) == "mfa_invalid"
    response = client.get("/api/v1/me", headers=bearer(tokens["access_token"]))
    assert response.status_code == 403 and error_code(response) == "mfa_required"


@pytest.mark.parametrize("door", DOORS)
def test_wrong_code_is_refused(app: Flask, client: FlaskClient, app_ctx: None, door: str) -> None:
    person = _staff_for(door)
    assert password_step(client, person, door).status_code == 302
    cookie = staff_cookie(client)
    _assert_mfa_refused(client, mfa_step(client, unused_code(person.totp_secret or ""), door), door)
    _assert_mfa_refused(client, mfa_step(client, "12345", door), door)
    _assert_mfa_refused(client, mfa_step(client, "abcdef", door), door)
    assert staff_cookie(client) == cookie  # no new session on failure
    db.session.expire_all()
    session = db.session.execute(select(AuthSession).where(AuthSession.user_id == person.user_id)).scalar_one()
    assert session.mfa_at is None


# ---- AZ-07: staff routes need completed MFA --------------------------------------------------------------


def _fill(rule: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        return values.get(match.group(1), "unknown-id")

    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", replace, rule)


def _gated_rules(app: Flask, prefix: str) -> list[tuple[str, str]]:
    """(rule, method) for every route under ``prefix`` that is neither public nor part of sign-in."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(prefix):
            continue
        view = app.view_functions[rule.endpoint]
        if getattr(view, "_gate_exempt", None) is not None:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.rule, method))
    return found


@pytest.mark.parametrize(("door", "role"), [("console", Role.ADMIN), ("console", Role.DPO),
                                            ("agency", Role.AGENCY_OWNER)])
def test_password_only_session_reaches_no_staff_page(app: Flask, client: FlaskClient, app_ctx: None,
                                                      door: str, role: Role) -> None:
    # AZ-07, enforces P-04
    agency = make_agency(name="Oasis Cars LLC") if role == Role.AGENCY_OWNER else None
    person = make_staff(role, agency=agency)
    target = make_staff(Role.KYC_REVIEWER)
    target_user = _user(target)
    message = notifications.send_email(to="someone@example.com", kind="password_changed",
                                       context={"user": target_user})
    db.session.commit()
    values = {"user_id": target.public_id, "message_id": message.public_id}
    secrets_on_pages = [target.email, "someone@example.com", target_user.full_name, "Oasis Cars LLC"]

    assert password_step(client, person, door).status_code == 302
    token = page_csrf(client, f"/{door}/mfa")
    rules = _gated_rules(app, f"/{door}/")
    assert len(rules) >= (7 if door == "console" else 1)
    before = db_snapshot(app)
    for rule, method in rules:
        path = _fill(rule, values)
        if method == "GET":
            response = client.get(path)
            assert response.status_code == 302, (path, response.status_code)
            assert _path(response) == f"/{door}/mfa", path
        else:
            response = client.open(path, method=method, data={
                "csrf_token": token, "role": "kyc_reviewer", "email": "new@staff.example", "full_name": "New One",
            })
            assert response.status_code == 403, (path, method, response.status_code)
            assert error_code(response) == "mfa_required", path
        body = response.get_data(as_text=True)
        assert not any(secret in body for secret in secrets_on_pages), path
    assert db_snapshot(app) == before


def _api_rules(app: Flask) -> list[tuple[str, str, str | None]]:
    gates = app.extensions["route_gates"]
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        blueprint = rule.endpoint.rpartition(".")[0]
        if gates.get(blueprint) == "public":
            continue
        exemption = getattr(app.view_functions[rule.endpoint], "_gate_exempt", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.rule, method, exemption))
    return found


def test_staff_api_token_needs_mfa(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # AZ-07, enforces P-04: a staff token reaches nothing but the MFA step until a code is given
    person = make_staff(Role.ADMIN)
    response = client.post("/api/v1/auth/login", json={"email": person.email, "password": person.password})
    assert response.status_code == 200
    tokens = response.get_json()
    assert tokens["mfa_required"] is True
    pre = bearer(tokens["access_token"])

    checked = 0
    for rule, method, exemption in _api_rules(app):
        if exemption is not None:
            continue
        path = _fill(rule, {"kind": "marketing", "notification_id": "unknown-id"})
        response = client.open(path, method=method, headers=pre)
        assert response.status_code == 403, (path, method, response.status_code)
        assert error_code(response) == "mfa_required", (path, method)
        checked += 1
    assert checked >= 10

    response = client.post("/api/v1/auth/mfa", json={"code": next_totp(person)}, headers=pre)
    assert response.status_code == 200, response.get_json()
    full = response.get_json()
    assert full["mfa_required"] is False
    assert full["access_token"] != tokens["access_token"] and full["refresh_token"] != tokens["refresh_token"]
    me = client.get("/api/v1/me", headers=bearer(full["access_token"]))
    assert me.status_code == 200 and me.get_json()["email"] == person.email
    # the pre-MFA token was rotated away (AN-05)
    response = client.get("/api/v1/me", headers=pre)
    assert response.status_code == 401 and error_code(response) == "unauthenticated"


def test_staff_without_authenticator_cannot_finish_api_sign_in(client: FlaskClient, app_ctx: None) -> None:
    # enforces P-04: enrolment happens on the web pages; the API does not let an unenrolled account through
    person = make_staff(Role.KYC_REVIEWER, mfa=False)
    tokens = client.post("/api/v1/auth/login", json={"email": person.email, "password": person.password}).get_json()
    assert tokens["mfa_required"] is True
    response = client.post("/api/v1/auth/mfa", json={"code": "123456"}, headers=bearer(tokens["access_token"]))
    assert response.status_code == 403 and error_code(response) == "mfa_enrolment_required"
    response = client.get("/api/v1/me", headers=bearer(tokens["access_token"]))
    assert response.status_code == 403 and error_code(response) == "mfa_required"


def test_customer_api_login_needs_no_mfa(client: FlaskClient, app_ctx: None) -> None:
    person = make_customer()
    tokens = client.post("/api/v1/auth/login", json={"email": person.email, "password": person.password}).get_json()
    assert tokens["mfa_required"] is False
    assert client.get("/api/v1/me", headers=bearer(tokens["access_token"])).status_code == 200


# ---- AN-07: forged form posts --------------------------------------------------------------------------

_INVITE = {"full_name": "Forged Invite", "email": "forged@staff.example", "role": "kyc_reviewer", "agency": ""}


def _invitations() -> int:
    db.session.expire_all()
    return int(db.session.execute(select(func.count()).select_from(StaffInvitation)).scalar_one())


def test_console_form_post_needs_csrf_token_and_same_origin(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # AN-07
    admin = make_staff(Role.ADMIN)
    web_login(client, admin)
    token = page_csrf(client, "/console/staff")
    other_admin = make_staff(Role.ADMIN)
    other = app.test_client()
    web_login(other, other_admin)
    foreign_token = page_csrf(other, "/console/staff")

    before = db_snapshot(app)
    attempts: list[tuple[dict[str, str], dict[str, str]]] = [
        (dict(_INVITE), {}),  # no token at all
        ({**_INVITE, "csrf_token": ""}, {}),
        ({**_INVITE, "csrf_token": "0" * 64}, {}),
        ({**_INVITE, "csrf_token": foreign_token}, {}),  # another session's token
        ({**_INVITE, "csrf_token": token}, {"Origin": "https://evil.example"}),
        ({**_INVITE, "csrf_token": token}, {"Origin": "http://localhost.evil.example"}),
        ({**_INVITE, "csrf_token": token}, {"Origin": "null"}),
    ]
    for data, headers in attempts:
        response = client.post("/console/staff/invite", data=data, headers=headers)
        assert response.status_code == 403, (data, headers, response.status_code)
        assert error_code(response) == "csrf_failed"
        assert "Traceback" not in response.get_data(as_text=True)
    assert db_snapshot(app) == before
    assert _invitations() == 0

    # control: the same form with its token from this site goes through
    response = client.post("/console/staff/invite", data={**_INVITE, "csrf_token": token},
                           headers={"Origin": "http://localhost"})
    assert response.status_code == 302
    assert _invitations() == 1


@pytest.mark.parametrize("door", DOORS)
def test_login_and_logout_forms_need_csrf(app: Flask, client: FlaskClient, app_ctx: None, door: str) -> None:
    # AN-07: login CSRF (signing a victim in to an attacker's account) and forced logout
    person = _staff_for(door)
    client.get(f"/{door}/login")
    before = db_snapshot(app)
    response = client.post(f"/{door}/login", data={"email": person.email, "password": person.password})
    assert response.status_code == 403 and error_code(response) == "csrf_failed"
    token = page_csrf(client, f"/{door}/login")
    response = client.post(f"/{door}/login", data={"email": person.email, "password": person.password,
                                                    "csrf_token": token},
                           headers={"Origin": "https://evil.example"})
    assert response.status_code == 403 and error_code(response) == "csrf_failed"
    assert staff_cookie(client) is None
    assert db_snapshot(app) == before

    web_login(client, person, door)
    before = db_snapshot(app)
    response = client.post(f"/{door}/logout", data={})
    assert response.status_code == 403 and error_code(response) == "csrf_failed"
    assert db_snapshot(app) == before
    assert client.get(f"/{door}/").status_code == 200  # still signed in


# ---- who may use which front door ----------------------------------------------------------------------


@pytest.mark.parametrize("door", DOORS)
def test_customer_cannot_sign_in_to_staff_pages(app: Flask, client: FlaskClient, app_ctx: None, door: str) -> None:
    # enforces P-04: staff pages are for staff accounts only
    person = make_customer()
    response = password_step(client, person, door)
    assert response.status_code == 403
    assert 'role="alert"' in response.get_data(as_text=True)
    assert set_cookie_header(response) is None and staff_cookie(client) is None
    assert _session_count() == 0
    assert client.get(f"/{door}/").status_code == 302


@pytest.mark.parametrize(("door", "role"), [("agency", Role.KYC_REVIEWER), ("agency", Role.ADMIN),
                                            ("console", Role.AGENCY_STAFF), ("console", Role.AGENCY_OWNER)])
def test_staff_cannot_use_the_other_front_door(app: Flask, client: FlaskClient, app_ctx: None, door: str,
                                               role: Role) -> None:
    # enforces P-04 (least privilege): platform staff stay out of the agency app and vice versa
    agency = make_agency() if role in (Role.AGENCY_STAFF, Role.AGENCY_OWNER) else None
    person = make_staff(role, agency=agency)
    response = password_step(client, person, door)
    assert response.status_code == 403
    html = response.get_data(as_text=True)
    assert 'role="alert"' in html and "has no access" in html
    assert set_cookie_header(response) is None and staff_cookie(client) is None
    assert _session_count() == 0
    db.session.expire_all()
    denied = db.session.execute(
        select(AuditEvent).where(AuditEvent.action == "auth:login", AuditEvent.outcome == "denied",
                                 AuditEvent.subject_id == person.public_id)
    ).scalars().all()
    assert len(denied) == 1
    # the right door still works for them
    web_login(app.test_client(), person, "console" if door == "agency" else "agency")


# ---- sessions end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("door", DOORS)
def test_logout_kills_the_cookie_session_at_once(app: Flask, client: FlaskClient, app_ctx: None, door: str) -> None:
    # AN-05, enforces P-04
    person = _staff_for(door)
    web_login(client, person, door)
    old_cookie = staff_cookie(client)
    assert old_cookie
    token = page_csrf(client, f"/{door}/")

    response = client.post(f"/{door}/logout", data={"csrf_token": token})
    assert response.status_code == 302 and _path(response) == f"/{door}/login"
    cleared = set_cookie_header(response)
    assert cleared is not None and ("Max-Age=0" in cleared or "Expires=Thu, 01 Jan 1970" in cleared)
    assert staff_cookie(client) is None

    replay = app.test_client()
    set_staff_cookie(replay, old_cookie)
    response = replay.get(f"/{door}/")
    assert response.status_code == 302 and _path(response) == f"/{door}/login"
    response = replay.post(f"/{door}/logout", data={"csrf_token": token})
    assert response.status_code == 401 and error_code(response) == "unauthenticated"
    db.session.expire_all()
    session = db.session.execute(select(AuthSession).where(AuthSession.user_id == person.user_id)).scalar_one()
    assert session.revoked_at is not None and session.revoke_reason == "logout"


@pytest.mark.parametrize("door", DOORS)
def test_idle_session_expires(app: Flask, client: FlaskClient, app_ctx: None, door: str) -> None:
    # enforces P-04: 30 minutes without a request ends a staff session
    person = _staff_for(door)
    web_login(client, person, door)
    assert client.get(f"/{door}/").status_code == 200
    with time_machine.travel(utcnow() + timedelta(minutes=31), tick=False):
        response = client.get(f"/{door}/")
        assert response.status_code == 302 and _path(response) == f"/{door}/login"
        token = csrf_from(client.get(f"/{door}/login").get_data(as_text=True))
        response = client.post(f"/{door}/logout", data={"csrf_token": token})
        assert response.status_code == 401 and error_code(response) == "unauthenticated"


@pytest.mark.parametrize("door", DOORS)
def test_activity_keeps_the_session_alive(app: Flask, client: FlaskClient, app_ctx: None, door: str) -> None:
    # the idle timeout counts from the last request, not from sign-in (reading pages is activity)
    person = _staff_for(door)
    web_login(client, person, door)
    start = utcnow()
    for minutes in (20, 40, 60):
        with time_machine.travel(start + timedelta(minutes=minutes), tick=False):
            response = client.get(f"/{door}/")
            assert response.status_code == 200, (minutes, location(response))
    with time_machine.travel(start + timedelta(minutes=91), tick=False):
        response = client.get(f"/{door}/")
        assert response.status_code == 302 and _path(response) == f"/{door}/login"



# ---- where the MFA step sends you --------------------------------------------------------------------


@pytest.mark.parametrize("target", ["//evil.example", "/\t/evil.example", "/\n/evil.example", "/\\evil.example",
                                    "https://evil.example/", "evil.example", "/\x00/evil.example"])
def test_next_after_mfa_never_leaves_the_site(app: Flask, target: str) -> None:
    from marketplace.webauth import _safe_next

    with app.test_request_context("/console/mfa", query_string={"next": target}):
        assert _safe_next() is False
    with app.test_request_context("/console/mfa", query_string={"next": "/console/staff"}):
        assert _safe_next() is True


def test_mfa_step_refuses_an_off_site_next(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # the redirect after MFA stays on this site even when "next" hides "//host" behind a tab
    person = make_staff(Role.ADMIN)
    assert password_step(client, person).status_code == 302
    token = page_csrf(client, "/console/mfa")
    response = client.post("/console/mfa", query_string={"next": "/\t/evil.example"},
                           data={"code": next_totp(person), "csrf_token": token})
    assert response.status_code == 302
    assert location(response) == "/console/"
    assert "evil" not in location(response)
