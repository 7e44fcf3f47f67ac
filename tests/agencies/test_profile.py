"""The agency's own profile over the API: read, change what may change, and which agency is meant."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from marketplace.agencies.models import Agency, AgencyStatus
from marketplace.audit import AuditEvent
from marketplace.extensions import db
from marketplace.permissions import Role
from tests.agencies.helpers import AGENCY, agency_with_people, code, grant_role
from tests.factories import auth_headers, make_agency, make_customer, make_staff
from tests.staff_web import db_snapshot


def _fresh(agency: Agency) -> Agency:
    db.session.expire_all()
    row = db.session.get(Agency, agency.id)
    assert row is not None
    return row


def test_every_agency_role_reads_the_profile(app, client, app_ctx):  # enforces P-12
    world = agency_with_people(AgencyStatus.PENDING)
    for person in (world.owner, world.staff):
        response = client.get(AGENCY, headers=auth_headers(client, person))
        assert response.status_code == 200
        body = response.get_json()
        assert body["id"] == world.public_id
        assert body["status"] == "pending_verification"
        assert body["address"] == {"line1": "Sheikh Zayed Road", "city": "Dubai", "country": "AE"}
        assert body["missing_documents"] == ["trade_licence", "vat_certificate", "representative_id",
                                             "authorisation_letter"]
        assert set(body) == {"id", "business_name", "trade_licence_number", "trn", "address", "representative_name",
                             "contact_email", "contact_phone", "status", "status_reason", "verified_at",
                             "turnaround_minutes", "missing_documents", "created_at"}
        assert response.headers["Cache-Control"].startswith("no-store")


def test_owner_changes_contact_details_and_turnaround_any_time(app, client, app_ctx):  # enforces P-12
    world = agency_with_people(AgencyStatus.ACTIVE)
    headers = auth_headers(client, world.owner)
    response = client.patch(AGENCY, headers=headers, json={
        "contact_email": "Fleet@Example.COM", "contact_phone": "00971 4 555 0000",
        "address": {"city": "Abu Dhabi"}, "turnaround_minutes": 0,
    })
    assert response.status_code == 200, response.get_json()
    agency = _fresh(world.agency)
    assert (agency.contact_email, agency.contact_phone, agency.address_city, agency.address_line1,
            agency.turnaround_minutes) == ("fleet@example.com", "+97145550000", "Abu Dhabi", "Sheikh Zayed Road", 0)
    assert agency.status == AgencyStatus.ACTIVE
    event = db.session.execute(select(AuditEvent).where(AuditEvent.action == "agency:update")).scalar_one()
    assert event.subject_id == world.public_id
    assert "turnaround_minutes" in event.data


@pytest.mark.parametrize("field,value", [("business_name", "Other Name LLC"), ("trn", "100999999999993"),
                                         ("trade_licence_number", "DED-1"), ("representative_name", "Someone Else")])
def test_business_identity_is_locked_after_verification(app, client, app_ctx, field, value):  # enforces P-12
    world = agency_with_people(AgencyStatus.ACTIVE)
    headers = auth_headers(client, world.owner)
    before = db_snapshot(app)
    response = client.patch(AGENCY, headers=headers, json={field: value, "contact_phone": "+97145550000"})
    assert response.status_code == 409
    assert code(response) == "agency_identity_locked"
    assert db_snapshot(app)["agencies"] == before["agencies"]


def test_business_identity_changes_while_pending(app, client, app_ctx):
    world = agency_with_people(AgencyStatus.PENDING)
    response = client.patch(AGENCY, headers=auth_headers(client, world.owner),
                            json={"business_name": "  Renamed   Rentals LLC ", "trn": "100 999 999 999 993"})
    assert response.status_code == 200, response.get_json()
    agency = _fresh(world.agency)
    assert (agency.business_name, agency.trn) == ("Renamed Rentals LLC", "100999999999993")


def test_a_rejected_agency_that_corrects_itself_goes_back_to_the_queue(app, client, app_ctx):
    world = agency_with_people(AgencyStatus.REJECTED)
    world.agency.status_reason = "TRN does not match the certificate"
    db.session.commit()
    response = client.patch(AGENCY, headers=auth_headers(client, world.owner), json={"trn": "100999999999993"})
    assert response.status_code == 200
    assert response.get_json()["status"] == "pending_verification"
    assert response.get_json()["status_reason"] is None
    actions = list(db.session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars())
    assert actions[-2:] == ["agency:resubmit", "agency:update"]


@pytest.mark.parametrize("body", [{"turnaround_minutes": 1441}, {"turnaround_minutes": -1},
                                  {"turnaround_minutes": True}, {"turnaround_minutes": "60"},
                                  {"turnaround_minutes": 60.0}, {"trn": "200234567890003"},
                                  {"contact_phone": "12"}, {"contact_email": "nope"}, {},
                                  {"address": {"country": "UAE"}}])
def test_bad_profile_changes_are_refused(app, client, app_ctx, body):
    world = agency_with_people(AgencyStatus.PENDING)
    headers = auth_headers(client, world.owner)
    before = db_snapshot(app)["agencies"]
    response = client.patch(AGENCY, headers=headers, json=body)
    assert response.status_code == 422, response.get_json()
    assert db_snapshot(app)["agencies"] == before


@pytest.mark.parametrize("extra", ["status", "verified_at", "verified_by_id", "status_reason", "id"])
def test_mass_assignment_is_refused(app, client, app_ctx, extra):  # AZ-08
    world = agency_with_people(AgencyStatus.PENDING)
    headers = auth_headers(client, world.owner)
    before = db_snapshot(app)["agencies"]
    response = client.patch(AGENCY, headers=headers, json={"contact_phone": "+97145550000", extra: "active"})
    assert response.status_code == 422
    assert code(response) == "unknown_field"
    assert response.get_json()["error"]["details"]["unknown"] == [extra]
    assert db_snapshot(app)["agencies"] == before


@pytest.mark.parametrize("role", [Role.AGENCY_MANAGER, Role.AGENCY_STAFF])
def test_only_the_owner_changes_the_profile(app, client, app_ctx, role):  # AZ-04 (function level)
    agency = make_agency()
    person = make_staff(role, agency=agency)
    response = client.patch(AGENCY, headers=auth_headers(client, person), json={"contact_phone": "+97145550000"})
    assert response.status_code == 403
    assert code(response) == "forbidden"


def test_owner_elsewhere_gives_no_write_rights_here(app, client, app_ctx):  # AZ-04
    # permissions are the union of all roles; the service checks the roles held in *this* agency
    mine, theirs = make_agency(), make_agency()
    person = make_staff(Role.AGENCY_OWNER, agency=mine)
    grant_role(person, Role.AGENCY_STAFF, theirs)
    headers = auth_headers(client, person)
    response = client.patch(AGENCY, headers=headers, query_string={"agency": theirs.public_id},
                            json={"contact_phone": "+97145550000"})
    assert response.status_code == 403
    response = client.patch(AGENCY, headers=headers, query_string={"agency": mine.public_id},
                            json={"contact_phone": "+97145550000"})
    assert response.status_code == 200


def test_someone_in_several_agencies_names_one(app, client, app_ctx):
    first, second, stranger = make_agency(), make_agency(), make_agency()
    person = make_staff(Role.AGENCY_MANAGER, agency=first)
    grant_role(person, Role.AGENCY_STAFF, second)
    headers = auth_headers(client, person)
    response = client.get(AGENCY, headers=headers)
    assert response.status_code == 422
    assert "agency" in response.get_json()["error"]["details"]["fields"]
    assert client.get(AGENCY, headers=headers, query_string={"agency": second.public_id}).get_json()["id"] == \
        second.public_id
    for other in (stranger.public_id, "00000000-0000-4000-8000-000000000000", "' OR 1=1 --"):
        response = client.get(AGENCY, headers=headers, query_string={"agency": other})
        assert response.status_code == 404
        assert code(response) == "not_found"


def test_unknown_query_parameters_are_refused(app, client, app_ctx):
    world = agency_with_people()
    response = client.get(AGENCY, headers=auth_headers(client, world.owner), query_string={"agency_id": "1"})
    assert response.status_code == 422
    assert code(response) == "unknown_field"


def test_customers_and_platform_staff_have_no_agency(app, client, app_ctx):
    for person in (make_customer(), make_staff(Role.ADMIN), make_staff(Role.KYC_REVIEWER)):
        response = client.get(AGENCY, headers=auth_headers(client, person))
        assert response.status_code == 403
        assert code(response) == "forbidden"
