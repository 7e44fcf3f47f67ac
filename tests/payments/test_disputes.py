"""Chargebacks (P-24): dispute cases from webhooks, their ledger postings, the evidence pack and the one
evidence submission.

localstripe 1.15.10 has no disputes at all (no ``/v1/disputes`` route, no ``charge.dispute.*`` events; its
source has no dispute resource, STRIPE.md §3.4), so: the booking is paid on real localstripe, the dispute
events are signed synthetic events posted to the webhook (as Stripe would send them, the whole dispute in
``data.object``), and the evidence submission runs against ``tests/payments/fake_stripe.py``, which follows
Stripe's "Respond to disputes" behaviour (``submit=true``, refused once the dispute no longer awaits a
response or its ``due_by`` has passed, idempotency keys replayed). One test shows what the real gateway does
against localstripe's missing route: an outage code, never a 500.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from marketplace.extensions import db, utcnow
from marketplace.money import Money
from marketplace.payments import service
from marketplace.payments.errors import PaymentProviderUnavailable
from marketplace.payments.models import Dispute, JournalEntry, PaymentIntentRow
from marketplace.payments.states import Account
from marketplace.permissions import Role
from marketplace.users.consent_texts import CURRENT
from marketplace.users.states import ConsentKind
from tests.factories import (
    actor_for,
    auth_headers,
    book,
    make_agency,
    make_staff,
    make_vehicle,
    make_verified_customer,
    mandate_acceptance,
    save_card,
)
from tests.payments.fake_stripe import FakeStripe
from tests.payments.test_views import _booking, assert_ledger_ok, post_event

DEVICE = "Pixel 9 (Android 16)"
USER_AGENT = "CareJar/2.3 (Android 16)"


def _paid_booking(client: Any, server: Any) -> tuple[str, PaymentIntentRow]:
    """A booking paid on localstripe, the mandate accepted from a known device and user agent."""
    vehicle = make_vehicle(make_agency(name="Falcon Rentals LLC"), daily_price_fils=20000, deposit_fils=0)
    headers = auth_headers(client, make_verified_customer())
    card = save_card(client, headers, server)
    reference = book(client, headers, vehicle)
    response = client.post(f"/api/v1/bookings/{reference}/pay", headers={**headers, "User-Agent": USER_AGENT},
                           json={"payment_method_id": card, "mit_mandate": mandate_acceptance(), "device": DEVICE})
    assert response.status_code == 200, response.get_json()
    db.session.expire_all()
    row = db.session.execute(select(PaymentIntentRow).where(
        PaymentIntentRow.booking_id == _booking(reference).id)).scalar_one()
    assert row.stripe_charge_id and row.stripe_intent_id
    return reference, row


def _dispute(row: PaymentIntentRow, *, status: str = "needs_response", due: datetime | None = None,
             amount: int | None = None, dispute_id: str = "dp_test_0001") -> dict[str, Any]:
    due = due or utcnow() + timedelta(days=7)
    return {"id": dispute_id, "object": "dispute", "charge": row.stripe_charge_id,
            "payment_intent": row.stripe_intent_id, "amount": row.amount_fils if amount is None else amount,
            "currency": "aed", "reason": "fraudulent", "status": status,
            "evidence_details": {"due_by": int(due.timestamp()), "has_evidence": False, "submission_count": 0}}


def _case(dispute_id: str = "dp_test_0001") -> Dispute:
    db.session.expire_all()
    return db.session.execute(select(Dispute).where(Dispute.stripe_dispute_id == dispute_id)).scalar_one()


def _sources(prefix: str) -> list[str]:
    db.session.expire_all()
    return list(db.session.execute(select(JournalEntry.source).where(JournalEntry.source.like(f"{prefix}%"))
                                   .order_by(JournalEntry.id)).scalars())


# ---- webhooks: order and duplicates ---------------------------------------------------------------------------


def test_dispute_events_in_any_order_and_repeated_open_one_case_and_post_once(app, client, app_ctx, stripe_gateway):
    # enforces P-24: the dispute webhook opens a case linked to the booking payment, with Stripe's due date
    reference, row = _paid_booking(client, stripe_gateway)
    due = datetime(2031, 3, 4, 5, 6, 7, tzinfo=UTC)
    # funds_withdrawn arrives before created: it opens the case (every event carries the whole dispute)
    answer = post_event(client, "charge.dispute.funds_withdrawn", _dispute(row, due=due), event_id="evt_dp_1")
    assert answer.status_code == 200 and answer.get_json()["outcome"] == "opened"
    assert post_event(client, "charge.dispute.created", _dispute(row, due=due), event_id="evt_dp_2"
                      ).get_json()["outcome"] == "updated"
    # the same event again, and the same withdrawal under another event id: nothing more
    assert post_event(client, "charge.dispute.funds_withdrawn", _dispute(row, due=due), event_id="evt_dp_1"
                      ).get_json()["outcome"] == "duplicate"
    post_event(client, "charge.dispute.funds_withdrawn", _dispute(row, due=due), event_id="evt_dp_3")
    case = _case()
    assert (case.payment_id, case.booking_id) == (row.id, row.booking_id)
    assert (case.reason, case.amount_fils, case.status, case.due_by) == ("fraudulent", row.amount_fils,
                                                                          "needs_response", due)
    assert case.withdrawn_fils == row.amount_fils
    assert _sources("dispute:") == [f"dispute:{case.id}:withdrawn"]
    assert service.balance(Account.DISPUTED) == row.amount_fils
    assert _booking(reference).flag_reason.startswith("chargeback opened")
    assert service.has_open_dispute(row.booking_id)
    assert_ledger_ok(app)

    # under review, then a late "created" (needs_response) never takes the case back
    post_event(client, "charge.dispute.updated", _dispute(row, status="under_review", due=due))
    post_event(client, "charge.dispute.created", _dispute(row, due=due), event_id="evt_dp_late")
    assert _case().status == "under_review"

    # won: closed, the funds come back once; a late "updated" does not reopen it
    post_event(client, "charge.dispute.funds_reinstated", _dispute(row, status="won", due=due))
    post_event(client, "charge.dispute.closed", _dispute(row, status="won", due=due))
    post_event(client, "charge.dispute.funds_reinstated", _dispute(row, status="won", due=due))
    post_event(client, "charge.dispute.updated", _dispute(row, status="needs_response", due=due))
    case = _case()
    assert case.status == "won" and case.closed_at is not None and case.reinstated_fils == row.amount_fils
    assert _sources("dispute:") == [f"dispute:{case.id}:withdrawn", f"dispute:{case.id}:reinstated"]
    assert service.balance(Account.DISPUTED) == 0
    assert not service.has_open_dispute(row.booking_id)
    assert_ledger_ok(app)


def test_a_lost_dispute_moves_the_withdrawn_funds_to_losses_and_the_books_still_balance(app, client, app_ctx,
                                                                                       stripe_gateway):
    # enforces P-24 (ledger): closed before the withdrawal is seen, the loss is posted when the funds go
    _, row = _paid_booking(client, stripe_gateway)
    post_event(client, "charge.dispute.created", _dispute(row))
    post_event(client, "charge.dispute.closed", _dispute(row, status="lost"))
    assert _sources("dispute:") == []
    post_event(client, "charge.dispute.funds_withdrawn", _dispute(row, status="lost"))
    case = _case()
    assert _sources("dispute:") == [f"dispute:{case.id}:withdrawn", f"dispute:{case.id}:lost"]
    assert service.balance(Account.DISPUTED) == 0
    assert service.balance(Account.DISPUTE_LOSSES) == row.amount_fils
    assert service.balance(Account.CASH) == 0  # paid, then taken back by the card network
    assert_ledger_ok(app)


def test_the_ledger_check_notices_a_dispute_row_that_disagrees_with_the_books(app, client, app_ctx, stripe_gateway):
    # enforces P-24: `flask ledger check` matches the disputed-funds account against the dispute rows
    _, row = _paid_booking(client, stripe_gateway)
    post_event(client, "charge.dispute.funds_withdrawn", _dispute(row))
    case = _case()
    case.withdrawn_fils = 1
    db.session.commit()
    report = service.ledger_check()
    assert not report.ok
    assert any(problem.startswith("disputed_funds") for problem in report.problems)


def test_a_dispute_on_a_charge_we_do_not_know_opens_a_case_without_a_booking(app, client, app_ctx):
    obj = {"id": "dp_unknown_1", "object": "dispute", "charge": "ch_elsewhere", "amount": 500, "currency": "aed",
           "reason": "general", "status": "warning_needs_response"}
    assert post_event(client, "charge.dispute.created", obj).get_json()["outcome"] == "opened"
    case = _case("dp_unknown_1")
    assert case.booking_id is None and case.due_by is None and case.status == "warning_needs_response"
    assert post_event(client, "charge.dispute.created", {"id": "not-a-dispute"}).get_json()["outcome"] == "unreadable"


# ---- the evidence pack ----------------------------------------------------------------------------------------


def test_the_evidence_pack_holds_the_mandate_booking_invoices_payments_and_refunds(app, client, app_ctx,
                                                                                  stripe_gateway):
    # enforces P-24: chargebacks are answered with the recorded mandate, notice and evidence
    reference, row = _paid_booking(client, stripe_gateway)
    refund = service.create_refund(row.id, Money(5000), reason="goodwill")
    assert refund is not None
    db.session.commit()
    post_event(client, "charge.dispute.created", _dispute(row))
    agent = make_staff(Role.DISPUTES_AGENT)
    pack = service.evidence_pack(actor_for(agent), _case())
    text = CURRENT[ConsentKind.MIT_MANDATE]

    assert pack.mandate is not None
    assert (pack.mandate["text_version"], pack.mandate["text_sha256"]) == (text.version, text.sha256)
    assert pack.mandate["device"] == DEVICE and pack.mandate["user_agent"] == USER_AGENT
    assert pack.mandate["ip_address"] == "127.0.0.1" and pack.mandate["accepted_at"]
    booking = pack.booking
    assert booking is not None and booking["reference"] == reference
    assert booking["agency"] == "Falcon Rentals LLC" and booking["customer_name"]
    assert booking["car"] and booking["starts_at"] and booking["ends_at"]
    assert [p["stripe_intent_id"] for p in pack.payments] == [row.stripe_intent_id]
    assert [(r["amount"], r["reason"]) for r in pack.refunds] == [(str(Money(5000)), "goodwill")]
    assert pack.invoices and all(i["number"] for i in pack.invoices)
    assert pack.inspection_photos == [] and "inspection photos" in pack.missing  # never reached the counter
    assert isinstance(pack.notices, list)  # post-rental charge notices: step 7; what exists is listed

    evidence = pack.stripe_evidence()
    assert evidence["customer_purchase_ip"] == "127.0.0.1"
    assert text.sha256 in evidence["access_activity_log"] and DEVICE in evidence["access_activity_log"]
    assert reference in evidence["product_description"]
    assert row.stripe_intent_id in evidence["uncategorized_text"]
    assert pack.invoices[0]["number"] in evidence["uncategorized_text"]
    assert all(len(value) <= service.DISPUTE_FIELD_LIMIT for value in evidence.values())


def test_another_role_cannot_read_a_pack(app, client, app_ctx):
    from marketplace.errors import Forbidden

    post_event(client, "charge.dispute.created", {"id": "dp_x", "object": "dispute", "amount": 100,
                                                  "reason": "general", "status": "needs_response"})
    with pytest.raises(Forbidden):
        service.evidence_pack(actor_for(make_staff(Role.KYC_REVIEWER)), _case("dp_x"))


# ---- submitting the evidence ----------------------------------------------------------------------------------


@pytest.fixture
def fake_disputes(app: Any) -> Any:
    """The fake answers the dispute calls; everything else stays on localstripe (it has no disputes)."""
    fake = FakeStripe(now=utcnow())
    previous = app.extensions["payments_gateway"]

    class Split:
        def __getattr__(self, name: str) -> Any:
            return getattr(fake if name == "submit_dispute_evidence" else previous, name)

    app.extensions["payments_gateway"] = Split()
    yield fake
    app.extensions["payments_gateway"] = previous


def test_evidence_is_submitted_once_under_a_key_from_the_case_row(app, client, app_ctx, stripe_gateway,
                                                                 fake_disputes):
    # enforces P-24: a person submits before the due date; an outage retried replays the same key
    _, row = _paid_booking(client, stripe_gateway)
    dispute = _dispute(row)
    fake_disputes.register_dispute(dispute)
    post_event(client, "charge.dispute.created", dispute)
    agent = actor_for(make_staff(Role.DISPUTES_AGENT))
    case = _case()

    fake_disputes.fail_next(after_effect=True)  # Stripe took it, the answer was lost
    with pytest.raises(PaymentProviderUnavailable):
        service.submit_dispute_evidence(agent, case.public_id)
    db.session.commit()
    assert _case().submission_key == f"dispute:{case.id}:evidence" and _case().submitted_at is None

    done = service.submit_dispute_evidence(agent, case.public_id)
    db.session.commit()
    assert done.submitted_at is not None and done.status == "under_review"
    assert fake_disputes.dispute("dp_test_0001")["evidence_details"]["submission_count"] == 1  # once
    sent = fake_disputes.dispute("dp_test_0001")["evidence"]
    assert sent["customer_purchase_ip"] == "127.0.0.1" and "access_activity_log" in sent
    calls = fake_disputes.calls.count("submit_dispute_evidence")
    with pytest.raises(service.DisputeEvidenceSubmitted):
        service.submit_dispute_evidence(agent, case.public_id)
    assert fake_disputes.calls.count("submit_dispute_evidence") == calls  # refused before Stripe is asked


def test_evidence_is_refused_after_the_due_date_without_asking_stripe(app, client, app_ctx, stripe_gateway,
                                                                     fake_disputes):
    # enforces P-24: Stripe takes no evidence after evidence_details.due_by
    _, row = _paid_booking(client, stripe_gateway)
    dispute = _dispute(row, due=utcnow() + timedelta(hours=2))
    fake_disputes.register_dispute(dispute)
    post_event(client, "charge.dispute.created", dispute)
    agent = actor_for(make_staff(Role.DISPUTES_AGENT))
    with time_machine.travel(utcnow() + timedelta(hours=3), tick=False), pytest.raises(service.DisputePastDue):
        service.submit_dispute_evidence(agent, _case().public_id)
    assert "submit_dispute_evidence" not in fake_disputes.calls
    post_event(client, "charge.dispute.closed", _dispute(row, status="lost"))
    with pytest.raises(service.DisputeNotOpen):
        service.submit_dispute_evidence(agent, _case().public_id)


def test_the_real_gateway_maps_localstripes_missing_disputes_route_to_an_outage(app, app_ctx, stripe_gateway):
    # localstripe has no /v1/disputes: stripe-python sees a 404 HTML body, the gateway answers 503, never a 500
    with pytest.raises(PaymentProviderUnavailable):
        app.extensions["payments_gateway"].submit_dispute_evidence("dp_missing", {"uncategorized_text": "x"},
                                                                   key="dispute:0:evidence")
    with pytest.raises(ValueError):
        app.extensions["payments_gateway"].submit_dispute_evidence("ch_wrong", {}, key="dispute:0:evidence")


def test_dispute_statuses_only_move_forward():
    # enforces P-24: a late event never reopens a closed case nor takes one back to awaiting evidence
    from marketplace.payments.states import dispute_may_move

    assert dispute_may_move("warning_needs_response", "needs_response")  # an inquiry became a chargeback
    assert dispute_may_move("needs_response", "under_review") and dispute_may_move("under_review", "lost")
    assert not dispute_may_move("under_review", "needs_response")
    assert not dispute_may_move("won", "lost") and not dispute_may_move("lost", "needs_response")
    assert not dispute_may_move("needs_response", "no_such_status")
