"""Agency app pages for the agency itself (P-12): its profile and verification documents, and its staff.

They call the same services as the JSON API (``marketplace.agencies.service``); nothing here writes models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import redirect, request, url_for
from marshmallow import fields

from agency_app.views import _render, agency_bp
from marketplace.agencies import service as agencies
from marketplace.agencies.states import AgencyStatus
from marketplace.errors import AppError
from marketplace.extensions import db
from marketplace.permissions import AGENCY_ROLES, Permission, Role, permissions_for
from marketplace.security import Actor, current_actor, requires
from marketplace.webhelpers import ImageFormIn, error_text, read_upload_form


class _DocumentFormIn(ImageFormIn):
    kind = fields.String(load_default="")


_DOCUMENT_FORM = _DocumentFormIn()


def _agency_ref(actor: Actor) -> str | None:
    """The agency named in the URL, else the first of the caller's agencies (pages offer a switcher)."""
    named = request.args.get("agency", "")[:64]
    if named:
        return named
    mine = agencies.agencies_of(actor)
    return mine[0].public_id if len(mine) > 1 else None


def _attempt(action: Callable[[], Any], on_error: Callable[[int, str], Any], target: str) -> Any:
    try:
        action()
    except AppError as exc:
        db.session.rollback()
        if exc.status == 404:
            raise
        return on_error(exc.status, error_text(exc))
    return redirect(target)


# ---- profile and documents -----------------------------------------------------------------------


def _profile_page(status: int = 200, error: str | None = None) -> Any:
    actor = current_actor()
    agency = agencies.own_agency(actor, _agency_ref(actor))
    here = permissions_for(actor.agency_roles(agency.id))
    return _render(
        "agency/profile.html", status=status, error=error, agency=agency, documents=agencies.documents_of(agency),
        missing=agencies.missing_documents(agency), kinds=agencies.DOCUMENT_KINDS, mine=agencies.agencies_of(actor),
        can_write=Permission.AGENCY_PROFILE_WRITE in here, can_upload=agency.status in (
            AgencyStatus.PENDING, AgencyStatus.REJECTED), S=AgencyStatus,
    )


def _profile_url() -> str:
    agency = request.args.get("agency", "")[:64]
    return url_for("agency.profile", agency=agency) if agency else url_for("agency.profile")


@agency_bp.get("/profile")
def profile() -> Any:
    return _profile_page()


@agency_bp.post("/profile")
@requires(Permission.AGENCY_PROFILE_WRITE)
def profile_update() -> Any:
    actor = current_actor()
    form = request.form
    changes: dict[str, Any] = {}
    for name in ("contact_email", "contact_phone"):
        if form.get(name, "").strip():
            changes[name] = form[name].strip()[:254]
    address = {k: form[f"address_{k}"].strip()[:200] for k in ("line1", "city", "country")
               if form.get(f"address_{k}", "").strip()}
    if address:
        changes["address"] = address
    raw_minutes = form.get("turnaround_minutes", "").strip()
    if raw_minutes:
        changes["turnaround_minutes"] = int(raw_minutes) if raw_minutes.isdigit() and len(raw_minutes) < 6 else -1
    return _attempt(lambda: agencies.update_profile(actor, _agency_ref(actor), changes),
                    _profile_page, _profile_url() + "#details")


@agency_bp.post("/profile/documents")
@requires(Permission.AGENCY_PROFILE_WRITE)
def profile_upload() -> Any:
    actor = current_actor()
    form = read_upload_form(_DOCUMENT_FORM)
    image = form["image"]
    if image is None or not image.filename:
        return _profile_page(422, "Choose a photo of the document to upload.")
    kind = form["kind"][:32]
    return _attempt(lambda: agencies.upload_document(actor, _agency_ref(actor), kind, image.stream, image.mimetype),
                    _profile_page, _profile_url() + "#documents")


# ---- staff ---------------------------------------------------------------------------------------


def _staff_page(status: int = 200, error: str | None = None) -> Any:
    actor = current_actor()
    ref = _agency_ref(actor)
    agency = agencies.own_agency(actor, ref)
    return _render(
        "agency/staff.html", status=status, error=error, agency=agency, staff=agencies.list_staff(actor, ref),
        invitations=agencies.pending_invitations(actor, ref), mine=agencies.agencies_of(actor),
        roles=sorted(AGENCY_ROLES), is_owner=Role.AGENCY_OWNER in actor.agency_roles(agency.id),
    )


def _staff_url(**extra: Any) -> str:
    agency = request.args.get("agency", "")[:64]
    if agency:
        extra["agency"] = agency
    return url_for("agency.staff", **extra)


@agency_bp.get("/staff")
@requires(Permission.AGENCY_STAFF_MANAGE)
def staff() -> Any:
    return _staff_page()


@agency_bp.post("/staff/invite")
@requires(Permission.AGENCY_STAFF_MANAGE)
def staff_invite() -> Any:
    actor = current_actor()
    form = request.form
    return _attempt(lambda: agencies.invite(actor, _agency_ref(actor), email=form.get("email", "")[:254],
                                            full_name=form.get("full_name", "")[:200], role=form.get("role", "")[:32]),
                    _staff_page, _staff_url(invited=1))


@agency_bp.post("/staff/<string:user_id>/remove")
@requires(Permission.AGENCY_STAFF_MANAGE)
def staff_remove(user_id: str) -> Any:
    actor = current_actor()
    return _attempt(lambda: agencies.remove_staff(actor, _agency_ref(actor), user_id[:64]),
                    _staff_page, _staff_url(removed=1))
