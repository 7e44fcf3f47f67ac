"""Fleet rules (P-13) and the public search (P-14). Agency-side loaders are scoped to the actor's own agencies.

Search semantics equal ``bookings.service.is_free``: a car is shown for ``[starts_at, ends_at)`` only if no
occupancy row (an active booking with its turnaround buffer, or an availability block) overlaps
``[starts_at, ends_at + the car's own turnaround)``. Coordinates sent to search live only in the request:
nothing here writes, audits or logs them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Interval,
    String,
    bindparam,
    cast,
    delete,
    func,
    literal_column,
    select,
    tuple_,
    type_coerce,
)

from marketplace import audit
from marketplace.agencies.models import Agency, AgencyStatus
from marketplace.agencies.service import AgencyNotActive, vault_owner
from marketplace.bookings.models import Booking
from marketplace.bookings.service import (
    MAX_OCCUPANCY,
    VehicleUnavailable,
    bookable,
    bookable_vehicle,
    check_period,
    occupancy_conflict,
)
from marketplace.bookings.states import ACTIVE as LIVE_BOOKING_STATUSES
from marketplace.errors import Conflict, NotFound, Unprocessable
from marketplace.extensions import UTCDateTime, db, utcnow
from marketplace.fleet.models import AvailabilityBlock, Vehicle, VehicleOccupancy, VehiclePhoto, VehicleStatus
from marketplace.images import VEHICLE_PHOTO_POLICY, process_image
from marketplace.permissions import Permission
from marketplace.security import Actor, can_in_agency, require, require_in_agency  # noqa: F401 - can_in_agency: fleet's surface
from marketplace.transactions import serialised
from marketplace.vault import service as vault

if TYPE_CHECKING:
    from marketplace.vault.models import Blob

# ---- the fixed vocabularies ---------------------------------------------------------------------------

CATEGORIES = ("mini", "economy", "compact", "sedan", "suv", "luxury", "sports", "van", "pickup")
TRANSMISSIONS = ("automatic", "manual")
FUEL_POLICIES = ("full_to_full", "same_to_same", "prepaid")
FUEL_TYPES = ("petrol", "diesel", "hybrid", "electric")
# the cities cars are picked up in; search matches them exactly, so listings and searches agree
CITIES = ("Abu Dhabi", "Ajman", "Al Ain", "Dubai", "Fujairah", "Hatta", "Kalba", "Khor Fakkan", "Ras Al Khaimah",
          "Ruwais", "Sharjah", "Umm Al Quwain")
MIN_YEAR = 1990
MAX_DAILY_PRICE_FILS = 5_000_000  # AED 50,000 a day: 30 days with fee and VAT stay inside a 32-bit integer
MAX_DEPOSIT_FILS = 50_000_000
MAX_TURNAROUND_MINUTES = 1440
MAX_BLOCK = timedelta(days=90)  # bookings.service.MAX_OCCUPANCY (92 days) relies on this bound
MAX_PHOTOS = 20
MAX_RADIUS_KM = 100.0
DEFAULT_RADIUS_KM = 25.0
KM_PER_DEGREE = 6371.0088 * math.pi / 180  # mean Earth radius: km per degree of latitude
_HALF_OPEN: ColumnElement[Any] = literal_column("'[)'")  # the bounds the exclusion constraint uses
PLATE_HINT = "A UAE plate: emirate, series and number, e.g. DXB A 12345."
_PLATE = re.compile(r"^(?=.*\d)[A-Z0-9]{1,6}(?: [A-Z0-9]{1,6}){0,3}$")


class DuplicatePlate(Conflict):
    code = "duplicate_plate"
    message = "A car with this plate is already on the platform."


class VehicleHasBookings(Conflict):
    code = "vehicle_has_bookings"
    message = "The car has bookings that are not finished; cancel or complete them first."


class PhotoLimit(Conflict):
    code = "photo_limit"
    message = f"A car can have at most {MAX_PHOTOS} photos."


def normalise_plate(raw: str) -> str:
    """Upper case, single spaces: ``dxb  a 12345`` -> ``DXB A 12345``; UAE plates are an emirate code or
    name, a letter or number series, and a number."""
    plate = " ".join(raw.replace("-", " ").upper().split())
    if not _PLATE.match(plate) or len(plate) > 20:
        raise Unprocessable(details={"fields": {"plate": [PLATE_HINT]}})
    return plate


def next_model_year() -> int:
    """Cars of next year's model are sold from mid-year: the newest year a listing may give."""
    return utcnow().year + 1


