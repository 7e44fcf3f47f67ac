"""Operator commands run through Flask's CLI runner against the test app: ``flask demo seed``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from marketplace.extensions import db, utcnow
from marketplace.payments.gateway import Gateway
from marketplace.users.consent_texts import CURRENT
from marketplace.users.models import ConsentKind
from tests.stripe_fixtures import _free_port, localstripe, localstripe_server, stripe_gateway  # noqa: F401

CUSTOMER = "layla@demo.carejar.example"


@pytest.fixture(autouse=True)
def _no_localstripe(app: Flask) -> Iterator[None]:
    """By default nothing answers where the seed looks for Stripe (a closed loopback port), so these tests
    never reach a localstripe someone runs on 8420; the payment tests ask for ``stripe_gateway`` on top."""
    previous = app.extensions.get("payments_gateway")
    app.extensions["payments_gateway"] = Gateway(secret_key="sk_test_nothing_there",
                                                 api_base=f"http://127.0.0.1:{_free_port()}", max_network_retries=0)
    yield
    if previous is None:
        app.extensions.pop("payments_gateway", None)
    else:
        app.extensions["payments_gateway"] = previous


def _seed(app: Flask) -> dict[str, str]:
    """Run ``flask demo seed`` and read the printed sign-ins (e-mail -> password)."""
    result = app.test_cli_runner().invoke(args=["demo", "seed"])
    assert result.exit_code == 0, result.output
    sign_ins = {}
    for line in result.output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "@" in parts[0]:
            sign_ins[parts[0]] = parts[1]
    assert CUSTOMER in sign_ins, result.output
    return sign_ins


def _login(client: FlaskClient, email: str, password: str) -> dict[str, str]:
    response = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def test_demo_customer_is_cleared_and_can_book(app: Flask, client: FlaskClient) -> None:
    # issue 7 item 9: the seeded "verified customer" is truly cleared (P-10) and books a demo car (P-15)
    sign_ins = _seed(app)
    headers = _login(client, CUSTOMER, sign_ins[CUSTOMER])

    kyc = client.get("/api/v1/me/kyc", headers=headers).get_json()
    assert kyc["status"] == "approved", kyc
    assert kyc["missing"] == []
    assert sorted(kyc["uploaded"]) == ["id_back", "id_front", "licence_back", "licence_front", "selfie"]
    assert kyc["face_consent_version"] == CURRENT[ConsentKind.FACE_DATA].version
    consents = client.get("/api/v1/me/consents", headers=headers).get_json()
    granted = {c["kind"]: c["text_version"] for c in consents["items"] if c["withdrawn_at"] is None}
    for kind in (ConsentKind.TERMS, ConsentKind.PRIVACY, ConsentKind.FACE_DATA):
        assert granted[str(kind)] == CURRENT[kind].version

    cars = client.get("/api/v1/vehicles", query_string={"city": "Dubai"}).get_json()["items"]
    assert len(cars) == 4
    start = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    response = client.post("/api/v1/bookings", headers={**headers, "Idempotency-Key": "demo-first-booking"}, json={
        "vehicle_id": cars[0]["id"], "starts_at": start.isoformat(), "ends_at": (start + timedelta(days=2)).isoformat(),
        "accept_rental_terms_version": CURRENT[ConsentKind.RENTAL_TERMS].version,
        "accept_mit_mandate_version": CURRENT[ConsentKind.MIT_MANDATE].version,
    })
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["status"] == "pending_payment"


def test_demo_customer_went_through_the_real_pipeline_and_review(app: Flask) -> None:
    # issue 7 item 9: real (re-encoded, encrypted) images and a decision by a demo reviewer, with audit rows
    from marketplace import audit
    from marketplace.kyc.models import KycCase, KycDecision
    from marketplace.users.models import User
    from marketplace.vault import service as vault
    from marketplace.vault.models import Blob

    _seed(app)
    with app.app_context():
        customer = db.session.execute(select(User).where(User.email == CUSTOMER)).scalar_one()
        case = db.session.execute(select(KycCase).where(KycCase.user_id == customer.id)).scalar_one()
        decision = db.session.execute(select(KycDecision).where(KycDecision.case_id == case.id)).scalar_one()
        reviewer = db.session.get(User, decision.reviewer_id)
        assert reviewer is not None and reviewer.email == "reviewer@demo.carejar.example"
        assert (decision.decision, decision.status) == ("approve", "final")
        blobs = db.session.execute(select(Blob).where(Blob.user_id == customer.id)).scalars().all()
        assert {b.kind for b in blobs} == {"selfie", "id_front", "id_back", "licence_front", "licence_back"}
        for blob in blobs:
            data = vault.read(blob)
            assert data[:3] == b"\xff\xd8\xff"  # re-encoded JPEG, decrypted from the vault
            assert blob.attached_at is not None
        id_front = next(b for b in blobs if b.kind == "id_front")
        selfie = next(b for b in blobs if b.kind == "selfie")
        assert id_front.width > id_front.height and selfie.height > selfie.width  # card landscape, selfie portrait
        actions = set(db.session.execute(select(audit.AuditEvent.action)).scalars())
        assert {"kyc:upload", "kyc:submit", "kyc:claim", "kyc:decide:approve", "kyc:identity_put"} <= actions
        assert audit.verify_chain(db.session).ok
        db.session.rollback()


def test_demo_seed_runs_twice_without_a_second_copy(app: Flask) -> None:
    from marketplace.users.models import User

    _seed(app)
    again = app.test_cli_runner().invoke(args=["demo", "seed"])
    assert again.exit_code == 0 and CUSTOMER in again.output
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(User)).scalar_one() == 8
        db.session.rollback()


def test_demo_seed_on_29_february(app: Flask) -> None:
    # issue 7 item 12: date.replace(year=...) raised ValueError on 29 February
    from marketplace.users.models import User

    with time_machine.travel(datetime(2028, 2, 29, 9, 0, tzinfo=UTC)):
        _seed(app)
        with app.app_context():
            customer = db.session.execute(select(User).where(User.email == CUSTOMER)).scalar_one()
            assert customer.date_of_birth == date(1998, 2, 28)
            db.session.rollback()


# ---- the payment journey in the demo (issue 9: `make run` shows every flow) ------------------------------


def test_demo_seed_without_localstripe_seeds_the_rest_and_says_so(app: Flask, client: FlaskClient) -> None:
    result = app.test_cli_runner().invoke(args=["demo", "seed"])
    assert result.exit_code == 0, result.output
    assert "Payments: not seeded" in result.output and "demo card" in result.output
    sign_ins = _seed(app)  # the second run answers with the saved credentials
    headers = _login(client, CUSTOMER, sign_ins[CUSTOMER])
    assert client.get("/api/v1/me/kyc", headers=headers).get_json()["status"] == "approved"
    assert client.get("/api/v1/me/payment-methods", headers=headers).get_json()["items"] == []


def test_demo_seed_with_localstripe_saves_a_card_and_pays_a_booking(
        app: Flask, client: FlaskClient, stripe_gateway: object) -> None:  # noqa: F811 - the fixture
    # P-19 (a saved card, brand and last four only), P-20 (the mandate accepted at booking), P-22 (deposit held),
    # P-23 (the tax invoices): the seeded customer shows the whole payment flow, against real localstripe
    from marketplace.payments import service as payments

    result = app.test_cli_runner().invoke(args=["demo", "seed"])
    assert result.exit_code == 0, result.output
    assert "Payments (localstripe)" in result.output
    headers = _login(client, CUSTOMER, _seed(app)[CUSTOMER])
    cards = client.get("/api/v1/me/payment-methods", headers=headers).get_json()["items"]
    assert [(c["brand"], c["last4"], c["is_default"]) for c in cards] == [("visa", "4242", True)]
    bookings = client.get("/api/v1/bookings", headers=headers).get_json()["items"]
    # the booking in five days (today's rentals are the next test's)
    ahead = max(bookings, key=lambda b: b["starts_at"])
    assert ahead["status"] == "confirmed"
    reference = ahead["reference"]
    assert reference in result.output
    payment = client.get(f"/api/v1/bookings/{reference}/payment", headers=headers).get_json()
    assert payment["payment"]["state"] == "succeeded", payment
    assert payment["deposit"]["state"] == "held", payment
    assert client.get(f"/api/v1/bookings/{reference}/mandate", headers=headers).status_code == 200
    invoices = client.get("/api/v1/me/invoices", headers=headers).get_json()["items"]
    assert any(i["booking_reference"] == reference for i in invoices), invoices
    assert {i["booking_reference"] for i in invoices} == {b["reference"] for b in bookings}  # one per paid booking
    assert {i["title"] for i in invoices} == {"Tax Invoice"}
    with app.app_context():
        assert payments.ledger_check().ok
        db.session.rollback()


def test_demo_card_saves_a_test_card_for_a_customer(app: Flask, client: FlaskClient, stripe_gateway: object) -> None:  # noqa: F811 - the fixture
    sign_ins = _seed(app)
    result = app.test_cli_runner().invoke(args=["demo", "card", CUSTOMER, "--number", "5555555555554444"])
    assert result.exit_code == 0, result.output
    assert "ending 4444" in result.output
    headers = _login(client, CUSTOMER, sign_ins[CUSTOMER])
    cards = client.get("/api/v1/me/payment-methods", headers=headers).get_json()["items"]
    assert ("mastercard", "4444") in {(c["brand"], c["last4"]) for c in cards}


def test_demo_card_refuses_anything_but_a_test_number_and_staff(app: Flask) -> None:
    _seed(app)
    runner = app.test_cli_runner()
    real_looking = runner.invoke(args=["demo", "card", CUSTOMER, "--number", "4111111111111112"])
    assert real_looking.exit_code != 0 and "ending" not in real_looking.output
    staff = runner.invoke(args=["demo", "card", "admin@demo.carejar.example"])
    assert staff.exit_code != 0 and "no such customer" in staff.output


def test_demo_card_without_localstripe_says_how_to_start_it(app: Flask) -> None:
    _seed(app)
    result = app.test_cli_runner().invoke(args=["demo", "card", CUSTOMER])
    assert result.exit_code != 0 and "make run" in result.output


def test_demo_seed_with_localstripe_seeds_todays_rentals_and_charges(
        app: Flask, stripe_gateway: object) -> None:  # noqa: F811 - the fixture
    # P-18 (the selfie revealed at handover, then matched), P-21 (a charge noticed with its evidence and 24 hours;
    # a dispute waits for the disputes team): the agency app's today page and the console's queue have work
    from marketplace import clock
    from marketplace.audit import AuditEvent
    from marketplace.bookings.models import Booking
    from marketplace.charges import service as charges
    from marketplace.charges.models import Charge, ChargeEvidence
    from marketplace.handover import service as handover
    from marketplace.handover.models import Handover
    from marketplace.payments import service as payments
    from marketplace.users import service as users

    result = app.test_cli_runner().invoke(args=["demo", "seed"])
    assert result.exit_code == 0, result.output
    assert "Today at Desert Wheels" in result.output and "not seeded" not in result.output
    with app.app_context():
        customer = users.find_by_email(CUSTOMER)
        assert customer is not None
        rows = {b.reference: b for b in db.session.execute(
            select(Booking).where(Booking.customer_id == customer.id)).scalars()}
        assert all(reference in result.output for reference in rows)
        assert sorted(b.status for b in rows.values()) == ["confirmed", "confirmed", "in_progress", "returned",
                                                           "returned"]
        stages = {rows_ref: stage for rows_ref, stage in db.session.execute(
            select(Booking.reference, Handover.stage).join(Handover, Handover.booking_id == Booking.id))}
        assert sorted(stages.values()) == ["handed_over", "returned", "returned"]
        reveals = db.session.execute(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "handover:reveal")).scalar_one()
        assert reveals == 3  # each handover through the selfie reveal, as the agency app does it

        desk = users.find_by_email("desk@desertwheels.example")
        disputes = users.find_by_email("disputes@demo.carejar.example")
        assert desk is not None and disputes is not None
        staff = users.open_api_session(desk, mfa_done=True)
        soon = utcnow() + timedelta(days=1)
        pickup = next(b for b in rows.values() if b.status == "confirmed" and b.starts_at < soon)
        active = next(b for b in rows.values() if b.status == "in_progress")
        pickup_day = pickup.starts_at.astimezone(clock.BUSINESS_TZ).date()
        return_day = active.ends_at.astimezone(clock.BUSINESS_TZ).date()
        if clock.business_now().hour < 20:  # late in the Dubai day they fall on tomorrow (the seed says when)
            assert pickup_day == return_day == clock.business_today()
        assert pickup.reference in {b.reference for b in handover.today(staff, pickup_day)["pickups"]}
        assert active.reference in {b.reference for b in handover.today(staff, return_day)["returns"]}

        raised = db.session.execute(select(Charge).order_by(Charge.id)).scalars().all()
        assert [(c.kind, c.status, c.amount_fils) for c in raised] == [("fuel", "noticed", 15750),
                                                                      ("cleaning", "disputed", 26250)]
        fuel, cleaning = raised
        assert fuel.due_at is not None and fuel.notice_sent_at is not None
        assert fuel.due_at - fuel.notice_sent_at == timedelta(hours=24) and fuel.due_at > utcnow()
        sides = db.session.execute(select(ChargeEvidence.charge_id, ChargeEvidence.side)
                                   .order_by(ChargeEvidence.id)).all()
        assert [tuple(s) for s in sides] == [(fuel.id, "agency"), (cleaning.id, "agency"), (cleaning.id, "customer")]
        queue = charges.queue(users.open_api_session(disputes, mfa_done=True))
        assert [c.public_id for c in queue] == [cleaning.public_id]
        assert fuel.public_id in result.output and cleaning.public_id in result.output
        assert payments.ledger_check().ok, payments.ledger_check().problems
        db.session.rollback()
