"""Webhooks, deposits, reconciliation and the ledger check. localstripe where it has the behaviour; where it
has not (no charge.* / setup_intent.* events, no hold expiry, no capture_before), signed synthetic events
and a clock moved with time_machine, as STRIPE.md §3.3-3.4 says."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import time_machine
from sqlalchemy import func, select

from marketplace.agencies.service import agency_by_id
from marketplace.extensions import db, utcnow
from marketplace.money import Money
from marketplace.notifications.models import OutboxMessage
from marketplace.payments import service
from marketplace.payments.errors import CardDeclined
from marketplace.payments.models import (
    CardSetup,
    JournalEntry,
    JournalLine,
    PaymentIntentRow,
    Refund,
    SavedCard,
    WebhookEvent,
)
from marketplace.payments.schemas import card_data_path, looks_like_card_number
from tests.conftest import drain_jobs
from tests.factories import auth_headers, make_verified_customer, pay, save_card
from tests.payments.helpers import raw_client, sdk_confirm_setup
from tests.payments.test_views import _booking, _setup, assert_ledger_ok, post_event


def _count(model: Any) -> int:
    db.session.expire_all()
    return int(db.session.execute(select(func.count()).select_from(model)).scalar_one())


# ---- card data (P-19) -----------------------------------------------------------------------------------------


def test_card_number_detection():  # enforces P-19
    assert looks_like_card_number("4242424242424242")
    assert looks_like_card_number("my card is 4242-4242-4242-4242 ok")
    assert looks_like_card_number("378282246310005")  # Amex, 15 digits
    assert not looks_like_card_number("4242424242424241")  # fails Luhn
    assert not looks_like_card_number("0000000000000000")  # no card number starts with 0
    assert not looks_like_card_number("+971500000001")  # a phone number is too short
    assert not looks_like_card_number("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
    assert card_data_path({"a": {"b": [1, {"c": "4242424242424242"}]}}) == "a.b[1].c"
    assert card_data_path({"note": {"cvv": "123"}}) == "note.cvv"
    assert card_data_path({"device": "Pixel 8", "version": "2026-11-01"}) is None


def test_a_uuid_is_never_taken_for_a_card_number():  # P-19: a saved card's own id is not card data
    # this card id reads "8-4205-9486-1611": 13 digits passing Luhn; paying with it was refused by chance
    assert not looks_like_card_number("3c09fbc5-37c8-4205-9486-1611fe2f6286")
    assert card_data_path({"payment_method_id": "3c09fbc5-37c8-4205-9486-1611fe2f6286"}) is None
    assert looks_like_card_number("id 3c09fbc5 card 4242-4242-4242-4242")


# ---- webhooks --------------------------------------------------------------------------------------------------


def test_missing_or_bad_signatures_are_400_and_change_nothing(app, client, app_ctx, stripe_gateway):
    headers, card, reference = _setup(client, stripe_gateway, deposit=0)
    assert pay(client, headers, reference, card).status_code == 200
    intent = raw_client(stripe_gateway).v1.payment_intents.list(params={"limit": 1}).data[0].to_dict()
    for response in (post_event(client, "payment_intent.canceled", intent, signature=""),
                     post_event(client, "payment_intent.canceled", intent, secret="whsec_forged_" + "1" * 24),
                     post_event(client, "payment_intent.canceled", intent, signature="t=1,v1=abc")):
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "invalid_signature"
    assert _count(WebhookEvent) == 0


def test_unknown_events_are_acknowledged_and_ignored(app, client, app_ctx, stripe_gateway):
    response = post_event(client, "customer.created", {"id": "cus_x", "object": "customer"})
    assert response.status_code == 200 and response.get_json()["outcome"] == "ignored"


def test_the_same_event_ten_times_five_at_once_takes_effect_once(app, client, app_ctx, stripe_gateway):
    headers, card, reference = _setup(client, stripe_gateway, deposit=0)
    gateway = app.extensions["payments_gateway"]

    class Unanswered:  # the API answer is lost, so the webhook is what confirms the booking
        def __getattr__(self, name: str) -> Any:
            real = getattr(gateway, name)
            if name != "pay_booking":
                return real

            def call(**kwargs: Any) -> Any:
                real(**kwargs)
                from marketplace.payments.errors import PaymentProviderUnavailable

                raise PaymentProviderUnavailable()
            return call

    app.extensions["payments_gateway"] = Unanswered()
    assert pay(client, headers, reference, card).status_code == 503
    app.extensions["payments_gateway"] = gateway
    intent = raw_client(stripe_gateway).v1.payment_intents.list(params={"limit": 1}).data[0].to_dict()
    answers: list[int] = []

    def deliver() -> None:
        with app.app_context():
            answers.append(post_event(app.test_client(), "payment_intent.succeeded", intent,
                                      event_id="evt_same_one").status_code)

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for _ in range(5):
        deliver()
    assert answers == [200] * 10
    assert _count(WebhookEvent) == 1
    assert _booking(reference).status == "confirmed"
    assert db.session.execute(select(func.count()).select_from(JournalEntry).where(
        JournalEntry.kind == "payment")).scalar_one() == 1
    assert_ledger_ok(app)


def test_setup_intent_succeeded_saves_the_card_without_the_app(app, client, app_ctx, stripe_gateway):  # P-19
    headers = auth_headers(client, make_verified_customer())
    started = client.post("/api/v1/me/payment-methods/setup", headers=headers).get_json()
    from marketplace.payments.gateway import CardSetup as Setup

    status, body = sdk_confirm_setup(stripe_gateway, Setup(started["setup_intent_id"], "x", started["client_secret"]))
    assert status == 200
    # localstripe sends no setup_intent.* events: a signed synthetic one, as Stripe would send
    response = post_event(client, "setup_intent.succeeded", body)
    assert response.status_code == 200 and response.get_json()["outcome"] == "applied"
    drain_jobs(app)  # saving the card is a job (it calls Stripe), scheduled with the event row
    cards = client.get("/api/v1/me/payment-methods", headers=headers).get_json()["items"]
    assert [(c["brand"], c["last4"]) for c in cards] == [("visa", "4242")]
    # the app's own confirm afterwards finds the same card
    again = client.post("/api/v1/me/payment-methods", json={"setup_intent_id": started["setup_intent_id"]},
                        headers=headers)
    assert again.status_code == 201 and again.get_json()["id"] == cards[0]["id"]
    assert _count(SavedCard) == 1 and db.session.execute(select(CardSetup.status)).scalar_one() == "succeeded"


# ---- deposits (P-22) -------------------------------------------------------------------------------------------


def _paid_with_deposit(client: Any, server: Any, **booking: Any) -> tuple[dict[str, str], str, int]:
    headers, card, reference = _setup(client, server, **booking)
    assert pay(client, headers, reference, card).status_code == 200
    return headers, reference, _booking(reference).id


def test_release_and_partial_capture_post_balanced_entries(app, client, app_ctx, stripe_gateway):  # P-22
    _, _, first = _paid_with_deposit(client, stripe_gateway)
    released = service.release_deposit(first)
    db.session.commit()
    assert released is not None and released.state == "released"
    assert service.balance(service.Account.DEPOSITS_HELD, booking_id=first) == 0
    _, _, second = _paid_with_deposit(client, stripe_gateway)
    captured = service.capture_deposit(second, Money(30000))
    db.session.commit()
    assert (captured.state, captured.captured_fils) == ("captured", 30000)
    assert service.balance(service.Account.DEPOSITS_CAPTURED, booking_id=second) == -30000
    assert_ledger_ok(app)


def test_a_hold_about_to_lapse_is_replaced_new_first_then_the_old_released(app, client, app_ctx, stripe_gateway):
    # enforces P-22: a long rental outlives the first authorisation
    _, reference, booking_id = _paid_with_deposit(client, stripe_gateway, start_in_hours=24, hours=24 * 20)
    old = service.current_deposit(booking_id)
    assert old is not None and old.capture_before is not None
    old_id = old.id
    with time_machine.travel(old.capture_before - timedelta(hours=12), tick=False):
        assert service.rehold_due_deposits() == 1
        db.session.commit()
    rows = db.session.execute(select(PaymentIntentRow).where(PaymentIntentRow.kind == "deposit")
                              .order_by(PaymentIntentRow.id)).scalars().all()
    assert [(r.attempt, r.state) for r in rows] == [(1, "released"), (2, "held")]
    assert rows[1].replaces_id == old_id and rows[1].idempotency_key == f"deposit:{booking_id}:hold:2"
    assert _booking(reference).flagged_at is None
    assert_ledger_ok(app)


def test_a_failed_re_hold_falls_back_to_the_mandate_and_alerts(app, client, app_ctx, stripe_gateway):  # P-22
    _, reference, booking_id = _paid_with_deposit(client, stripe_gateway, start_in_hours=24, hours=24 * 20)
    old = service.current_deposit(booking_id)
    assert old is not None and old.capture_before is not None
    gateway = app.extensions["payments_gateway"]

    class Declining:
        def __getattr__(self, name: str) -> Any:
            if name == "hold_deposit":
                def refuse(**_: Any) -> Any:
                    raise CardDeclined(decline_code="insufficient_funds")
                return refuse
            return getattr(gateway, name)

    app.extensions["payments_gateway"] = Declining()
    with time_machine.travel(old.capture_before - timedelta(hours=12), tick=False):
        assert service.rehold_due_deposits() == 0
        db.session.commit()
    app.extensions["payments_gateway"] = gateway
    states = db.session.execute(select(PaymentIntentRow.state).where(PaymentIntentRow.kind == "deposit")
                                .order_by(PaymentIntentRow.id)).scalars().all()
    assert states == ["held", "failed"]  # the old hold stays until it runs out
    assert "re-hold failed" in (_booking(reference).flag_reason or "")
    booking = _booking(reference)
    alerts = db.session.execute(
        select(OutboxMessage).where(OutboxMessage.kind == "deposit_rehold_failed")).scalars().all()
    assert [m.to_address for m in alerts] == [agency_by_id(booking.agency_id).contact_email]  # the agency is told
    assert reference in alerts[0].subject
    assert_ledger_ok(app)


def test_a_lapsed_hold_is_recorded_from_charge_expired(app, client, app_ctx, stripe_gateway):  # P-22
    _, reference, booking_id = _paid_with_deposit(client, stripe_gateway)
    hold = service.current_deposit(booking_id)
    assert hold is not None
    # localstripe never lapses a hold nor sends charge.expired: a signed synthetic event
    response = post_event(client, "charge.expired", {"id": "ch_lapsed", "object": "charge",
                                                     "payment_intent": hold.stripe_intent_id})
    assert response.status_code == 200 and response.get_json()["outcome"] == "applied"
    db.session.expire_all()
    assert db.session.get(PaymentIntentRow, hold.id).state == "lapsed"
    assert "lapsed" in (_booking(reference).flag_reason or "")
    assert_ledger_ok(app)


# ---- reconciliation and the ledger check --------------------------------------------------------------------


def test_reconciliation_settles_a_payment_whose_answer_and_webhook_were_lost(app, client, app_ctx, stripe_gateway):
    headers, card, reference = _setup(client, stripe_gateway, deposit=0)
    assert pay(client, headers, reference, card).status_code == 200
    row = db.session.execute(select(PaymentIntentRow)).scalar_one()
    # as if the answer had been lost after Stripe charged: the row is pending, the booking unpaid
    row.state = "pending"
    db.session.execute(JournalLine.__table__.delete())
    db.session.execute(JournalEntry.__table__.delete())
    booking = _booking(reference)
    booking.status = "pending_payment"
    db.session.commit()
    with time_machine.travel(utcnow() + timedelta(minutes=20), tick=False):
        counts = service.reconcile()
        db.session.commit()
    assert counts["repaired"] == 1
    assert _booking(reference).status == "confirmed"
    assert_ledger_ok(app)


def test_ledger_check_fails_on_a_planted_imbalance(app, client, app_ctx, stripe_gateway):  # negative control
    headers, card, reference = _setup(client, stripe_gateway, deposit=0)
    assert pay(client, headers, reference, card).status_code == 200
    assert_ledger_ok(app)
    line = db.session.execute(select(JournalLine).limit(1)).scalar_one()
    line.amount_fils += 1
    db.session.commit()
    result = app.test_cli_runner().invoke(args=["ledger", "check"])
    assert result.exit_code == 1 and "does not balance" in result.output


def test_a_refund_job_killed_after_stripe_refunded_never_refunds_twice(app, client, app_ctx, stripe_gateway):
    # the extension replays Idempotency-Key like Stripe (stock localstripe ignores it, STRIPE.md §3.4)
    from tests.payments.test_views import _LostAnswer

    headers, card, reference = _setup(client, stripe_gateway, start_in_hours=96, deposit=0)
    assert pay(client, headers, reference, card).status_code == 200
    gateway = app.extensions["payments_gateway"]
    app.extensions["payments_gateway"] = lost = _LostAnswer(gateway, "refund")
    assert client.post(f"/api/v1/bookings/{reference}/cancel", json={"reason": "x"}, headers=headers).status_code == 200
    drain_jobs(app)  # the job reaches Stripe, then "dies" before recording the answer
    app.extensions["payments_gateway"] = gateway
    assert lost.lost == 1
    refund = db.session.execute(select(Refund)).scalar_one()
    assert refund.state == "pending" and refund.stripe_refund_id is None
    service.execute_refund(refund.id)  # the job again: same row, same key
    db.session.commit()
    stripe_refunds = raw_client(stripe_gateway).v1.refunds.list(params={"limit": 10}).data
    assert len(stripe_refunds) == 1
    db.session.expire_all()
    assert db.session.get(Refund, refund.id).stripe_refund_id == stripe_refunds[0].id
    assert_ledger_ok(app)


# ---- nothing secret is stored (P-19) -----------------------------------------------------------------------


_UUID = __import__("re").compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _leaks(app: Any, needles: list[str]) -> list[str]:
    """Every stored cell holding one of ``needles`` or anything that looks like a card number."""
    from sqlalchemy import text

    found = []
    with app.app_context(), db.engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            result = conn.execute(text(f'SELECT * FROM "{table.name}"'))  # noqa: S608 - our own table names
            columns = list(result.keys())
            for row in result:
                for column, cell in zip(columns, row, strict=True):
                    value = str(cell)
                    found += [f"{table.name}: {needle}" for needle in needles if needle in value]
                    # a TRN is a 15-digit tax number: one in ten passes Luhn by chance (the factory's
                    # sequence made some do, depending on test order), and it is no card
                    if column.endswith("trn"):
                        continue
                    if not _UUID.match(value) and looks_like_card_number(value):
                        found.append(f"{table.name}.{column}: a card number")
    return found


def test_no_card_number_cvv_or_secret_is_stored_after_the_payment_flows(app, client, app_ctx, stripe_gateway,
                                                                        caplog):  # enforces P-19
    from tests.stripe_fixtures import SECRET_KEY, WEBHOOK_SECRET

    headers, card, reference = _setup(client, stripe_gateway, start_in_hours=96)
    save_card(client, headers, stripe_gateway, "5555555555554444")
    assert pay(client, headers, reference, card).status_code == 200
    assert client.post(f"/api/v1/bookings/{reference}/cancel", json={"reason": "x"}, headers=headers).status_code == 200
    drain_jobs(app)
    needles = ["4242424242424242", "5555555555554444", SECRET_KEY, WEBHOOK_SECRET, "_secret_"]  # _secret_: seti_
    assert _leaks(app, needles) == []
    assert not any(needle in caplog.text for needle in needles[:4])
    # planted-leak control: the scan finds a card number and a secret where they should never be
    row = db.session.execute(select(SavedCard)).scalars().first()
    assert row is not None
    row.brand = "4242424242424242"[:20]
    db.session.execute(JournalEntry.__table__.update().values(memo=f"oops {SECRET_KEY}"))
    db.session.commit()
    leaks = _leaks(app, needles)
    assert "saved_cards.brand: a card number" in leaks and f"journal_entries: {SECRET_KEY}" in leaks


def test_when_the_webhook_confirmed_a_job_holds_the_deposit_later(app, client, app_ctx, stripe_gateway):  # P-22
    from tests.payments.test_views import _LostAnswer

    headers, card, reference = _setup(client, stripe_gateway)
    gateway = app.extensions["payments_gateway"]
    app.extensions["payments_gateway"] = _LostAnswer(gateway, "pay_booking")
    assert pay(client, headers, reference, card).status_code == 503
    app.extensions["payments_gateway"] = gateway
    intent = raw_client(stripe_gateway).v1.payment_intents.list(params={"limit": 1}).data[0].to_dict()
    assert post_event(client, "payment_intent.succeeded", intent).status_code == 200
    booking_id = _booking(reference).id
    assert service.current_deposit(booking_id) is None
    from marketplace import jobs

    with time_machine.travel(utcnow() + timedelta(minutes=11), tick=False):
        jobs.sweep()
        drain_jobs(app)
    db.session.expire_all()
    deposit = service.current_deposit(booking_id)
    assert deposit is not None and deposit.state == "held"
    assert_ledger_ok(app)


# ---- escrow and payouts (P-22) --------------------------------------------------------------------------------


def test_a_completed_booking_is_paid_out_after_the_holding_period_less_the_fee(app, client, app_ctx, stripe_gateway):
    # enforces P-22; Connect transfers come from the extension's stubs (stock localstripe has none)
    from marketplace.agencies.models import Agency
    from marketplace.bookings.models import Booking
    from marketplace.payments.models import Payout
    from marketplace.permissions import Role
    from tests.factories import make_agency, make_staff

    headers, card, reference = _setup(client, stripe_gateway, deposit=0)
    assert pay(client, headers, reference, card).status_code == 200
    booking = _booking(reference)
    account = raw_client(stripe_gateway).v1.accounts.create(params={"type": "express", "country": "AE"})
    service.connect_payout_account(booking.agency_id, account.id)
    booking.status = "completed"  # the handover and return flow is step 7's
    db.session.commit()
    ended = _booking(reference).ends_at
    assert service.release_payouts(now=ended + timedelta(days=2)) == 0  # still in escrow
    assert service.release_payouts(now=ended + timedelta(days=4)) == 1
    db.session.commit()
    assert service.release_payouts(now=ended + timedelta(days=5)) == 0  # a re-run pays once
    db.session.commit()
    payout = db.session.execute(select(Payout)).scalar_one()
    booking = db.session.get(Booking, booking.id)
    assert (payout.state, payout.amount_fils, payout.platform_fee_fils) == (
        "paid", booking.rental_fils, booking.platform_fee_fils)
    transfers = raw_client(stripe_gateway).v1.transfers.list(params={"limit": 10}).data
    assert [(t.amount, t.destination) for t in transfers] == [(booking.rental_fils, account.id)]
    assert service.balance(service.Account.CUSTOMER_FUNDS, booking_id=booking.id) == 0
    assert service.balance(service.Account.PLATFORM_FEE, booking_id=booking.id) == -booking.platform_fee_fils
    assert_ledger_ok(app)
    staff = make_staff(Role.AGENCY_OWNER, agency=db.session.get(Agency, booking.agency_id))
    items = client.get("/api/v1/agency/payouts", headers=auth_headers(client, staff)).get_json()["items"]
    assert [(i["booking"], i["amount"], i["state"]) for i in items] == [(reference, booking.rental_fils, "paid")]
    other = make_staff(Role.AGENCY_OWNER, agency=make_agency())
    assert client.get("/api/v1/agency/payouts", headers=auth_headers(client, other)).get_json()["items"] == []
