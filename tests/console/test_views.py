"""The internal console: staff invitations, role removal, outbox, audit trail and role lanes.

Covers the staff side of P-04 and P-12 (invited with roles), AZ-06 at today's scope and AZ-10.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text

from marketplace.audit import AuditEvent
from marketplace.extensions import db, utcnow
from marketplace.notifications.models import OutboxMessage
from marketplace.permissions import Role
from marketplace.users.models import AccountStatus, AuthSession, RoleAssignment, StaffInvitation, User
from tests.conftest import drain_jobs, is_postgres
from tests.factories import (
    Person,
    api_login,
    bearer,
    make_agency,
    make_staff,
    next_totp,
    outbox_token,
    web_login,
)
from tests.staff_web import (
    db_snapshot,
    error_code,
    location,
    mfa_step,
    page_csrf,
    password_step,
    staff_cookie,
)

NEW_PASSWORD = "Saffron-Dune-Falcon-42"


def _path(response: Any) -> str:
    return urlsplit(location(response)).path


def _outbox(to: str, kind: str) -> OutboxMessage:
    db.session.expire_all()
    return db.session.execute(
        select(OutboxMessage).where(OutboxMessage.to_address == to, OutboxMessage.kind == kind)
    ).scalar_one()


def _invite(client: FlaskClient, *, email: str, role: Role, agency: str = "", full_name: str = "Noura Haddad",
            token: str | None = None) -> Any:
    return client.post("/console/staff/invite", data={
        "full_name": full_name, "email": email, "role": role.value, "agency": agency,
        "csrf_token": token or page_csrf(client, "/console/staff"),
    })


def _accept(client: FlaskClient, door: str, code: str, password: str = NEW_PASSWORD) -> Any:
    token = page_csrf(client, f"/{door}/invitations/accept")
    return client.post(f"/{door}/invitations/accept", data={
        "code": code, "password": password, "password_again": password, "csrf_token": token,
    })


def _users_with(email: str) -> int:
    db.session.expire_all()
    return int(db.session.execute(select(func.count()).select_from(User).where(User.email == email)).scalar_one())


def _enrol(client: FlaskClient, person: Person, door: str) -> None:
    """First sign-in of an invited person: password, then set up the authenticator from the page."""
    response = password_step(client, person, door)
    assert response.status_code == 302 and _path(response) == f"/{door}/mfa"
    html = client.get(f"/{door}/mfa").get_data(as_text=True)
    assert re.search(r'<div class="qr">\s*<svg\b', html)
    match = re.search(r'id="totp-secret">([A-Z2-7]+)<', html)
    assert match
    person.totp_secret = match.group(1)
    response = mfa_step(client, next_totp(person), door)
    assert response.status_code == 302 and _path(response) == f"/{door}/"


# ---- invitations -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "door"), [(Role.AGENCY_STAFF, "agency"), (Role.KYC_REVIEWER, "console")])
def test_invite_accept_sign_in_and_enrol(app: Flask, client: FlaskClient, app_ctx: None, role: Role,
                                         door: str) -> None:
    # enforces P-04, P-12: staff join by invitation with one role, and set up MFA on first sign-in
    agency = make_agency(name="Falcon Rentals LLC")
    admin = make_staff(Role.ADMIN)
    web_login(client, admin)
    email = f"new-{role.value.replace('_', '-')}@staff.example"

    response = _invite(client, email=email, role=role, agency=agency.public_id if door == "agency" else "")
    assert response.status_code == 302
    assert urlsplit(location(response)).query == "invited=1"
    page = client.get("/console/staff?invited=1").get_data(as_text=True)
    assert "Invitation sent." in page

    message = _outbox(email, "staff_invitation")  # written with the request, in both job modes
    code = outbox_token(app, to=email, kind="staff_invitation")
    assert f"/{door}/invitations/accept#code={code}" in message.body_text
    assert code not in message.subject
    drain_jobs(app)
    assert _outbox(email, "staff_invitation").status == "kept"  # no SMTP server configured: kept, shown
    assert _users_with(email) == 0  # nothing exists until the invitation is accepted

    newcomer = app.test_client()
    response = _accept(newcomer, door, code)
    assert response.status_code == 302
    assert _path(response) == f"/{door}/login" and "ready=1" in location(response)
    db.session.expire_all()
    user = db.session.execute(select(User).where(User.email == email)).scalar_one()
    assert user.full_name == "Noura Haddad" and user.is_staff and user.status == AccountStatus.ACTIVE
    assert [(a.role, a.agency_id) for a in user.roles] == [(role.value, agency.id if door == "agency" else None)]
    assert user.totp_enrolled_at is None
    invitation = db.session.execute(select(StaffInvitation).where(StaffInvitation.email == email)).scalar_one()
    assert invitation.accepted_at is not None

    person = Person(user.id, user.public_id, email, NEW_PASSWORD)
    _enrol(newcomer, person, door)
    home = newcomer.get(f"/{door}/").get_data(as_text=True)
    assert "Noura Haddad" in home
    if door == "agency":
        assert "Falcon Rentals LLC" in home
    assert _user(person).totp_enrolled_at is not None


def _user(person: Person) -> User:
    db.session.expire_all()
    return person.user()


def test_invitation_code_works_once(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    admin = make_staff(Role.ADMIN)
    web_login(client, admin)
    email = "once@staff.example"
    assert _invite(client, email=email, role=Role.DPO).status_code == 302
    code = outbox_token(app, to=email, kind="staff_invitation")

    assert _accept(app.test_client(), "console", code).status_code == 302
    user_before = _user_row(email)

    intruder = app.test_client()
    before = db_snapshot(app)
    response = _accept(intruder, "console", code, password="Another-Strong-Pass-77")
    assert response.status_code == 400
    assert 'role="alert"' in response.get_data(as_text=True)
    assert _without_audit(db_snapshot(app)) == _without_audit(before)
    assert _user_row(email) == user_before  # password not replaced
    # the first password still signs in; the second does not
    assert password_step(app.test_client(), Person(0, "", email, NEW_PASSWORD)).status_code == 302
    assert password_step(app.test_client(), Person(0, "", email, "Another-Strong-Pass-77")).status_code == 401


def _user_row(email: str) -> tuple[Any, ...]:
    db.session.expire_all()
    user = db.session.execute(select(User).where(User.email == email)).scalar_one()
    return user.id, user.password_hash, user.status, sorted(a.role for a in user.roles)


def _without_audit(snapshot: dict[str, list[str]]) -> dict[str, list[str]]:
    return {table: rows for table, rows in snapshot.items() if table != "audit_events"}


@pytest.mark.parametrize("door", ["agency", "console"])
def test_expired_invitation_is_refused(app: Flask, client: FlaskClient, app_ctx: None, door: str) -> None:
    agency = make_agency()
    admin = make_staff(Role.ADMIN)
    web_login(client, admin)
    email = f"late-{door}@staff.example"
    role = Role.AGENCY_STAFF if door == "agency" else Role.DISPUTES_AGENT
    response = _invite(client, email=email, role=role, agency=agency.public_id if door == "agency" else "")
    assert response.status_code == 302
    code = outbox_token(app, to=email, kind="staff_invitation")

    with time_machine.travel(utcnow() + timedelta(days=7, minutes=1), tick=False):
        before = db_snapshot(app)
        response = _accept(app.test_client(), door, code)
        assert response.status_code == 400
        assert 'role="alert"' in response.get_data(as_text=True)
        assert db_snapshot(app) == before
    assert _users_with(email) == 0

    # a made-up code is refused the same way
    response = _accept(app.test_client(), door, "not-a-real-invitation-code")
    assert response.status_code == 400
    assert _users_with(email) == 0


# ---- AZ-10 / P-04: role removal ends every session at once --------------------------------------------------


def _grant(person: Person, role: Role) -> None:
    db.session.add(RoleAssignment(user_id=person.user_id, role=role.value, agency_id=None, granted_at=utcnow()))
    db.session.commit()


def _remove_role(client: FlaskClient, member: Person, role: Role, agency: str = "") -> Any:
    token = page_csrf(client, "/console/staff")
    return client.post(f"/console/staff/{member.public_id}/roles/remove",
                       data={"role": role.value, "agency": agency, "csrf_token": token})


@pytest.mark.parametrize("scenario", ["other_roles_kept", "last_role"])
def test_role_removal_kills_cookie_and_tokens_at_once(app: Flask, client: FlaskClient, app_ctx: None,
                                                      scenario: str) -> None:
    # AZ-10, enforces P-04: sessions and tokens die on role removal, on the very next request
    agency = make_agency(name="Palm Drive LLC")
    admin = make_staff(Role.ADMIN)
    if scenario == "other_roles_kept":
        member = make_staff(Role.KYC_REVIEWER)
        _grant(member, Role.DISPUTES_AGENT)
        door, removed, agency_field = "console", Role.KYC_REVIEWER, ""
    else:
        member = make_staff(Role.AGENCY_STAFF, agency=agency)
        door, removed, agency_field = "agency", Role.AGENCY_STAFF, agency.public_id

    web = app.test_client()
    web_login(web, member, door)
    assert web.get(f"/{door}/").status_code == 200
    logout_token = page_csrf(web, f"/{door}/")
    api = app.test_client()
    tokens = api_login(api, member)
    assert api.get("/api/v1/me", headers=bearer(tokens["access_token"])).status_code == 200

    web_login(client, admin)
    response = _remove_role(client, member, removed, agency_field)
    assert response.status_code == 302 and _path(response) == "/console/staff"

    # the very next request with each credential
    response = web.post(f"/{door}/logout", data={"csrf_token": logout_token})
    assert response.status_code == 401 and error_code(response) == "unauthenticated"
    response = web.get(f"/{door}/")
    assert response.status_code == 302 and _path(response) == f"/{door}/login"
    response = api.get("/api/v1/me", headers=bearer(tokens["access_token"]))
    assert response.status_code == 401 and error_code(response) == "unauthenticated"
    response = api.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 401 and error_code(response) == "unauthenticated"

    db.session.expire_all()
    sessions = db.session.execute(select(AuthSession).where(AuthSession.user_id == member.user_id)).scalars().all()
    assert len(sessions) == 2 and all(s.revoked_at is not None for s in sessions)
    assert {s.revoke_reason for s in sessions} == {"role_removed"}
    admin_sessions = db.session.execute(
        select(AuthSession).where(AuthSession.user_id == admin.user_id, AuthSession.revoked_at.is_(None))
    ).scalars().all()
    assert len(admin_sessions) == 1  # only the member's sessions died
    removal = db.session.execute(
        select(AuditEvent).where(AuditEvent.action == "staff:role_remove", AuditEvent.subject_id == member.public_id)
    ).scalar_one()
    assert removal.actor_id == admin.public_id

    if scenario == "other_roles_kept":
        # signing in again works, with only the remaining role
        again = app.test_client()
        web_login(again, member, "console")
        home = again.get("/console/").get_data(as_text=True)
        assert "disputes_agent" in home and "kyc_reviewer" not in home
    else:
        # no role left: the account is disabled and cannot sign in
        assert _user(member).status == AccountStatus.DISABLED
        fresh = app.test_client()
        response = password_step(fresh, member, "agency")
        assert response.status_code == 401 and staff_cookie(fresh) is None


def test_admin_cannot_remove_own_admin_role(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    admin = make_staff(Role.ADMIN)
    web_login(client, admin)
    before = db_snapshot(app)
    response = _remove_role(client, admin, Role.ADMIN)
    assert response.status_code == 409 and error_code(response) == "conflict"
    assert db_snapshot(app) == before
    assert client.get("/console/").status_code == 200


# ---- outbox and audit pages --------------------------------------------------------------------------------


def test_outbox_pages_need_outbox_permission(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    admin = make_staff(Role.ADMIN)
    web_login(client, admin)
    email = "outbox-check@staff.example"
    assert _invite(client, email=email, role=Role.KYC_REVIEWER, full_name="Omar Outbox").status_code == 302
    message = _outbox(email, "staff_invitation")

    listing = client.get("/console/outbox")
    assert listing.status_code == 200
    html = listing.get_data(as_text=True)
    assert email in html and f"/console/outbox/{message.public_id}" in html
    detail = client.get(f"/console/outbox/{message.public_id}")
    assert detail.status_code == 200
    assert "Omar Outbox" in detail.get_data(as_text=True)
    assert client.get("/console/outbox/no-such-message").status_code == 404

    reviewer = make_staff(Role.KYC_REVIEWER)
    other = app.test_client()
    web_login(other, reviewer)
    before = db_snapshot(app)
    for path in ("/console/outbox", f"/console/outbox/{message.public_id}"):
        response = other.get(path)
        assert response.status_code == 403, path
        assert error_code(response) == "forbidden"
        body = response.get_data(as_text=True)
        assert email not in body and "Omar Outbox" not in body
    assert db_snapshot(app) == before  # not even an outbox-view audit row

    db.session.expire_all()
    views = db.session.execute(
        select(AuditEvent).where(AuditEvent.action == "console:outbox_view")
    ).scalars().all()
    assert [v.actor_id for v in views] == [admin.public_id]


def _tamper_audit_row(app: Flask, event_id: int) -> None:
    """Edit one audit row behind the app's back (the append-only triggers are bypassed for the test)."""
    with app.app_context(), db.engine.begin() as conn:
        if is_postgres(app):
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text("UPDATE audit_events SET data = '{\"tampered\": true}' WHERE id = :i"), {"i": event_id})
            return
        triggers = conn.execute(text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'"
        )).all()
        for name, _ in triggers:
            conn.execute(text(f'DROP TRIGGER "{name}"'))
        conn.execute(text("UPDATE audit_events SET data = '{\"tampered\": true}' WHERE id = :i"), {"i": event_id})
        for _, sql in triggers:
            conn.execute(text(sql))


