"""Booking rules: quotes, booking with clearance and accepted texts, changes, cancellation, expiry.

A car can never be booked twice (P-16): every active booking holds a ``VehicleOccupancy`` row, and
the database refuses overlapping rows (PostgreSQL exclusion constraint; SQLite serialised writers
plus the check below). A lost race becomes 409 ``vehicle_unavailable``, never a 500.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, bindparam, delete, or_, select

from marketplace import audit, jobs, money
from marketplace.agencies import service as agencies
from marketplace.bookings import states
from marketplace.bookings.models import Booking, BookingEvent
from marketplace.bookings.states import BookingStatus
from marketplace.clock import BUSINESS_TZ
from marketplace.errors import Conflict, Forbidden, NotFound, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.fleet.models import Vehicle, VehicleOccupancy, VehicleStatus
from marketplace.kyc.service import ensure_cleared_to_drive, identity_of
from marketplace.notifications import service as notifications
from marketplace.permissions import Permission
from marketplace.security import Actor, require
from marketplace.transactions import EXCLUSION_VIOLATION, UNIQUE_VIOLATION, Retry, serialised
from marketplace.users import service as users
from marketplace.users.service import grant_consent
from marketplace.users.states import ConsentKind

if TYPE_CHECKING:
    from marketplace.agencies.models import Agency

MAX_RENTAL_DAYS = 30
MIN_LEAD = timedelta(hours=1)
BOOKING_HORIZON = timedelta(days=365)
PAY_WITHIN = timedelta(minutes=15)
FREE_CANCELLATION = timedelta(hours=48)
# every occupancy is shorter than this, which bounds the availability query (PERFORMANCE.md)
MAX_OCCUPANCY = timedelta(days=92)  # bookings <= 30 days (+ buffer), blocks <= 90 days
_REFERENCE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


class VehicleUnavailable(Conflict):
    code = "vehicle_unavailable"
    message = "The car is not available for this whole period."


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"
    message = "This Idempotency-Key was already used with a different request."


class BookingNotAllowed(Forbidden):
    code = "booking_not_allowed"
    message = "Only customer accounts can book."


# ---- money -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    vehicle: Vehicle
    starts_at: datetime
    ends_at: datetime
    days: int
    daily_rate_fils: int
    rental_fils: int
    platform_fee_fils: int
    vat_fils: int
    total_fils: int
    deposit_fils: int
    currency: str
    available: bool
    free_cancellation_until: datetime


def price(daily_rate_fils: int, days: int) -> tuple[int, int, int, int]:
    """(rental, platform fee, VAT, total) in fils: the fee, VAT and rounding rules are ``marketplace.money``'s."""
    breakdown = money.rental_price(money.Money(daily_rate_fils), days)
    return (breakdown.line("rental").net.fils, breakdown.line("platform_fee").net.fils, breakdown.vat.fils,
            breakdown.total.fils)


def rental_days(starts_at: datetime, ends_at: datetime) -> int:
    """Started 24-hour periods, at least one."""
    return max(1, math.ceil((ends_at - starts_at) / timedelta(days=1)))


def check_period(starts_at: datetime, ends_at: datetime, *, now: datetime | None = None) -> None:
    now = now or utcnow()
    errors: dict[str, list[str]] = {}
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        errors["starts_at"] = ["Times need a time zone (ISO 8601 with an offset or Z)."]
    elif ends_at <= starts_at:
        errors["ends_at"] = ["The return must be after the pick-up."]
    elif starts_at < now + MIN_LEAD:
        errors["starts_at"] = ["Pick-up must be at least one hour from now."]
    elif starts_at > now + BOOKING_HORIZON:
        errors["starts_at"] = ["Bookings open up to a year ahead."]
    elif ends_at - starts_at > timedelta(days=MAX_RENTAL_DAYS):
        errors["ends_at"] = [f"A rental lasts at most {MAX_RENTAL_DAYS} days."]
    if errors:
        raise Unprocessable(details={"fields": errors})


