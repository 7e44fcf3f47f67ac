"""Pick-up and return (P-18): today's list, the identity check with the selfie revealed only then, the
recorded outcome, the actual handover and return times.

The handover area calls bookings, kyc and payments only through their services. Its one image purpose,
``handover``, is registered in kyc's table of purposes (``kyc.image_purpose``): the decision whether the
selfie may be shown is made here, on this area's rows, every time a link is granted. Every grant, view and
refusal is audited. Services flush, never commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from math import ceil
from typing import TYPE_CHECKING, Any

from flask import current_app
from sqlalchemy import select

from marketplace import audit, images, jobs
from marketplace.bookings import service as bookings
from marketplace.bookings.states import BookingStatus
from marketplace.config import Settings
from marketplace.errors import Forbidden, NotFound, ReauthRequired
from marketplace.extensions import db, utcnow
from marketplace.handover import states
from marketplace.handover.inspections import (
    InspectionAcknowledged,
    InspectionNotOpen,
    InspectionNotRecorded,
    InspectionPhotoLimit,
    MileageBelowPickup,
    acknowledge_inspection,
    add_inspection_photo,
    customer_inspection_photo,
    customer_inspection_view,
    inspection_facts,
    inspection_photo,
    inspection_photo_bytes,
    inspection_view,
    record_inspection,
    rental_period,
    returned_before,
)
from marketplace.handover.models import Handover
from marketplace.handover.states import Outcome, Stage
from marketplace.kyc import service as kyc
from marketplace.payments import service as payments
from marketplace.payments.states import IntentState
from marketplace.permissions import Permission
from marketplace.security import Actor, can_in_agency, require_in_agency
from marketplace.users import service as users

if TYPE_CHECKING:
    from marketplace.bookings.models import Booking
    from marketplace.vault.models import Blob

PURPOSE = "handover"

# the inspections (marketplace/handover/inspections.py) are part of this service
__all__ = [
    "InspectionAcknowledged",
    "InspectionNotOpen",
    "InspectionNotRecorded",
    "InspectionPhotoLimit",
    "MileageBelowPickup",
    "acknowledge_inspection",
    "add_inspection_photo",
    "customer_inspection_photo",
    "customer_inspection_view",
    "inspection_facts",
    "inspection_photo",
    "inspection_photo_bytes",
    "inspection_view",
    "record_inspection",
    "rental_period",
    "returned_before",
]


class RevealRefused(Forbidden):
    code = "handover_reveal_refused"
    message = "The customer's photo cannot be shown for this booking now."


class IdentityNotConfirmed(Forbidden):
    code = "identity_not_confirmed"
    message = "The car is handed over only after staff confirmed the customer's identity (a match)."


def _settings() -> Settings:
    value: Settings = current_app.config["SETTINGS"]
    return value


# ---- today's pick-ups and returns -----------------------------------------------------------------------


def today(actor: Actor, day: date) -> dict[str, list[Booking]]:
    """The day's pick-ups and returns of the actor's agencies (Asia/Dubai day), from bookings' own query."""
    return bookings.today_for_agency(actor, day)


# ---- the handover row ---------------------------------------------------------------------------------


def _row(booking: Booking, *, create: bool = False, lock: bool = False) -> Handover | None:
    stmt = select(Handover).where(Handover.booking_id == booking.id)
    row = db.session.execute(stmt.with_for_update() if lock else stmt).scalar_one_or_none()
    if row is None and create:
        row = Handover(booking_id=booking.id, agency_id=booking.agency_id, stage=Stage.AWAITING_CHECK, reveals=0)
        db.session.add(row)
        db.session.flush()
    return row


def stage_of(booking: Booking) -> str:
    row = _row(booking)
    return row.stage if row is not None else Stage.AWAITING_CHECK


def booking_for_staff(actor: Actor, reference: str) -> Booking:
    """The booking, scoped to the actor's agencies and the handover permission (another agency's: 404)."""
    return _staff_booking(actor, reference)