@pytest.mark.parametrize("role", [Role.ADMIN, Role.DPO])
def test_audit_page_lists_events_and_verifies_the_chain(app: Flask, client: FlaskClient, app_ctx: None,
                                                        role: Role) -> None:
    reader = make_staff(role)
    web_login(client, reader)
    page = client.get("/console/audit")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for action in ("staff:create", "auth:login", "auth:mfa"):
        assert f"<td>{action}</td>" in html, action
    assert reader.public_id in html

    filtered = client.get("/console/audit?action=auth:mfa").get_data(as_text=True)
    assert "<td>auth:mfa</td>" in filtered and "<td>staff:create</td>" not in filtered

    verified = client.get("/console/audit?verify=1").get_data(as_text=True)
    match = re.search(r"Chain intact: (\d+) rows checked\.", verified)
    assert match and int(match.group(1)) >= 3
    db.session.expire_all()
    assert db.session.execute(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "audit:verify")
    ).scalar_one() == 1

    # control: the same button reports an edited row
    first = db.session.execute(select(func.min(AuditEvent.id))).scalar_one()
    db.session.rollback()  # end this read transaction before another connection writes (SQLite snapshots)
    _tamper_audit_row(app, first)
    broken = client.get("/console/audit?verify=1").get_data(as_text=True)
    assert f"Chain broken at row {first}" in broken and "Chain intact" not in broken


