"""Booking rules: quotes, booking with clearance and accepted texts, changes, cancellation, expiry.

A car can never be booked twice (P-16): every active booking holds the car's time through
``availability.service`` (its period plus the car's turnaround buffer), whose serialised write lets the
database refuse overlaps. A lost race becomes 409 ``vehicle_unavailable``, never a 500.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, or_, select

from marketplace import audit, jobs, money
from marketplace.agencies import service as agencies
from marketplace.availability import service as availability
from marketplace.availability.service import Holder, VehicleUnavailable
from marketplace.bookings import states
from marketplace.bookings.models import Booking, BookingEvent
from marketplace.bookings.states import BookingStatus
from marketplace.clock import BUSINESS_TZ
from marketplace.errors import Conflict, Forbidden, NotFound, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.fleet import service as fleet
from marketplace.fleet.service import bookable_vehicle
from marketplace.kyc.service import ensure_cleared_to_drive, identity_of
from marketplace.notifications import service as notifications
from marketplace.permissions import Permission
from marketplace.security import Actor, require
from marketplace.transactions import UNIQUE_VIOLATION, Retry, keep
from marketplace.users import service as users
from marketplace.users.service import grant_consent
from marketplace.users.states import ConsentKind

if TYPE_CHECKING:
    from marketplace.agencies.models import Agency

if TYPE_CHECKING:
    from marketplace.agencies.models import Agency
    from marketplace.fleet.models import Vehicle
PAY_WITHIN = timedelta(minutes=15)
FREE_CANCELLATION = timedelta(hours=48)
_REFERENCE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


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
    """A rental's period: the lead time, horizon and longest rental of ``availability.RENTAL``."""
    availability.check_period(starts_at, ends_at, availability.RENTAL, now=now)


def quote(vehicle_public_id: str, starts_at: datetime, ends_at: datetime) -> Quote:
    check_period(starts_at, ends_at)
    vehicle = bookable_vehicle(vehicle_public_id)
    days = rental_days(starts_at, ends_at)
    rental, fee, vat, total = price(vehicle.daily_price_fils, days)
    return Quote(vehicle, starts_at, ends_at, days, vehicle.daily_price_fils, rental, fee, vat, total,
                 vehicle.deposit_fils, vehicle.currency, availability.is_free(vehicle, starts_at, ends_at),
                 starts_at - FREE_CANCELLATION)


# ---- booking -------------------------------------------------------------------------------------


def new_reference() -> str:
    body = "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(8))
    return f"CJ-{body[:4]}-{body[4:]}"


def _in_utc(value: datetime, field: str) -> datetime:
    """``value`` in UTC; a time at the edge of the calendar (0001-01-01T00:00+03:00) has no UTC value, and it is
    outside every booking window anyway."""
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise Unprocessable(details={"fields": {field: ["Out of range."]}}) from exc


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


# checks a higher area adds before a car is booked (payments: in production the agency's payout account must be
# ready); each ``check(agency_id)`` raises to refuse
_BOOKING_CHECKS: list[Callable[[int], None]] = []


def before_booking(check: Callable[[int], None]) -> Callable[[int], None]:
    """Register a check of the car's agency (its id) that may refuse a new booking."""
    _BOOKING_CHECKS.append(check)
    return check


_CUSTOMER_CHECKS: list[Callable[[int], None]] = []


