"""The agency app's own pages: profile with the document upload form, and staff (list, invite, remove)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from marketplace.agencies.models import Agency, AgencyDocument, AgencyStatus
from marketplace.extensions import db
from marketplace.permissions import Role
from marketplace.users.models import StaffInvitation
from tests.agencies.helpers import agency_with_people, count, grant_role
from tests.factories import api_login, bearer, make_agency, make_staff, web_login
from tests.kyc.helpers import blob_files, photo
from tests.staff_web import db_snapshot, error_code, page_csrf


def _signed_in(app: Any, person: Any) -> FlaskClient:
    client = app.test_client()
    web_login(client, person, door="agency")
    return client


def _upload(client: FlaskClient, kind: str, data: bytes, *, token: str | None = None,
            content_type: str = "image/jpeg") -> Any:
    return client.post("/agency/profile/documents", content_type="multipart/form-data",
                       data={"csrf_token": token if token is not None else page_csrf(client, "/agency/profile"),
                             "kind": kind, "image": (io.BytesIO(data), f"{kind}.jpg", content_type)})


def test_owner_sees_status_and_uploads_documents_from_the_profile_page(app, app_ctx):  # enforces P-12
    world = agency_with_people(AgencyStatus.PENDING)
    client = _signed_in(app, world.owner)
    page = client.get("/agency/profile")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "pending verification" in html and 'enctype="multipart/form-data"' in html
    assert 'href="/agency/profile"' in html and 'href="/agency/staff"' in html  # nav links
    response = _upload(client, "trade_licence", photo(800, 600))
    assert response.status_code == 302
    document = db.session.execute(select(AgencyDocument)).scalar_one()
    assert document.kind == "trade_licence" and document.uploaded_by_id == world.owner.user_id
    assert "trade licence" in client.get("/agency/profile").get_data(as_text=True)


@pytest.mark.parametrize("payload,declared,status", [
    (b"<html><script>alert(1)</script></html>", "image/jpeg", 415),
    (photo(300, 200)[:400], "image/jpeg", 422),
])
def test_a_hostile_file_from_the_page_is_refused_and_nothing_is_stored(app, app_ctx, payload, declared, status):
    # UP-02, UP-05, P-08
    world = agency_with_people(AgencyStatus.PENDING)
    client = _signed_in(app, world.owner)
    token = page_csrf(client, "/agency/profile")
    before, files = db_snapshot(app), blob_files(app)
    response = _upload(client, "vat_certificate", payload, token=token, content_type=declared)
    assert response.status_code == status
    assert "role=\"alert\"" in response.get_data(as_text=True)  # the page shows why
    after = db_snapshot(app)
    assert {t: r for t, r in after.items() if t != "auth_sessions"} == \
        {t: r for t, r in before.items() if t != "auth_sessions"}
    assert blob_files(app) == files


def test_an_upload_without_the_csrf_token_is_refused(app, app_ctx):
    world = agency_with_people(AgencyStatus.PENDING)
    client = _signed_in(app, world.owner)
    response = _upload(client, "trade_licence", photo(300, 200), token="")
    assert response.status_code == 403
    assert error_code(response) == "csrf_failed"
    assert count(AgencyDocument) == 0


def test_a_verified_agency_has_no_upload_form(app, app_ctx):
    world = agency_with_people(AgencyStatus.ACTIVE)
    client = _signed_in(app, world.owner)
    html = client.get("/agency/profile").get_data(as_text=True)
    assert "multipart/form-data" not in html and "contact CareJar" in html
    response = _upload(client, "trade_licence", photo(300, 200))
    assert response.status_code == 409


def test_owner_updates_contact_details_from_the_page(app, app_ctx):
    world = agency_with_people(AgencyStatus.ACTIVE)
    client = _signed_in(app, world.owner)
    token = page_csrf(client, "/agency/profile")
    response = client.post("/agency/profile", data={"csrf_token": token, "contact_phone": "+971 4 555 0000",
                                                    "turnaround_minutes": "45"})
    assert response.status_code == 302
    db.session.expire_all()
    agency = db.session.get(Agency, world.agency.id)
    assert agency is not None and (agency.contact_phone, agency.turnaround_minutes) == ("+97145550000", 45)
    response = client.post("/agency/profile", data={"csrf_token": token, "turnaround_minutes": "5000"})
    assert response.status_code == 422


def test_plain_staff_see_the_profile_but_cannot_change_it_or_manage_staff(app, app_ctx):  # AZ-04
    world = agency_with_people(AgencyStatus.PENDING)
    client = _signed_in(app, world.staff)
    html = client.get("/agency/profile").get_data(as_text=True)
    assert world.agency.business_name in html
    assert "multipart/form-data" not in html and 'href="/agency/staff"' not in html
    assert client.get("/agency/staff").status_code == 403
    token = page_csrf(client, "/agency/profile")
    assert _upload(client, "trade_licence", photo(300, 200), token=token).status_code == 403
    assert client.post("/agency/staff/invite", data={"csrf_token": token, "email": "a@example.com",
                                                     "full_name": "A B", "role": "agency_staff"}).status_code == 403


def test_owner_invites_and_removes_staff_from_the_staff_page(app, app_ctx):  # enforces P-12, P-04
    world = agency_with_people()
    client = _signed_in(app, world.owner)
    page = client.get("/agency/staff")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for person in (world.owner, world.manager, world.staff):
        assert person.email in html
    token = page_csrf(client, "/agency/staff")
    response = client.post("/agency/staff/invite", data={"csrf_token": token, "email": "hire@example.com",
                                                         "full_name": "New Hire", "role": "agency_manager"})
    assert response.status_code == 302
    invitation = db.session.execute(select(StaffInvitation)).scalar_one()
    assert (invitation.agency_id, invitation.role) == (world.agency.id, "agency_manager")
    assert "hire@example.com" in client.get("/agency/staff").get_data(as_text=True)  # pending invitations

    victim_token = api_login(app.test_client(), world.staff)["access_token"]
    response = client.post(f"/agency/staff/{world.staff.public_id}/remove", data={"csrf_token": token})
    assert response.status_code == 302
    assert app.test_client().get("/api/v1/agency", headers=bearer(victim_token)).status_code == 401
    assert world.staff.email not in client.get("/agency/staff").get_data(as_text=True)


def test_the_staff_page_refuses_bad_invitations_with_a_message(app, app_ctx):
    world = agency_with_people()
    client = _signed_in(app, world.manager)
    token = page_csrf(client, "/agency/staff")
    assert 'value="agency_owner"' not in client.get("/agency/staff").get_data(as_text=True)
    for form, status in (({"email": "x@example.com", "full_name": "X Y", "role": "agency_owner"}, 403),
                         ({"email": "not-an-email", "full_name": "X Y", "role": "agency_staff"}, 422),
                         ({"email": "x@example.com", "full_name": " ", "role": "agency_staff"}, 422),
                         ({"email": "x@example.com", "full_name": "X Y", "role": "admin"}, 422)):
        response = client.post("/agency/staff/invite", data={"csrf_token": token, **form})
        assert response.status_code == status, form
    assert count(StaffInvitation) == 0
    response = client.post(f"/agency/staff/{world.owner.public_id}/remove", data={"csrf_token": token})
    assert response.status_code == 403


def test_another_agencys_people_and_ids_are_not_found_from_the_pages(app, app_ctx):  # AZ-03
    world = agency_with_people()
    other = agency_with_people()
    client = _signed_in(app, world.owner)
    assert client.get("/agency/profile", query_string={"agency": other.public_id}).status_code == 404
    assert client.get("/agency/staff", query_string={"agency": other.public_id}).status_code == 404
    token = page_csrf(client, "/agency/staff")
    response = client.post(f"/agency/staff/{other.staff.public_id}/remove", data={"csrf_token": token})
    assert response.status_code == 404
    db.session.expire_all()
    assert other.staff.user().roles


def test_someone_in_two_agencies_switches_between_them(app, app_ctx):
    first, second = make_agency(name="Alpha Cars"), make_agency(name="Beta Cars")
    person = make_staff(Role.AGENCY_OWNER, agency=first)
    grant_role(person, Role.AGENCY_STAFF, second)
    client = _signed_in(app, person)
    html = client.get("/agency/profile").get_data(as_text=True)
    assert "<h1>Alpha Cars</h1>" in html and "Beta Cars" in html  # the switcher
    html = client.get("/agency/profile", query_string={"agency": second.public_id}).get_data(as_text=True)
    assert "<h1>Beta Cars</h1>" in html
    assert "<form method=\"post\" action=\"/agency/profile?" not in html  # staff there: no edit form