# ---- agency scope -------------------------------------------------------------------------------------


def agencies_of(actor: Actor) -> list[Agency]:
    """The agencies the actor holds an agency role in."""
    ids = actor.agency_ids
    if not ids:
        return []
    return list(db.session.execute(select(Agency).where(Agency.id.in_(ids)).order_by(Agency.business_name)).scalars())


def vehicles_for_staff(actor: Actor) -> list[Vehicle]:
    """Every (not deleted) car of the actor's agencies, for the agency app's pages."""
    ids = actor.agency_ids
    if not ids:
        return []
    return list(db.session.execute(
        select(Vehicle).where(Vehicle.agency_id.in_(ids), Vehicle.deleted_at.is_(None))
        .order_by(Vehicle.make, Vehicle.model, Vehicle.id)
    ).scalars())


def fleet_summary(actor: Actor) -> dict[str, int]:
    """Cars per status across the actor's agencies (the dashboard's fleet box)."""
    require(actor, Permission.AGENCY_VEHICLE_READ)
    rows = db.session.execute(
        select(Vehicle.status, func.count()).where(Vehicle.agency_id.in_(actor.agency_ids or {-1}),
                                                   Vehicle.deleted_at.is_(None)).group_by(Vehicle.status)
    ).all()
    summary = {str(s): 0 for s in VehicleStatus}
    summary.update({str(status): int(count) for status, count in rows})
    return summary


def list_for_agency(actor: Actor, *, after_id: int | None, limit: int, status: str | None = None,
                    agency_public_id: str | None = None, city: str | None = None) -> list[Vehicle]:
    """The actor's agencies' cars, oldest first. Filters only ever narrow the actor's own scope (AZ-04)."""
    require(actor, Permission.AGENCY_VEHICLE_READ)
    stmt = select(Vehicle).where(Vehicle.agency_id.in_(actor.agency_ids or {-1}), Vehicle.deleted_at.is_(None))
    if agency_public_id is not None:
        stmt = stmt.join(Agency, Agency.id == Vehicle.agency_id).where(Agency.public_id == agency_public_id)
    if status is not None:
        stmt = stmt.where(Vehicle.status == status)
    if city is not None:
        stmt = stmt.where(Vehicle.city == city)
    if after_id is not None:
        stmt = stmt.where(Vehicle.id > after_id)
    return list(db.session.execute(stmt.order_by(Vehicle.id).limit(limit)).scalars())


def get_for_agency(actor: Actor, public_id: str) -> Vehicle:
    """One of the actor's agencies' cars; another agency's car (or a deleted one) is simply not found."""
    require(actor, Permission.AGENCY_VEHICLE_READ)
    vehicle = db.session.execute(
        select(Vehicle).where(Vehicle.public_id == public_id, Vehicle.agency_id.in_(actor.agency_ids or {-1}),
                              Vehicle.deleted_at.is_(None))
    ).scalar_one_or_none()
    if vehicle is None:
        raise NotFound()
    return vehicle


def _target_agency(actor: Actor, agency_public_id: str | None) -> Agency:
    agencies = agencies_of(actor)
    if agency_public_id is None:
        if len(agencies) != 1:
            raise Unprocessable(details={"fields": {"agency": ["You work for several agencies: name one."]}})
        return agencies[0]
    for agency in agencies:
        if agency.public_id == agency_public_id:
            return agency
    raise NotFound()


# ---- writing the fleet -----------------------------------------------------------------------------------

_EDITABLE = ("make", "model", "year", "category", "plate", "seats", "transmission", "fuel_type", "city", "latitude",
             "longitude", "pickup_address", "daily_price_fils", "deposit_fils", "mileage_limit_km_per_day",
             "extra_km_fils", "fuel_policy", "turnaround_minutes", "status")