# ---- availability --------------------------------------------------------------------------------


def occupied_until(vehicle: Vehicle, ends_at: datetime) -> datetime:
    return ends_at + timedelta(minutes=vehicle.turnaround_minutes)


# built once (see _BOOKABLE_VEHICLE below): every quote and every booking asks it
_OVERLAP = select(VehicleOccupancy.id).where(
    VehicleOccupancy.vehicle_id == bindparam("vehicle_id"),
    VehicleOccupancy.starts_at < bindparam("until"),
    VehicleOccupancy.ends_at > bindparam("starts_at"),
    VehicleOccupancy.starts_at > bindparam("earliest"),
).limit(1)
_OVERLAP_OTHER = _OVERLAP.where(or_(VehicleOccupancy.booking_id.is_(None),
                                    VehicleOccupancy.booking_id != bindparam("ignore_booking")))


def is_free(vehicle: Vehicle, starts_at: datetime, ends_at: datetime, *, ignore_booking: int | None = None) -> bool:
    params = {"vehicle_id": vehicle.id, "until": occupied_until(vehicle, ends_at), "starts_at": starts_at,
              "earliest": starts_at - MAX_OCCUPANCY}
    if ignore_booking is None:
        return db.session.execute(_OVERLAP, params).first() is None
    return db.session.execute(_OVERLAP_OTHER, {**params, "ignore_booking": ignore_booking}).first() is None


def bookable() -> tuple[ColumnElement[bool], ...]:
    """What makes a car visible and bookable: listed, not deleted, its agency active."""
    return (Vehicle.status == VehicleStatus.LISTED, Vehicle.deleted_at.is_(None),
            Vehicle.agency_id.in_(agencies.active_ids()))


# Built once, run with parameters: a statement built per call costs more Python than the query itself
# (construction and cache key, PERFORMANCE.md read targets), and this one runs on every quote and booking.
_BOOKABLE_VEHICLE = select(Vehicle).where(
    Vehicle.public_id == bindparam("public_id"), *bookable())


def bookable_vehicle(public_id: str) -> Vehicle:
    row = db.session.execute(_BOOKABLE_VEHICLE, {"public_id": public_id}).scalar_one_or_none()
    if row is None:
        raise NotFound(details={"vehicle": public_id})
    return row


def quote(vehicle_public_id: str, starts_at: datetime, ends_at: datetime) -> Quote:
    check_period(starts_at, ends_at)
    vehicle = bookable_vehicle(vehicle_public_id)
    days = rental_days(starts_at, ends_at)
    rental, fee, vat, total = price(vehicle.daily_price_fils, days)
    return Quote(vehicle, starts_at, ends_at, days, vehicle.daily_price_fils, rental, fee, vat, total,
                 vehicle.deposit_fils, vehicle.currency, is_free(vehicle, starts_at, ends_at),
                 starts_at - FREE_CANCELLATION)


# ---- booking -------------------------------------------------------------------------------------


def new_reference() -> str:
    body = "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(8))
    return f"CJ-{body[:4]}-{body[4:]}"


def request_fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _place(vehicle: Vehicle) -> str:
    return ", ".join(p for p in (vehicle.pickup_address, vehicle.city) if p)


def _event(booking: Booking, actor_id: int | None, kind: str, *, from_status: str | None = None,
           to_status: str | None = None, **data: Any) -> None:
    db.session.add(BookingEvent(booking_id=booking.id, at=utcnow(), actor_id=actor_id, kind=kind,
                                from_status=from_status, to_status=to_status,
                                data=json.dumps(data, sort_keys=True, default=str)))


def _by_key(customer_id: int, key: str) -> Booking | None:
    return db.session.execute(
        select(Booking).where(Booking.customer_id == customer_id, Booking.idempotency_key == key)
    ).scalar_one_or_none()