def _staff_booking(actor: Actor, reference: str) -> Booking:
    """The booking, if it is one of the actor's agencies' and the actor may do handovers there."""
    booking = bookings.get_for_agency(actor, reference)
    require_in_agency(actor, booking.agency_id, Permission.AGENCY_HANDOVER_PERFORM)
    return booking


# ---- the handover check -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    opens_at: datetime
    closes_at: datetime


def reveal_window(booking: Booking) -> Window:
    settings = _settings()
    return Window(booking.starts_at - settings.handover_window_before,
                  booking.starts_at + settings.handover_window_after)


def check_view(actor: Actor, reference: str) -> dict[str, Any]:
    """What staff see before the reveal: first and last name and the licence details, nothing more."""
    booking = _staff_booking(actor, reference)
    customer = users.get_user(booking.customer_id)
    assert customer is not None
    identity = kyc.identity_of(customer)
    row = _row(booking)
    window = reveal_window(booking)
    return {
        "reference": booking.reference, "status": booking.status, "starts_at": booking.starts_at,
        "ends_at": booking.ends_at, "vehicle": bookings.vehicle_out(booking.vehicle_id),
        "renter": {"first_name": customer.first_name, "last_name": customer.last_name},
        "licence": {"number": identity.licence_number if identity else None,
                    "issuer": identity.licence_issuer if identity else None,
                    "expiry": identity.licence_expiry if identity else None,
                    "category": identity.licence_category if identity else None},
        "stage": row.stage if row else Stage.AWAITING_CHECK, "outcome": row.outcome if row else None,
        "reveal_opens_at": window.opens_at, "reveal_closes_at": window.closes_at,
        "handed_over_at": row.handed_over_at if row else None, "returned_at": row.returned_at if row else None,
        "late_by_minutes": row.late_by_minutes if row else None,
    }


def reveal_refusals(actor: Actor, booking: Booking, *, now: datetime | None = None) -> list[str]:
    """Every reason the selfie may not be shown now (empty: it may). The one rule, used at the grant and by
    the image policy's ``handover`` entry."""
    now = now or utcnow()
    settings = _settings()
    reasons: list[str] = []
    if not can_in_agency(actor, booking.agency_id, Permission.AGENCY_HANDOVER_PERFORM):
        reasons.append("not_handover_staff")
    if actor.session.mfa_at is None or now - actor.session.mfa_at > settings.handover_mfa_window:
        reasons.append("mfa_not_fresh")
    if booking.status != BookingStatus.CONFIRMED:
        reasons.append("booking_not_confirmed")
    view = payments.payment_view(booking)
    if view.payment is None or view.payment.state != IntentState.SUCCEEDED:
        reasons.append("not_paid")
    if booking.deposit_fils > 0 and (view.deposit is None or view.deposit.state != IntentState.HELD):
        reasons.append("deposit_not_held")
    window = reveal_window(booking)
    if not window.opens_at <= now <= window.closes_at:
        reasons.append("outside_handover_window")
    if stage_of(booking) not in states.REVEALABLE:
        reasons.append("handover_closed")  # handed over, returned or stopped: no more reveals
    customer = users.get_user(booking.customer_id)
    try:
        if customer is None:
            raise NotFound()
        kyc.ensure_cleared_to_drive(customer, booking.ends_at)
    except (kyc.KycRequired, NotFound):
        reasons.append("customer_not_cleared")
    return reasons