def _check_listing(agency: Agency, status: str) -> None:
    if status == VehicleStatus.LISTED and agency.status != AgencyStatus.ACTIVE:
        raise AgencyNotActive("Only an active (verified, not suspended) agency can list a car.",
                              details={"agency_status": agency.status})


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
    target = _target_agency(actor, agency)
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
        agency = db.session.get(Agency, vehicle.agency_id)
        assert agency is not None
        _check_listing(agency, VehicleStatus.LISTED)
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
    live = db.session.execute(
        select(Booking.id).where(Booking.vehicle_id == vehicle.id, Booking.status.in_(list(LIVE_BOOKING_STATUSES)))
        .limit(1)
    ).first()
    if live is not None:
        raise VehicleHasBookings()
    vehicle.deleted_at = utcnow()
    vehicle.status = VehicleStatus.UNLISTED
    db.session.flush()
    audit.record(actor, "vehicle:delete", vehicle)


# ---- photos (public listing pictures: re-encoded, no metadata) --------------------------------------------
#
# Listing photos are not personal data, but they go through the vault like every other image: the blob store
# only ever holds ciphertext (P-08; the store's contract, checked by the CR-03 scans), here under the agency's
# own data key, so terminating an agency can crypto-shred its photos with its documents (P-29).

PHOTO_KIND = "vehicle_photo"


def photos_of(vehicle: Vehicle) -> list[VehiclePhoto]:
    """A car's photos in display order."""
    return list(db.session.execute(
        select(VehiclePhoto).where(VehiclePhoto.vehicle_id == vehicle.id)
        .order_by(VehiclePhoto.position, VehiclePhoto.id)
    ).scalars())


def photos_by_vehicle(vehicles: list[Vehicle]) -> dict[int, list[VehiclePhoto]]:
    """The photos of several cars in one query (list pages)."""
    if not vehicles:
        return {}
    result: dict[int, list[VehiclePhoto]] = {}
    for photo in db.session.execute(
        select(VehiclePhoto).where(VehiclePhoto.vehicle_id.in_([v.id for v in vehicles]))
        .order_by(VehiclePhoto.vehicle_id, VehiclePhoto.position, VehiclePhoto.id)
    ).scalars():
        result.setdefault(photo.vehicle_id, []).append(photo)
    return result


def add_photo(actor: Actor, vehicle: Vehicle, stream: IO[bytes], declared_type: str | None) -> VehiclePhoto:
    """Run an upload through the image pipeline (metadata stripped, pixels re-encoded) and store it encrypted."""
    require_in_agency(actor, vehicle.agency_id, Permission.AGENCY_VEHICLE_WRITE)
    count = db.session.execute(select(func.count()).where(VehiclePhoto.vehicle_id == vehicle.id)).scalar_one()
    if count >= MAX_PHOTOS:
        raise PhotoLimit()
    image = process_image(stream, policy=VEHICLE_PHOTO_POLICY, declared_type=declared_type)
    agency = db.session.get(Agency, vehicle.agency_id)
    assert agency is not None
    blob = vault.store(vault_owner(agency), PHOTO_KIND, image.data, mime=image.mime, width=image.width,
                       height=image.height)
    blob.attached_at = utcnow()  # claimed by the photo at once (never swept as an orphan upload)
    last = db.session.execute(
        select(func.max(VehiclePhoto.position)).where(VehiclePhoto.vehicle_id == vehicle.id)
    ).scalar()
    photo = VehiclePhoto(vehicle_id=vehicle.id, storage_key=blob.storage_key, width=image.width,
                         height=image.height, position=(last + 1) if last is not None else 0, created_at=utcnow())
    db.session.add(photo)
    db.session.flush()
    audit.record(actor, "vehicle:photo:add", vehicle, photo=photo.public_id)
    return photo


def get_photo(vehicle: Vehicle, photo_public_id: str) -> VehiclePhoto:
    """One photo of this car (a photo id of another car is not found)."""
    photo = db.session.execute(
        select(VehiclePhoto).where(VehiclePhoto.vehicle_id == vehicle.id, VehiclePhoto.public_id == photo_public_id)
    ).scalar_one_or_none()
    if photo is None:
        raise NotFound()
    return photo


def _photo_blob(photo: VehiclePhoto) -> Blob | None:
    return vault.blob_by_storage_key(photo.storage_key)


def photo_bytes(photo: VehiclePhoto) -> bytes:
    """The photo's JPEG, decrypted (public content: no audit row, unlike KYC images)."""
    blob = _photo_blob(photo)
    if blob is None or blob.deleted_at is not None or blob.kind != PHOTO_KIND:
        raise NotFound()
    return vault.read(blob)