def occupancy_conflict(state: str | None) -> None:
    """The conflict rule of every write that takes a car's time (bookings, date changes, blocks):
    an overlap, or retries run out, is 409 ``vehicle_unavailable``; a unique clash is retried."""
    if state in (EXCLUSION_VIOLATION, None):
        raise VehicleUnavailable()
    if state == UNIQUE_VIOLATION:
        raise Retry()


def create_booking(
    actor: Actor,
    *,
    vehicle_id: str,
    starts_at: datetime,
    ends_at: datetime,
    rental_terms_version: str,
    mit_mandate_version: str,
    idempotency_key: str | None = None,
) -> tuple[Booking, bool]:
    """Reserve a car for the signed-in customer; returns ``(booking, created)``."""
    require(actor, Permission.ACCOUNT_WRITE)
    if actor.is_staff:
        raise BookingNotAllowed()
    user_id = actor.user.id
    fingerprint = request_fingerprint({"vehicle_id": vehicle_id, "starts_at": starts_at.astimezone(UTC),
                                       "ends_at": ends_at.astimezone(UTC), "terms": rental_terms_version,
                                       "mandate": mit_mandate_version})

    def replay() -> tuple[Booking, bool] | None:
        if idempotency_key is None:
            return None
        existing = _by_key(user_id, idempotency_key)
        if existing is None:
            return None
        if existing.request_hash != fingerprint:
            raise IdempotencyConflict()
        return existing, False

    def work() -> tuple[Booking, bool]:
        replayed = replay()
        if replayed is not None:
            return replayed
        user = users.get_user(user_id)
        assert user is not None
        check_period(starts_at, ends_at)
        for kind, version in ((ConsentKind.RENTAL_TERMS, rental_terms_version),
                              (ConsentKind.MIT_MANDATE, mit_mandate_version)):
            users.ensure_current_text(kind, version)
        ensure_cleared_to_drive(user, until=ends_at)  # KYC, licence through the return, 21+, consent
        vehicle = bookable_vehicle(vehicle_id)
        if not is_free(vehicle, starts_at, ends_at):
            # taken by a twin request with this key that committed meanwhile? then answer as it did
            replayed = replay()
            if replayed is not None:
                return replayed
            raise VehicleUnavailable()
        days = rental_days(starts_at, ends_at)
        rental, fee, vat, total = price(vehicle.daily_price_fils, days)
        reference = new_reference()
        terms = grant_consent(user, ConsentKind.RENTAL_TERMS, rental_terms_version, context=f"booking:{reference}")
        mandate = grant_consent(user, ConsentKind.MIT_MANDATE, mit_mandate_version, context=f"booking:{reference}")
        now = utcnow()
        booking = Booking(
            reference=reference, customer_id=user.id, vehicle_id=vehicle.id, agency_id=vehicle.agency_id,
            status=BookingStatus.PENDING_PAYMENT, starts_at=starts_at.astimezone(UTC),
            ends_at=ends_at.astimezone(UTC), pickup_place=_place(vehicle), dropoff_place=_place(vehicle),
            days=days, daily_rate_fils=vehicle.daily_price_fils, rental_fils=rental, platform_fee_fils=fee,
            vat_fils=vat, total_fils=total, deposit_fils=vehicle.deposit_fils, currency=vehicle.currency,
            terms_version=rental_terms_version, terms_consent_id=terms.id, mandate_version=mit_mandate_version,
            mandate_consent_id=mandate.id, pay_by=now + PAY_WITHIN, idempotency_key=idempotency_key,
            request_hash=fingerprint,
        )
        db.session.add(booking)
        db.session.flush()
        db.session.add(VehicleOccupancy(vehicle_id=vehicle.id, starts_at=booking.starts_at,
                                        ends_at=occupied_until(vehicle, booking.ends_at), booking_id=booking.id))
        db.session.flush()  # the exclusion constraint speaks here
        _event(booking, user.id, "created", to_status=BookingStatus.PENDING_PAYMENT, total_fils=total)
        jobs.schedule("booking.expire", booking.id, due_at=booking.pay_by, dedupe_key=f"booking-expire:{booking.id}")
        audit.record(actor, "booking:create", booking, vehicle=vehicle.public_id)
        return booking, True

    def on_conflict(state: str | None) -> tuple[Booking, bool] | None:
        replayed = replay()  # a concurrent request with the same key won: answer as it did
        if replayed is not None:
            return replayed
        if state == UNIQUE_VIOLATION:
            raise Retry()  # a reference collision, or the key's twin not yet visible
        if state in (EXCLUSION_VIOLATION, None):
            raise VehicleUnavailable()
        return None

    return serialised(work, on_conflict=on_conflict, contended=VehicleUnavailable)