# ---- AZ-06: console roles stay in their lanes ---------------------------------------------------------------


_LANES: dict[Role, dict[str, int]] = {
    # path -> expected status for GET; staff management and outbox are admin-only today
    Role.KYC_REVIEWER: {"staff": 403, "outbox": 403, "audit": 403},
    Role.DISPUTES_AGENT: {"staff": 403, "outbox": 403, "audit": 403},
    Role.DPO: {"staff": 403, "outbox": 403, "audit": 200},
    Role.ADMIN: {"staff": 200, "outbox": 200, "audit": 200},
}


@pytest.mark.parametrize("role", list(_LANES))
def test_console_roles_stay_in_their_lanes(app: Flask, client: FlaskClient, app_ctx: None, role: Role) -> None:
    # AZ-06 (today's scope), enforces P-04 least privilege
    victim = make_staff(Role.KYC_REVIEWER)
    person = make_staff(role)
    web_login(client, person)
    email = "lane-check@staff.example"
    admin = make_staff(Role.ADMIN)
    admin_client = app.test_client()
    web_login(admin_client, admin)
    assert _invite(admin_client, email=email, role=Role.DPO).status_code == 302
    message = _outbox(email, "staff_invitation")
    expected = _LANES[role]

    home = client.get("/console/").get_data(as_text=True)
    for name in ("staff", "outbox", "audit"):
        linked = f'href="/console/{name}"' in home
        assert linked == (expected[name] == 200), name

    token = page_csrf(client, "/console/")
    checks = [
        ("GET", "/console/staff", expected["staff"]),
        ("GET", "/console/outbox", expected["outbox"]),
        ("GET", f"/console/outbox/{message.public_id}", expected["outbox"]),
        ("GET", "/console/audit", expected["audit"]),
    ]
    before = db_snapshot(app)
    for method, path, status in checks:
        response = client.open(path, method=method)
        assert response.status_code == status, (path, response.status_code)
        if status == 403:
            assert error_code(response) == "forbidden", path
    if role != Role.ADMIN:
        assert _without_audit(db_snapshot(app)) == _without_audit(before)
        before = db_snapshot(app)
        writes = [
            ("/console/staff/invite", {"full_name": "Lane Crosser", "email": "crosser@staff.example",
                                       "role": "admin", "agency": ""}),
            (f"/console/staff/{victim.public_id}/roles/remove", {"role": "kyc_reviewer", "agency": ""}),
            (f"/console/staff/{person.public_id}/roles/remove", {"role": role.value, "agency": ""}),
        ]
        for path, data in writes:
            response = client.post(path, data={**data, "csrf_token": token})
            assert response.status_code == 403, (path, response.status_code)
            assert error_code(response) == "forbidden", path
        assert db_snapshot(app) == before  # no invitation, no role change, no e-mail
        assert client.get("/console/").status_code == 200  # refusals do not end the session
