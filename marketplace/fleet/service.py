"""Fleet rules (P-13): the public surface of the fleet area.

Cars, prices and rules are written here; the agency side's scope is ``fleet/scope.py``, photos
``fleet/photos.py``, availability blocks ``fleet/blocks.py`` and the public search and detail
``fleet/search.py`` (private modules: other areas call their verbs through this module). A car's taken time
and its rules belong to ``availability.service``.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError
from sqlalchemy import bindparam, select

from marketplace import audit
from marketplace.agencies import service as agencies
from marketplace.agencies.service import AgencyNotActive
from marketplace.agencies.states import AgencyStatus
from marketplace.availability.service import MAX_BLOCK
from marketplace.errors import Conflict, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.fleet import schemas as fleet_schemas
from marketplace.fleet.blocks import check_block_period, create_block, delete_block, list_blocks
from marketplace.fleet.models import Vehicle, VehicleStatus
from marketplace.fleet.photos import (
    MAX_PHOTOS,
    PHOTO_KIND,
    PhotoLimit,
    add_photo,
    delete_photo,
    get_photo,
    photo_bytes,
    photos_by_vehicle,
    photos_of,
    public_photo,
)
from marketplace.fleet.rules import (
    CATEGORIES,
    CITIES,
    DEFAULT_RADIUS_KM,
    FUEL_POLICIES,
    FUEL_TYPES,
    MAX_DAILY_PRICE_FILS,
    MAX_DEPOSIT_FILS,
    MAX_RADIUS_KM,
    MIN_YEAR,
    PLATE_HINT,
    TRANSMISSIONS,
    next_model_year,
    normalise_plate,
)
from marketplace.fleet.scope import (
    agencies_of,
    can_in_agency,
    fleet_summary,
    get_for_agency,
    list_for_agency,
    require_in_agency,
    target_agency,
    vehicles_for_staff,
)
from marketplace.fleet.search import (
    KM_PER_DEGREE,
    GeoPoint,
    SearchHit,
    SearchQuery,
    bookable,
    bookable_vehicle,
    public_vehicle,
    search,
)
from marketplace.permissions import Permission
from marketplace.security import Actor, require

if TYPE_CHECKING:
    from marketplace.agencies.models import Agency

__all__ = [  # the fleet's public surface: the verbs defined here and those of its private modules
    "CATEGORIES", "CITIES", "DEFAULT_RADIUS_KM", "FUEL_POLICIES", "FUEL_TYPES", "KM_PER_DEGREE", "MAX_BLOCK",
    "MAX_DAILY_PRICE_FILS", "MAX_DEPOSIT_FILS", "MAX_PHOTOS", "MAX_RADIUS_KM", "MIN_YEAR", "PHOTO_KIND", "PLATE_HINT",
    "TRANSMISSIONS", "AgencyNotActive", "DuplicatePlate", "GeoPoint", "PhotoLimit", "SearchHit", "SearchQuery",
    "VehicleHasBookings", "add_photo", "agencies_of", "before_listing", "before_retire", "bookable", "bookable_vehicle",
    "can_in_agency", "check_block_period", "create_block", "create_vehicle", "delete_block", "delete_photo",
    "delete_vehicle", "fleet_summary", "get_for_agency", "get_photo", "list_blocks", "list_for_agency",
    "next_model_year", "normalise_plate", "photo_bytes", "photos_by_vehicle", "photos_of", "public_photo",
    "public_vehicle", "search", "update_vehicle", "validate_vehicle_form", "vehicle_brief", "vehicle_by_id",
    "vehicles_for_staff",
]

# ---- the fixed vocabularies ---------------------------------------------------------------------------

class DuplicatePlate(Conflict):
    code = "duplicate_plate"
    message = "A car with this plate is already on the platform."


class VehicleHasBookings(Conflict):
    code = "vehicle_has_bookings"
    message = "The car has bookings that are not finished; cancel or complete them first."


# ---- loading for the areas above (bookings) ------------------------------------------------------------

_VEHICLE_BRIEF = select(Vehicle.public_id, Vehicle.make, Vehicle.model, Vehicle.year, Vehicle.plate).where(
    Vehicle.id == bindparam("vehicle_id"))


def vehicle_by_id(vehicle_id: int) -> Vehicle:
    """A car by its row id, deleted or not (a booking keeps its car)."""
    vehicle = db.session.get(Vehicle, vehicle_id)
    assert vehicle is not None  # booking rows reference their car (foreign key)
    return vehicle


def vehicle_brief(vehicle_id: int) -> Any:
    """What a booking shows of its car: a row of ``public_id, make, model, year, plate``."""
    return db.session.execute(_VEHICLE_BRIEF, {"vehicle_id": vehicle_id}).one()


# ---- retiring a car --------------------------------------------------------------------------------------
#
# Whether a car may leave the fleet depends on facts of the areas above fleet (bookings: unfinished
# bookings). Fleet may not import them, so they register a check here at import time, the way job handlers
# register (``bookings.service`` raises ``VehicleHasBookings``).

_RETIRE_CHECKS: list[Callable[[int], None]] = []


def before_retire(check: Callable[[int], None]) -> Callable[[int], None]:
    """Register ``check(vehicle_id)``, run before a car is deleted; it raises to refuse."""
    _RETIRE_CHECKS.append(check)
    return check


# ---- writing the fleet -----------------------------------------------------------------------------------

_EDITABLE = ("make", "model", "year", "category", "plate", "seats", "transmission", "fuel_type", "city", "latitude",
             "longitude", "pickup_address", "daily_price_fils", "deposit_fils", "mileage_limit_km_per_day",
             "extra_km_fils", "fuel_policy", "turnaround_minutes", "status")


_LISTING_CHECKS: list[Callable[[int], None]] = []


def before_listing(check: Callable[[int], None]) -> Callable[[int], None]:
    """Register ``check(agency_id)``, run before an agency lists a car; it raises to refuse (payments registers
    one: in production an agency lists only once its payout account is ready)."""
    _LISTING_CHECKS.append(check)
    return check


def _check_listing(agency: Agency, status: str) -> None:
    if status == VehicleStatus.LISTED and agency.status != AgencyStatus.ACTIVE:
        raise AgencyNotActive("Only an active (verified, not suspended) agency can list a car.",
                              details={"agency_status": agency.status})
    if status == VehicleStatus.LISTED:
        for check in _LISTING_CHECKS:
            check(agency.id)


def _check_plate_free(plate: str, *, exclude_id: int | None = None) -> None:
    stmt = select(Vehicle.id).where(Vehicle.plate == plate, Vehicle.deleted_at.is_(None))
    if exclude_id is not None:
        stmt = stmt.where(Vehicle.id != exclude_id)
    if db.session.execute(stmt.limit(1)).first() is not None:
        raise DuplicatePlate()


def _coordinate(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.000001"))


def create_vehicle(actor: Actor, *, agency: str | None = None, **fields: Any) -> Vehicle:
    """Add a car to one of the actor's agencies (unlisted unless asked; listing needs an active agency)."""
    require(actor, Permission.AGENCY_VEHICLE_WRITE)
    target = target_agency(actor, agency)
    require_in_agency(actor, target.id, Permission.AGENCY_VEHICLE_WRITE)
    unknown = set(fields) - set(_EDITABLE)
    if unknown:
        raise Unprocessable(details={"fields": {name: ["Unknown field."] for name in sorted(unknown)}})
    values = dict(fields)
    values["plate"] = normalise_plate(values["plate"])
    values["latitude"] = _coordinate(values["latitude"])
    values["longitude"] = _coordinate(values["longitude"])
    values["status"] = values.get("status") or VehicleStatus.UNLISTED
    if values.get("turnaround_minutes") is None:
        values["turnaround_minutes"] = target.turnaround_minutes
    _check_listing(target, values["status"])
    _check_plate_free(values["plate"])
    vehicle = Vehicle(agency_id=target.id, currency="AED", **values)
    db.session.add(vehicle)
    db.session.flush()
    audit.record(actor, "vehicle:create", vehicle, agency=target.public_id, status=vehicle.status)
    return vehicle


