"""Post-rental charges (P-20, P-21): the notice with its evidence and 24 hours, accept and dispute, the
disputes team's decision, collection once for exactly the noticed amount (deposit first, then the saved card
off-session), declines on a bounded schedule, the outstanding balance, the 90-day window and platform review.

Everything runs through the API against localstripe on loopback; time-machine moves the clock, and the
sweeper's tick (``sweep_and_drain``) runs what is due, as ``flask jobs sweeper`` and a worker would."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import time_machine
from sqlalchemy import select

from marketplace.audit import AuditEvent
from marketplace.charges import service as charges
from marketplace.charges.states import NOTICE_PERIOD, RETRY_SCHEDULE
from marketplace.extensions import db
from marketplace.jobs import WorkItem
from marketplace.notifications.models import OutboxMessage
from marketplace.payments import service as payments
from marketplace.payments.models import ChargePayment, Payout
from marketplace.payments.states import IntentState
from marketplace.permissions import Role
from tests.charges.helpers import (
    at,
    booking_by_reference,
    charge_row,
    evidence_jpeg,
    raise_charge,
    returned_rental,
)
from tests.conftest import drain_jobs, sweep_and_drain
from tests.factories import auth_headers, book, booking_body, make_agency, make_staff, make_vehicle, save_card

DAY = timedelta(days=1)


def _attempts(charge_public_id: str) -> list[ChargePayment]:
    db.session.rollback()
    return payments.charge_payments_for(charge_row(charge_public_id).id)


def _messages(user_id: int, kind: str) -> list[OutboxMessage]:
    db.session.rollback()
    return list(db.session.execute(select(OutboxMessage).where(
        OutboxMessage.user_id == user_id, OutboxMessage.kind == kind).order_by(OutboxMessage.id)).scalars())


def _audit(action: str) -> list[dict[str, Any]]:
    db.session.rollback()
    rows = db.session.execute(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)).scalars()
    return [json.loads(row.data) for row in rows]


def _noticed(client: Any, server: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    rental = returned_rental(client, server, **kwargs)
    with at(rental.returned_at + timedelta(minutes=20)):
        raised = raise_charge(client, auth_headers(client, rental.manager), rental.reference,
                              incurred_at=rental.returned_at)
        assert raised.status_code == 201, raised.get_json()
    return rental, raised.get_json()


# ---- the notice (P-21) ----------------------------------------------------------------------------------------


def test_a_charge_sends_a_written_notice_with_amount_breakdown_evidence_and_a_due_time(app, client, app_ctx,
                                                                                      stripe_gateway):
    # enforces P-21: the notice by e-mail and in-app, the breakdown, the evidence links, due 24 hours later
    rental, body = _noticed(client, stripe_gateway)
    assert body["status"] == "noticed" and body["amount"] == 15750
    assert body["breakdown"] == {"net": 15000, "vat": 750, "total": 15750, "vat_applies": True, "currency": "AED"}
    sent = charge_row(body["id"])
    assert sent.due_at - sent.notice_sent_at == NOTICE_PERIOD
    (email,) = _messages(rental.customer.user_id, "charge_notice")[-1:]
    assert "AED 157.50" in email.subject and "VAT (5 %): AED 7.50" in email.body_text
    assert f"/api/v1/charges/{body['id']}/evidence/{body['evidence'][0]['id']}" in email.body_text
    assert sent.due_at.strftime("%Y-%m-%d %H:%M UTC") in email.body_text
    channels = {m.channel for m in _messages(rental.customer.user_id, "charge_notice")}
    assert channels == {"email", "in_app"}
    seen = client.get(f"/api/v1/charges/{body['id']}", headers=auth_headers(client, rental.customer)).get_json()
    assert seen["notice"]["sent_at"] is not None and seen["notice"]["in_app_delivered_at"] is not None
    image = client.get(seen["evidence"][0]["url"], headers=auth_headers(client, rental.customer))
    assert image.status_code == 200 and image.mimetype == "image/jpeg" and "no-store" in image.headers["Cache-Control"]
    assert _audit("charge:evidence:view")[-1]["viewer"] == "customer"
    listed = client.get("/api/v1/charges", headers=auth_headers(client, rental.customer)).get_json()
    assert [c["id"] for c in listed["items"]] == [body["id"]]
    # another customer and another agency see nothing of it
    other = returned_rental(client, stripe_gateway)
    with at(other.returned_at + timedelta(minutes=1)):  # staff sign-ins go forward in time (TOTP steps)
        assert client.get(f"/api/v1/charges/{body['id']}", headers=auth_headers(client, other.customer)
                          ).status_code == 404
        stranger = auth_headers(client, other.manager)
        assert client.get(f"/api/v1/agency/charges/{body['id']}", headers=stranger).status_code == 404


def test_evidence_is_required_and_a_booking_not_yet_returned_takes_no_charge(app, client, app_ctx, stripe_gateway):
    rental = returned_rental(client, stripe_gateway)
    with at(rental.returned_at + timedelta(minutes=5)):
        staff = auth_headers(client, rental.manager)
        bare = raise_charge(client, staff, rental.reference, incurred_at=rental.returned_at, files=0)
        assert bare.status_code == 422 and "evidence" in bare.get_json()["error"]["details"]["fields"]
        desk = auth_headers(client, make_staff(Role.AGENCY_STAFF, agency=rental.agency))
        assert raise_charge(client, desk, rental.reference, incurred_at=rental.returned_at).status_code == 403
    agency = make_agency()
    customer_headers = auth_headers(client, rental.customer)
    vehicle = make_vehicle(agency, daily_price_fils=20000, deposit_fils=0)
    reference = book(client, customer_headers, vehicle, start_in_hours=5, hours=24)
    owner = auth_headers(client, make_staff(Role.AGENCY_MANAGER, agency=agency))
    early = raise_charge(client, owner, reference, incurred_at=rental.returned_at)
    assert early.status_code == 409 and early.get_json()["error"]["code"] == "booking_not_returned"


# ---- nothing before the 24 hours; once, for exactly the noticed amount ------------------------------------


def test_nothing_is_charged_before_24_hours_even_if_the_job_runs_early_or_twice(app, client, app_ctx, stripe_gateway):
    # enforces P-21 (PY-04): the due time is the floor, whoever runs the job and however often
    rental, body = _noticed(client, stripe_gateway)
    row = charge_row(body["id"])
    due = row.due_at
    with time_machine.travel(due - timedelta(seconds=1), tick=False):  # notice + 23 h 59 min 59 s
        assert charges.collect(row.id).startswith("not_due")
        assert charges.collect(row.id).startswith("not_due")
        db.session.commit()
        sweep_and_drain(app)
    assert _attempts(body["id"]) == [] and charge_row(body["id"]).status == "noticed"
    with at(due + timedelta(seconds=1)):
        sweep_and_drain(app)
        sweep_and_drain(app)
        assert charges.collect(charge_row(body["id"]).id) == "not_due:paid"
        db.session.commit()
    (attempt,) = _attempts(body["id"])
    paid = charge_row(body["id"])
    assert paid.status == "paid" and paid.paid_via == "deposit"
    assert attempt.amount_fils == paid.amount_fils == 15750 and attempt.state == IntentState.SUCCEEDED
    deposit = payments.current_deposit(rental.booking_id)
    assert deposit.state == IntentState.CAPTURED and deposit.captured_fils == 15750  # the rest released
    assert payments.ledger_check().ok, payments.ledger_check().problems
    assert payments.charge_invoice_number(attempt.id) is not None  # a tax invoice for fuel (VAT)
    receipt = _messages(rental.customer.user_id, "charge_receipt")[-1]
    assert "AED 157.50" in receipt.subject and payments.charge_invoice_number(attempt.id) in receipt.body_text
    (share,) = db.session.execute(select(Payout).where(Payout.source == f"charge:{attempt.id}")).scalars()
    assert share.amount_fils == 15000 and share.platform_fee_fils == 0  # the agency's net; VAT to the authority


def test_the_customer_can_accept_and_it_is_collected_at_once(app, client, app_ctx, stripe_gateway):
    rental, body = _noticed(client, stripe_gateway)
    with at(rental.returned_at + timedelta(hours=2)):
        accepted = client.post(f"/api/v1/charges/{body['id']}/accept", headers=auth_headers(client, rental.customer))
        assert accepted.status_code == 200, accepted.get_json()
        assert accepted.get_json()["status"] == "due"  # collected right after the answer, by its job
        drain_jobs(app)
        assert charge_row(body["id"]).status == "paid"
        again = client.post(f"/api/v1/charges/{body['id']}/accept", headers=auth_headers(client, rental.customer))
        assert again.status_code == 409
    assert len(_attempts(body["id"])) == 1


# ---- disputes ----------------------------------------------------------------------------------------------


def _dispute(client: Any, headers: dict[str, str], charge_id: str, reason: str = "The tank was full, see photo") -> Any:
    return client.post(f"/api/v1/charges/{charge_id}/dispute", headers=headers, content_type="multipart/form-data",
                       data={"reason": reason, "file_1": (io.BytesIO(evidence_jpeg((10, 200, 10))), "f.jpg",
                                                          "image/jpeg")})


def test_a_dispute_stops_the_charge_until_the_disputes_team_decides(app, client, app_ctx, stripe_gateway):
    # enforces P-21: a disputed charge waits for a human decision; both sides are told; the amount is the decision's
    rental, body = _noticed(client, stripe_gateway)
    row = charge_row(body["id"])
    with at(row.due_at - timedelta(hours=3)):
        disputed = _dispute(client, auth_headers(client, rental.customer), body["id"])
        assert disputed.status_code == 200, disputed.get_json()
        assert disputed.get_json()["status"] == "disputed"
        assert [e["side"] for e in disputed.get_json()["evidence"]] == ["agency", "customer"]
    with at(row.due_at + DAY):
        sweep_and_drain(app)
    assert _attempts(body["id"]) == [] and charge_row(body["id"]).status == "disputed"
    agent = make_staff(Role.DISPUTES_AGENT)
    from tests.factories import actor_for

    with at(row.due_at + DAY + timedelta(minutes=5)):
        db.session.rollback()
        charges.decide(actor_for(agent), body["id"], charges.Decision.REDUCE, reason="Half a tank, per photos",
                       amount_fils=8000)
        db.session.commit()
        sweep_and_drain(app)
    decided = charge_row(body["id"])
    assert decided.status == "paid" and decided.collect_fils == 8000 and decided.amount_fils == 15750
    (attempt,) = _attempts(body["id"])
    assert attempt.amount_fils == 8000
    assert "reduced from AED 157.50 to AED 80.00" in _messages(rental.customer.user_id, "charge_decided")[-1].body_text
    db.session.rollback()
    agency_mail = db.session.execute(select(OutboxMessage).where(
        OutboxMessage.kind == "charge_decided_agency", OutboxMessage.to_address == rental.agency.contact_email)).all()
    assert agency_mail
    assert payments.ledger_check().ok, payments.ledger_check().problems


def test_a_dispute_after_the_24_hours_is_refused(app, client, app_ctx, stripe_gateway):
    rental, body = _noticed(client, stripe_gateway)
    row = charge_row(body["id"])
    with at(row.due_at + timedelta(seconds=30)):
        late = _dispute(client, auth_headers(client, rental.customer), body["id"])
    assert late.status_code in (409,), late.get_json()
    assert late.get_json()["error"]["code"] in ("notice_period_over", "illegal_state_transition")


def test_a_waived_charge_is_never_collected_and_frees_the_deposit(app, client, app_ctx, stripe_gateway):
    from tests.factories import actor_for

    rental, body = _noticed(client, stripe_gateway)
    row = charge_row(body["id"])
    with at(row.due_at - timedelta(hours=1)):
        assert _dispute(client, auth_headers(client, rental.customer), body["id"]).status_code == 200
        db.session.rollback()
        charges.decide(actor_for(make_staff(Role.DISPUTES_AGENT)), body["id"], charges.Decision.WAIVE,
                       reason="No evidence of the fuel level at pick-up")
        db.session.commit()
        sweep_and_drain(app)
    with at(row.due_at + 5 * DAY):
        sweep_and_drain(app)
    assert charge_row(body["id"]).status == "waived" and _attempts(body["id"]) == []
    assert payments.current_deposit(rental.booking_id).state == IntentState.RELEASED


# ---- the 90-day window; fines and tolls outside the rental -------------------------------------------------


def test_a_charge_on_day_91_is_refused(app, client, app_ctx, stripe_gateway):
    # enforces P-20/P-21: nothing raised or charged more than 90 days after the return
    rental = returned_rental(client, stripe_gateway)
    with at(rental.returned_at + timedelta(days=89)):
        ok = raise_charge(client, auth_headers(client, rental.manager), rental.reference, kind="traffic_fine",
                          amount=60000, incurred_at=rental.returned_at - timedelta(hours=2))
        assert ok.status_code == 201, ok.get_json()
        charge_id = ok.get_json()["id"]
        assert _dispute(client, auth_headers(client, rental.customer), charge_id).status_code == 200
    with at(rental.returned_at + timedelta(days=91)):
        late = raise_charge(client, auth_headers(client, rental.manager), rental.reference, kind="traffic_fine",
                            incurred_at=rental.returned_at - timedelta(hours=2))
    assert late.status_code == 409 and late.get_json()["error"]["code"] == "charge_window_closed"
    from tests.factories import actor_for

    with at(rental.returned_at + timedelta(days=91)):  # upheld, but too late to take
        db.session.rollback()
        charges.decide(actor_for(make_staff(Role.DISPUTES_AGENT)), charge_id, charges.Decision.UPHOLD,
                       reason="Radar photo matches the plate")
        db.session.commit()
        sweep_and_drain(app)
    expired = charge_row(charge_id)
    assert expired.status == "expired" and expired.last_error == "charge_window_closed"
    assert _attempts(charge_id) == []


def test_a_toll_outside_the_rental_goes_to_platform_review(app, client, app_ctx, stripe_gateway):
    # enforces P-21: a fine or toll timed outside handover-to-return (plus the grace) is reviewed first
    rental = returned_rental(client, stripe_gateway)
    grace = app.config["SETTINGS"].charge_time_grace
    with at(rental.returned_at + timedelta(hours=1)):
        staff = auth_headers(client, rental.manager)
        inside = raise_charge(client, staff, rental.reference, kind="toll", amount=400,
                              incurred_at=rental.returned_at + grace - timedelta(minutes=1))
        outside = raise_charge(client, staff, rental.reference, kind="toll", amount=400,
                               incurred_at=rental.returned_at + grace + timedelta(minutes=5))
    assert inside.get_json()["status"] == "noticed" and inside.get_json()["breakdown"]["vat"] == 0
    review = outside.get_json()
    assert review["status"] == "platform_review" and review["notice"]["sent_at"] is None
    customer = auth_headers(client, rental.customer)
    assert client.get(f"/api/v1/charges/{review['id']}", headers=customer).status_code == 404
    listed = client.get("/api/v1/charges", headers=auth_headers(client, rental.customer)).get_json()["items"]
    assert [c["id"] for c in listed] == [inside.get_json()["id"]]
    assert len(_messages(rental.customer.user_id, "charge_notice")) == 2  # the inside one: e-mail and in-app
    from tests.factories import actor_for

    agent = actor_for(make_staff(Role.DISPUTES_AGENT))
    db.session.rollback()
    assert review["id"] in [c.public_id for c in charges.queue(agent)]
    charges.review(agent, review["id"], charges.ReviewDecision.APPROVE, reason="Salik log shows our plate")
    db.session.commit()
    assert charge_row(review["id"]).status == "noticed"
    assert len(_messages(rental.customer.user_id, "charge_notice")) == 4


# ---- the card, declines, the outstanding balance, authentication -------------------------------------------


def test_without_a_deposit_it_is_charged_off_session_to_the_saved_card(app, client, app_ctx, stripe_gateway):
    _rental, body = _noticed(client, stripe_gateway, deposit=0)
    with at(charge_row(body["id"]).due_at + timedelta(minutes=2)):
        sweep_and_drain(app)
    (attempt,) = _attempts(body["id"])
    assert attempt.via == "card" and attempt.state == IntentState.SUCCEEDED and attempt.amount_fils == 15750
    assert attempt.idempotency_key == f"charge:{charge_row(body['id']).id}:attempt:1"
    intent = stripe_gateway.gateway().retrieve_intent(attempt.stripe_intent_id)
    assert intent.amount.fils == 15750 and intent.status.value == "succeeded"
    assert payments.ledger_check().ok, payments.ledger_check().problems


def test_a_decline_is_retried_on_schedule_blocks_new_bookings_and_the_customer_can_settle(app, client, app_ctx,
                                                                                        stripe_gateway):
    # enforces P-21 (declined: told, retried on a bounded schedule) and the outstanding balance rule (PY-05)
    rental = returned_rental(client, stripe_gateway, deposit=0)
    keep = app.config["SETTINGS"].deposit_keep_after_return
    with at(rental.returned_at + keep + timedelta(minutes=5)):  # the rental is closed: the card may go
        sweep_and_drain(app)
        assert booking_by_reference(rental.reference).status == "completed"
        customer = auth_headers(client, rental.customer)
        save_card(client, customer, stripe_gateway, "4000000000000341")  # attaches; every charge declines
        gone = client.delete(f"/api/v1/me/payment-methods/{rental.card}", headers=customer)
        assert gone.status_code == 204, gone.get_json()
        raised = raise_charge(client, auth_headers(client, rental.manager), rental.reference,
                              incurred_at=rental.returned_at)
        assert raised.status_code == 201, raised.get_json()
    body = raised.get_json()
    when = charge_row(body["id"]).due_at + timedelta(minutes=1)
    for attempt_no, wait in enumerate([*RETRY_SCHEDULE, None], start=1):
        with at(when):
            sweep_and_drain(app)
        state = charge_row(body["id"])
        assert state.attempts == attempt_no
        if wait is None:
            assert state.status == "unpaid" and state.next_attempt_at is None
        else:
            assert state.status == "retrying" and state.next_attempt_at is not None
            when = state.next_attempt_at + timedelta(minutes=1)
    (declined_mail,) = [m for m in _messages(rental.customer.user_id, "charge_declined") if m.channel == "email"]
    assert declined_mail.body_text.count(" UTC") == len(RETRY_SCHEDULE)  # told once, with every retry time
    assert all(a.state == IntentState.FAILED and a.via == "card" for a in _attempts(body["id"]))
    with at(when + DAY):
        customer = auth_headers(client, rental.customer)
        vehicle = make_vehicle(make_agency(), daily_price_fils=20000)
        refused = client.post("/api/v1/bookings", json=booking_body(vehicle, start_in_hours=5, hours=24),
                              headers=customer)
        assert refused.status_code == 409, refused.get_json()
        error = refused.get_json()["error"]
        assert error["code"] == "outstanding_balance" and error["details"]["amount"] == 15750
        good = save_card(client, customer, stripe_gateway)
        paid = client.post(f"/api/v1/charges/{body['id']}/pay", headers=customer, json={"card": good})
        assert paid.status_code == 200, paid.get_json()
        assert paid.get_json()["charge"]["status"] == "paid" and paid.get_json()["charge"]["paid_via"] == "on_session"
        again = client.post("/api/v1/bookings", json=booking_body(vehicle, start_in_hours=5, hours=24),
                            headers=customer)
        assert again.status_code == 201, again.get_json()
    assert sum(1 for a in _attempts(body["id"]) if a.state == IntentState.SUCCEEDED) == 1
    assert payments.ledger_check().ok, payments.ledger_check().problems


def test_an_unpaid_charge_expires_after_90_days_and_stops_blocking(app, client, app_ctx, stripe_gateway):
    rental = returned_rental(client, stripe_gateway, deposit=0)
    keep = app.config["SETTINGS"].deposit_keep_after_return
    with at(rental.returned_at + keep + timedelta(minutes=5)):
        sweep_and_drain(app)
        customer = auth_headers(client, rental.customer)
        save_card(client, customer, stripe_gateway, "4000000000000341")
        assert client.delete(f"/api/v1/me/payment-methods/{rental.card}", headers=customer).status_code == 204
        raised = raise_charge(client, auth_headers(client, rental.manager), rental.reference,
                              incurred_at=rental.returned_at)
    charge_id = raised.get_json()["id"]
    when = charge_row(charge_id).due_at + timedelta(minutes=1)
    for _ in range(len(RETRY_SCHEDULE) + 1):
        with at(when):
            sweep_and_drain(app)
        state = charge_row(charge_id)
        when = (state.next_attempt_at or when) + timedelta(minutes=1)
    assert charge_row(charge_id).status == "unpaid"
    with at(rental.returned_at + timedelta(days=90, minutes=1)):
        sweep_and_drain(app)
        assert charge_row(charge_id).status == "expired"
        fresh = client.post("/api/v1/bookings", headers=auth_headers(client, rental.customer),
                            json=booking_body(make_vehicle(make_agency()), start_in_hours=5, hours=24))
        assert fresh.status_code == 201, fresh.get_json()
        paying = client.post(f"/api/v1/charges/{charge_id}/pay", headers=auth_headers(client, rental.customer),
                             json={})
        assert paying.status_code == 409  # nothing is taken after 90 days, not even on-session


def test_when_the_bank_wants_the_customer_they_pay_on_session(app, client, app_ctx, stripe_gateway):
    # the saved card now demands 3-D Secure: off-session that is a failure, so the customer is asked to pay
    from marketplace.payments.models import PaymentCustomer, SavedCard
    from tests.payments.helpers import raw_client

    rental, body = _noticed(client, stripe_gateway, deposit=0)
    db.session.rollback()
    customer_id = db.session.execute(select(PaymentCustomer.stripe_customer_id).where(
        PaymentCustomer.user_id == rental.customer.user_id)).scalar_one()
    stripe = raw_client(stripe_gateway)
    pm = stripe.v1.payment_methods.create(params={"type": "card", "card": {
        "number": "4000002760003184", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    stripe.v1.payment_methods.attach(pm.id, params={"customer": customer_id})
    card = db.session.execute(select(SavedCard).where(SavedCard.public_id == rental.card)).scalar_one()
    card.stripe_payment_method_id = pm.id  # the bank now wants the cardholder for this card (test only)
    db.session.commit()
    with at(charge_row(body["id"]).due_at + timedelta(minutes=1)):
        sweep_and_drain(app)
        assert charge_row(body["id"]).status == "requires_action"
        assert _messages(rental.customer.user_id, "charge_action_needed")
        answer = client.post(f"/api/v1/charges/{body['id']}/pay", headers=auth_headers(client, rental.customer),
                             json={})
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["client_secret"]
        assert answer.get_json()["charge"]["status"] == "requires_action"
        elsewhere = booking_body(make_vehicle(make_agency()), start_in_hours=5, hours=24)
        refused = client.post("/api/v1/bookings", json=elsewhere, headers=auth_headers(client, rental.customer))
        assert refused.get_json()["error"]["code"] == "outstanding_balance"
    # the customer's SDK authenticated: Stripe's webhook about that attempt settles the charge
    from tests.payments.test_views import post_event

    (attempt,) = _attempts(body["id"])
    succeeded = {"id": attempt.stripe_intent_id, "object": "payment_intent", "status": "succeeded",
                 "amount": attempt.amount_fils, "amount_received": attempt.amount_fils, "currency": "aed",
                 "metadata": {"charge_payment": str(attempt.id)}}
    with at(charge_row(body["id"]).due_at + timedelta(minutes=5)):
        assert post_event(client, "payment_intent.succeeded", succeeded).get_json()["outcome"] == "applied"
    paid = charge_row(body["id"])
    assert (paid.status, paid.payment_id, paid.paid_via) == ("paid", attempt.id, "card")


def test_an_open_chargeback_on_the_booking_holds_every_charge(app, client, app_ctx, stripe_gateway, monkeypatch):
    rental, body = _noticed(client, stripe_gateway)
    monkeypatch.setattr(payments, "has_open_dispute", lambda booking_id: booking_id == rental.booking_id)
    with at(charge_row(body["id"]).due_at + timedelta(minutes=1)):
        sweep_and_drain(app)
    assert _attempts(body["id"]) == [] and charge_row(body["id"]).last_error == "chargeback_open"


def test_the_agency_can_withdraw_and_the_customer_is_told(app, client, app_ctx, stripe_gateway):
    rental, body = _noticed(client, stripe_gateway)
    with at(rental.returned_at + timedelta(hours=1)):
        withdrawn = client.post(f"/api/v1/agency/charges/{body['id']}/withdraw",
                                headers=auth_headers(client, rental.manager), json={"reason": "Raised by mistake"})
        assert withdrawn.status_code == 200, withdrawn.get_json()
    assert charge_row(body["id"]).status == "withdrawn"
    assert _messages(rental.customer.user_id, "charge_withdrawn")
    with at(charge_row(body["id"]).due_at + DAY):
        sweep_and_drain(app)
    assert _attempts(body["id"]) == []


def test_the_sweeper_relays_a_due_charge_whose_work_row_was_lost(app, client, app_ctx, stripe_gateway):
    _rental, body = _noticed(client, stripe_gateway)
    db.session.rollback()
    db.session.execute(WorkItem.__table__.delete().where(WorkItem.kind == "charges.collect"))
    db.session.commit()
    with at(charge_row(body["id"]).due_at + timedelta(minutes=1)):
        sweep_and_drain(app)  # the relay writes the work row
        sweep_and_drain(app)  # ... and the next tick runs it (the thread worker does it in the same pass)
    assert charge_row(body["id"]).status == "paid"
    assert len(_attempts(body["id"])) == 1


def test_a_chargeback_on_a_collected_charge_finds_its_booking_and_the_pack_carries_the_notice(app, client, app_ctx,
                                                                                           stripe_gateway):
    # enforces P-24 with P-21: the notice's times, the charge and the counter's records answer the chargeback
    from marketplace.payments.models import Dispute
    from tests.factories import actor_for
    from tests.payments.test_views import post_event

    rental, body = _noticed(client, stripe_gateway, deposit=0)
    with at(charge_row(body["id"]).due_at + timedelta(minutes=1)):
        sweep_and_drain(app)
        (attempt,) = _attempts(body["id"])
        dispute = {"id": "dp_charge_0001", "object": "dispute", "charge": attempt.stripe_charge_id,
                   "payment_intent": attempt.stripe_intent_id, "amount": attempt.amount_fils, "currency": "aed",
                   "reason": "product_unacceptable", "status": "needs_response",
                   "evidence_details": {"due_by": int((charge_row(body["id"]).due_at + 7 * DAY).timestamp())}}
        assert post_event(client, "charge.dispute.created", dispute).get_json()["outcome"] == "opened"
        db.session.rollback()
        case = db.session.execute(select(Dispute).where(Dispute.stripe_dispute_id == "dp_charge_0001")).scalar_one()
        assert case.booking_id == rental.booking_id
        assert payments.has_open_dispute(rental.booking_id)
        pack = payments.evidence_pack(actor_for(make_staff(Role.DISPUTES_AGENT)), case)
    (charge,) = pack.post_rental_charges
    assert charge["kind"] == "fuel" and charge["status"] == "paid" and charge["notice_sent_at"]
    assert [i["kind"] for i in pack.inspection_photos] == []  # this rental recorded no inspections
    assert any(p["kind"] == "charge (card)" for p in pack.payments)
    assert "Post-rental charge fuel" in pack.stripe_evidence()["uncategorized_text"]
    assert any("Notice of a post-rental charge" in n["subject"] for n in pack.notices)
