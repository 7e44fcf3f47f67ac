"""The console's money pages: the disputes queue and case page with the evidence pack and the "submit
evidence" action (P-24), a booking's payments page and the payments review queue (reconciliation flags).

Who may see them (AZ-06 at today's scope): disputes agents and admins; another role gets 403, and the pages
sit behind the console gate with its MFA step like every other console page (tests/test_route_gates.py).
Disputes run on synthetic signed events and the fake's dispute verb: localstripe has no disputes (see
tests/payments/test_disputes.py)."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from marketplace.audit import AuditEvent
from marketplace.extensions import db, utcnow
from marketplace.money import Money
from marketplace.payments import service
from marketplace.payments.models import Dispute, MandateAcceptance, PaymentIntentRow, Refund
from marketplace.permissions import Role
from tests.factories import make_staff, web_login
from tests.payments.fake_stripe import FakeStripe
from tests.payments.test_disputes import _case, _dispute, _paid_booking
from tests.payments.test_views import _booking, post_event
from tests.staff_web import error_code, page_csrf, password_step


def _text(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def _audited(action: str) -> list[AuditEvent]:
    db.session.expire_all()
    return list(db.session.execute(select(AuditEvent).where(AuditEvent.action == action)
                                   .order_by(AuditEvent.id)).scalars())


@pytest.fixture
def fake_disputes(app: Any, stripe_gateway: Any) -> Any:
    fake = FakeStripe(now=utcnow())
    previous = app.extensions["payments_gateway"]

    class Split:
        def __getattr__(self, name: str) -> Any:
            return getattr(fake if name == "submit_dispute_evidence" else previous, name)

    app.extensions["payments_gateway"] = Split()
    yield fake
    app.extensions["payments_gateway"] = previous


def test_disputes_queue_by_due_date_case_page_and_one_submission(app: Flask, client: FlaskClient, app_ctx: None,
                                                                 stripe_gateway: Any, fake_disputes: Any) -> None:
    # enforces P-24: a case in the console with the evidence pack, submitted by a person before the due date
    reference, row = _paid_booking(client, stripe_gateway)
    later = _dispute(row, dispute_id="dp_later", due=utcnow() + timedelta(days=9))
    sooner = _dispute(row, dispute_id="dp_sooner", due=utcnow() + timedelta(days=2))
    for dispute in (later, sooner):
        fake_disputes.register_dispute(dispute)
        post_event(client, "charge.dispute.created", dispute)
    web = app.test_client()
    agent = make_staff(Role.DISPUTES_AGENT)
    web_login(web, agent)

    queue = web.get("/console/disputes")
    assert queue.status_code == 200
    page = queue.get_data(as_text=True)
    sooner_case, later_case = _case("dp_sooner"), _case("dp_later")
    assert page.index(sooner_case.public_id) < page.index(later_case.public_id)  # nearest due date first
    assert f">{reference}</a>" in page
    assert len(_audited("console:disputes_view")) == 1

    path = f"/console/disputes/{sooner_case.public_id}"
    case_page = web.get(path)
    assert case_page.status_code == 200
    text = _text(case_page.get_data(as_text=True))
    assert reference in text and "Falcon Rentals LLC" in text and "Pixel 9" in text
    assert row.stripe_intent_id in text and "Submit evidence to Stripe" in text
    mandate = db.session.execute(select(MandateAcceptance)).scalar_one()
    assert mandate.text_sha256 in text
    views = _audited("console:dispute_view")
    assert [v.subject_id for v in views] == [sooner_case.public_id]

    response = web.post(f"{path}/submit", data={"csrf_token": page_csrf(web, path)})
    assert response.status_code == 302
    case = _case("dp_sooner")
    assert case.submitted_at is not None and case.submitted_by_id == agent.user_id
    assert case.submission_key == f"dispute:{case.id}:evidence"
    assert [e.outcome for e in _audited("dispute:submit_evidence")] == ["attempted", "success"]
    again = web.post(f"{path}/submit", data={"csrf_token": page_csrf(web, path)})
    assert again.status_code == 409 and "dispute_evidence_submitted" in again.get_data(as_text=True)
    assert fake_disputes.dispute("dp_sooner")["evidence_details"]["submission_count"] == 1
    assert "Submit evidence to Stripe" not in web.get(path).get_data(as_text=True)


def test_another_role_gets_403_and_staff_without_mfa_never_reach_the_pages(app: Flask, client: FlaskClient,
                                                                           app_ctx: None) -> None:
    # AZ-06: the disputes and payments pages are for disputes agents (and admins for payments review)
    post_event(client, "charge.dispute.created", {"id": "dp_gate", "object": "dispute", "amount": 100,
                                                  "reason": "general", "status": "needs_response"})
    case = db.session.execute(select(Dispute)).scalar_one()
    web = app.test_client()
    web_login(web, make_staff(Role.KYC_REVIEWER))
    for path in ("/console/disputes", f"/console/disputes/{case.public_id}", "/console/payments/review",
                 "/console/bookings/NOSUCHREF"):
        response = web.get(path)
        assert response.status_code == 403, path
    response = web.post(f"/console/disputes/{case.public_id}/submit",
                        data={"csrf_token": page_csrf(web, "/console/")})
    assert response.status_code == 403
    assert _audited("console:dispute_view") == []

    admin = app.test_client()
    web_login(admin, make_staff(Role.ADMIN))
    assert admin.get("/console/disputes").status_code == 403  # admins review payments, not chargebacks
    assert admin.get("/console/payments/review").status_code == 200

    half = app.test_client()  # password step done, MFA not: no console page
    assert password_step(half, make_staff(Role.DISPUTES_AGENT)).status_code == 302
    for path in ("/console/disputes", f"/console/disputes/{case.public_id}", "/console/payments/review"):
        response = half.get(path)
        assert response.status_code == 302 and response.headers["Location"].endswith("/console/mfa"), path


def test_booking_payments_page_shows_payments_refunds_invoices_and_is_audited(app: Flask, client: FlaskClient,
                                                                              app_ctx: None,
                                                                              stripe_gateway: Any) -> None:
    reference, row = _paid_booking(client, stripe_gateway)
    refund = service.create_refund(row.id, Money(5000), reason="goodwill")
    assert refund is not None
    db.session.commit()
    web = app.test_client()
    web_login(web, make_staff(Role.DISPUTES_AGENT))
    response = web.get(f"/console/bookings/{reference}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    text = _text(page)
    assert row.stripe_intent_id in text and "succeeded" in text
    assert "goodwill" in text
    invoices = [i.number for i in service.invoices.invoices_for_booking(_booking(reference))]
    assert invoices and all(number in text for number in invoices)
    assert "Deposit holds" in text
    assert [e.subject_id for e in _audited("console:booking_payments_view")] == [reference]
    missing = web.get("/console/bookings/NOSUCHREF")
    assert missing.status_code == 404 and error_code(missing) == "not_found"


def test_payments_review_lists_flags_and_a_person_resolves_them(app: Flask, client: FlaskClient, app_ctx: None,
                                                                stripe_gateway: Any) -> None:
    # the reconciliation queue: rows flagged needs_review and bookings flagged by payments, resolved and audited
    reference, row = _paid_booking(client, stripe_gateway)
    refund = service.create_refund(row.id, Money(5000), reason="goodwill")
    assert refund is not None
    refund_row = db.session.get(Refund, refund.id)
    assert refund_row is not None
    refund_row.needs_review = "Stripe does not know this refund: payment_invalid"
    intent = db.session.get(PaymentIntentRow, row.id)
    assert intent is not None
    intent.needs_review = "no Stripe intent recorded: outcome unknown"
    db.session.commit()
    post_event(client, "charge.dispute.created", _dispute(row))  # flags the booking
    web = app.test_client()
    web_login(web, make_staff(Role.ADMIN))
    page = _text(web.get("/console/payments/review").get_data(as_text=True))
    assert "Stripe does not know this refund" in page and "no Stripe intent recorded" in page
    assert "chargeback opened" in page and reference in page

    token = page_csrf(web, "/console/payments/review")
    for kind, row_id in (("refund", refund.id), ("payment", row.id), ("booking", row.booking_id)):
        response = web.post(f"/console/payments/review/{kind}/{row_id}/resolve",
                            data={"csrf_token": token, "note": "checked on the Stripe dashboard"})
        assert response.status_code == 302, kind
    db.session.expire_all()
    assert db.session.get(Refund, refund.id).needs_review is None
    assert db.session.get(PaymentIntentRow, row.id).needs_review is None
    assert _booking(reference).flagged_at is None
    resolved = _audited("payments:review_resolved")
    assert [e.subject_type for e in resolved] == ["refunds", "payment_intents", "bookings"]
    assert all("checked on the Stripe dashboard" in e.data for e in resolved)
    assert "Nothing to review." in web.get("/console/payments/review").get_data(as_text=True)
    again = web.post(f"/console/payments/review/refund/{refund.id}/resolve", data={"csrf_token": token})
    assert again.status_code == 404
    unknown = web.post(f"/console/payments/review/ledger/{refund.id}/resolve", data={"csrf_token": token})
    assert unknown.status_code == 404


def test_a_submission_stripe_refuses_is_shown_recorded_and_audited(app: Flask, client: FlaskClient, app_ctx: None,
                                                                   stripe_gateway: Any, fake_disputes: Any) -> None:
    # the fake never heard of this dispute: Stripe's refusal is the page's error, kept on the row and audited
    _, row = _paid_booking(client, stripe_gateway)
    post_event(client, "charge.dispute.created", _dispute(row, dispute_id="dp_unknown_to_stripe"))
    case = _case("dp_unknown_to_stripe")
    web = app.test_client()
    web_login(web, make_staff(Role.DISPUTES_AGENT))
    path = f"/console/disputes/{case.public_id}"
    response = web.post(f"{path}/submit", data={"csrf_token": page_csrf(web, path)})
    assert response.status_code == 422
    assert "payment_invalid" in response.get_data(as_text=True)
    after = _case("dp_unknown_to_stripe")
    assert after.submitted_at is None and after.submission_error == "resource_missing"
    assert [e.outcome for e in _audited("dispute:submit_evidence")] == ["attempted", "refused"]


def test_resolving_a_row_that_is_not_a_number_is_404(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    web = app.test_client()
    web_login(web, make_staff(Role.ADMIN))
    token = page_csrf(web, "/console/payments/review")
    for path in ("/console/payments/review/refund/abc/resolve", "/console/payments/review/refund/-1/resolve"):
        response = web.post(path, data={"csrf_token": token})
        assert response.status_code == 404 and error_code(response) == "not_found", path
