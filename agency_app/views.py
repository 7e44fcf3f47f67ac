"""The agency staff web app: a second front door onto the same services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, redirect, render_template

from marketplace import clock
from marketplace.bookings import service as bookings
from marketplace.errors import AppError
from marketplace.extensions import db
from marketplace.fleet import service as fleet
from marketplace.payments import service as payments
from marketplace.permissions import Permission
from marketplace.security import csrf_token, current_actor
from marketplace.webauth import add_auth_routes

REQUIRED = Permission.AGENCY_ACCESS
TITLE = "Agency app"

agency_bp = Blueprint("agency", __name__, url_prefix="/agency", template_folder="templates")
add_auth_routes(agency_bp, door="agency", title=TITLE, permission=REQUIRED)


def _render(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    actor = current_actor()
    return render_template(template, door="agency", title=TITLE, actor=actor, csrf_token=csrf_token(actor),
                           P=Permission, **context), status


def _attempt(action: Callable[[], Any], on_error: Callable[[int, AppError], Any],
             target: Callable[[Any], str]) -> Any:
    """A form's service call: redirect on success (the edge commits), or show the page again with the error
    (nothing kept; a 404 stays a 404)."""
    try:
        result = action()
    except AppError as exc:
        db.session.rollback()
        if exc.status == 404:
            raise
        return on_error(exc.status, exc)
    return redirect(target(result))


@agency_bp.get("/", endpoint="home")
def home() -> Any:
    """The dashboard: today's pick-ups and returns (Asia/Dubai day) and the fleet at a glance."""
    actor = current_actor()
    day = clock.business_today()
    today = bookings.today_for_agency(actor, day)
    mine = fleet.agencies_of(actor)
    return _render("agency/home.html", agencies=mine, day=day,
                   payouts_not_ready=[a for a in mine if not payments.payouts_ready(a.id)],
                   payouts_required=payments.payouts_required(),
                   pickups=[bookings.agency_booking_out(b) for b in today["pickups"]],
                   returns=[bookings.agency_booking_out(b) for b in today["returns"]],
                   summary=fleet.fleet_summary(actor))


from agency_app import booking_views as _booking_views  # noqa: E402,F401  (bookings pages)
from agency_app import charge_views as _charge_views  # noqa: E402,F401  (post-rental charges)
from agency_app import fleet_views as _fleet_views  # noqa: E402,F401  (fleet and availability pages)
from agency_app import handover_views as _handover_views  # noqa: E402,F401  (the counter: handover and return)
from agency_app import invoice_views as _invoice_views  # noqa: E402,F401  (tax invoices and their PDFs)
from agency_app import payout_views as _payout_views  # noqa: E402,F401  (payout account and statement)
from agency_app import profile_views as _profile_views  # noqa: E402,F401  (registers the profile and staff pages)