def update_vehicle(actor: Actor, vehicle: Vehicle, changes: dict[str, Any]) -> Vehicle:
    """Change a car's details, price, rules or status. Bookings already made keep their price and buffer."""
    require_in_agency(actor, vehicle.agency_id, Permission.AGENCY_VEHICLE_WRITE)
    unknown = set(changes) - set(_EDITABLE)
    if unknown:
        raise Unprocessable(details={"fields": {name: ["Unknown field."] for name in sorted(unknown)}})
    values = dict(changes)
    if "plate" in values:
        values["plate"] = normalise_plate(values["plate"])
        _check_plate_free(values["plate"], exclude_id=vehicle.id)
    for key in ("latitude", "longitude"):
        if key in values:
            values[key] = _coordinate(values[key])
    if values.get("status") == VehicleStatus.LISTED:
        _check_listing(agencies.agency_by_id(vehicle.agency_id), VehicleStatus.LISTED)
    changed = sorted(k for k, v in values.items() if getattr(vehicle, k) != v)
    for key in changed:
        setattr(vehicle, key, values[key])
    db.session.flush()
    if changed:
        audit.record(actor, "vehicle:update", vehicle, fields=changed, status=vehicle.status)
    return vehicle


def delete_vehicle(actor: Actor, vehicle: Vehicle) -> None:
    """Soft delete: the car leaves the fleet and search; refused while it has unfinished bookings."""
    require_in_agency(actor, vehicle.agency_id, Permission.AGENCY_VEHICLE_WRITE)
    for check in _RETIRE_CHECKS:
        check(vehicle.id)
    vehicle.deleted_at = utcnow()
    vehicle.status = VehicleStatus.UNLISTED
    db.session.flush()
    audit.record(actor, "vehicle:delete", vehicle)


# ---- forms other front doors fill in ---------------------------------------------------------------------


def validate_vehicle_form(values: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """A car's fields as the API validates them (the agency app's form sends the same shape)."""
    schema = fleet_schemas.VehiclePatchIn() if partial else fleet_schemas.VehicleIn()
    try:
        data: dict[str, Any] = schema.load(values)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise Unprocessable(details={"fields": messages}) from exc
    return data
