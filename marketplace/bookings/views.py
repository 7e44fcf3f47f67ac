"""Bookings over the JSON API: the customer's side and the agency's minimised side."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from flask import request
from flask.views import MethodView

from marketplace.api import ApiBlueprint, DocumentedConverter
from marketplace.bookings import schemas as s
from marketplace.bookings import service
from marketplace.bookings.models import Booking
from marketplace.errors import Unprocessable
from marketplace.permissions import Permission
from marketplace.schemas import PageArgsSchema, decode_id_cursor, paginate
from marketplace.security import current_actor, requires

bookings_bp = ApiBlueprint("bookings", __name__, url_prefix="/api/v1/bookings", description="Quotes and bookings")
agency_bookings_bp = ApiBlueprint("agency_bookings", __name__, url_prefix="/api/v1/agency/bookings",
                                  description="The agency's bookings (minimised customer data)")

_KEY = re.compile(r"^[A-Za-z0-9_\-:.]{8,80}$")


class ReferenceConverter(DocumentedConverter):
    """A booking reference: any path segment but ``quote``, its static sibling (a wrong reference stays a 404
    from the service); documented in the form bookings.service.new_reference makes."""

    regex = r"(?!quote$)[^/]+"
    part_isolating = True
    openapi: ClassVar[dict[str, Any]] = {"type": "string", "pattern": r"^CJ-[A-Z0-9]{4}-[A-Z0-9]{4}$"}


def _converters(state: Any) -> None:
    state.app.url_map.converters.setdefault("reference", ReferenceConverter)


# recorded before any route, so the converter exists when the blueprint's rules are added
bookings_bp.record_once(_converters)
agency_bookings_bp.record_once(_converters)
REFERENCE = "<reference:reference>"


def _money(b: Any) -> dict[str, Any]:
    return {"days": b.days, "daily_rate": b.daily_rate_fils, "rental": b.rental_fils,
            "platform_fee": b.platform_fee_fils, "vat": b.vat_fils, "total": b.total_fils,
            "deposit": b.deposit_fils, "currency": b.currency}


def booking_out(b: Booking) -> dict[str, Any]:
    return {
        "reference": b.reference, "status": b.status, "vehicle": service.vehicle_out(b.vehicle_id),
        "starts_at": b.starts_at, "ends_at": b.ends_at, "pickup_place": b.pickup_place,
        "dropoff_place": b.dropoff_place, "price": _money(b),
        "pay_by": b.pay_by if b.status == "pending_payment" else None, "rental_terms_version": b.terms_version,
        "mit_mandate_version": b.mandate_version, "cancelled_at": b.cancelled_at, "cancel_reason": b.cancel_reason,
        "cancellation_fee": b.cancellation_fee_fils, "free_cancellation_until": b.starts_at - service.FREE_CANCELLATION,
        "history": [{"at": e.at, "kind": e.kind, "from_status": e.from_status, "to_status": e.to_status}
                    for e in service.events(b)],
        "created_at": b.created_at,
    }


agency_booking_out = service.agency_booking_out


@bookings_bp.route("/quote", methods=["POST"])
@bookings_bp.doc(description=s.PERIOD_RULES)
@bookings_bp.arguments(s.QuoteIn)
@bookings_bp.response(200, s.QuoteOut)
def quote(args: dict[str, Any]) -> dict[str, Any]:
    """Price breakdown for a car and period: rental, platform fee, VAT 5%, deposit; and availability."""
    q = service.quote(str(args["vehicle_id"]), args["starts_at"], args["ends_at"])
    return {"vehicle_id": q.vehicle.public_id, "starts_at": q.starts_at, "ends_at": q.ends_at,
            "available": q.available, "free_cancellation_until": q.free_cancellation_until,
            "price": {"days": q.days, "daily_rate": q.daily_rate_fils, "rental": q.rental_fils,
                      "platform_fee": q.platform_fee_fils, "vat": q.vat_fils, "total": q.total_fils,
                      "deposit": q.deposit_fils, "currency": q.currency}}


@bookings_bp.route("")
class Bookings(MethodView):
    @bookings_bp.doc(description=s.PERIOD_RULES)
    @bookings_bp.arguments(s.BookingIn)
    @bookings_bp.response(201, s.BookingOut)
    @bookings_bp.alt_response(200, schema=s.BookingOut,
                              description="Replay of an earlier request with this Idempotency-Key")
    @bookings_bp.doc(parameters=[{"in": "header", "name": "Idempotency-Key", "required": False,
                                  "schema": {"type": "string", "pattern": _KEY.pattern},
                                  "description": "Send the same key to retry safely; a different body is a 409"}])
    def post(self, args: dict[str, Any]) -> Any:
        """Book a car (accepting the rental terms and the MIT mandate); pay within 15 minutes. Refused with
        `409 outstanding_balance` while one of your post-rental charges is unpaid or waits for you to confirm
        it (pay it with `POST /api/v1/charges/{id}/pay`)."""
        key = request.headers.get("Idempotency-Key")
        if key is not None and not _KEY.match(key):
            raise Unprocessable(details={"fields": {"Idempotency-Key": ["8-80 letters, digits or - _ : ."]}})
        booking, created = service.create_booking(
            current_actor(), vehicle_id=str(args["vehicle_id"]), starts_at=args["starts_at"], ends_at=args["ends_at"],
            rental_terms_version=args["accept_rental_terms_version"],
            mit_mandate_version=args["accept_mit_mandate_version"], idempotency_key=key)
        return booking_out(booking), (201 if created else 200)

    @bookings_bp.arguments(PageArgsSchema, location="query")
    @bookings_bp.response(200, s.BookingPageOut)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Your bookings, newest first."""
        actor, before = current_actor(), decode_id_cursor("bookings", args["cursor"])
        return paginate("bookings", args["limit"],
                        lambda n: service.list_for_customer(actor, before_id=before, limit=n)).out(booking_out)


