"""Agency staff over the API (P-12: staff are invited with roles; P-04: removal ends sessions at once)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from marketplace.audit import AuditEvent
from marketplace.extensions import db
from marketplace.permissions import Role
from marketplace.users.models import AccountStatus, StaffInvitation, User
from tests.agencies.helpers import AGENCY, STAFF, agency_with_people, code, count
from tests.factories import api_login, auth_headers, bearer, make_agency, make_staff, outbox_token, web_login
from tests.staff_web import db_snapshot, page_csrf

NEW_PASSWORD = "Saffron-Dune-Falcon-42"


def _invite(client, headers, *, email: str, role: str = "agency_staff", full_name: str = "Noura Haddad"):
    return client.post(STAFF, headers=headers, json={"email": email, "full_name": full_name, "role": role})


def test_owner_lists_the_agency_staff_with_their_roles_here(app, client, app_ctx):  # enforces P-12
    world = agency_with_people()
    elsewhere = make_staff(Role.AGENCY_OWNER, agency=make_agency())
    body = client.get(STAFF, headers=auth_headers(client, world.owner)).get_json()
    rows = {item["id"]: item for item in body["items"]}
    assert set(rows) == {world.owner.public_id, world.manager.public_id, world.staff.public_id}
    assert elsewhere.public_id not in rows
    assert rows[world.manager.public_id]["roles"] == ["agency_manager"]
    assert set(rows[world.owner.public_id]) == {"id", "full_name", "email", "status", "roles", "mfa_enrolled"}
    assert body["page"] == {"next_cursor": None}


def test_staff_list_pages_with_a_cursor(app, client, app_ctx):
    world = agency_with_people()
    headers = auth_headers(client, world.owner)
    first = client.get(STAFF, headers=headers, query_string={"limit": 2}).get_json()
    assert len(first["items"]) == 2 and first["page"]["next_cursor"]
    second = client.get(STAFF, headers=headers, query_string={"limit": 2, "cursor": first["page"]["next_cursor"]})
    assert [i["id"] for i in second.get_json()["items"]] == [world.staff.public_id]
    assert second.get_json()["page"]["next_cursor"] is None
    forged = client.get(STAFF, headers=headers, query_string={"cursor": "eyJ4Ijo.1"})
    assert forged.status_code == 422


def test_invitation_then_acceptance_gives_the_role_in_this_agency(app, client, app_ctx):  # enforces P-12, P-04
    world = agency_with_people()
    response = _invite(client, auth_headers(client, world.owner), email="Noura@Example.com", role="agency_manager")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["email"], body["role"], body["full_name"]) == ("noura@example.com", "agency_manager", "Noura Haddad")
    invitation = db.session.execute(select(StaffInvitation)).scalar_one()
    assert invitation.agency_id == world.agency.id
    token = outbox_token(app, to="noura@example.com", kind="staff_invitation")
    accept = app.test_client()
    csrf = page_csrf(accept, "/agency/invitations/accept")
    response = accept.post("/agency/invitations/accept", data={
        "code": token, "password": NEW_PASSWORD, "password_again": NEW_PASSWORD, "csrf_token": csrf})
    assert response.status_code == 302
    user = db.session.execute(select(User).where(User.email == "noura@example.com")).scalar_one()
    assert [(a.role, a.agency_id) for a in user.roles] == [(Role.AGENCY_MANAGER, world.agency.id)]
    assert db.session.execute(select(AuditEvent).where(AuditEvent.action == "staff:invite")).scalar_one()


def test_manager_invites_staff_but_not_owners(app, client, app_ctx):  # AZ-04 (function level)
    world = agency_with_people()
    headers = auth_headers(client, world.manager)
    assert _invite(client, headers, email="staff1@example.com").status_code == 201
    response = _invite(client, headers, email="owner2@example.com", role="agency_owner")
    assert response.status_code == 403
    assert count(StaffInvitation) == 1


def test_owner_may_invite_another_owner(app, client, app_ctx):
    world = agency_with_people()
    assert _invite(client, auth_headers(client, world.owner), email="co-owner@example.com",
                   role="agency_owner").status_code == 201


@pytest.mark.parametrize("role", ["admin", "kyc_reviewer", "customer", "owner", ""])
def test_only_agency_roles_can_be_given(app, client, app_ctx, role):
    world = agency_with_people()
    response = _invite(client, auth_headers(client, world.owner), email="x@example.com", role=role)
    assert response.status_code == 422
    assert count(StaffInvitation) == 0


@pytest.mark.parametrize("body", [{"email": "x@example.com", "full_name": "X Y", "role": "agency_staff",
                                   "agency_id": 1},
                                  {"email": "x@example.com", "full_name": "X Y", "role": "agency_staff",
                                   "granted_by": "me"}])
def test_invitation_mass_assignment_is_refused(app, client, app_ctx, body):  # AZ-08
    world = agency_with_people()
    response = client.post(STAFF, headers=auth_headers(client, world.owner), json=body)
    assert response.status_code == 422
    assert code(response) == "unknown_field"


def test_plain_staff_cannot_see_or_manage_staff(app, client, app_ctx):  # AZ-04 (function level)
    world = agency_with_people()
    headers = auth_headers(client, world.staff)
    before = db_snapshot(app)
    assert client.get(STAFF, headers=headers).status_code == 403
    assert _invite(client, headers, email="x@example.com").status_code == 403
    response = client.delete(f"{STAFF}/{world.manager.public_id}", headers=headers)
    assert response.status_code == 403
    after = db_snapshot(app)
    assert {t: rows for t, rows in after.items() if t not in ("auth_sessions", "audit_events")} == \
        {t: rows for t, rows in before.items() if t not in ("auth_sessions", "audit_events")}


def test_removal_ends_every_session_of_that_person_at_once(app, client, app_ctx):  # enforces P-04 (AZ-10)
    world = agency_with_people()
    victim_tokens = api_login(client, world.staff)
    victim_web = app.test_client()
    web_login(victim_web, world.staff, door="agency")
    assert victim_web.get("/agency/").status_code == 200
    assert client.get(AGENCY, headers=bearer(victim_tokens["access_token"])).status_code == 200

    response = client.delete(f"{STAFF}/{world.staff.public_id}", headers=auth_headers(client, world.owner))
    assert response.status_code == 204
    response = client.get(AGENCY, headers=bearer(victim_tokens["access_token"]))
    assert response.status_code == 401
    assert code(response) == "unauthenticated"
    refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": victim_tokens["refresh_token"]})
    assert refreshed.status_code == 401
    assert victim_web.get("/agency/").status_code == 302  # back to the sign-in page
    db.session.expire_all()
    user = world.staff.user()
    assert user.roles == [] and user.status == AccountStatus.DISABLED
    removed = db.session.execute(select(AuditEvent).where(AuditEvent.action == "staff:role_remove")).scalar_one()
    assert removed.subject_id == world.staff.public_id


def test_removal_keeps_roles_in_other_agencies(app, client, app_ctx):
    world = agency_with_people()
    other = make_agency()
    from tests.agencies.helpers import grant_role

    grant_role(world.manager, Role.AGENCY_OWNER, other)
    response = client.delete(f"{STAFF}/{world.manager.public_id}", headers=auth_headers(client, world.owner))
    assert response.status_code == 204
    db.session.expire_all()
    assert [(a.role, a.agency_id) for a in world.manager.user().roles] == [(Role.AGENCY_OWNER, other.id)]
    assert world.manager.user().status == AccountStatus.ACTIVE


def test_an_owner_cannot_remove_themselves(app, client, app_ctx):
    world = agency_with_people()
    response = client.delete(f"{STAFF}/{world.owner.public_id}", headers=auth_headers(client, world.owner))
    assert response.status_code == 409
    assert code(response) == "cannot_remove_self"
    assert world.owner.user().roles


def test_a_manager_cannot_remove_an_owner(app, client, app_ctx):
    world = agency_with_people()
    response = client.delete(f"{STAFF}/{world.owner.public_id}", headers=auth_headers(client, world.manager))
    assert response.status_code == 403
    db.session.expire_all()
    assert [a.role for a in world.owner.user().roles] == [Role.AGENCY_OWNER]


def test_unknown_people_and_other_agencies_staff_are_not_found(app, client, app_ctx):  # AZ-03
    world = agency_with_people()
    stranger = make_staff(Role.AGENCY_STAFF, agency=make_agency())
    customer_like = make_staff(Role.KYC_REVIEWER)
    headers = auth_headers(client, world.owner)
    bodies = []
    for target in (stranger.public_id, customer_like.public_id, "00000000-0000-4000-8000-000000000000", "x"):
        response = client.delete(f"{STAFF}/{target}", headers=headers)
        assert response.status_code == 404
        bodies.append({k: v for k, v in response.get_json()["error"].items() if k != "request_id"})
    assert all(b == bodies[0] for b in bodies)  # the same answer as for an id that never existed
    db.session.expire_all()
    assert stranger.user().roles and customer_like.user().roles