def reveal_selfie(actor: Actor, reference: str) -> tuple[str, datetime]:
    """A single-use link (about a minute) to the customer's selfie, when every condition holds (P-18).

    A refusal is audited with its reasons (kept although the request fails): another agency's booking is a
    404 as everywhere; missing fresh MFA asks for step-up (401 ``reauth_required``); anything else is 403
    ``handover_reveal_refused`` naming the reasons."""
    try:
        booking = bookings.get_for_agency(actor, reference)
    except NotFound:
        audit.record_now(actor, "handover:reveal_denied", ("bookings", reference[:40]), reasons=["not_found"])
        raise
    reasons = reveal_refusals(actor, booking)
    if reasons:
        audit.record_now(actor, "handover:reveal_denied", booking, reasons=reasons)
        if reasons == ["mfa_not_fresh"]:
            raise ReauthRequired(details={"needs": "mfa"})
        raise RevealRefused(details={"reasons": reasons})
    customer = users.get_user(booking.customer_id)
    assert customer is not None
    row = _row(booking, create=True, lock=True)
    assert row is not None
    token, expires = kyc.selfie_grant(actor, customer, purpose=PURPOSE, context=booking.reference,
                                      reason="handover: match the customer in front of staff")
    row.reveals += 1
    row.last_revealed_by_id = actor.user.id
    db.session.flush()
    audit.record(actor, "handover:reveal", booking, expires_at=expires.isoformat())
    return token, expires


@kyc.image_purpose(PURPOSE, own_door=True)
def _may_reveal(actor: Actor, blob: Blob, context: str) -> bool:
    """The image policy's handover entry: the booking's customer's selfie, when every condition holds."""
    booking = _booking_by_reference(context)
    return (
        booking is not None
        and blob.kind == "selfie"
        and blob.user_id == booking.customer_id
        and booking.agency_id in actor.agency_ids
        and not reveal_refusals(actor, booking)
    )


def _booking_by_reference(reference: str) -> Booking | None:
    try:
        return bookings.get_by_reference(reference)
    except NotFound:
        return None


def open_selfie(actor: Actor, token: str) -> bytes:
    """Spend a handover link: the selfie, watermarked with the booking, the staff member and the time."""
    data, _blob, context = kyc.open_purpose_image(actor, token, PURPOSE)
    booking = _staff_booking(actor, context)  # still this agency's handover staff (else 404, the spend undone)
    stamp = utcnow().strftime("%Y-%m-%d %H:%M:%S UTC")
    staff = actor.user.full_name or actor.user.public_id
    return images.watermark(data, [f"{booking.reference} handover", f"{staff} ({actor.user.public_id[:8]})", stamp])


# ---- the outcome, the handover, the return -----------------------------------------------------------


def record_check(actor: Actor, reference: str, outcome: Outcome, *, note: str | None = None) -> Handover:
    """Staff record what they saw. A match lets the car go; a mismatch stops the handover, cancels the
    booking per policy (payments refunds through its cancel listener) and sends the account to KYC
    re-review; a missing licence stops nothing for good (the check may be done again)."""
    booking = _staff_booking(actor, reference)
    row = _row(booking, create=True, lock=True)
    assert row is not None
    if booking.status != BookingStatus.CONFIRMED:
        raise states.IllegalTransition(details={"booking_status": booking.status})
    target = {Outcome.MATCH: Stage.MATCHED, Outcome.MISMATCH: Stage.STOPPED,
              Outcome.LICENCE_MISSING: Stage.AWAITING_CHECK}[outcome]
    states.check(row.stage, target)
    if outcome == Outcome.MATCH and not row.reveals:
        raise IdentityNotConfirmed(details={"reason": "reveal the customer's photo first"})
    row.stage, row.outcome = target, outcome
    row.checked_at, row.checked_by_id = utcnow(), actor.user.id
    db.session.flush()
    audit.record(actor, "handover:check", booking, outcome=outcome, note=" ".join((note or "").split())[:300] or None)
    if outcome == Outcome.MISMATCH:
        bookings.cancel(actor, booking, reason="identity did not match at handover")
        customer = users.get_user(booking.customer_id)
        assert customer is not None
        kyc.request_rereview(actor, customer, reason="handover_mismatch", context=booking.reference)
    return row