def public_photo(vehicle_public_id: str, photo_public_id: str) -> bytes:
    """A listing photo of a car anyone can see (listed, active agency); anything else is not found."""
    return photo_bytes(get_photo(bookable_vehicle(vehicle_public_id), photo_public_id))


def delete_photo(actor: Actor, vehicle: Vehicle, photo_public_id: str) -> None:
    """Remove a photo; its ciphertext file goes once the removal is committed."""
    require_in_agency(actor, vehicle.agency_id, Permission.AGENCY_VEHICLE_WRITE)
    photo = get_photo(vehicle, photo_public_id)
    blob = _photo_blob(photo)
    db.session.delete(photo)
    if blob is not None:
        vault.delete(blob)  # the file goes once this is committed
    db.session.flush()
    audit.record(actor, "vehicle:photo:delete", vehicle, photo=photo_public_id)




# ---- availability blocks ----------------------------------------------------------------------------------


def list_blocks(actor: Actor, vehicle: Vehicle, *, include_past: bool = False) -> list[AvailabilityBlock]:
    """A car's current and future blocks (and past ones if asked), earliest first."""
    require(actor, Permission.AGENCY_VEHICLE_READ)
    stmt = select(AvailabilityBlock).where(AvailabilityBlock.vehicle_id == vehicle.id)
    if not include_past:
        stmt = stmt.where(AvailabilityBlock.ends_at > utcnow())
    return list(db.session.execute(stmt.order_by(AvailabilityBlock.starts_at).limit(500)).scalars())


def check_block_period(starts_at: datetime, ends_at: datetime) -> None:
    """422 unless the block has a time zone, ends after it starts, lasts at most 90 days and is not over."""
    errors: dict[str, list[str]] = {}
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        errors["starts_at"] = ["Times need a time zone (ISO 8601 with an offset or Z)."]
    elif ends_at <= starts_at:
        errors["ends_at"] = ["The end must be after the start."]
    elif ends_at - starts_at > MAX_BLOCK:
        errors["ends_at"] = [f"A block lasts at most {MAX_BLOCK.days} days."]
    elif ends_at <= utcnow():
        errors["ends_at"] = ["The block is already over."]
    if errors:
        raise Unprocessable(details={"fields": errors})


def _period_taken(vehicle_id: int, starts_at: datetime, ends_at: datetime) -> bool:
    """Any occupancy overlapping ``[starts_at, ends_at)`` (the check SQLite relies on; PostgreSQL's exclusion
    constraint repeats it atomically)."""
    return db.session.execute(
        select(VehicleOccupancy.id).where(
            VehicleOccupancy.vehicle_id == vehicle_id, VehicleOccupancy.starts_at < ends_at,
            VehicleOccupancy.ends_at > starts_at, VehicleOccupancy.starts_at > starts_at - MAX_OCCUPANCY,
        ).limit(1)
    ).first() is not None


def create_block(actor: Actor, vehicle: Vehicle, *, starts_at: datetime, ends_at: datetime,
                 reason: str | None = None) -> AvailabilityBlock:
    """Take a car off the market for a period. Races with bookings are decided by the database (P-16):
    one wins, the other gets 409 ``vehicle_unavailable``."""
    require_in_agency(actor, vehicle.agency_id, Permission.AGENCY_VEHICLE_WRITE)
    check_block_period(starts_at, ends_at)
    vehicle_id, user_id = vehicle.id, actor.user.id
    start, end = starts_at.astimezone(UTC), ends_at.astimezone(UTC)

    def work() -> AvailabilityBlock:
        current = db.session.get(Vehicle, vehicle_id)
        if current is None or current.deleted_at is not None:
            raise NotFound()
        if _period_taken(vehicle_id, start, end):
            raise VehicleUnavailable()
        block = AvailabilityBlock(vehicle_id=vehicle_id, starts_at=start, ends_at=end, reason=reason,
                                  created_by_id=user_id, created_at=utcnow())
        db.session.add(block)
        db.session.flush()
        db.session.add(VehicleOccupancy(vehicle_id=vehicle_id, starts_at=start, ends_at=end, block_id=block.id))
        db.session.flush()  # the exclusion constraint speaks here
        audit.record(actor, "vehicle:block:create", current, block=block.public_id, starts_at=start, ends_at=end)
        return block

    return serialised(work, on_conflict=occupancy_conflict, contended=VehicleUnavailable)


