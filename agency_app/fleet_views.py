"""Agency app pages for the fleet (P-13): the car list with an add form, and one car's page (details, photos,
availability blocks). They call ``marketplace.fleet.service`` like the JSON API does; nothing here writes models.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from flask import Response, redirect, request, url_for

from agency_app.views import _attempt, _render, agency_bp
from marketplace import clock
from marketplace.clock import BUSINESS_TZ
from marketplace.errors import AppError, Unprocessable
from marketplace.extensions import db
from marketplace.fleet import service as fleet
from marketplace.permissions import Permission
from marketplace.security import Actor, current_actor, requires
from marketplace.webhelpers import ImageFormIn, error_text, read_upload_form

_PHOTO_FORM = ImageFormIn()
if TYPE_CHECKING:
    from marketplace.fleet.models import Vehicle

_INTEGER_FIELDS = ("year", "seats", "mileage_limit_km_per_day", "turnaround_minutes")
_AED_FIELDS = {"daily_price": "daily_price_fils", "deposit": "deposit_fils", "extra_km_price": "extra_km_fils"}
_NUMBER_FIELDS = ("latitude", "longitude")
_TEXT_FIELDS = ("make", "model", "category", "plate", "transmission", "fuel_type", "city", "pickup_address",
                "fuel_policy", "status")
_OPTIONAL = ("pickup_address", "mileage_limit_km_per_day", "extra_km_fils", "turnaround_minutes")


def _integer(raw: str) -> int | str:
    raw = raw.strip()
    return int(raw) if raw.isdigit() and len(raw) < 9 else raw


def _number(raw: str) -> float | str:
    try:
        return float(Decimal(raw.strip()))
    except (InvalidOperation, ValueError):
        return raw


def _fils(raw: str) -> int | str:
    """AED with at most two decimals -> fils; anything else stays text for the schema to refuse."""
    try:
        amount = Decimal(raw.strip())
    except (InvalidOperation, ValueError):
        return raw
    return int(amount * 100) if amount.is_finite() and amount == amount.quantize(Decimal("0.01")) else raw


def _form_values(form: Any, *, partial: bool) -> dict[str, Any]:
    """The car form as typed values (prices typed in AED become fils); unparseable values are passed through
    as text so the schema names the field."""
    values: dict[str, Any] = {name: form[name].strip()[:200] for name in _TEXT_FIELDS if name in form}
    values.update({name: _integer(form[name]) for name in _INTEGER_FIELDS if name in form})
    values.update({name: _number(form[name]) for name in _NUMBER_FIELDS if name in form})
    values.update({target: _fils(form[name]) for name, target in _AED_FIELDS.items() if name in form})
    for name in _OPTIONAL:
        if values.get(name) == "":
            values[name] = None
    if not partial and form.get("agency"):
        values["agency"] = form["agency"][:64]
    return values


def _validated(values: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    return fleet.validate_vehicle_form(values, partial=partial)


def _writable_agencies(actor: Actor) -> list[Any]:
    return [a for a in fleet.agencies_of(actor) if fleet.can_in_agency(actor, a.id, Permission.AGENCY_VEHICLE_WRITE)]


def _fleet_page(status: int = 200, error: AppError | None = None, form: dict[str, Any] | None = None) -> Any:
    actor = current_actor()
    return _render("agency/fleet.html", status=status, error=error and error_text(error),
                   error_code=error and error.code, vehicles=fleet.vehicles_for_staff(actor),
                   agencies={a.id: a for a in fleet.agencies_of(actor)}, writable=_writable_agencies(actor),
                   summary=fleet.fleet_summary(actor), form=form or {}, C=fleet)


@agency_bp.get("/fleet")
@requires(Permission.AGENCY_VEHICLE_READ)
def fleet_list() -> Any:
    """The agencies' cars, with the add form for those who may write."""
    return _fleet_page()


