"""Agency app pages for the counter (P-18): today's pick-ups and returns, the handover check with the
customer's photo revealed only then, the outcome, the handover and the return (through handover.service)."""

from __future__ import annotations

from typing import Any

from flask import Response, redirect, request, url_for

from agency_app.views import _render, agency_bp
from marketplace import clock
from marketplace.errors import AppError, NotFound, Unprocessable
from marketplace.extensions import db
from marketplace.handover import service as handover
from marketplace.handover.states import DamageArea, DamageSeverity, InspectionKind, Outcome
from marketplace.permissions import Permission
from marketplace.security import current_actor, requires
from marketplace.transactions import writes
from marketplace.webhelpers import ImageFormIn, image_response, read_upload_form

_PHOTO_FORM = ImageFormIn()


def _page(reference: str, status: int = 200, *, error: AppError | None = None, photo: str | None = None) -> Any:
    actor = current_actor()
    h = handover.check_view(actor, reference)
    inspections = handover.inspection_view(actor, reference)
    open_kind = {"matched": "pickup", "handed_over": "return", "returned": "return"}.get(h["stage"])
    if open_kind and (inspections[open_kind] or {}).get("acknowledged_at"):
        open_kind = None  # acknowledged: frozen
    return _render("agency/handover.html", status, h=h, error=error, photo=photo, inspections=inspections,
                   open_kind=open_kind, areas=list(DamageArea), severities=list(DamageSeverity))


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
@writes  # the inspections' view is audited
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


# ---- inspections ---------------------------------------------------------------------------------------


def _inspection_target(reference: str, kind: str) -> tuple[str, InspectionKind]:
    """Another agency's booking or an unknown kind: 404 before any input is read."""
    reference = reference[:20]
    handover.booking_for_staff(current_actor(), reference)
    if kind not in set(InspectionKind):
        raise NotFound()
    return reference, InspectionKind(kind)


def _form_int(name: str, label: str) -> int:
    raw = request.form.get(name, "").strip()
    if not raw.isdigit() or len(raw) > 9:
        raise Unprocessable(f"{label}: a whole number.", details={"fields": {name: ["A whole number."]}})
    return int(raw)


@agency_bp.post("/bookings/<string:reference>/inspections/<string:kind>")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def inspection_save(reference: str, kind: str) -> Any:
    """Record the pick-up or return inspection: mileage, fuel, a note and (one per submit) a damage mark added
    to those recorded."""
    reference, which = _inspection_target(reference, kind)
    actor = current_actor()

    def save() -> None:
        mileage, fuel = _form_int("mileage_km", "Mileage"), _form_int("fuel_eighths", "Fuel")
        current = handover.inspection_view(actor, reference, audited=False)[which]
        damage = list(current["damage"]) if current else []
        area = request.form.get("damage_area", "")
        if area:
            damage.append({"area": area, "severity": request.form.get("damage_severity", ""),
                           "note": request.form.get("damage_note", "")[:500] or None})
        handover.record_inspection(actor, reference, which, mileage_km=mileage, fuel_eighths=fuel, damage=damage,
                                   note=request.form.get("note", "")[:500] or None)

    return _attempt(reference, save)


@agency_bp.post("/bookings/<string:reference>/inspections/<string:kind>/photos")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def inspection_photo_upload(reference: str, kind: str) -> Any:
    """Add a photo to the inspection (through the image pipeline: metadata removed, stored encrypted)."""
    reference, which = _inspection_target(reference, kind)
    image = read_upload_form(_PHOTO_FORM)["image"]
    if image is None or not image.filename:
        db.session.rollback()
        return _page(reference, 422, error=Unprocessable("Choose a photo to upload.",
                                                         details={"fields": {"image": ["Required."]}}))
    return _attempt(reference, lambda: handover.add_inspection_photo(current_actor(), reference, which, image))


@agency_bp.post("/bookings/<string:reference>/inspections/<string:kind>/acknowledge")
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def inspection_ack(reference: str, kind: str) -> Any:
    """The customer acknowledges the inspection by typing their name; it is frozen from then on."""
    reference, which = _inspection_target(reference, kind)
    name = request.form.get("name", "")[:200]
    return _attempt(reference, lambda: handover.acknowledge_inspection(current_actor(), reference, which, name=name))


@agency_bp.get("/inspection-photos/<string:photo_id>")
@writes  # each view is audited
@requires(Permission.AGENCY_HANDOVER_PERFORM)
def inspection_photo(photo_id: str) -> Response:
    """An inspection photo of your agency's booking, never cached."""
    return image_response(handover.inspection_photo(current_actor(), photo_id[:36]), "image/jpeg")