@bookings_bp.route(f"/{REFERENCE}")
class BookingDetail(MethodView):
    @bookings_bp.response(200, s.BookingOut)
    def get(self, reference: str) -> dict[str, Any]:
        """One of your bookings, with its status history."""
        return booking_out(service.get_for_customer(current_actor(), reference))

    @bookings_bp.doc(description=s.PERIOD_RULES)
    @bookings_bp.arguments(s.PeriodIn)
    @bookings_bp.response(200, s.BookingOut)
    def patch(self, args: dict[str, Any], reference: str) -> dict[str, Any]:
        """Change the dates: availability is checked again and the price recomputed."""
        booking = service.change_dates(current_actor(), reference, starts_at=args["starts_at"],
                                       ends_at=args["ends_at"])
        return booking_out(booking)


@bookings_bp.route(f"/{REFERENCE}/cancel", methods=["POST"])
@bookings_bp.arguments(s.CancelIn)
@bookings_bp.response(200, s.BookingOut)
def cancel(args: dict[str, Any], reference: str) -> dict[str, Any]:
    """Cancel: free until 48 hours before pick-up, then one day's rental (the answer states the fee)."""
    actor = current_actor()
    booking = service.cancel(actor, service.get_for_customer(actor, reference), reason=args["reason"])
    return booking_out(booking)


# ---- agency side ---------------------------------------------------------------------------------


@agency_bookings_bp.route("")
@agency_bookings_bp.arguments(s.AgencyBookingArgs, location="query")
@agency_bookings_bp.response(200, s.AgencyBookingPageOut)
@requires(Permission.AGENCY_BOOKING_READ)
def agency_list(args: dict[str, Any]) -> dict[str, Any]:
    """Your agency's bookings, newest first; `day` gives that day's pick-ups and returns (Asia/Dubai)."""
    actor, before = current_actor(), decode_id_cursor("agency-bookings", args["cursor"])
    return paginate("agency-bookings", args["limit"], lambda n: service.list_for_agency(
        actor, day=args["day"], status=args["status"], before_id=before, limit=n)).out(agency_booking_out)


@agency_bookings_bp.route(f"/{REFERENCE}")
@agency_bookings_bp.response(200, s.AgencyBookingOut)
@requires(Permission.AGENCY_BOOKING_READ)
def agency_detail(reference: str) -> dict[str, Any]:
    """One booking of your agency (another agency's booking is a 404)."""
    return agency_booking_out(service.get_for_agency(current_actor(), reference))


@agency_bookings_bp.route(f"/{REFERENCE}/cancel", methods=["POST"])
@agency_bookings_bp.arguments(s.CancelIn)
@agency_bookings_bp.response(200, s.AgencyBookingOut)
@requires(Permission.AGENCY_VEHICLE_WRITE)
def agency_cancel(args: dict[str, Any], reference: str) -> dict[str, Any]:
    """Cancel a booking as the agency (no fee for the customer; the reason is shown to them)."""
    actor = current_actor()
    booking = service.cancel(actor, service.get_for_agency(actor, reference), reason=args["reason"], by_agency=True)
    return agency_booking_out(booking)
