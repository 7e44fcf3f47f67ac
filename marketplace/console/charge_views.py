"""Console pages for post-rental charges (P-21): the disputes team's queue (disputed charges and fines or
tolls in platform review, oldest first), the case page (the agency's evidence beside the customer's dispute
files, the incurred time against the actual rental, the notice's delivery, the inspections' fuel and
mileage), the decision (uphold, reduce, waive) and the platform review (approve, reject). Every page view,
image view and action leaves an audit row."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, redirect, request, url_for

from marketplace import audit, transactions
from marketplace.charges import service as charges
from marketplace.charges.states import MAX_CHARGE_FILS, MIN_CHARGE_FILS, ChargeStatus, Decision, ReviewDecision
from marketplace.console.views import _render, console_bp
from marketplace.errors import AppError, Unprocessable
from marketplace.extensions import db
from marketplace.handover import service as handover
from marketplace.permissions import Permission
from marketplace.security import current_actor, requires
from marketplace.webhelpers import aed_to_fils, error_text, image_response

EVIDENCE_URL = "/console/charges/{charge}/evidence/{evidence}"


def _invalid(field: str, text: str) -> Unprocessable:
    return Unprocessable(details={"fields": {field: [text]}})


def _reason() -> str:
    reason = request.form.get("reason", "").strip()[:1000]
    if len(reason) < 3:
        raise _invalid("reason", "Give the reason (the customer and the agency read it).")
    return reason


@console_bp.get("/charges")
@transactions.writes
@requires(Permission.DISPUTE_DECIDE)
def charges_queue() -> Any:
    actor = current_actor()
    items = charges.queue(actor)
    audit.record(actor, "console:charges_view", None, shown=len(items))
    return _render("console/charges.html", items=[charges.present(c, evidence_url=EVIDENCE_URL) for c in items])


def _case_page(public_id: str, *, status: int = 200, error: AppError | None = None) -> Any:
    actor = current_actor()
    charge = charges.for_staff(actor, public_id)
    audit.record(actor, "console:charge_view", ("charge", charge.public_id))
    transactions.commit_error_response()  # the view's audit row stands whatever the page's status
    handed_over_at, returned_at = handover.rental_period(charge.booking_id)
    grace = current_app.config["SETTINGS"].charge_time_grace  # as the service counts a fine or toll's time
    inside = (
        handed_over_at is not None
        and returned_at is not None
        and handed_over_at - grace <= charge.incurred_at <= returned_at + grace
    )
    message = error and f"{error_text(error)} ({error.code})"
    return _render(
        "console/charge.html",
        status=status,
        error=message,
        c=charges.present(charge, evidence_url=EVIDENCE_URL),
        handed_over_at=handed_over_at,
        returned_at=returned_at,
        inside=inside,
        grace_minutes=int(grace.total_seconds() // 60),
        facts=handover.inspection_facts(charge.booking_id),
        may_decide=charge.status == ChargeStatus.DISPUTED,
        may_review=charge.status == ChargeStatus.PLATFORM_REVIEW,
        decisions=list(Decision),
    )


@console_bp.get("/charges/<string:charge_id>")
@transactions.writes
@requires(Permission.DISPUTE_DECIDE)
def charge_case(charge_id: str) -> Any:
    return _case_page(charge_id[:36])


@console_bp.get("/charges/<string:charge_id>/evidence/<string:evidence_id>")
@transactions.writes  # every view is audited
@requires(Permission.DISPUTE_DECIDE)
def charge_evidence(charge_id: str, evidence_id: str) -> Response:
    actor = current_actor()
    charge = charges.for_staff(actor, charge_id[:36])
    return image_response(charges.evidence_image(actor, charge, evidence_id[:36], viewer="console"), "image/jpeg")


def _act(charge_id: str, action: Any) -> Any:
    try:
        action()
    except AppError as exc:
        if exc.status == 404:
            raise
        db.session.rollback()
        return _case_page(charge_id, status=exc.status, error=exc)
    return redirect(url_for("console.charge_case", charge_id=charge_id, decided=1))


@console_bp.post("/charges/<string:charge_id>/decide")
@requires(Permission.DISPUTE_DECIDE)
def charge_decide(charge_id: str) -> Any:
    """Uphold, reduce (to a smaller amount in AED) or waive a disputed charge, with a reason."""
    charge_id = charge_id[:36]
    actor = current_actor()
    charges.for_staff(actor, charge_id)  # an unknown charge: 404 before the form is read

    def decide() -> None:
        raw = request.form.get("decision", "")
        if raw not in set(Decision):
            raise _invalid("decision", "Choose uphold, reduce or waive.")
        decision = Decision(raw)
        amount = (aed_to_fils(request.form.get("amount", ""), low=MIN_CHARGE_FILS, high=MAX_CHARGE_FILS,
                              what="reduced amount") if decision is Decision.REDUCE else None)
        charges.decide(actor, charge_id, decision, reason=_reason(), amount_fils=amount)

    return _act(charge_id, decide)


@console_bp.post("/charges/<string:charge_id>/review")
@requires(Permission.DISPUTE_DECIDE)
def charge_review(charge_id: str) -> Any:
    """Platform review of a fine or toll timed outside the rental: approve (the notice goes out) or reject."""
    charge_id = charge_id[:36]
    actor = current_actor()
    charges.for_staff(actor, charge_id)

    def review() -> None:
        raw = request.form.get("decision", "")
        if raw not in set(ReviewDecision):
            raise _invalid("decision", "Choose approve or reject.")
        charges.review(actor, charge_id, ReviewDecision(raw), reason=_reason())

    return _act(charge_id, review)