def change_dates(actor: Actor, reference: str, *, starts_at: datetime, ends_at: datetime) -> Booking:
    """Move a booking: availability is checked again (its own period aside) and the price recomputed."""
    booking_id = get_for_customer(actor, reference).id

    def work() -> Booking:
        booking = db.session.get(Booking, booking_id)
        assert booking is not None
        if booking.status not in states.MODIFIABLE:
            raise states.IllegalTransition(details={"status": booking.status})
        check_period(starts_at, ends_at)
        user = users.get_user(booking.customer_id)
        assert user is not None
        ensure_cleared_to_drive(user, until=ends_at)
        vehicle = db.session.get(Vehicle, booking.vehicle_id)
        assert vehicle is not None
        if not is_free(vehicle, starts_at, ends_at, ignore_booking=booking.id):
            raise VehicleUnavailable()
        old = {"starts_at": booking.starts_at, "ends_at": booking.ends_at, "total_fils": booking.total_fils}
        db.session.execute(delete(VehicleOccupancy).where(VehicleOccupancy.booking_id == booking.id))
        booking.starts_at, booking.ends_at = starts_at.astimezone(UTC), ends_at.astimezone(UTC)
        booking.days = rental_days(booking.starts_at, booking.ends_at)
        booking.daily_rate_fils = vehicle.daily_price_fils
        booking.rental_fils, booking.platform_fee_fils, booking.vat_fils, booking.total_fils = price(
            vehicle.daily_price_fils, booking.days)
        db.session.flush()
        db.session.add(VehicleOccupancy(vehicle_id=vehicle.id, starts_at=booking.starts_at,
                                        ends_at=occupied_until(vehicle, booking.ends_at), booking_id=booking.id))
        db.session.flush()
        _event(booking, actor.user.id, "modified", before=old,
               after={"starts_at": booking.starts_at, "ends_at": booking.ends_at, "total_fils": booking.total_fils})
        audit.record(actor, "booking:modify", booking)
        return booking

    return serialised(work, on_conflict=occupancy_conflict, contended=VehicleUnavailable)


def cancellation_fee(booking: Booking, *, now: datetime | None = None) -> int:
    """Free until 48 hours before pick-up (and for unpaid bookings); later, one day's rental with its fee
    and VAT, at the rate locked in the booking."""
    now = now or utcnow()
    if booking.status == BookingStatus.PENDING_PAYMENT or now < booking.starts_at - FREE_CANCELLATION:
        return 0
    return min(booking.total_fils, price(booking.daily_rate_fils, 1)[3])


def _free_car(booking: Booking) -> None:
    db.session.execute(delete(VehicleOccupancy).where(VehicleOccupancy.booking_id == booking.id))


def cancel(actor: Actor, booking: Booking, *, reason: str, by_agency: bool = False) -> Booking:
    states.check(booking.status, BookingStatus.CANCELLED)
    fee = 0 if by_agency else cancellation_fee(booking)
    previous = booking.status
    booking.status = BookingStatus.CANCELLED
    booking.cancelled_at = utcnow()
    booking.cancelled_by_id = actor.user.id
    booking.cancel_reason = reason
    booking.cancellation_fee_fils = fee
    _free_car(booking)
    _event(booking, actor.user.id, "cancelled", from_status=previous, to_status=BookingStatus.CANCELLED,
           reason=reason, fee_fils=fee, by_agency=by_agency)
    customer = users.get_user(booking.customer_id)
    assert customer is not None
    notifications.notify(customer, kind="booking_cancelled", essential=True,
                         context={"user": customer, "booking": booking, "fee": fee, "by_agency": by_agency})
    db.session.flush()
    audit.record(actor, "booking:cancel", booking, fee_fils=fee, by_agency=by_agency)
    return booking


