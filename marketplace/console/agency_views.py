"""Console pages for agency verification (P-12): the list, the agency page with its documents, and the
approve, reject, suspend and reinstate actions. Every action is audited by the service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, redirect, request, url_for

from marketplace import transactions
from marketplace.agencies import service as agencies
from marketplace.agencies.states import AgencyStatus
from marketplace.bookings import service as bookings
from marketplace.console.views import _render, console_bp
from marketplace.errors import AppError
from marketplace.extensions import db
from marketplace.kyc import service as kyc
from marketplace.permissions import Permission
from marketplace.security import Actor, current_actor, requires
from marketplace.webhelpers import image_response


@console_bp.get("/agencies")
@requires(Permission.AGENCY_VERIFY)
def agencies_list() -> Any:
    wanted = request.args.get("status", "")[:24]
    if wanted not in set(AgencyStatus):
        wanted = ""
    return _render("console/agencies.html", agencies=agencies.list_for_console(current_actor(), status=wanted or None),
                   wanted=wanted, statuses=list(AgencyStatus))


def _agency_page(public_id: str, *, status: int = 200, error: str | None = None) -> Any:
    actor = current_actor()
    agency = agencies.get_for_console(actor, public_id)
    images = {}
    if agency.id not in actor.agency_ids:
        images = {kind: url_for("console.agency_image", token=token)
                  for kind, token in agencies.document_image_grants(actor, agency).items()}
    transactions.commit_error_response()  # the grants (and their audit rows) are the page's, whatever its status
    return _render(
        "console/agency.html", status=status, error=error, agency=agency, images=images,
        documents=agencies.documents_of(agency), missing=agencies.missing_documents(agency),
        staff=agencies.staff_of(actor, agency), lookalikes=agencies.lookalikes(actor, agency),
        flagged=bookings.flagged_for_agency(actor, agency), S=AgencyStatus,
    )


@console_bp.get("/agencies/<string:agency_id>")
@transactions.writes
@requires(Permission.AGENCY_VERIFY)
def agency_page(agency_id: str) -> Any:
    return _agency_page(agency_id)


def _act(agency_id: str, action: Callable[[Actor], Any]) -> Any:
    try:
        action(current_actor())
    except AppError as exc:
        db.session.rollback()
        if exc.status == 404:
            raise
        fields = exc.details.get("fields") if isinstance(exc.details, dict) else None
        missing = exc.details.get("missing") if isinstance(exc.details, dict) else None
        message = exc.text
        if fields:
            message += " " + "; ".join(f"{k}: {', '.join(v)}" for k, v in fields.items())
        if missing and isinstance(missing, list):
            message += " Missing: " + ", ".join(str(m).replace("_", " ") for m in missing) + "."
        return _agency_page(agency_id, status=exc.status, error=message)
    return redirect(url_for("console.agency_page", agency_id=agency_id))


def _reason() -> str:
    return request.form.get("reason", "")[:2000]


@console_bp.post("/agencies/<string:agency_id>/approve")
@requires(Permission.AGENCY_VERIFY)
def agency_approve(agency_id: str) -> Any:
    return _act(agency_id, lambda actor: agencies.approve(actor, agency_id))


@console_bp.post("/agencies/<string:agency_id>/reject")
@requires(Permission.AGENCY_VERIFY)
def agency_reject(agency_id: str) -> Any:
    return _act(agency_id, lambda actor: agencies.reject(actor, agency_id, _reason()))


@console_bp.post("/agencies/<string:agency_id>/suspend")
@requires(Permission.AGENCY_VERIFY)
def agency_suspend(agency_id: str) -> Any:
    return _act(agency_id, lambda actor: agencies.suspend(actor, agency_id, _reason()))


@console_bp.post("/agencies/<string:agency_id>/reinstate")
@requires(Permission.AGENCY_VERIFY)
def agency_reinstate(agency_id: str) -> Any:
    return _act(agency_id, lambda actor: agencies.reinstate(actor, agency_id, _reason() or None))


@console_bp.get("/agencies/images/<string:token>")
@transactions.writes
@requires(Permission.AGENCY_VERIFY)
def agency_image(token: str) -> Response:
    data, blob = kyc.open_granted_image(current_actor(), token)
    return image_response(data, blob.mime)
