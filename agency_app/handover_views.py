"""Agency app pages for the counter (P-18): today's pick-ups and returns, the handover check with the
customer's photo revealed only then, the outcome, the handover and the return (through handover.service)."""

from __future__ import annotations

from typing import Any

from flask import Response, redirect, request, url_for

from agency_app.views import _render, agency_bp
from marketplace import clock
from marketplace.errors import AppError, Unprocessable
from marketplace.extensions import db
from marketplace.handover import service as handover
from marketplace.handover.states import Outcome
from marketplace.permissions import Permission
from marketplace.security import current_actor, requires
from marketplace.transactions import writes
from marketplace.webhelpers import image_response


def _page(reference: str, status: int = 200, *, error: AppError | None = None, photo: str | None = None) -> Any:
    h = handover.check_view(current_actor(), reference)
    return _render("agency/handover.html", status, h=h, error=error, photo=photo)


def _attempt(reference: str, action: Any) -> Any:
    try:
        action()
    except AppError as exc:
        db.session.rollback()
        if exc.status == 404:
            raise
        return _page(reference, exc.status, error=exc)
    return redirect(url_for("agency.handover_page", reference=reference))


@agency_bp.get("/handovers")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def handovers_today() -> Any:
    """Today's pick-ups and returns (Asia/Dubai day), each with where its handover stands."""
    day = clock.business_today()
    lists = handover.today(current_actor(), day)
    rows = {kind: [{"b": b, "stage": handover.stage_of(b)} for b in items] for kind, items in lists.items()}
    return _render("agency/handovers.html", day=day, pickups=rows["pickups"], returns=rows["returns"])


@agency_bp.get("/bookings/<string:reference>/handover")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def handover_page(reference: str) -> Any:
    """The handover check: names and licence details; the photo only on request, inside the window."""
    return _page(reference[:20])


@agency_bp.post("/bookings/<string:reference>/handover/reveal")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def handover_reveal(reference: str) -> Any:
    """Show the customer's photo once (a single-use link, about a minute, watermarked)."""
    reference = reference[:20]
    try:
        token, _expires = handover.reveal_selfie(current_actor(), reference)
    except AppError as exc:
        db.session.rollback()
        if exc.status == 404:
            raise
        return _page(reference, exc.status, error=exc)
    return _page(reference, photo=url_for("agency.handover_photo", token=token))


@agency_bp.get("/handover-photos/<string:token>")
@writes
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def handover_photo(token: str) -> Response:
    """The photo, once, watermarked with the booking, the staff member and the time; never cached (the
    path's secret is redacted from the logs)."""
    return image_response(handover.open_selfie(current_actor(), token[:200]), "image/jpeg")


@agency_bp.post("/bookings/<string:reference>/handover/check")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def handover_check(reference: str) -> Any:
    """Record match, mismatch or licence missing."""
    reference = reference[:20]
    handover.booking_for_staff(current_actor(), reference)  # another agency's booking: 404 before any check
    raw = request.form.get("outcome", "")
    if raw not in set(Outcome):
        raise Unprocessable(details={"fields": {"outcome": ["Choose match, mismatch or licence missing."]}})
    note = request.form.get("note", "")[:300] or None
    return _attempt(reference, lambda: handover.record_check(current_actor(), reference, Outcome(raw), note=note))


@agency_bp.post("/bookings/<string:reference>/handover")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def handover_go(reference: str) -> Any:
    """Hand the car over (after a match)."""
    reference = reference[:20]
    return _attempt(reference, lambda: handover.hand_over(current_actor(), reference))


@agency_bp.post("/bookings/<string:reference>/return")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def handover_return(reference: str) -> Any:
    """Record the car's return."""
    reference = reference[:20]
    return _attempt(reference, lambda: handover.record_return(current_actor(), reference))