def hand_over(actor: Actor, reference: str) -> Handover:
    """After a match: the car goes; the actual time is recorded and the booking moves to in_progress."""
    booking = _staff_booking(actor, reference)
    row = _row(booking, lock=True)
    if row is None or row.stage in (Stage.AWAITING_CHECK, Stage.STOPPED):
        raise IdentityNotConfirmed(details={"stage": row.stage if row else Stage.AWAITING_CHECK})
    states.check(row.stage, Stage.HANDED_OVER)  # already handed over (or back): 409
    bookings.start_rental(actor, booking.id)
    row.stage, row.handed_over_at, row.handed_over_by_id = Stage.HANDED_OVER, utcnow(), actor.user.id
    db.session.flush()
    audit.record(actor, "handover:hand_over", booking, at=row.handed_over_at.isoformat())
    return row


# What may keep the deposit after a return. Post-rental charges (Issue #10's charges area) are not built:
# when they are, that area registers here a check "a charge is pending or may still be raised against this
# booking", and the deposit stays held for it. Until then nothing keeps it, and a return releases it.
_DEPOSIT_KEEPERS: list[Callable[[int], bool]] = []


def keeps_deposit(func: Callable[[int], bool]) -> Callable[[int], bool]:
    """Register a check (booking id -> True to keep the deposit held after the return)."""
    _DEPOSIT_KEEPERS.append(func)
    return func


def charge_pending(booking_id: int) -> bool:
    """The decision point at the return: does anything (a pending post-rental charge) need the deposit?"""
    return any(keeper(booking_id) for keeper in _DEPOSIT_KEEPERS)


def record_return(actor: Actor, reference: str) -> Handover:
    """The car is back: the actual time, a late return measured against the booking's end, in_progress ->
    returned, and the deposit released (by the payments job) unless a pending charge keeps it."""
    booking = _staff_booking(actor, reference)
    row = _row(booking, lock=True)
    if row is None:
        raise states.IllegalTransition(details={"stage": Stage.AWAITING_CHECK})
    states.check(row.stage, Stage.RETURNED)
    bookings.mark_returned(actor, booking.id)
    now = utcnow()
    late = max(0, ceil((now - booking.ends_at) / timedelta(minutes=1)))
    row.stage, row.returned_at, row.returned_by_id, row.late_by_minutes = Stage.RETURNED, now, actor.user.id, late
    db.session.flush()
    keep = charge_pending(booking.id)
    release_at = now + _settings().deposit_keep_after_return
    jobs.schedule("handover.after_return", booking.id, due_at=release_at, dedupe_key=f"after-return:{booking.id}")
    audit.record(actor, "handover:return", booking, at=now.isoformat(), late_by_minutes=late,
                 deposit="kept_for_charges" if keep else "release", deposit_release_at=release_at.isoformat())
    return row


def after_return(booking_id: int) -> None:
    """``deposit_keep_after_return`` after the return: the rental is closed (completed), and the deposit is
    released unless a pending post-rental charge still needs it (the charges area releases it once settled)."""
    bookings.complete(booking_id)
    if not charge_pending(booking_id):
        payments.release_deposit(booking_id)


@payments.evidence_source("inspection_photos")
def _inspection_evidence(booking_id: int) -> list[dict[str, Any]]:
    """P-24: what the counter recorded, for a chargeback's evidence pack (photo ids, not the images)."""
    facts = inspection_facts(booking_id)
    if facts is None:
        return []
    return [{"kind": kind, "recorded_at": f["recorded_at"].isoformat() if f["recorded_at"] else None,
             "mileage_km": f["mileage_km"], "fuel_eighths": f["fuel_eighths"], "damage": f["damage"],
             "photos": len(f["photo_ids"]), "photo_ids": f["photo_ids"],
             "acknowledged_at": f["acknowledged_at"].isoformat() if f["acknowledged_at"] else None}
            for kind in ("pickup", "return") if (f := facts[kind]) is not None]
