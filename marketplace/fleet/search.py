"""The public side of the fleet (P-14): what makes a car visible, the search and the public detail page.

Search semantics equal ``availability.service.is_free``: a car is shown for ``[starts_at, ends_at)`` only if no
hold (an active booking with its turnaround buffer, or an availability block) overlaps
``[starts_at, ends_at + the car's own turnaround)``; the SQL is availability's ``free_during``. Coordinates sent
to search live only in the request: nothing here writes, audits or logs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, Integer, String, bindparam, cast, literal_column, select, tuple_

from marketplace.agencies import service as agencies
from marketplace.availability import service as availability
from marketplace.errors import NotFound
from marketplace.extensions import db
from marketplace.fleet.models import Vehicle, VehiclePhoto, VehicleStatus
from marketplace.fleet.rules import DEFAULT_RADIUS_KM

KM_PER_DEGREE = 6371.0088 * math.pi / 180  # mean Earth radius: km per degree of latitude


def bookable() -> tuple[ColumnElement[bool], ...]:
    """What makes a car visible and bookable: listed, not deleted, and (by joining ``_AGENCY``, the active
    agencies) its agency active."""
    return (Vehicle.status == VehicleStatus.LISTED, Vehicle.deleted_at.is_(None))


_AGENCY = agencies.active_agencies()  # (id, name) of the active agencies: agencies owns the rule


# Built once, run with parameters: a statement built per call costs more Python than the query itself
# (construction and cache key, PERFORMANCE.md read targets), and this one runs on every quote and booking.
_BOOKABLE_VEHICLE = select(Vehicle).join(_AGENCY, _AGENCY.c.id == Vehicle.agency_id).where(
    Vehicle.public_id == bindparam("public_id"), *bookable())


def bookable_vehicle(public_id: str) -> Vehicle:
    """A car anyone may see and book (listed, not deleted, active agency); anything else is not found."""
    row = db.session.execute(_BOOKABLE_VEHICLE, {"public_id": public_id}).scalar_one_or_none()
    if row is None:
        raise NotFound(details={"vehicle": public_id})
    return row


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
        conditions.append(availability.free_during(Vehicle.id, Vehicle.turnaround_minutes, dialect=shape.dialect))
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
               _AGENCY.c.name.label("agency_name"), cover.label("cover_photo"),
               (distance2 if distance2 is not None else literal_column("NULL")).label("distance2")]
    return (select(*columns).join(_AGENCY, _AGENCY.c.id == Vehicle.agency_id).where(*conditions)
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
        params.update(availability.free_during_parameters(query.starts_at, query.ends_at, dialect=dialect))
    if query.after is not None:
        params.update(after_key=query.after[0], after_id=query.after[1])
    return {k: v for k, v in params.items() if v is not None}


def search(query: SearchQuery) -> list[SearchHit]:
    """Cars anyone can book, free for the whole period; ``limit + 1`` rows so the caller knows if more follow.

    No totals: counting every free car in a big city costs more than the page itself (PERFORMANCE.md). A period
    follows the booking rules (lead time, horizon, longest rental): what search shows can be booked.
    """
    if query.starts_at is not None and query.ends_at is not None:
        availability.check_period(query.starts_at, query.ends_at, availability.RENTAL)
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
           _AGENCY.c.name.label("agency_name"), VehiclePhoto.public_id.label("photo_id"),
           VehiclePhoto.width.label("photo_width"), VehiclePhoto.height.label("photo_height"))
    .join(_AGENCY, _AGENCY.c.id == Vehicle.agency_id)
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