def delete_block(actor: Actor, vehicle: Vehicle, block_public_id: str) -> None:
    """Put the car back on the market for a blocked period."""
    require_in_agency(actor, vehicle.agency_id, Permission.AGENCY_VEHICLE_WRITE)
    block = db.session.execute(
        select(AvailabilityBlock).where(AvailabilityBlock.vehicle_id == vehicle.id,
                                        AvailabilityBlock.public_id == block_public_id)
    ).scalar_one_or_none()
    if block is None:
        raise NotFound()
    db.session.execute(delete(VehicleOccupancy).where(VehicleOccupancy.block_id == block.id))
    db.session.delete(block)
    db.session.flush()
    audit.record(actor, "vehicle:block:delete", vehicle, block=block_public_id)


# ---- public search (P-14) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeoPoint:
    """A position sent with one search request; used for that request only, never stored or logged."""

    latitude: float
    longitude: float

    def __repr__(self) -> str:  # keep the numbers out of tracebacks and debug output
        return "GeoPoint(<redacted>)"


@dataclass(frozen=True)
class SearchQuery:
    city: str | None = None
    point: GeoPoint | None = None
    radius_km: float = DEFAULT_RADIUS_KM
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    category: str | None = None
    min_price: int | None = None
    max_price: int | None = None
    sort: str = "price"
    after: tuple[float | int, int] | None = None  # the last (sort key, id) of the previous page
    limit: int = 20

    def __repr__(self) -> str:
        return f"SearchQuery(city={self.city!r}, sort={self.sort!r}, point={'set' if self.point else None})"

    def fingerprint(self) -> list[Any]:
        """What a cursor is bound to (coordinates excluded: they never leave the request)."""
        return [self.city, self.category, self.min_price, self.max_price, self.sort,
                self.starts_at.isoformat() if self.starts_at else None,
                self.ends_at.isoformat() if self.ends_at else None, self.radius_km if self.point else None]


@dataclass(frozen=True)
class SearchHit:
    """One car of a result page: the selected columns (not an ORM object), its distance and its sort key."""

    row: Any  # id, public_id, make, model, year, category, seats, transmission, fuel_type, city, latitude,
    #           longitude, pickup_address, daily_price_fils, deposit_fils, currency, agency_name, cover_photo
    distance_km: float | None
    sort_key: float | int


@dataclass(frozen=True)
class _Shape:
    """What decides the statement's text; the values travel as bound parameters."""

    dialect: str
    city: bool
    category: bool
    min_price: bool
    max_price: bool
    point: bool
    period: bool
    sort: str
    after: bool


# Built search statements by shape (a few dozen at most). Immutable SQL expressions, no data: SQLAlchemy then
# reuses their compiled form, and a request only binds values. Building the expression tree each time cost more
# than running the query.
_STATEMENTS: dict[_Shape, Any] = {}


