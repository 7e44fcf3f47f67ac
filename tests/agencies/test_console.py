"""Agency verification in the console (P-12): who may reach it, approve only with the four documents,
reject, suspend (cars gone, no bookings, live bookings flagged), reinstate, and audited document views."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from marketplace.agencies import service as agencies
from marketplace.agencies.models import Agency, AgencyStatus
from marketplace.audit import AuditEvent
from marketplace.bookings import service as bookings
from marketplace.bookings.models import Booking
from marketplace.errors import NotFound
from marketplace.extensions import db
from marketplace.kyc import service as kyc
from marketplace.notifications.models import OutboxMessage
from marketplace.permissions import Role
from marketplace.vault.models import Blob
from tests.agencies.helpers import KINDS, agency_with_people, attach_all_documents
from tests.factories import (
    actor_for,
    auth_headers,
    booking_body,
    make_agency,
    make_staff,
    make_vehicle,
    make_verified_customer,
    web_login,
)
from tests.kyc.helpers import photo
from tests.staff_web import db_snapshot, error_code, page_csrf


def _fresh(agency: Agency) -> Agency:
    db.session.expire_all()
    row = db.session.get(Agency, agency.id)
    assert row is not None
    return row


def _admin_client(app: Any) -> tuple[FlaskClient, Any]:
    admin = make_staff(Role.ADMIN)
    client = app.test_client()
    web_login(client, admin, door="console")
    return client, admin


def _post(client: FlaskClient, agency: Agency, action: str, **form: str) -> Any:
    token = page_csrf(client, f"/console/agencies/{agency.public_id}")
    return client.post(f"/console/agencies/{agency.public_id}/{action}", data={"csrf_token": token, **form})


def _emails(to: str, kind: str) -> list[OutboxMessage]:
    db.session.expire_all()
    return list(db.session.execute(
        select(OutboxMessage).where(OutboxMessage.to_address == to, OutboxMessage.kind == kind)).scalars())


def _actions() -> list[str]:
    db.session.expire_all()
    return list(db.session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars())


# ---- who reaches the agency pages ----------------------------------------------------------------


def test_admin_sees_agencies_pending_first(app, app_ctx):  # enforces P-12
    active = make_agency(name="Zeta Active Rentals")
    pending = agency_with_people(AgencyStatus.PENDING).agency
    suspended = make_agency(status=AgencyStatus.SUSPENDED, name="Suspended Cars")
    client, _ = _admin_client(app)
    page = client.get("/console/agencies")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    positions = [html.index(a.business_name) for a in (pending, suspended, active)]
    assert positions == sorted(positions)
    assert 'href="/console/agencies"' in html  # the nav link
    filtered = client.get("/console/agencies", query_string={"status": "suspended"}).get_data(as_text=True)
    assert suspended.business_name in filtered and active.business_name not in filtered


@pytest.mark.parametrize("role", [Role.KYC_REVIEWER, Role.DISPUTES_AGENT, Role.DPO])
def test_other_platform_roles_cannot_reach_agency_verification(app, app_ctx, role):  # AZ-06
    agency = agency_with_people(AgencyStatus.PENDING).agency
    person = make_staff(role)
    client = app.test_client()
    web_login(client, person, door="console")
    assert 'href="/console/agencies"' not in client.get("/console/").get_data(as_text=True)
    before = db_snapshot(app)
    for path in ("/console/agencies", f"/console/agencies/{agency.public_id}", "/console/agencies/images/x"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert error_code(response) == "forbidden"
    token = page_csrf(client, "/console/")
    for action in ("approve", "reject", "suspend", "reinstate"):
        response = client.post(f"/console/agencies/{agency.public_id}/{action}",
                               data={"csrf_token": token, "reason": "x"})
        assert response.status_code == 403
    after = db_snapshot(app)
    quiet = ("auth_sessions", "audit_events")
    assert {t: r for t, r in after.items() if t not in quiet} == {t: r for t, r in before.items() if t not in quiet}


def test_agency_staff_cannot_sign_in_to_the_console(app, app_ctx):
    owner = agency_with_people(AgencyStatus.PENDING).owner
    client = app.test_client()
    token = page_csrf(client, "/console/login")
    response = client.post("/console/login", data={"email": owner.email, "password": owner.password,
                                                   "csrf_token": token})
    assert response.status_code == 403


# ---- approve -------------------------------------------------------------------------------------


def test_approval_needs_all_four_documents(app, app_ctx):  # enforces P-12 (ALJ)
    world = agency_with_people(AgencyStatus.PENDING)
    actor = actor_for(world.owner)
    for kind in KINDS[:3]:
        agencies.upload_document(actor, None, kind, io.BytesIO(photo(600, 400)), "image/jpeg")
    db.session.commit()
    client, _ = _admin_client(app)
    response = _post(client, world.agency, "approve")
    assert response.status_code == 409
    assert "authorisation letter" in response.get_data(as_text=True)
    assert _fresh(world.agency).status == AgencyStatus.PENDING
    assert "agency:approve" not in _actions()


def test_admin_approves_a_complete_agency(app, app_ctx):  # enforces P-12
    world = agency_with_people(AgencyStatus.PENDING)
    attach_all_documents(world.agency, world.owner)
    client, admin = _admin_client(app)
    response = _post(client, world.agency, "approve")
    assert response.status_code == 302
    agency = _fresh(world.agency)
    assert agency.status == AgencyStatus.ACTIVE
    assert agency.verified_at is not None and agency.verified_by_id == admin.user_id
    assert len(_emails(agency.contact_email, "agency_approved")) == 1
    assert "agency:approve" in _actions()
    # approving twice is an illegal move, not a second approval
    response = _post(client, world.agency, "approve")
    assert response.status_code == 409
    assert _actions().count("agency:approve") == 1


def test_an_admin_who_works_for_the_agency_cannot_verify_it(app, app_ctx):  # AZ-06 (no self-review)
    world = agency_with_people(AgencyStatus.PENDING)
    attach_all_documents(world.agency, world.owner)
    admin = make_staff(Role.ADMIN)
    from tests.agencies.helpers import grant_role

    grant_role(admin, Role.AGENCY_STAFF, world.agency)
    actor = actor_for(admin)
    db.session.commit()  # refusals are audited on their own connection (record_now)
    with pytest.raises(agencies.SelfVerificationForbidden):
        agencies.approve(actor, world.public_id)
    blob = db.session.get(Blob, agencies.documents_of(world.agency)[0].blob_id)
    with pytest.raises(NotFound):
        kyc.grant_image_view(actor, blob, purpose="agency_verification", context=world.public_id, reason="x")


# ---- document views: the one image policy, audited ---------------------------------------------


def test_admin_views_each_document_once_and_every_view_is_audited(app, app_ctx):  # enforces P-12, PV-01, P-09
    world = agency_with_people(AgencyStatus.PENDING)
    attach_all_documents(world.agency, world.owner)
    client, admin = _admin_client(app)
    html = client.get(f"/console/agencies/{world.public_id}").get_data(as_text=True)
    links = re.findall(r'src="(/console/agencies/images/[^"]+)"', html)
    assert len(links) == 4
    for link in links:
        image = client.get(link)
        assert image.status_code == 200
        assert image.mimetype == "image/jpeg" and image.data[:3] == b"\xff\xd8\xff"
        assert image.headers["Cache-Control"].startswith("no-store")
        assert "sandbox" in image.headers["Content-Security-Policy"]
        assert client.get(link).status_code == 404  # single use
    db.session.expire_all()
    views = db.session.execute(select(AuditEvent).where(AuditEvent.action == "image:view")).scalars().all()
    grants = db.session.execute(select(AuditEvent).where(AuditEvent.action == "image:grant")).scalars().all()
    assert len(views) == 4 and len(grants) == 4
    for event in views + grants:
        assert event.actor_id == admin.public_id
        assert '"purpose":"agency_verification"' in event.data and world.public_id in event.data
    kinds = {re.search(r'"kind":"([a-z_]+)"', e.data).group(1) for e in views}  # type: ignore[union-attr]
    assert kinds == set(KINDS)


def test_the_image_link_works_only_for_the_admin_it_was_made_for(app, app_ctx):
    world = agency_with_people(AgencyStatus.PENDING)
    attach_all_documents(world.agency, world.owner)
    client, _ = _admin_client(app)
    link = re.findall(r'src="(/console/agencies/images/[^"]+)"',
                      client.get(f"/console/agencies/{world.public_id}").get_data(as_text=True))[0]
    other, _ = _admin_client(app)
    assert other.get(link).status_code == 404
    assert client.get(link).status_code == 200


def test_the_image_policy_refuses_everyone_else(app, app_ctx):  # enforces P-11 (one policy function)
    world = agency_with_people(AgencyStatus.PENDING)
    other = agency_with_people(AgencyStatus.PENDING)
    attach_all_documents(world.agency, world.owner)
    attach_all_documents(other.agency, other.owner)
    blob = db.session.get(Blob, agencies.documents_of(world.agency)[0].blob_id)
    admin = actor_for(make_staff(Role.ADMIN))
    refusals = [
        (actor_for(make_staff(Role.KYC_REVIEWER)), "agency_verification", world.public_id),
        (actor_for(world.owner), "agency_verification", world.public_id),  # agency staff: not this way
        (admin, "agency_verification", other.public_id),  # the blob belongs to another agency
        (admin, "agency_verification", "no-such-agency"),
        (admin, "kyc_review", world.public_id),
        (admin, "own_profile", world.public_id),
    ]
    db.session.commit()  # refusals are audited on their own connection (record_now)
    for actor, purpose, context in refusals:
        with pytest.raises(NotFound):
            kyc.grant_image_view(actor, blob, purpose=purpose, context=context, reason="probe")
    db.session.rollback()  # a fresh snapshot: the refusals were committed on another connection
    denied = db.session.execute(select(AuditEvent).where(AuditEvent.action == "image:view_denied")).scalars().all()
    assert len(denied) == len(refusals)
    assert kyc.grant_image_view(admin, blob, purpose="agency_verification", context=world.public_id, reason="ok")


def test_a_replaced_document_can_no_longer_be_granted(app, app_ctx):
    world = agency_with_people(AgencyStatus.PENDING)
    attach_all_documents(world.agency, world.owner)
    old = db.session.get(Blob, agencies.documents_of(world.agency)[0].blob_id)
    agencies.upload_document(actor_for(world.owner), None, old.kind, io.BytesIO(photo(500, 400)), "image/jpeg")
    admin = actor_for(make_staff(Role.ADMIN))
    db.session.commit()
    with pytest.raises(NotFound):
        kyc.grant_image_view(admin, old, purpose="agency_verification", context=world.public_id, reason="probe")


# ---- reject --------------------------------------------------------------------------------------


def test_rejection_needs_a_reason_and_tells_the_agency(app, app_ctx):  # enforces P-12
    world = agency_with_people(AgencyStatus.PENDING)
    client, _ = _admin_client(app)
    response = _post(client, world.agency, "reject", reason="   ")
    assert response.status_code == 422
    assert _fresh(world.agency).status == AgencyStatus.PENDING
    response = _post(client, world.agency, "reject", reason="The VAT certificate names another business.")
    assert response.status_code == 302
    agency = _fresh(world.agency)
    assert agency.status == AgencyStatus.REJECTED
    assert agency.status_reason == "The VAT certificate names another business."
    [email] = _emails(agency.contact_email, "agency_rejected")
    assert "names another business" in email.body_text
    assert "agency:reject" in _actions()


# ---- suspend and reinstate -----------------------------------------------------------------------


def _live_booking(client: FlaskClient, vehicle: Any) -> str:
    headers = auth_headers(client, make_verified_customer())
    response = client.post("/api/v1/bookings", json=booking_body(vehicle), headers=headers)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["reference"])


def test_suspension_hides_the_cars_blocks_bookings_and_flags_live_ones(app, client, app_ctx):  # enforces P-12
    agency = make_agency()
    vehicle = make_vehicle(agency)
    other_vehicle = make_vehicle(make_agency())
    reference = _live_booking(client, vehicle)
    other_reference = _live_booking(client, other_vehicle)
    assert bookings.bookable_vehicle(vehicle.public_id).id == vehicle.id

    admin_client, _ = _admin_client(app)
    response = _post(admin_client, agency, "suspend", reason="Insurance certificate expired")
    assert response.status_code == 302
    fresh = _fresh(agency)
    assert fresh.status == AgencyStatus.SUSPENDED and fresh.suspended_at is not None
    with pytest.raises(NotFound):
        bookings.bookable_vehicle(vehicle.public_id)
    # a new booking fails; the car is simply not found
    response = client.post("/api/v1/bookings", json=booking_body(vehicle, start_in_hours=200),
                           headers=auth_headers(client, make_verified_customer()))
    assert response.status_code == 404
    db.session.expire_all()
    flagged = db.session.execute(select(Booking).where(Booking.reference == reference)).scalar_one()
    untouched = db.session.execute(select(Booking).where(Booking.reference == other_reference)).scalar_one()
    assert flagged.flagged_at is not None and flagged.flag_reason == "agency_suspended"
    assert untouched.flagged_at is None  # another agency's bookings are not touched
    [email] = _emails(agency.contact_email, "agency_suspended")
    assert "Insurance certificate expired" in email.body_text
    event = db.session.execute(select(AuditEvent).where(AuditEvent.action == "agency:suspend")).scalar_one()
    assert '"flagged_bookings":1' in event.data
    page = admin_client.get(f"/console/agencies/{agency.public_id}").get_data(as_text=True)
    assert reference in page and other_reference not in page  # flagged bookings shown to staff

    response = _post(admin_client, agency, "reinstate")
    assert response.status_code == 302
    assert _fresh(agency).status == AgencyStatus.ACTIVE
    assert bookings.bookable_vehicle(vehicle.public_id).id == vehicle.id
    assert len(_emails(agency.contact_email, "agency_reinstated")) == 1
    assert "agency:reinstate" in _actions()


def test_suspension_needs_a_reason(app, app_ctx):
    agency = make_agency()
    client, _ = _admin_client(app)
    response = _post(client, agency, "suspend", reason="")
    assert response.status_code == 422
    assert _fresh(agency).status == AgencyStatus.ACTIVE


@pytest.mark.parametrize("status", [AgencyStatus.PENDING, AgencyStatus.REJECTED, AgencyStatus.SUSPENDED,
                                    AgencyStatus.TERMINATED])
def test_only_an_active_agency_can_be_suspended(app, app_ctx, status):
    agency = make_agency(status=status)
    with pytest.raises(agencies.states.IllegalTransition):
        agencies.suspend(actor_for(make_staff(Role.ADMIN)), agency.public_id, "reason")


def test_console_pages_for_an_unknown_agency_are_not_found(app, app_ctx):
    client, _ = _admin_client(app)
    assert client.get("/console/agencies/00000000-0000-4000-8000-000000000000").status_code == 404
    token = page_csrf(client, "/console/agencies")
    response = client.post("/console/agencies/nope/approve", data={"csrf_token": token})
    assert response.status_code == 404


def test_console_actions_need_the_csrf_token(app, app_ctx):
    world = agency_with_people(AgencyStatus.PENDING)
    attach_all_documents(world.agency, world.owner)
    client, _ = _admin_client(app)
    response = client.post(f"/console/agencies/{world.public_id}/approve", data={})
    assert response.status_code == 403
    assert error_code(response) == "csrf_failed"
    assert _fresh(world.agency).status == AgencyStatus.PENDING