def before_customer_books(check: Callable[[int], None]) -> Callable[[int], None]:
    """Register a check of the customer (their user id) that may refuse a new booking: an unpaid post-rental
    charge does (``outstanding_balance``, registered by the charges area above)."""
    _CUSTOMER_CHECKS.append(check)
    return check


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
    fingerprint = request_fingerprint({"vehicle_id": vehicle_id, "starts_at": _in_utc(starts_at, "starts_at"),
                                       "ends_at": _in_utc(ends_at, "ends_at"), "terms": rental_terms_version,
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
        for check in _BOOKING_CHECKS:
            check(vehicle.agency_id)
        for customer_check in _CUSTOMER_CHECKS:
            customer_check(user_id)
        if not availability.is_free(vehicle, starts_at, ends_at):
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
        availability.hold(vehicle, booking.starts_at, booking.ends_at, Holder.booking(booking.id))
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
        return None  # availability's rule: an overlap is 409 vehicle_unavailable

    return availability.serialised(work, on_conflict=on_conflict)


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
        vehicle = fleet.vehicle_by_id(booking.vehicle_id)
        old = {"starts_at": booking.starts_at, "ends_at": booking.ends_at, "total_fils": booking.total_fils}
        availability.move(vehicle, Holder.booking(booking.id), starts_at.astimezone(UTC), ends_at.astimezone(UTC))
        booking.starts_at, booking.ends_at = starts_at.astimezone(UTC), ends_at.astimezone(UTC)
        booking.days = rental_days(booking.starts_at, booking.ends_at)
        booking.daily_rate_fils = vehicle.daily_price_fils
        booking.rental_fils, booking.platform_fee_fils, booking.vat_fils, booking.total_fils = price(
            vehicle.daily_price_fils, booking.days)
        db.session.flush()
        _event(booking, actor.user.id, "modified", before=old,
               after={"starts_at": booking.starts_at, "ends_at": booking.ends_at, "total_fils": booking.total_fils})
        audit.record(actor, "booking:modify", booking)
        return booking

    return availability.serialised(work)


def cancellation_fee(booking: Booking, *, now: datetime | None = None) -> int:
    """Free until 48 hours before pick-up (and for unpaid bookings); later, one day's rental with its fee
    and VAT, at the rate locked in the booking."""
    now = now or utcnow()
    if booking.status == BookingStatus.PENDING_PAYMENT or now < booking.starts_at - FREE_CANCELLATION:
        return 0
    return min(booking.total_fils, price(booking.daily_rate_fils, 1)[3])


# what must happen when a booking is cancelled, registered by the areas above (payments refunds per the
# policy): bookings may not import them (layers), so they register here; each runs in the cancel's unit
_CANCEL_LISTENERS: list[Callable[[Booking], None]] = []


def on_cancelled(func: Callable[[Booking], None]) -> Callable[[Booking], None]:
    _CANCEL_LISTENERS.append(func)
    return func


def _free_car(booking: Booking) -> None:
    availability.release(Holder.booking(booking.id))


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
    for listener in _CANCEL_LISTENERS:
        listener(booking)
    return booking


# ---- payment (the payments area calls these) ------------------------------------------------------


def locked(booking_id: int) -> Booking:
    """The booking, row-locked for the rest of the transaction (PostgreSQL; SQLite writers are serialised)."""
    booking = db.session.execute(select(Booking).where(Booking.id == booking_id).with_for_update()).scalar_one()
    return booking


def get(booking_id: int) -> Booking:
    booking = db.session.get(Booking, booking_id)
    if booking is None:
        raise NotFound()
    return booking


class NotPayable(Conflict):
    code = "booking_not_payable"
    message = "This booking is not awaiting payment (it may have expired or been cancelled)."


def ensure_payable(booking: Booking, *, now: datetime | None = None) -> None:
    """Only a pending booking inside its payment window may be paid; an overdue one expires first."""
    now = now or utcnow()
    if booking.status == BookingStatus.PENDING_PAYMENT and booking.pay_by is not None and booking.pay_by <= now:
        booking_id = booking.id
        keep(lambda: expire(str(booking_id)))  # the refusal rolls back; the expiry stands
        raise NotPayable(details={"status": BookingStatus.EXPIRED})
    if booking.status != BookingStatus.PENDING_PAYMENT:
        raise NotPayable(details={"status": booking.status})


def confirm_paid(booking_id: int, *, payment_ref: str) -> bool:
    """pending_payment -> confirmed once the booking money is captured; True only for the call that moved it.

    Whichever comes first (the API answer or the webhook) confirms; the other finds it confirmed. A booking
    that expired or was cancelled meanwhile is not revived: False, and the caller refunds."""
    booking = locked(booking_id)
    if booking.status != BookingStatus.PENDING_PAYMENT:
        return False
    booking.status = BookingStatus.CONFIRMED
    _event(booking, None, "status", from_status=BookingStatus.PENDING_PAYMENT, to_status=BookingStatus.CONFIRMED,
           payment=payment_ref)
    db.session.flush()
    audit.record(None, "booking:confirm", booking, payment=payment_ref)
    return True


def start_rental(actor: Actor, booking_id: int) -> Booking:
    """confirmed -> in_progress: the car was handed over (the handover area calls this after a match)."""
    return _move_rental(actor, booking_id, BookingStatus.IN_PROGRESS, "booking:handover")


def mark_returned(actor: Actor, booking_id: int) -> Booking:
    """in_progress -> returned: the car came back (the handover area calls this)."""
    return _move_rental(actor, booking_id, BookingStatus.RETURNED, "booking:return")


def _move_rental(actor: Actor, booking_id: int, target: BookingStatus, action: str) -> Booking:
    booking = locked(booking_id)
    states.check(booking.status, target)
    previous = booking.status
    booking.status = target
    _event(booking, actor.user.id, "status", from_status=previous, to_status=target)
    db.session.flush()
    audit.record(actor, action, booking)
    return booking


def complete(booking_id: int) -> bool:
    """returned -> completed: the rental is closed (the handover area's job after the return); True if moved.
    Payouts count their escrow from here; post-rental charges may still be raised for 90 days."""
    booking = locked(booking_id)
    if booking.status != BookingStatus.RETURNED:
        return False
    booking.status = BookingStatus.COMPLETED
    _event(booking, None, "status", from_status=BookingStatus.RETURNED, to_status=BookingStatus.COMPLETED)
    db.session.flush()
    audit.record(None, "booking:complete", booking)
    return True


def completed_ids(*, ended_before: datetime, limit: int = 100) -> list[int]:
    """Completed bookings whose rental ended before ``ended_before`` (the payouts' escrow clock)."""
    return list(db.session.execute(select(Booking.id).where(
        Booking.status == BookingStatus.COMPLETED, Booking.ends_at < ended_before)
        .order_by(Booking.id).limit(limit)).scalars())


def flag_booking(booking_id: int, reason: str) -> None:
    """Ask people to look at a booking (a deposit re-hold failed, money arrived after expiry)."""
    booking = get(booking_id)
    booking.flagged_at = utcnow()
    booking.flag_reason = reason[:200]
    db.session.flush()


def get_by_reference(reference: str) -> Booking:
    """Any booking by its reference, unscoped: for callers that scope or authorise themselves (platform staff
    pages whose service checked the permission; the handover image purpose checks the viewer's agency)."""
    booking = db.session.execute(select(Booking).where(Booking.reference == reference[:16])).scalar_one_or_none()
    if booking is None:
        raise NotFound()
    return booking


def flagged(*, limit: int = 200) -> list[Booking]:
    """Every booking flagged for platform staff, oldest flag first (the console's review queue)."""
    return list(db.session.execute(select(Booking).where(Booking.flagged_at.is_not(None))
                                   .order_by(Booking.flagged_at).limit(limit)).scalars())


def clear_flag(booking_id: int) -> str | None:
    """A person looked at the flagged booking: the flag goes (its reason is returned for the audit row)."""
    booking = get(booking_id)
    reason = booking.flag_reason
    booking.flagged_at, booking.flag_reason = None, None
    db.session.flush()
    return reason


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


def expire_overdue() -> None:
    """Belt and braces: expire any pending booking whose deadline passed (e.g. its work row was lost)."""
    overdue = db.session.execute(
        select(Booking.id).where(Booking.status == BookingStatus.PENDING_PAYMENT, Booking.pay_by < utcnow())
        .limit(500)
    ).scalars().all()
    for booking_id in overdue:
        expire(str(booking_id))


# ---- loading through the owner's scope -------------------------------------------------------------


# the customer's booking pages run these on every request: built once, run with parameters
_CUSTOMER_BOOKING = select(Booking).where(Booking.reference == bindparam("reference"),
                                          Booking.customer_id == bindparam("customer_id"))
_HISTORY = (select(BookingEvent.at, BookingEvent.kind, BookingEvent.from_status, BookingEvent.to_status)
            .where(BookingEvent.booking_id == bindparam("booking_id")).order_by(BookingEvent.id))


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
    return fleet.vehicle_brief(vehicle_id)


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


@fleet.before_retire
def _no_unfinished_bookings(vehicle_id: int) -> None:
    """A car with bookings that still hold it (pending, confirmed, under way) cannot leave the fleet."""
    live = db.session.execute(
        select(Booking.id).where(Booking.vehicle_id == vehicle_id, Booking.status.in_(list(states.ACTIVE))).limit(1)
    ).first()
    if live is not None:
        raise fleet.VehicleHasBookings()


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
