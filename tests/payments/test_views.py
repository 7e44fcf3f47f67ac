"""Saved cards, paying a booking, deposits and cancellation refunds over HTTP, against real localstripe on
loopback (the extension closes its gaps, devtools/localstripe_server.py); the ledger is checked after
every flow (``flask ledger check``)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from marketplace.bookings.models import Booking, BookingEvent
from marketplace.extensions import db
from marketplace.payments import service
from marketplace.payments.errors import PaymentProviderUnavailable
from marketplace.payments.models import MandateAcceptance, PaymentIntentRow, Refund, SavedCard
from tests.conftest import drain_jobs
from tests.factories import (
    auth_headers,
    book,
    booking_body,
    make_agency,
    make_vehicle,
    make_verified_customer,
    mandate_acceptance,
    pay,
    save_card,
)
from tests.payments.helpers import raw_client


def assert_ledger_ok(app: Any) -> None:
    result = app.test_cli_runner().invoke(args=["ledger", "check"])
    assert result.exit_code == 0, result.output
    assert "ledger ok" in result.output


def _intents_at_stripe(server: Any) -> int:
    return len(raw_client(server).v1.payment_intents.list(params={"limit": 100}).data)


def _setup(client: Any, server: Any, *, daily: int = 20000, deposit: int = 100000, **booking: Any) -> tuple:
    vehicle = make_vehicle(make_agency(), daily_price_fils=daily, deposit_fils=deposit)
    headers = auth_headers(client, make_verified_customer())
    card = save_card(client, headers, server)
    return headers, card, book(client, headers, vehicle, **booking)


def _booking(reference: str) -> Booking:
    db.session.expire_all()
    return db.session.execute(select(Booking).where(Booking.reference == reference)).scalar_one()


# ---- saved cards (P-19) -------------------------------------------------------------------------------------


def test_cards_are_saved_listed_by_brand_last4_expiry_made_default_and_removed(app, client, app_ctx, stripe_gateway):
    # enforces P-19
    headers = auth_headers(client, make_verified_customer())
    first = save_card(client, headers, stripe_gateway)
    second = save_card(client, headers, stripe_gateway, "5555555555554444")
    listed = client.get("/api/v1/me/payment-methods", headers=headers).get_json()["items"]
    assert [set(card) for card in listed] == [{"id", "brand", "last4", "exp_month", "exp_year", "is_default"}] * 2
    assert [(c["brand"], c["last4"], c["is_default"]) for c in listed] == [
        ("visa", "4242", True), ("mastercard", "4444", False)]
    assert client.post(f"/api/v1/me/payment-methods/{second}/default", headers=headers).status_code == 200
    listed = client.get("/api/v1/me/payment-methods", headers=headers).get_json()["items"]
    assert [c["is_default"] for c in listed] == [False, True]
    assert client.patch(f"/api/v1/me/payment-methods/{first}", json={"is_default": True},
                        headers=headers).get_json()["is_default"] is True
    assert client.patch(f"/api/v1/me/payment-methods/{second}", json={"is_default": True},
                        headers=headers).status_code == 200
    assert client.delete(f"/api/v1/me/payment-methods/{second}", headers=headers).status_code == 204
    listed = client.get("/api/v1/me/payment-methods", headers=headers).get_json()["items"]
    assert [(c["id"], c["is_default"]) for c in listed] == [(first, True)]
    stored = db.session.execute(select(SavedCard)).scalars().all()
    assert all(card.stripe_payment_method_id.startswith("pm_") for card in stored)


def test_another_customers_card_is_not_found(app, client, app_ctx, stripe_gateway):
    headers = auth_headers(client, make_verified_customer())
    card = save_card(client, headers, stripe_gateway)
    other = auth_headers(client, make_verified_customer())
    assert client.delete(f"/api/v1/me/payment-methods/{card}", headers=other).status_code == 404
    assert client.post(f"/api/v1/me/payment-methods/{card}/default", headers=other).status_code == 404


def test_card_numbers_and_cvv_are_refused_anywhere_and_never_logged(app, client, app_ctx, stripe_gateway, caplog):
    # enforces P-19
    headers, card, reference = _setup(client, stripe_gateway)
    caplog.set_level(logging.DEBUG)
    planted = "4000 0566 5566 5556"
    bodies = [
        {"payment_method_id": card, "mit_mandate": mandate_acceptance(), "device": planted},
        {"payment_method_id": card, "mit_mandate": {**mandate_acceptance(), "extra": {"deep": [planted]}}},
        {"payment_method_id": card, "mit_mandate": mandate_acceptance(), "cvc": "123"},
        {"payment_method_id": card, "mit_mandate": mandate_acceptance(), "card": {"number": 4000056655665556}},
    ]
    for body in bodies:
        response = client.post(f"/api/v1/bookings/{reference}/pay", json=body, headers=headers)
        assert response.status_code == 422, body
        assert response.get_json()["error"]["code"] == "card_data_refused"
        assert "5556" not in response.get_data(as_text=True)
    assert planted not in caplog.text and "4000056655665556" not in caplog.text
    # a long number that fails the Luhn check is not card data: the schema's own rules answer
    response = client.post(f"/api/v1/bookings/{reference}/pay", headers=headers,
                           json={"payment_method_id": card, "mit_mandate": mandate_acceptance(),
                                 "device": "4000056655665557"})
    assert response.status_code == 200, response.get_json()
    assert _booking(reference).status == "confirmed"


# ---- paying a booking, the mandate, the deposit -----------------------------------------------------------


def test_paying_confirms_once_records_the_mandate_and_holds_the_deposit(app, client, app_ctx, stripe_gateway):
    # enforces P-20, P-22
    headers, card, reference = _setup(client, stripe_gateway)
    response = pay(client, headers, reference, card)
    assert response.status_code == 200, response.get_json()
    data = response.get_json()
    assert data["booking_status"] == "confirmed"
    assert data["payment"]["state"] == "succeeded"
    assert data["deposit"]["state"] == "held" and data["deposit"]["amount"] == 100000
    assert data["deposit"]["capture_before"] is not None
    assert _intents_at_stripe(stripe_gateway) == 2  # the payment and the hold
    again = pay(client, headers, reference, card)
    assert again.status_code == 200 and again.get_json()["payment"]["state"] == "succeeded"
    assert _intents_at_stripe(stripe_gateway) == 2  # nothing charged twice
    booking = _booking(reference)
    confirmations = db.session.execute(select(func.count()).select_from(BookingEvent).where(
        BookingEvent.booking_id == booking.id, BookingEvent.to_status == "confirmed")).scalar_one()
    assert confirmations == 1
    mandate = client.get(f"/api/v1/bookings/{reference}/mandate", headers=headers).get_json()
    accepted = mandate_acceptance()
    assert (mandate["text_version"], mandate["text_sha256"]) == (accepted["version"], accepted["text_sha256"])
    assert "90 days" in mandate["text"] and mandate["card"] == {"brand": "visa", "last4": "4242"}
    row = db.session.execute(select(MandateAcceptance)).scalars().first()
    assert row is not None and row.stripe_payment_method_id.startswith("pm_") and row.accepted_at is not None
    assert_ledger_ok(app)


def test_the_mandate_must_be_the_exact_text_shown(app, client, app_ctx, stripe_gateway):  # enforces P-20
    headers, card, reference = _setup(client, stripe_gateway)
    body = {"payment_method_id": card, "mit_mandate": {**mandate_acceptance(), "text_sha256": "f" * 64}}
    response = client.post(f"/api/v1/bookings/{reference}/pay", json=body, headers=headers)
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "mandate_not_accepted"
    body = {"payment_method_id": card, "mit_mandate": {**mandate_acceptance(), "accepted": False}}
    assert client.post(f"/api/v1/bookings/{reference}/pay", json=body, headers=headers).status_code == 422
    assert _booking(reference).status == "pending_payment" and _intents_at_stripe(stripe_gateway) == 0


def test_a_declined_card_leaves_a_clear_state_and_a_retry(app, client, app_ctx, stripe_gateway):
    headers, _, reference = _setup(client, stripe_gateway)
    failing = save_card(client, headers, stripe_gateway, "4000000000000341")  # attaches, every charge declines
    response = pay(client, headers, reference, failing)
    assert response.status_code == 402 and response.get_json()["error"]["code"] == "card_declined"
    status = client.get(f"/api/v1/bookings/{reference}/payment", headers=headers).get_json()
    assert status["booking_status"] == "pending_payment" and status["payment"]["state"] == "failed"
    good = save_card(client, headers, stripe_gateway)
    response = pay(client, headers, reference, good)
    assert response.status_code == 200 and response.get_json()["booking_status"] == "confirmed"
    attempts = db.session.execute(select(PaymentIntentRow.attempt, PaymentIntentRow.state).where(
        PaymentIntentRow.kind == "booking").order_by(PaymentIntentRow.attempt)).all()
    assert [tuple(a) for a in attempts] == [(1, "failed"), (2, "succeeded")]
    assert_ledger_ok(app)


def test_a_card_securing_a_live_booking_cannot_be_removed(app, client, app_ctx, stripe_gateway):  # P-19, P-20
    headers, card, reference = _setup(client, stripe_gateway)
    assert pay(client, headers, reference, card).status_code == 200
    response = client.delete(f"/api/v1/me/payment-methods/{card}", headers=headers)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "payment_method_in_use"


def test_an_unpaid_booking_still_expires_and_cannot_be_paid_after(app, client, app_ctx, stripe_gateway):
    headers, card, reference = _setup(client, stripe_gateway)
    booking = _booking(reference)
    booking.pay_by = booking.pay_by - timedelta(minutes=16)  # the 15 minutes ran out
    db.session.commit()
    response = pay(client, headers, reference, card)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "booking_not_payable"
    assert _booking(reference).status == "expired" and _intents_at_stripe(stripe_gateway) == 0


class _LostAnswer:
    """The gateway of a worker killed right after Stripe acted: the call happened, its answer never came."""

    def __init__(self, inner: Any, method: str) -> None:
        self.inner, self.method, self.lost = inner, method, 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.inner, name)
        if name != self.method:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            real(*args, **kwargs)
            self.lost += 1
            raise PaymentProviderUnavailable()

        return call


def test_a_lost_answer_then_the_webhook_confirms_and_a_retry_reuses_the_intent(app, client, app_ctx, stripe_gateway):
    headers, card, reference = _setup(client, stripe_gateway, deposit=0)
    gateway = app.extensions["payments_gateway"]
    app.extensions["payments_gateway"] = _LostAnswer(gateway, "pay_booking")
    response = pay(client, headers, reference, card)
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "payment_provider_unavailable"
    app.extensions["payments_gateway"] = gateway
    assert _booking(reference).status == "pending_payment"
    row = db.session.execute(select(PaymentIntentRow)).scalar_one()
    assert row.state == "pending" and row.stripe_intent_id is None
    # the webhook comes first: it finds our row through the intent's metadata
    intent = raw_client(stripe_gateway).v1.payment_intents.list(params={"limit": 10}).data[0].to_dict()
    assert post_event(client, "payment_intent.succeeded", intent).status_code == 200
    assert _booking(reference).status == "confirmed"
    # the customer's retry replays the same key: the booking is paid, nothing new at Stripe
    response = pay(client, headers, reference, card)
    assert response.status_code == 200 and response.get_json()["payment"]["state"] == "succeeded"
    assert _intents_at_stripe(stripe_gateway) == 1
    assert_ledger_ok(app)


def test_the_api_answer_first_then_the_webhook_changes_nothing(app, client, app_ctx, stripe_gateway):
    headers, card, reference = _setup(client, stripe_gateway, deposit=0)
    assert pay(client, headers, reference, card).status_code == 200
    intent = raw_client(stripe_gateway).v1.payment_intents.list(params={"limit": 10}).data[0].to_dict()
    for _ in range(3):
        assert post_event(client, "payment_intent.succeeded", intent).status_code == 200
    booking = _booking(reference)
    assert db.session.execute(select(func.count()).select_from(BookingEvent).where(
        BookingEvent.booking_id == booking.id, BookingEvent.to_status == "confirmed")).scalar_one() == 1
    assert_ledger_ok(app)


def test_a_stripe_outage_is_a_503_with_a_stable_code_and_nothing_half_done(app, client, app_ctx, stripe_gateway):
    headers, card, reference = _setup(client, stripe_gateway)
    app.extensions["payments_gateway"] = stripe_gateway.gateway(api_base="http://127.0.0.1:9")  # nothing listens
    response = pay(client, headers, reference, card)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "payment_provider_unavailable"
    assert _booking(reference).status == "pending_payment"
    assert db.session.execute(select(PaymentIntentRow.state)).scalars().all() == ["pending"]
    assert_ledger_ok(app)


# ---- cancellation refunds ----------------------------------------------------------------------------------


def test_a_late_cancellation_refunds_all_but_the_fee_and_a_late_event_never_undoes_it(
    app, client, app_ctx, stripe_gateway,
):  # enforces P-22
    headers, card, reference = _setup(client, stripe_gateway, start_in_hours=24, hours=72)
    assert pay(client, headers, reference, card).status_code == 200
    response = client.post(f"/api/v1/bookings/{reference}/cancel", json={"reason": "plans changed"}, headers=headers)
    assert response.status_code == 200, response.get_json()
    drain_jobs(app)  # the refund and the deposit release are jobs after the commit
    booking = _booking(reference)
    fee = booking.cancellation_fee_fils
    assert 0 < fee < booking.total_fils
    refund = db.session.execute(select(Refund)).scalar_one()
    assert refund.amount_fils == booking.total_fils - fee
    assert refund.state == "succeeded" and refund.stripe_refund_id.startswith("re_")
    stripe_refunds = raw_client(stripe_gateway).v1.refunds.list(params={"limit": 10}).data
    assert [r.amount for r in stripe_refunds] == [booking.total_fils - fee]
    status = client.get(f"/api/v1/bookings/{reference}/payment", headers=headers).get_json()
    assert status["deposit"]["state"] == "released"
    # a late payment_intent.succeeded changes nothing: the booking stays cancelled, the refund stands
    intent = raw_client(stripe_gateway).v1.payment_intents.list(params={"limit": 10}).data[-1].to_dict()
    assert post_event(client, "payment_intent.succeeded", intent).status_code == 200
    assert _booking(reference).status == "cancelled"
    assert db.session.execute(select(Refund.state)).scalars().all() == ["succeeded"]
    assert_ledger_ok(app)


def test_an_early_cancellation_refunds_everything(app, client, app_ctx, stripe_gateway):  # enforces P-22
    headers, card, reference = _setup(client, stripe_gateway, start_in_hours=96)
    assert pay(client, headers, reference, card).status_code == 200
    assert client.post(f"/api/v1/bookings/{reference}/cancel", json={"reason": "x"}, headers=headers).status_code == 200
    drain_jobs(app)
    booking = _booking(reference)
    assert db.session.execute(select(Refund.amount_fils)).scalars().all() == [booking.total_fils]
    assert service.balance(service.Account.CUSTOMER_FUNDS, booking_id=booking.id) == 0
    assert_ledger_ok(app)


# ---- webhooks ------------------------------------------------------------------------------------------------


_event_ids = iter(range(1, 10**6))


def post_event(client: Any, kind: str, obj: dict[str, Any], *, event_id: str | None = None,
               secret: str | None = None, signature: str | None = None) -> Any:
    import time

    import stripe

    from tests.stripe_fixtures import WEBHOOK_SECRET

    body = json.dumps({"id": event_id or f"evt_test_{next(_event_ids)}", "object": "event", "type": kind,
                       "data": {"object": obj}})
    if signature is None:
        signature = stripe.WebhookSignature.generate_signature_header(body, secret or WEBHOOK_SECRET,
                                                                      timestamp=int(time.time()))
    return client.post("/api/v1/payments/stripe/webhook", data=body, content_type="application/json",
                       headers={"Stripe-Signature": signature} if signature else {})


def test_a_second_payment_stripe_reports_for_a_paid_booking_is_refunded(app, client, app_ctx, stripe_gateway):
    headers, card, reference = _setup(client, stripe_gateway, deposit=0)
    assert pay(client, headers, reference, card).status_code == 200
    first = db.session.execute(select(PaymentIntentRow)).scalar_one()
    twin = PaymentIntentRow(booking_id=first.booking_id, kind="booking", attempt=2, idempotency_key="pay:twin",
                            amount_fils=first.amount_fils, card_id=first.card_id, state="failed",
                            error_code="idempotency_conflict")
    db.session.add(twin)
    db.session.commit()
    pm = db.session.get(SavedCard, first.card_id).stripe_payment_method_id
    customer = service.customer_id_for(_booking(reference).customer_id)
    intent = raw_client(stripe_gateway).v1.payment_intents.create(params={
        "amount": first.amount_fils, "currency": "aed", "customer": customer, "payment_method": pm,
        "allowed_payment_method_types": ["card"], "confirm": True, "metadata": {"payment": str(twin.id)}})
    assert post_event(client, "payment_intent.succeeded", intent.to_dict()).status_code == 200
    drain_jobs(app)
    db.session.expire_all()
    assert db.session.get(PaymentIntentRow, twin.id).state == "succeeded"  # Stripe's word wins
    refunds = db.session.execute(select(Refund)).scalars().all()
    assert [(r.payment_id, r.amount_fils, r.state) for r in refunds] == [(twin.id, first.amount_fils, "succeeded")]
    assert "paid twice" in (_booking(reference).flag_reason or "")
    assert_ledger_ok(app)


# ---- tax invoices for the payment flows (P-23) ------------------------------------------------------------


def test_a_paid_booking_gets_its_tax_invoices_once_and_a_refund_its_credit_notes(
    app, client, app_ctx, stripe_gateway,
):  # enforces P-23
    headers, card, reference = _setup(client, stripe_gateway, start_in_hours=24, hours=72)
    assert pay(client, headers, reference, card).status_code == 200
    # the webhook after the API answer issues nothing more
    intent = raw_client(stripe_gateway).v1.payment_intents.list(params={"limit": 10}).data[-1].to_dict()
    assert post_event(client, "payment_intent.succeeded", intent).status_code == 200
    booking = _booking(reference)
    listed = client.get("/api/v1/me/invoices", headers=headers).get_json()["items"]
    assert len(listed) == 2
    documents = [client.get(f"/api/v1/invoices/{item['number']}", headers=headers).get_json() for item in listed]
    suppliers = sorted(doc["supplier"]["name"] for doc in documents)
    assert suppliers == sorted([app.config["SETTINGS"].platform_legal_name, booking_agency_name(booking)])
    assert sum(doc["total"] for doc in documents) == booking.total_fils
    assert sum(doc["vat"] for doc in documents) == booking.vat_fils
    assert all(doc["booking_reference"] == reference for doc in documents)
    # a late cancellation refunds all but the fee: credit notes for exactly the refund, never beyond an invoice
    assert client.post(f"/api/v1/bookings/{reference}/cancel", json={"reason": "plans changed"},
                       headers=headers).status_code == 200
    drain_jobs(app)
    refund = db.session.execute(select(Refund)).scalar_one()
    assert refund.state == "succeeded"
    listed = client.get("/api/v1/me/invoices", headers=headers).get_json()["items"]
    notes = [client.get(f"/api/v1/invoices/{item['number']}", headers=headers).get_json()
             for item in listed if "-CN-" in item["number"]]
    assert len(notes) == 2
    assert sum(note["total"] for note in notes) == refund.amount_fils
    assert_ledger_ok(app)


def booking_agency_name(booking: Booking) -> str:
    from marketplace.agencies.service import agency_by_id

    return agency_by_id(booking.agency_id).business_name


# ---- Connect onboarding and payouts readiness (P-22: payouts reach an onboarded connected account) ---------------


def _open_link(url: str) -> int:
    """The owner's browser at Stripe's hosted onboarding (the extension's loopback stand-in); no redirect followed."""
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(url, timeout=10)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def test_the_owner_onboards_the_agency_and_account_updated_makes_it_ready(app, client, app_ctx, stripe_gateway):
    # enforces P-22 (payouts need a ready connected account); against localstripe with the extension's Connect
    from marketplace.permissions import Role
    from tests.factories import make_staff

    agency = make_agency()
    owner = auth_headers(client, make_staff(Role.AGENCY_OWNER, agency=agency))
    for role in (Role.AGENCY_MANAGER, Role.AGENCY_STAFF):  # owner only
        other = auth_headers(client, make_staff(role, agency=agency))
        assert client.post("/api/v1/agency/payouts/onboarding", json={}, headers=other).status_code == 403
    started = client.post("/api/v1/agency/payouts/onboarding", json={}, headers=owner)
    assert started.status_code == 201, started.get_json()
    body = started.get_json()
    assert body["account_id"].startswith("acct_") and body["ready"] is False and body["required"] is False
    assert body["onboarding_url"].startswith(stripe_gateway.base_url)
    again = client.post("/api/v1/agency/payouts/onboarding", json={}, headers=owner).get_json()
    assert again["account_id"] == body["account_id"] and again["onboarding_url"] != body["onboarding_url"]
    assert len(raw_client(stripe_gateway).v1.accounts.list().data) == 1  # created once
    assert not service.payouts_ready(agency.id)

    assert _open_link(body["onboarding_url"]) == 302  # the owner fills in Stripe's form
    account = raw_client(stripe_gateway).v1.accounts.retrieve(body["account_id"])
    assert post_event(client, "account.updated", account.to_dict()).get_json()["outcome"] == "applied"
    db.session.expire_all()
    assert service.payouts_ready(agency.id)
    disabled = {**account.to_dict(), "payouts_enabled": False}  # Stripe later disables it (requirements due)
    assert post_event(client, "account.updated", disabled).get_json()["outcome"] == "applied"
    db.session.expire_all()
    assert not service.payouts_ready(agency.id)
    unknown = post_event(client, "account.updated", {"id": "acct_someone_else", "object": "account"})
    assert unknown.get_json()["outcome"] == "unknown_account"


@pytest.fixture
def production(app, monkeypatch):
    """The running app's settings as in production (MARKETPLACE_ENV=production), for this test only."""
    import dataclasses

    monkeypatch.setitem(app.config, "SETTINGS", dataclasses.replace(app.config["SETTINGS"], env="production"))


def test_in_production_an_agency_without_ready_payouts_neither_lists_nor_rents_out(
        app, client, app_ctx, stripe_gateway, production):
    # enforces P-22 in production: the money of every booking must be able to reach the agency
    from marketplace.permissions import Role
    from tests.factories import make_staff

    agency = make_agency()
    vehicle = make_vehicle(agency)  # listed before the rule (or before Stripe disabled the account)
    owner = auth_headers(client, make_staff(Role.AGENCY_OWNER, agency=agency))
    listing = client.post("/api/v1/agency/vehicles", headers=owner, json={
        "make": "Kia", "model": "Rio", "year": 2024, "category": "economy", "plate": "DXB Q 77123", "seats": 5,
        "transmission": "automatic", "city": "Dubai", "latitude": 25.2, "longitude": 55.3,
        "daily_price_fils": 12000, "deposit_fils": 50000, "mileage_limit_km_per_day": 250, "status": "listed"})
    assert listing.status_code == 409 and listing.get_json()["error"]["code"] == "agency_payouts_not_ready"
    customer = auth_headers(client, make_verified_customer())
    refused = client.post("/api/v1/bookings", json=booking_body(vehicle), headers=customer)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "agency_payouts_not_ready"
    assert client.post("/api/v1/agency/payouts/onboarding", json={}, headers=owner).get_json()["required"] is True

    service.connect_payout_account(agency.id, raw_client(stripe_gateway).v1.accounts.create(
        params={"type": "standard"}).id)
    db.session.commit()
    assert client.post("/api/v1/bookings", json=booking_body(vehicle), headers=customer).status_code == 201


def test_outside_production_an_agency_without_payouts_still_rents_out(app, client, app_ctx):
    vehicle = make_vehicle(make_agency())
    customer = auth_headers(client, make_verified_customer())
    assert client.post("/api/v1/bookings", json=booking_body(vehicle), headers=customer).status_code == 201