@agency_bp.post("/fleet")
@requires(Permission.AGENCY_VEHICLE_WRITE)
def fleet_add() -> Any:
    """Add a car from the form (prices in AED); errors come back on the same page with the form kept."""
    actor = current_actor()
    form = request.form

    def add() -> Vehicle:
        data = _validated(_form_values(form, partial=False), partial=False)
        agency = data.pop("agency")
        return fleet.create_vehicle(actor, agency=str(agency) if agency else None, **data)

    return _attempt(add, lambda status, exc: _fleet_page(status, exc, dict(form)),
                    lambda v: url_for("agency.fleet_vehicle", vehicle_id=v.public_id, added=1))


# ---- one car ----------------------------------------------------------------------------------------------


def _vehicle_page(vehicle_id: str, status: int = 200, error: AppError | None = None) -> Any:
    actor = current_actor()
    vehicle = fleet.get_for_agency(actor, vehicle_id)
    agency = {a.id: a for a in fleet.agencies_of(actor)}[vehicle.agency_id]
    return _render("agency/vehicle.html", status=status, error=error and error_text(error),
                   error_code=error and error.code, v=vehicle, agency=agency,
                   photos=fleet.photos_of(vehicle), blocks=fleet.list_blocks(actor, vehicle),
                   can_write=fleet.can_in_agency(actor, vehicle.agency_id, Permission.AGENCY_VEHICLE_WRITE),
                   today=clock.business_today().isoformat(), C=fleet)


def _back(vehicle_id: str, anchor: str, **flags: Any) -> Callable[[Any], str]:
    return lambda _result: url_for("agency.fleet_vehicle", vehicle_id=vehicle_id, **flags) + anchor


@agency_bp.get("/fleet/<string:vehicle_id>")
@requires(Permission.AGENCY_VEHICLE_READ)
def fleet_vehicle(vehicle_id: str) -> Any:
    """One car: blocks, photos and details (write forms only for those who may write)."""
    return _vehicle_page(vehicle_id[:64])


@agency_bp.post("/fleet/<string:vehicle_id>")
@requires(Permission.AGENCY_VEHICLE_WRITE)
def fleet_update(vehicle_id: str) -> Any:
    """Save the details form."""
    actor = current_actor()
    vehicle = fleet.get_for_agency(actor, vehicle_id[:64])
    values = _form_values(request.form, partial=True)
    return _attempt(lambda: fleet.update_vehicle(actor, vehicle, _validated(values, partial=True)),
                    lambda status, exc: _vehicle_page(vehicle.public_id, status, exc),
                    _back(vehicle.public_id, "#details", saved=1))


@agency_bp.post("/fleet/<string:vehicle_id>/delete")
@requires(Permission.AGENCY_VEHICLE_WRITE)
def fleet_delete(vehicle_id: str) -> Any:
    """Remove the car from the fleet (refused while it has unfinished bookings)."""
    actor = current_actor()
    vehicle = fleet.get_for_agency(actor, vehicle_id[:64])
    return _attempt(lambda: fleet.delete_vehicle(actor, vehicle),
                    lambda status, exc: _vehicle_page(vehicle.public_id, status, exc),
                    lambda _r: url_for("agency.fleet_list", removed=1))


@agency_bp.post("/fleet/<string:vehicle_id>/photos")
@requires(Permission.AGENCY_VEHICLE_WRITE)
def fleet_photo_add(vehicle_id: str) -> Any:
    """Upload a listing photo through the image pipeline."""
    actor = current_actor()
    vehicle = fleet.get_for_agency(actor, vehicle_id[:64])
    image = read_upload_form(_PHOTO_FORM)["image"]
    if image is None or not image.filename:
        return _vehicle_page(vehicle.public_id, 422,
                             Unprocessable("Choose a photo to upload.", details={"fields": {"image": ["Required."]}}))
    return _attempt(lambda: fleet.add_photo(actor, vehicle, image.stream, image.mimetype),
                    lambda status, exc: _vehicle_page(vehicle.public_id, status, exc),
                    _back(vehicle.public_id, "#photos"))