def _sqlite_text(when: datetime) -> str:
    """A UTC time exactly as SQLAlchemy stores it in SQLite (text that sorts chronologically)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _free_for(dialect: str) -> ColumnElement[bool]:
    """``NOT EXISTS`` an occupancy overlapping ``[:start, :end + the car's turnaround)``: is_free in SQL.

    The predicate is ``bookings.service.is_free``'s. The ``starts_at > start - MAX_OCCUPANCY`` bound (every
    occupancy is shorter than that) and an upper bound from the longest possible turnaround keep each probe
    to a few index entries. On PostgreSQL the overlap is written as the exclusion constraint's own
    ``tstzrange(starts_at, ends_at, '[)') && ...``, so the planner may probe its GiST index too.
    """
    occ = VehicleOccupancy
    when = UTCDateTime()
    bounds = [occ.vehicle_id == Vehicle.id, occ.starts_at > bindparam("occ_low", type_=when),
              occ.starts_at < bindparam("occ_high", type_=when), occ.ends_at > bindparam("start", type_=when)]
    overlap: ColumnElement[bool]
    if dialect == "postgresql":
        until = bindparam("end", type_=when) + type_coerce(
            func.make_interval(0, 0, 0, 0, 0, Vehicle.turnaround_minutes), Interval())
        overlap = func.tstzrange(occ.starts_at, occ.ends_at, _HALF_OPEN).op("&&")(
            func.tstzrange(bindparam("start", type_=when), until, _HALF_OPEN))
    else:
        # SQLite keeps UTC times as text ("YYYY-MM-DD HH:MM:SS.ffffff"): add the minutes with strftime and
        # put the fraction back, so the comparison stays exact (a back-to-back period is free)
        modifier = "+" + cast(Vehicle.turnaround_minutes, String) + " minutes"
        until_text = (func.strftime("%Y-%m-%d %H:%M:%S", bindparam("end_text", type_=String), modifier,
                                    type_=String) + bindparam("end_fraction", type_=String))
        overlap = occ.starts_at < until_text
    return ~select(occ.id).where(*bounds, overlap).exists()


def _distance2() -> ColumnElement[Any]:
    """Squared equirectangular distance in degrees² from (:lat, :lng), with ``:kx = cos(lat)`` computed in
    Python: plain arithmetic that both databases run per row. Within 100 km its error against the great circle
    is far below the 0.1 km the answer is rounded to."""
    dy = cast(Vehicle.latitude, Float) - bindparam("lat", type_=Float())
    dx = (cast(Vehicle.longitude, Float) - bindparam("lng", type_=Float())) * bindparam("kx", type_=Float())
    return dy * dy + dx * dx


def _build(shape: _Shape) -> Any:
    distance2 = _distance2() if shape.point else None
    conditions: list[ColumnElement[bool]] = [
        Vehicle.status == VehicleStatus.LISTED.value, Vehicle.deleted_at.is_(None),
        Agency.status == AgencyStatus.ACTIVE.value,
    ]
    if shape.city:
        conditions.append(Vehicle.city == bindparam("city", type_=String))
    if shape.category:
        conditions.append(Vehicle.category == bindparam("category", type_=String))
    if shape.min_price:
        conditions.append(Vehicle.daily_price_fils >= bindparam("min_price", type_=Integer))
    if shape.max_price:
        conditions.append(Vehicle.daily_price_fils <= bindparam("max_price", type_=Integer))
    if distance2 is not None:
        conditions += [Vehicle.latitude >= bindparam("lat_min", type_=Float()),
                       Vehicle.latitude <= bindparam("lat_max", type_=Float()),
                       Vehicle.longitude >= bindparam("lng_min", type_=Float()),
                       Vehicle.longitude <= bindparam("lng_max", type_=Float()),
                       distance2 <= bindparam("radius2", type_=Float())]
    if shape.period:
        conditions.append(_free_for(shape.dialect))
    key: ColumnElement[Any]
    if shape.sort == "distance":
        assert distance2 is not None
        key = distance2
    else:
        key = Vehicle.daily_price_fils.expression
    if shape.after:
        conditions.append(tuple_(key, Vehicle.id) > tuple_(bindparam("after_key", type_=key.type),
                                                            bindparam("after_id", type_=Integer)))
    cover = (select(VehiclePhoto.public_id).where(VehiclePhoto.vehicle_id == Vehicle.id)
             .order_by(VehiclePhoto.position, VehiclePhoto.id).limit(1).scalar_subquery())
    columns = [Vehicle.id, Vehicle.public_id, Vehicle.make, Vehicle.model, Vehicle.year, Vehicle.category,
               Vehicle.seats, Vehicle.transmission, Vehicle.fuel_type, Vehicle.city,
               cast(Vehicle.latitude, Float).label("latitude"), cast(Vehicle.longitude, Float).label("longitude"),
               Vehicle.pickup_address, Vehicle.daily_price_fils, Vehicle.deposit_fils, Vehicle.currency,
               Agency.business_name.label("agency_name"), cover.label("cover_photo"),
               (distance2 if distance2 is not None else literal_column("NULL")).label("distance2")]
    return (select(*columns).join(Agency, Agency.id == Vehicle.agency_id).where(*conditions)
            .order_by(key, Vehicle.id).limit(bindparam("limit", type_=Integer)))


def _parameters(query: SearchQuery, dialect: str) -> dict[str, Any]:
    params: dict[str, Any] = {"city": query.city, "category": query.category, "min_price": query.min_price,
                              "max_price": query.max_price, "limit": query.limit + 1}
    if query.point is not None:
        kx = max(math.cos(math.radians(query.point.latitude)), 0.01)
        dlat = query.radius_km / KM_PER_DEGREE
        params.update(lat=query.point.latitude, lng=query.point.longitude, kx=kx, radius2=dlat * dlat,
                      lat_min=query.point.latitude - dlat, lat_max=query.point.latitude + dlat,
                      lng_min=query.point.longitude - dlat / kx, lng_max=query.point.longitude + dlat / kx)
    if query.starts_at is not None and query.ends_at is not None:
        start, end = query.starts_at.astimezone(UTC), query.ends_at.astimezone(UTC)
        params.update(start=start, end=end, occ_low=start - MAX_OCCUPANCY,
                      occ_high=end + timedelta(minutes=MAX_TURNAROUND_MINUTES))
        if dialect != "postgresql":
            text_end = _sqlite_text(end)
            params.update(end_text=text_end[:19], end_fraction=text_end[19:])
    if query.after is not None:
        params.update(after_key=query.after[0], after_id=query.after[1])
    return {k: v for k, v in params.items() if v is not None}


def search(query: SearchQuery) -> list[SearchHit]:
    """Cars anyone can book, free for the whole period; ``limit + 1`` rows so the caller knows if more follow.

    No totals: counting every free car in a big city costs more than the page itself (PERFORMANCE.md). A period
    follows the booking rules (lead time, horizon, longest rental): what search shows can be booked.
    """
    if query.starts_at is not None and query.ends_at is not None:
        check_period(query.starts_at, query.ends_at)
    dialect = db.engine.dialect.name
    shape = _Shape(dialect, query.city is not None, query.category is not None, query.min_price is not None,
                   query.max_price is not None, query.point is not None,
                   query.starts_at is not None and query.ends_at is not None, query.sort, query.after is not None)
    stmt = _STATEMENTS.get(shape)
    if stmt is None:
        stmt = _STATEMENTS[shape] = _build(shape)
    rows = db.session.execute(stmt, _parameters(query, dialect)).all()
    by_distance = query.sort == "distance"
    return [SearchHit(row, round(math.sqrt(row.distance2) * KM_PER_DEGREE, 1) if row.distance2 is not None else None,
                      row.distance2 if by_distance else row.daily_price_fils) for row in rows]


# the public detail page in one query, built once (a statement per call and three queries cost the page most
# of its time, issue 7 item 17): the car's public columns, its agency's name and its photos, one row per photo
_PUBLIC_DETAIL = (
    select(Vehicle.public_id, Vehicle.make, Vehicle.model, Vehicle.year, Vehicle.category, Vehicle.seats,
           Vehicle.transmission, Vehicle.fuel_type, Vehicle.city, Vehicle.latitude, Vehicle.longitude,
           Vehicle.pickup_address, Vehicle.daily_price_fils, Vehicle.deposit_fils, Vehicle.currency,
           Vehicle.mileage_limit_km_per_day, Vehicle.extra_km_fils, Vehicle.fuel_policy,
           Agency.business_name.label("agency_name"), VehiclePhoto.public_id.label("photo_id"),
           VehiclePhoto.width.label("photo_width"), VehiclePhoto.height.label("photo_height"))
    .join(Agency, Agency.id == Vehicle.agency_id)
    .outerjoin(VehiclePhoto, VehiclePhoto.vehicle_id == Vehicle.id)
    .where(Vehicle.public_id == bindparam("public_id"), *bookable())
    .order_by(VehiclePhoto.position, VehiclePhoto.id)
)


def public_vehicle(public_id: str) -> tuple[Any, list[tuple[str, int, int]]]:
    """A car anyone may see (listed, not deleted, active agency): its public columns with its agency's name
    (``agency_name``), and its photos in display order as ``(public_id, width, height)``."""
    rows = db.session.execute(_PUBLIC_DETAIL, {"public_id": public_id}).all()
    if not rows:
        raise NotFound(details={"vehicle": public_id})
    return rows[0], [(r.photo_id, r.photo_width, r.photo_height) for r in rows if r.photo_id is not None]
