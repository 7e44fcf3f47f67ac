"""Agency app pages for bookings: the list (by day and status) and one booking, with only what the agency
needs (P-17): names, reference, car, dates, pick-up place, licence details and emergency contact."""

from __future__ import annotations

from datetime import date
from typing import Any

from flask import request

from agency_app.charge_views import booking_charges
from agency_app.views import _render, agency_bp
from marketplace.bookings import service as bookings
from marketplace.bookings.states import BookingStatus
from marketplace.errors import Unprocessable
from marketplace.permissions import Permission
from marketplace.schemas import decode_cursor, paginate
from marketplace.security import current_actor, requires

PAGE = 25
_CURSOR = "agency-app-bookings"


def _filters() -> tuple[date | None, str | None, int | None]:
    """The list's day, status and cursor from the query string (422 for anything malformed)."""
    raw_day = request.args.get("day", "").strip()[:10]
    raw_status = request.args.get("status", "").strip()[:20]
    try:
        day = date.fromisoformat(raw_day) if raw_day else None
    except ValueError as exc:
        raise Unprocessable(details={"fields": {"day": ["Pick a date."]}}) from exc
    if raw_status and raw_status not in set(BookingStatus):
        raise Unprocessable(details={"fields": {"status": ["Unknown status."]}})
    before = decode_cursor(_CURSOR, request.args.get("cursor", "")[:200] or None)
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
        raise Unprocessable(details={"fields": {"cursor": ["Invalid cursor."]}})
    return day, raw_status or None, before


@agency_bp.get("/bookings")
@requires(Permission.AGENCY_BOOKING_READ)
def bookings_list() -> Any:
    """The agency's bookings, newest first, by Dubai day and status, paged."""
    day, status, before = _filters()
    actor = current_actor()
    page = paginate(_CURSOR, PAGE, lambda n: bookings.list_for_agency(actor, day=day, status=status,
                                                                      before_id=before, limit=n))
    return _render("agency/bookings.html", bookings=[bookings.agency_booking_out(b) for b in page.items],
                   older=page.next_cursor,
                   day=day.isoformat() if day else "", status_filter=status or "", statuses=list(BookingStatus))


@agency_bp.get("/bookings/<string:reference>")
@requires(Permission.AGENCY_BOOKING_READ)
def booking_detail(reference: str) -> Any:
    """Another agency's booking is a 404, like one that never existed."""
    actor = current_actor()
    booking = bookings.get_for_agency(actor, reference[:20])
    return _render("agency/booking.html", b=bookings.agency_booking_out(booking),
                   **booking_charges(actor, booking.reference))
