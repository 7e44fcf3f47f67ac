"""Public agency sign-up (P-12): validation, the owner's account, no enumeration, nothing half-created."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest
from sqlalchemy import select

from marketplace.agencies.models import Agency, AgencyStatus
from marketplace.audit import AuditEvent
from marketplace.errors import Conflict
from marketplace.extensions import db
from marketplace.notifications.models import OutboxMessage
from marketplace.permissions import Role
from marketplace.users.models import AccountType, User
from tests.agencies.helpers import SIGNUP, code, count, signup_body
from tests.factories import make_customer, make_staff
from tests.staff_web import db_snapshot, location, password_step

ACCEPTED = {"status": "received",
            "message": "If this e-mail can be used, the owner's account is ready: sign in at /agency to continue."}


def _outbox(to: str, kind: str) -> list[OutboxMessage]:
    db.session.expire_all()
    return list(db.session.execute(
        select(OutboxMessage).where(OutboxMessage.to_address == to, OutboxMessage.kind == kind)
    ).scalars())


def test_sign_up_creates_a_pending_agency_and_its_owner(app, client, app_ctx):  # enforces P-12, P-04
    body = signup_body(trn="100-2345-6789-0003", trade_licence_number=" ded  884412 ")
    response = client.post(SIGNUP, json=body)
    assert response.status_code == 202, response.get_json()
    assert response.get_json() == ACCEPTED
    agency = db.session.execute(select(Agency)).scalar_one()
    assert agency.status == AgencyStatus.PENDING
    assert agency.verified_at is None
    assert agency.trn == "100234567890003"  # spaces and dashes dropped
    assert agency.trade_licence_number == "DED 884412"
    assert agency.contact_phone == "+97143001234"
    assert (agency.address_line1, agency.address_city, agency.address_country) == (
        "Office 12, Al Quoz Industrial 3", "Dubai", "AE")
    owner = db.session.execute(select(User).where(User.email == body["owner"]["email"])).scalar_one()
    assert owner.account_type == AccountType.STAFF
    assert [(a.role, a.agency_id) for a in owner.roles] == [(Role.AGENCY_OWNER, agency.id)]
    assert owner.password_hash != body["owner"]["password"]
    assert owner.totp_enrolled_at is None  # MFA is set up at the first sign-in
    assert len(_outbox(owner.email, "agency_signup_received")) == 1
    actions = set(db.session.execute(select(AuditEvent.action)).scalars())
    assert {"agency:signup", "staff:create"} <= actions


def test_the_owner_signs_in_at_the_agency_door_and_must_set_up_mfa(app, client, app_ctx):  # enforces P-04
    body = signup_body()
    assert client.post(SIGNUP, json=body).status_code == 202
    from tests.factories import Person

    owner = Person(0, "", body["owner"]["email"], body["owner"]["password"])
    response = password_step(client, owner, door="agency")
    assert response.status_code == 302
    assert location(response).endswith("/agency/mfa")
    page = client.get("/agency/mfa")
    assert page.status_code == 200 and "svg" in page.get_data(as_text=True)  # the enrolment QR code
    assert client.get("/agency/profile").status_code == 302  # nothing past the MFA step yet


@pytest.mark.parametrize("trn", ["123456789012345", "10023456789000", "1002345678900031", "100ABC678900003",
                                 "\uff11\uff10\uff10" + "2" * 12, "100" + "\u0662" * 12])
def test_bad_trn_is_refused_and_nothing_is_stored(app, client, trn):  # enforces P-12
    before = db_snapshot(app)
    response = client.post(SIGNUP, json=signup_body(trn=trn))
    assert response.status_code == 422
    assert code(response) == "validation_error"
    assert "trn" in response.get_json()["error"]["details"]["fields"]
    assert db_snapshot(app) == before


@pytest.mark.parametrize("phone", ["043001234", "+0 4 300 1234", "call me", "+97143"])
def test_bad_contact_phone_is_refused(app, client, phone):
    before = db_snapshot(app)
    response = client.post(SIGNUP, json=signup_body(contact_phone=phone))
    assert response.status_code == 422
    assert "contact_phone" in response.get_json()["error"]["details"]["fields"]
    assert db_snapshot(app) == before


@pytest.mark.parametrize("field,value", [("contact_email", "not-an-email"), ("trade_licence_number", "#!"),
                                         ("business_name", "   "), ("representative_name", " \t ")])
def test_bad_contact_email_licence_and_blank_names_are_refused(app, client, field, value):
    response = client.post(SIGNUP, json=signup_body(**{field: value}))
    assert response.status_code == 422
    assert field in response.get_json()["error"]["details"]["fields"]


def test_bad_owner_email_is_refused(app, client):
    body = signup_body()
    body["owner"]["email"] = "khalid at example"
    response = client.post(SIGNUP, json=body)
    assert response.status_code == 422
    assert "owner.email" in response.get_json()["error"]["details"]["fields"]


@pytest.mark.parametrize("password", ["short", "password12345", "Khalid-Mansoori-2024"])
def test_weak_owner_password_is_refused(app, client, password):  # enforces P-01 (strong passwords)
    before = db_snapshot(app)
    body = signup_body()
    body["owner"]["password"] = password
    response = client.post(SIGNUP, json=body)
    assert response.status_code == 422
    assert code(response) == "weak_password"
    assert "owner.password" in response.get_json()["error"]["details"]["fields"]
    assert db_snapshot(app) == before


@pytest.mark.parametrize("extra", [{"status": "active"}, {"verified_at": "2026-01-01T00:00:00Z"},
                                   {"agency_id": 1}, {"turnaround_minutes": 0}])
def test_unknown_fields_are_refused(app, client, extra):  # AZ-08
    before = db_snapshot(app)
    response = client.post(SIGNUP, json=signup_body(**extra))
    assert response.status_code == 422
    assert code(response) == "unknown_field"
    assert response.get_json()["error"]["details"]["unknown"] == sorted(extra)
    assert db_snapshot(app) == before


def test_unknown_nested_fields_are_refused(app, client, app_ctx):  # AZ-08
    body = signup_body()
    body["owner"]["role"] = "admin"
    body["address"]["region"] = "Dubai"
    response = client.post(SIGNUP, json=body)
    assert response.status_code == 422
    fields = response.get_json()["error"]["details"]["fields"]
    # errors.validation_details names unknown fields only one level deep; nested ones come back by name
    assert fields["owner"] == {"role": ["Unknown field."]}
    assert fields["address"] == {"region": ["Unknown field."]}
    assert count(Agency) == 0


def test_missing_fields_are_named(app, client):
    body = signup_body()
    del body["trn"], body["owner"]
    response = client.post(SIGNUP, json=body)
    assert response.status_code == 422
    assert {"trn", "owner"} <= set(response.get_json()["error"]["details"]["fields"])


def test_a_form_body_is_refused(app, client):
    response = client.post(SIGNUP, data={"business_name": "x"})
    assert response.status_code == 415


@pytest.mark.parametrize("who", ["customer", "staff"])
def test_existing_owner_email_gets_the_same_answer_and_nothing_is_created(app, client, app_ctx, who):
    # no account enumeration (AN-05 style); the holder of the address is told by e-mail instead
    existing = make_customer() if who == "customer" else make_staff(Role.KYC_REVIEWER)
    agencies_before = count(Agency)
    users_before = count(User)
    body = signup_body()
    body["owner"]["email"] = existing.email.upper()
    response = client.post(SIGNUP, json=body)
    assert response.status_code == 202
    assert response.get_json() == ACCEPTED
    assert count(Agency) == agencies_before  # no half-created agency
    assert count(User) == users_before
    assert len(_outbox(existing.email, "agency_signup_exists")) == 1
    assert _outbox(existing.email, "agency_signup_received") == []
    refused = db.session.execute(
        select(AuditEvent).where(AuditEvent.action == "agency:signup_duplicate")).scalar_one()
    assert refused.outcome == "refused" and refused.subject_id == existing.public_id


def test_no_agency_row_when_the_owner_cannot_be_created(app, client, app_ctx, monkeypatch):
    # the owner's account and the agency are one unit: if the account fails, the agency is not kept
    from marketplace.users import service as users

    def failing_create_staff(**kwargs: Any) -> Any:
        assert count_in_session(Agency) == 1  # the agency row was already flushed
        raise Conflict(details={"fields": {"email": ["An account with this e-mail exists."]}})

    def count_in_session(model: Any) -> int:
        return len(db.session.execute(select(model)).scalars().all())

    monkeypatch.setattr(users, "create_staff", failing_create_staff)
    response = client.post(SIGNUP, json=signup_body())
    assert response.status_code == 409
    assert count(Agency) == 0
    assert count(User) == 0


def test_sign_up_is_rate_limited_per_client(app, client):  # IN-04
    limit = int(app.config["SETTINGS"].limits["register_client"].split()[0])
    statuses = [client.post(SIGNUP, json=signup_body(trn="123")).status_code for _ in range(limit + 1)]
    assert statuses[:limit] == [422] * limit
    assert statuses[-1] == 429
    other = app.test_client()
    response = other.post(SIGNUP, json=signup_body(), environ_base={"REMOTE_ADDR": "127.0.0.9"})
    assert response.status_code == 202


@pytest.mark.postgres_only
def test_concurrent_sign_ups_with_one_owner_email_create_one_agency(app, monkeypatch):
    # the check-then-insert race: the unique e-mail decides, every caller gets the same 202 (PostgreSQL only:
    # SQLite serialises writers, TESTING.md section 6 rule 1). The password-hash pool admits all six here:
    # its load shedding (503 with Retry-After, tests/users/test_passwords.py) is not what this race is about.
    monkeypatch.setitem(app.config, "SETTINGS", dataclasses.replace(app.config["SETTINGS"], password_hash_waiting=8))
    email = "race-owner@desertwheels.example"
    barrier = threading.Barrier(6)
    results: list[int] = []

    def attempt(n: int) -> None:
        body = signup_body()
        body["owner"]["email"] = email
        local = app.test_client()
        barrier.wait()
        response = local.post(SIGNUP, json=body, environ_base={"REMOTE_ADDR": f"127.0.1.{n}"})
        results.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [202] * 6
    with app.app_context():
        assert count(Agency) == 1
        assert count(User, User.email == email) == 1
