"""Handover over the agency JSON API: today's list, the identity check, the reveal, the handover, the return."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, ClassVar

from flask import Response, request

from marketplace.api import ApiBlueprint, DocumentedConverter
from marketplace.bookings import service as bookings
from marketplace.clock import business_today
from marketplace.errors import NotFound
from marketplace.extensions import limiter
from marketplace.handover import schemas as s
from marketplace.handover import service
from marketplace.handover.states import InspectionKind, Outcome
from marketplace.permissions import Permission
from marketplace.security import current_actor, requires
from marketplace.transactions import writes
from marketplace.users import service as users
from marketplace.webhelpers import image_response, json_error, loads_json, upload_arguments, upload_key, upload_limit

agency_handover_bp = ApiBlueprint("agency_handover", __name__, url_prefix="/api/v1/agency",
                                  description="Pick-up and return: the identity check with the customer's photo (P-18)")
customer_inspections_bp = ApiBlueprint("booking_inspections", __name__, url_prefix="/api/v1/bookings",
                                      description="The pick-up and return inspections of your booking (P-18)")
BOOKING = "/bookings/<string:reference>"
KIND = "<inspection_kind:kind>"


class InspectionKindConverter(DocumentedConverter):
    """``pickup`` or ``return``. Any segment reaches the view (which answers 404 for another), so the gate
    answers an unauthenticated request first, as on every route."""

    openapi: ClassVar[dict[str, Any]] = {"type": "string", "enum": list(InspectionKind)}


def _converters(state: Any) -> None:
    state.app.url_map.converters.setdefault("inspection_kind", InspectionKindConverter)


agency_handover_bp.record_once(_converters)


def _kind(kind: str) -> InspectionKind:
    if kind not in set(InspectionKind):
        raise NotFound()
    return InspectionKind(kind)


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


# ---- inspections ------------------------------------------------------------------------------------------


def inspections_out(view: dict[str, Any], photo_url: Any) -> dict[str, Any]:
    """The service's view with each photo's link for this door (``photo_url(photo_id)``)."""
    out = dict(view)
    for kind in ("pickup", "return"):
        if out[kind] is not None:
            out[kind] = dict(out[kind], photos=[dict(p, url=photo_url(p["id"])) for p in out[kind]["photos"]])
    return out


def _booking_scope(view: Callable[..., Any]) -> Callable[..., Any]:
    """Another agency's booking (or one without the handover permission) is a 404 before the body's fields are
    checked. A body that is no JSON at all (malformed, too deep: IN-02) is still refused first, as everywhere."""

    @wraps(view)
    def scoped(*args: Any, **kwargs: Any) -> Any:
        if request.is_json and (data := request.get_data(cache=True)):
            try:
                loads_json(data)
            except ValueError as exc:
                raise json_error(exc) from exc
        service.booking_for_staff(current_actor(), kwargs["reference"])
        _kind(kwargs["kind"])
        return view(*args, **kwargs)

    return scoped


def _staff_photo_url(photo_id: str) -> str:
    return f"/api/v1/agency/inspection-photos/{photo_id}"


def _staff_view(reference: str, *, audited: bool = True) -> dict[str, Any]:
    return inspections_out(service.inspection_view(current_actor(), reference, audited=audited), _staff_photo_url)


@agency_handover_bp.route(f"{BOOKING}/inspections/{KIND}", methods=["PUT"])
@_booking_scope
@agency_handover_bp.arguments(s.InspectionIn)
@agency_handover_bp.response(200, s.InspectionsOut)
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def record_inspection(args: dict[str, Any], reference: str, kind: str) -> dict[str, Any]:
    """Record the pick-up inspection (after the identity match, before the handover) or the return inspection
    (after the handover, up to the return): mileage, fuel, damage marks, a note. It may be corrected until the
    customer acknowledges it (then 409 `inspection_acknowledged`); out of order: 409 `inspection_not_open`; a
    return mileage below the pick-up's: 422 `mileage_below_pickup`."""
    service.record_inspection(current_actor(), reference, _kind(kind), mileage_km=args["mileage_km"],
                              fuel_eighths=args["fuel_eighths"], damage=args["damage"], note=args["note"])
    return _staff_view(reference, audited=False)  # the record is audited


@agency_handover_bp.route(f"{BOOKING}/inspections/{KIND}/photos", methods=["POST"])
@limiter.limit(upload_limit, key_func=upload_key)
@_booking_scope
@upload_arguments(agency_handover_bp, s.InspectionPhotoFileIn)
@agency_handover_bp.response(201, s.InspectionPhotoOut)
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def add_inspection_photo(args: dict[str, Any], reference: str, kind: str) -> dict[str, Any]:
    """Add a photo to a recorded, not yet acknowledged inspection (JPEG, PNG or WebP; metadata removed, pixels
    re-encoded, stored encrypted); at most 12 (422 `inspection_photo_limit`)."""
    photo = service.add_inspection_photo(current_actor(), reference, _kind(kind), args["image"])
    return {"id": photo.public_id, "url": _staff_photo_url(photo.public_id), "width": photo.width,
            "height": photo.height}


@agency_handover_bp.route(f"{BOOKING}/inspections/{KIND}/acknowledge", methods=["POST"])
@_booking_scope
@agency_handover_bp.arguments(s.InspectionAckIn)
@agency_handover_bp.response(200, s.InspectionsOut)
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def acknowledge_inspection(args: dict[str, Any], reference: str, kind: str) -> dict[str, Any]:
    """The customer acknowledges the recorded inspection at the counter by typing their name; from then on it
    is frozen (409 `inspection_acknowledged`)."""
    service.acknowledge_inspection(current_actor(), reference, _kind(kind), name=args["name"])
    return _staff_view(reference, audited=False)  # the acknowledgement is audited


@agency_handover_bp.route(f"{BOOKING}/inspections")
@writes
@agency_handover_bp.response(200, s.InspectionsOut)
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def inspections(reference: str) -> dict[str, Any]:
    """Both inspections of the booking, with links to their photos, and the actual handover and return times
    (each view is audited)."""
    return _staff_view(reference)


@agency_handover_bp.route("/inspection-photos/<string:photo_id>")
@writes
@agency_handover_bp.response(200, description="The photo (JPEG, no metadata), never cached",
                             content_type="image/jpeg")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def inspection_photo(photo_id: str) -> Response:
    """One inspection photo of your agency's booking (audited)."""
    return image_response(service.inspection_photo(current_actor(), photo_id), "image/jpeg")


@customer_inspections_bp.route("/<string:reference>/inspections")
@writes
@customer_inspections_bp.response(200, s.InspectionsOut)
def my_inspections(reference: str) -> dict[str, Any]:
    """The pick-up and return inspections of your booking as the agency recorded them, with their photos."""
    actor = current_actor()
    return inspections_out(service.customer_inspection_view(actor, reference),
                           lambda photo_id: f"/api/v1/bookings/{reference}/inspection-photos/{photo_id}")


@customer_inspections_bp.route("/<string:reference>/inspection-photos/<string:photo_id>")
@writes
@customer_inspections_bp.response(200, description="The photo (JPEG, no metadata), never cached",
                                  content_type="image/jpeg")
def my_inspection_photo(reference: str, photo_id: str) -> Response:
    """One photo of an inspection of your booking."""
    return image_response(service.customer_inspection_photo(current_actor(), reference, photo_id), "image/jpeg")