@jobs.handler("booking.expire")
def expire(ref: str) -> None:
    """A booking not paid within 15 minutes expires and frees the car (idempotent)."""
    booking = db.session.execute(select(Booking).where(Booking.id == int(ref)).with_for_update()).scalar_one_or_none()
    if booking is None or booking.status != BookingStatus.PENDING_PAYMENT:
        return
    if booking.pay_by is not None and booking.pay_by > utcnow():
        raise RuntimeError("not due yet")  # the work row is rescheduled with back-off
    booking.status = BookingStatus.EXPIRED
    _free_car(booking)
    _event(booking, None, "status", from_status=BookingStatus.PENDING_PAYMENT, to_status=BookingStatus.EXPIRED)
    audit.record(None, "booking:expire", booking)


@jobs.periodic
def expire_overdue() -> None:
    """Belt and braces: expire any pending booking whose deadline passed (e.g. its work row was lost)."""
    overdue = db.session.execute(
        select(Booking.id).where(Booking.status == BookingStatus.PENDING_PAYMENT, Booking.pay_by < utcnow())
        .limit(500)
    ).scalars().all()
    for booking_id in overdue:
        expire(str(booking_id))


# ---- loading through the owner's scope -------------------------------------------------------------


# the customer's booking pages run these on every request: built once (see _BOOKABLE_VEHICLE)
_CUSTOMER_BOOKING = select(Booking).where(Booking.reference == bindparam("reference"),
                                          Booking.customer_id == bindparam("customer_id"))
_HISTORY = (select(BookingEvent.at, BookingEvent.kind, BookingEvent.from_status, BookingEvent.to_status)
            .where(BookingEvent.booking_id == bindparam("booking_id")).order_by(BookingEvent.id))
_VEHICLE_BRIEF = select(Vehicle.public_id, Vehicle.make, Vehicle.model, Vehicle.year, Vehicle.plate).where(
    Vehicle.id == bindparam("vehicle_id"))


def get_for_customer(actor: Actor, reference: str) -> Booking:
    booking = db.session.execute(_CUSTOMER_BOOKING, {"reference": reference, "customer_id": actor.user.id}
                                 ).scalar_one_or_none()
    if booking is None:
        raise NotFound()
    return booking


def list_for_customer(actor: Actor, *, before_id: int | None, limit: int) -> list[Booking]:
    stmt = select(Booking).where(Booking.customer_id == actor.user.id).order_by(Booking.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(Booking.id < before_id)
    return list(db.session.execute(stmt).scalars())


def events(booking: Booking) -> list[Any]:
    """The booking's history, oldest first: rows of ``at, kind, from_status, to_status``."""
    return list(db.session.execute(_HISTORY, {"booking_id": booking.id}).all())


def vehicle_brief(vehicle_id: int) -> Any:
    """What a booking shows of its car: a row of ``public_id, make, model, year, plate``."""
    return db.session.execute(_VEHICLE_BRIEF, {"vehicle_id": vehicle_id}).one()


def get_for_agency(actor: Actor, reference: str) -> Booking:
    """Another agency's booking is simply not found (existence is not revealed)."""
    require(actor, Permission.AGENCY_BOOKING_READ)
    booking = db.session.execute(
        select(Booking).where(Booking.reference == reference, Booking.agency_id.in_(actor.agency_ids or {-1}))
    ).scalar_one_or_none()
    if booking is None:
        raise NotFound()
    return booking


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=BUSINESS_TZ)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def list_for_agency(actor: Actor, *, day: date | None, before_id: int | None, limit: int,
                    status: str | None = None) -> list[Booking]:
    require(actor, Permission.AGENCY_BOOKING_READ)
    stmt = select(Booking).where(Booking.agency_id.in_(actor.agency_ids or {-1}))
    if day is not None:
        lo, hi = day_bounds(day)
        stmt = stmt.where(or_((Booking.starts_at >= lo) & (Booking.starts_at < hi),
                              (Booking.ends_at >= lo) & (Booking.ends_at < hi)))
    if status is not None:
        stmt = stmt.where(Booking.status == status)
    if before_id is not None:
        stmt = stmt.where(Booking.id < before_id)
    return list(db.session.execute(stmt.order_by(Booking.id.desc()).limit(limit)).scalars())


