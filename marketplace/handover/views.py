"""Handover over the agency JSON API: today's list, the identity check, the reveal, the handover, the return."""

from __future__ import annotations

from typing import Any

from flask import Response

from marketplace.api import ApiBlueprint
from marketplace.bookings import service as bookings
from marketplace.clock import business_today
from marketplace.handover import schemas as s
from marketplace.handover import service
from marketplace.handover.states import Outcome
from marketplace.permissions import Permission
from marketplace.security import current_actor, requires
from marketplace.transactions import writes
from marketplace.users import service as users
from marketplace.webhelpers import image_response

agency_handover_bp = ApiBlueprint("agency_handover", __name__, url_prefix="/api/v1/agency",
                                  description="Pick-up and return: the identity check with the customer's photo (P-18)")
BOOKING = "/bookings/<string:reference>"


def _item(booking: Any) -> dict[str, Any]:
    customer = users.get_user(booking.customer_id)
    assert customer is not None
    return {"reference": booking.reference, "status": booking.status, "stage": service.stage_of(booking),
            "starts_at": booking.starts_at, "ends_at": booking.ends_at,
            "vehicle": bookings.vehicle_out(booking.vehicle_id),
            "renter": {"first_name": customer.first_name, "last_name": customer.last_name}}


@agency_handover_bp.route("/handovers")
@agency_handover_bp.arguments(s.HandoverDayArgs, location="query")
@agency_handover_bp.response(200, s.TodayOut)
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def today(args: dict[str, Any]) -> dict[str, Any]:
    """The day's pick-ups and returns of your agency (Asia/Dubai day; today by default)."""
    day = args["day"] or business_today()
    lists = service.today(current_actor(), day)
    return {"day": day, "pickups": [_item(b) for b in lists["pickups"]],
            "returns": [_item(b) for b in lists["returns"]]}


@agency_handover_bp.route(f"{BOOKING}/handover")
@agency_handover_bp.response(200, s.HandoverOut)
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def check_view(reference: str) -> dict[str, Any]:
    """The handover check: the customer's first and last name and licence details, and where it stands."""
    return service.check_view(current_actor(), reference)


@agency_handover_bp.route(f"{BOOKING}/handover/reveal", methods=["POST"])
@agency_handover_bp.response(200, s.RevealOut)
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def reveal(reference: str) -> dict[str, Any]:
    """A single-use link to the customer's photo: only inside the handover window, with MFA passed in the
    last few minutes, for a confirmed, paid booking with its deposit held and a customer still cleared to
    drive, before the car is handed over. Refusals name their reasons (`handover_reveal_refused`)."""
    token, expires = service.reveal_selfie(current_actor(), reference)
    return {"url": f"/api/v1/agency/handover-photos/{token}", "expires_at": expires}


@agency_handover_bp.route("/handover-photos/<string:token>")
@writes
@agency_handover_bp.response(200, description="The photo (JPEG) with a visible watermark, never cached",
                             content_type="image/jpeg")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def photo(token: str) -> Response:
    """Open a reveal link once: the photo carries the booking reference, your name and the time (the path's
    secret is redacted from the logs)."""
    return image_response(service.open_selfie(current_actor(), token), "image/jpeg")


@agency_handover_bp.route(f"{BOOKING}/handover/check", methods=["POST"])
@agency_handover_bp.arguments(s.HandoverCheckIn)
@agency_handover_bp.response(200, s.HandoverOut)
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def check(args: dict[str, Any], reference: str) -> dict[str, Any]:
    """Record the identity check: `match`, `mismatch` (cancels the booking and sends the account to KYC
    re-review) or `licence_missing` (the check may be done again)."""
    actor = current_actor()
    service.record_check(actor, reference, Outcome(args["outcome"]), note=args["note"])
    return service.check_view(actor, reference)


@agency_handover_bp.route(f"{BOOKING}/handover", methods=["POST"])
@agency_handover_bp.response(200, s.HandoverOut)
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def hand_over(reference: str) -> dict[str, Any]:
    """Hand the car over (after a match only): records the time; the booking is in progress."""
    actor = current_actor()
    service.hand_over(actor, reference)
    return service.check_view(actor, reference)


@agency_handover_bp.route(f"{BOOKING}/return", methods=["POST"])
@agency_handover_bp.response(200, s.HandoverOut)
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def car_returned(reference: str) -> dict[str, Any]:
    """Record the return: the time, lateness against the booking's end, and the deposit released when no
    charge is pending."""
    actor = current_actor()
    service.record_return(actor, reference)
    return service.check_view(actor, reference)
