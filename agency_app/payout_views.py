"""Agency app page for the agency's payouts: its Stripe Connect payout account (onboarding, owner only) and its
payout statement, the same lines as ``GET /api/v1/agency/payouts``.

Outside production an agency without a ready payout account still lists and rents out cars, and this page and
the dashboard say so; in production it does neither (``agency_payouts_not_ready``).
"""

from __future__ import annotations

from typing import Any

from flask import redirect, request, url_for

from agency_app.profile_views import _agency_ref
from agency_app.views import _render, agency_bp
from marketplace.agencies import service as agencies
from marketplace.errors import AppError
from marketplace.extensions import db
from marketplace.payments import service as payments
from marketplace.permissions import Permission, permissions_for
from marketplace.security import current_actor, requires
from marketplace.transactions import writes
from marketplace.webhelpers import error_text


def _page(status: int = 200, error: str | None = None) -> Any:
    actor = current_actor()
    agency = agencies.own_agency(actor, _agency_ref(actor))
    lines = [payments.payout_line(p) for p in payments.payouts_for_agency(actor) if p.agency_id == agency.id]
    return _render("agency/payouts.html", status=status, error=error, agency=agency, mine=agencies.agencies_of(actor),
                   setup=payments.payout_setup(actor, agency), payouts=lines,
                   can_onboard=Permission.AGENCY_PROFILE_WRITE in permissions_for(actor.agency_roles(agency.id)))


@agency_bp.get("/payouts")
@requires(Permission.AGENCY_PAYOUT_READ)
@writes  # back from Stripe's onboarding it asks Stripe how the account stands and records it
def payouts() -> Any:
    """The payout account and the payout statement (amount, booking, fee withheld, transfer, date, status)."""
    actor = current_actor()
    if request.args.get("returned"):
        agency = agencies.own_agency(actor, _agency_ref(actor))
        try:
            payments.refresh_payout_account(agency.id)
        except AppError as exc:  # Stripe unreachable: the account.updated webhook will tell us
            db.session.rollback()
            return _page(error=error_text(exc))
    return _page()


@agency_bp.post("/payouts/onboarding")
@requires(Permission.AGENCY_PROFILE_WRITE)
def payouts_onboarding() -> Any:
    """The owner starts (or resumes) Stripe's hosted onboarding: off to Stripe, back to this page."""
    actor = current_actor()
    agency = agencies.own_agency(actor, _agency_ref(actor))
    back = url_for("agency.payouts", agency=request.args.get("agency") or None, returned=1, _external=True)
    try:
        _, link = payments.start_payout_onboarding(actor, agency, refresh_url=back, return_url=back)
    except AppError as exc:
        db.session.rollback()
        if exc.status == 404:
            raise
        return _page(exc.status, error_text(exc))
    return redirect(link)