def today_for_agency(actor: Actor, day: date) -> dict[str, list[Booking]]:
    """Today's pick-ups and returns (Asia/Dubai day) of the actor's agencies."""
    require(actor, Permission.AGENCY_BOOKING_READ)
    lo, hi = day_bounds(day)
    scope = Booking.agency_id.in_(actor.agency_ids or {-1})
    live = Booking.status.in_([BookingStatus.PENDING_PAYMENT, BookingStatus.CONFIRMED, BookingStatus.IN_PROGRESS])
    pickups = db.session.execute(select(Booking).where(scope, live, Booking.starts_at >= lo, Booking.starts_at < hi)
                                 .order_by(Booking.starts_at)).scalars().all()
    returns = db.session.execute(select(Booking).where(scope, live, Booking.ends_at >= lo, Booking.ends_at < hi)
                                 .order_by(Booking.ends_at)).scalars().all()
    return {"pickups": list(pickups), "returns": list(returns)}


@agencies.on_suspended
def flag_agency_bookings(agency: Agency, reason: str) -> int:
    """When an agency is suspended its live bookings are flagged for platform staff."""
    rows = db.session.execute(
        select(Booking).where(Booking.agency_id == agency.id, Booking.status.in_(list(states.ACTIVE)))
    ).scalars().all()
    for booking in rows:
        booking.flagged_at = utcnow()
        booking.flag_reason = reason
    db.session.flush()
    return len(rows)


def flagged_for_agency(actor: Actor, agency: Agency) -> list[Booking]:
    """Bookings flagged for platform staff (e.g. when the agency was suspended), for the agency's console page."""
    agencies.require_verifier(actor)
    return list(db.session.execute(
        select(Booking).where(Booking.agency_id == agency.id, Booking.flagged_at.is_not(None))
        .order_by(Booking.starts_at)
    ).scalars())


def vehicle_out(vehicle_id: int) -> dict[str, Any]:
    v = vehicle_brief(vehicle_id)
    return {"id": v.public_id, "make": v.make, "model": v.model, "year": v.year, "plate": v.plate}


def agency_booking_out(b: Booking) -> dict[str, Any]:
    """What the agency sees of a booking (P-17): names, car, dates, places, licence, emergency contact.

    The shape of ``AgencyBookingOut``, shared by the API and the agency app.
    """
    customer = users.get_user(b.customer_id)
    assert customer is not None
    identity = identity_of(customer)
    return {
        "reference": b.reference, "status": b.status, "vehicle": vehicle_out(b.vehicle_id), "starts_at": b.starts_at,
        "ends_at": b.ends_at, "pickup_place": b.pickup_place, "dropoff_place": b.dropoff_place,
        "renter": {"first_name": customer.first_name, "last_name": customer.last_name},
        "licence": {"number": identity.licence_number if identity else None,
                    "issuer": identity.licence_issuer if identity else None,
                    "expiry": identity.licence_expiry if identity else None,
                    "category": identity.licence_category if identity else None},
        "emergency_contact": {"name": customer.emergency_contact_name, "phone": customer.emergency_contact_phone},
        "flagged": b.flagged_at is not None, "flag_reason": b.flag_reason,
    }
