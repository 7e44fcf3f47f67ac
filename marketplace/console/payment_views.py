"""Console pages for money (P-22, P-24): a booking's payments page, the reconciliation queue, and the
chargebacks queue with its case page and the "submit evidence" action. Every page view and every action
leaves an audit row: these pages show customers' payment history."""

from __future__ import annotations

from typing import Any

from flask import redirect, request, url_for

from marketplace import audit, transactions
from marketplace.console.views import _render, console_bp
from marketplace.errors import AppError, NotFound
from marketplace.extensions import db, utcnow
from marketplace.payments import service as payments
from marketplace.payments.states import AWAITING_EVIDENCE
from marketplace.permissions import Permission
from marketplace.security import current_actor, requires

REVIEW_KINDS = ("payment", "refund", "booking")


@console_bp.get("/bookings/<string:reference>")
@transactions.writes
@requires(Permission.PAYMENT_REVIEW)
def booking_payments(reference: str) -> Any:
    actor = current_actor()
    view = payments.booking_payments_for_staff(actor, reference)
    audit.record(actor, "console:booking_payments_view", ("bookings", view.booking.reference))
    return _render("console/booking_payments.html", view=view)


@console_bp.get("/payments/review")
@transactions.writes
@requires(Permission.PAYMENT_REVIEW)
def payments_review() -> Any:
    actor = current_actor()
    items = payments.review_queue(actor)
    audit.record(actor, "console:payments_review_view", None, shown=len(items))
    return _render("console/payments_review.html", items=items)


@console_bp.post("/payments/review/<string:kind>/<string:row_id>/resolve")
@requires(Permission.PAYMENT_REVIEW)
def payments_resolve(kind: str, row_id: str) -> Any:
    # a string in the rule, so a gate answers first for any path (tests/test_webauth.py fills ids with text)
    if kind not in REVIEW_KINDS or not row_id.isdigit() or len(row_id) > 18:
        raise NotFound()
    payments.resolve_review(current_actor(), kind, int(row_id), note=request.form.get("note", "")[:500])
    return redirect(url_for("console.payments_review", resolved=1))


@console_bp.get("/disputes")
@transactions.writes
@requires(Permission.DISPUTE_DECIDE)
def disputes_queue() -> Any:
    actor = current_actor()
    closed = request.args.get("closed") == "1"
    cases = payments.dispute_queue(actor, include_closed=closed)
    audit.record(actor, "console:disputes_view", None, shown=len(cases))
    references = {d.id: payments.booking_reference(d.booking_id) for d in cases if d.booking_id is not None}
    return _render("console/disputes.html", cases=cases, closed=closed, now=utcnow(), references=references)


def _case_page(public_id: str, *, status: int = 200, error: str | None = None) -> Any:
    actor = current_actor()
    dispute = payments.dispute_for_staff(actor, public_id)
    pack = payments.evidence_pack(actor, dispute)
    audit.record(actor, "console:dispute_view", dispute)
    transactions.commit_error_response()  # the view's audit row stands whatever the page's status
    now = utcnow()
    may_submit = (dispute.submitted_at is None and dispute.status in AWAITING_EVIDENCE and dispute.due_by is not None
                  and now < dispute.due_by)
    return _render("console/dispute.html", status=status, error=error, dispute=dispute, pack=pack,
                   evidence=pack.stripe_evidence(), may_submit=may_submit, now=now)


@console_bp.get("/disputes/<string:dispute_id>")
@transactions.writes
@requires(Permission.DISPUTE_DECIDE)
def dispute_case(dispute_id: str) -> Any:
    return _case_page(dispute_id)


@console_bp.post("/disputes/<string:dispute_id>/submit")
@requires(Permission.DISPUTE_DECIDE)
def dispute_submit(dispute_id: str) -> Any:
    try:
        payments.submit_dispute_evidence(current_actor(), dispute_id)
    except AppError as exc:
        if exc.status == 404:
            raise
        db.session.rollback()
        return _case_page(dispute_id, status=exc.status, error=f"{exc.text} ({exc.code})")
    return redirect(url_for("console.dispute_case", dispute_id=dispute_id, submitted=1))