@agency_bp.post("/fleet/<string:vehicle_id>/photos/<string:photo_id>/delete")
@requires(Permission.AGENCY_VEHICLE_WRITE)
def fleet_photo_delete(vehicle_id: str, photo_id: str) -> Any:
    """Remove a listing photo."""
    actor = current_actor()
    vehicle = fleet.get_for_agency(actor, vehicle_id[:64])
    return _attempt(lambda: fleet.delete_photo(actor, vehicle, photo_id[:64]),
                    lambda status, exc: _vehicle_page(vehicle.public_id, status, exc),
                    _back(vehicle.public_id, "#photos"))


@agency_bp.get("/fleet/<string:vehicle_id>/photos/<string:photo_id>")
@requires(Permission.AGENCY_VEHICLE_READ)
def fleet_photo(vehicle_id: str, photo_id: str) -> Response:
    """The agency's own view of a photo (also of cars that are not listed yet)."""
    vehicle = fleet.get_for_agency(current_actor(), vehicle_id[:64])
    response = Response(fleet.photo_bytes(fleet.get_photo(vehicle, photo_id[:64])), mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, max-age=300"
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return response


def _day(raw: str, field: str) -> date:
    try:
        return date.fromisoformat(raw.strip()[:10])
    except ValueError as exc:
        raise Unprocessable(details={"fields": {field: ["Pick a date."]}}) from exc


@agency_bp.post("/fleet/<string:vehicle_id>/blocks")
@requires(Permission.AGENCY_VEHICLE_WRITE)
def fleet_block_add(vehicle_id: str) -> Any:
    """Block whole days (Asia/Dubai), first to last day inclusive."""
    actor = current_actor()
    vehicle = fleet.get_for_agency(actor, vehicle_id[:64])
    form = request.form

    def block() -> Any:
        first, last = _day(form.get("first_day", ""), "first_day"), _day(form.get("last_day", ""), "last_day")
        starts = datetime.combine(first, time.min, tzinfo=BUSINESS_TZ)
        ends = datetime.combine(last + timedelta(days=1), time.min, tzinfo=BUSINESS_TZ)
        return fleet.create_block(actor, vehicle, starts_at=starts, ends_at=ends,
                                  reason=form.get("reason", "").strip()[:200] or None)

    try:
        block()  # races bookings for the same days: the database decides (P-16)
    except AppError as exc:
        db.session.rollback()
        if exc.status == 404:
            raise
        return _vehicle_page(vehicle.public_id, exc.status, exc)
    return redirect(url_for("agency.fleet_vehicle", vehicle_id=vehicle.public_id, blocked=1) + "#blocks")


@agency_bp.post("/fleet/<string:vehicle_id>/blocks/<string:block_id>/delete")
@requires(Permission.AGENCY_VEHICLE_WRITE)
def fleet_block_delete(vehicle_id: str, block_id: str) -> Any:
    """Put the car back on the market for a blocked period."""
    actor = current_actor()
    vehicle = fleet.get_for_agency(actor, vehicle_id[:64])
    return _attempt(lambda: fleet.delete_block(actor, vehicle, block_id[:64]),
                    lambda status, exc: _vehicle_page(vehicle.public_id, status, exc),
                    _back(vehicle.public_id, "#blocks"))


@agency_bp.app_template_filter("dubai")
def _dubai(value: datetime | None) -> str:
    """A UTC time as Asia/Dubai wall-clock time (the business time zone)."""
    return value.astimezone(BUSINESS_TZ).strftime("%Y-%m-%d %H:%M") if value else ""


@agency_bp.app_template_filter("aed")
def _aed(fils: int | None) -> str:
    """Fils as ``AED 1,234.50``."""
    return "" if fils is None else f"AED {Decimal(fils) / 100:,.2f}"

