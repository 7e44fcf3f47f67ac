"""Pick-up and return inspections (P-18): mileage, fuel, damage marks, photos and the customer's
acknowledgement at the counter; the facts the charges area reads.

A pick-up inspection is open once the identity check is a match and until the car goes; a return inspection
from the handover until (and at) the return. Once the customer acknowledged it, an inspection is frozen.

Photos go through the one image pipeline (``marketplace.images``: pixels re-encoded, metadata gone) and are
kept encrypted in the vault under the booking's **agency's** data key, like its listing photos and documents:
they are the agency's record of its car, the evidence a post-rental charge needs for 90 days after the return
(P-20, P-21), and they go with the agency's other files when it is terminated (P-29). Each blob also names the
booking's **customer** (``Blob.user_id``), since a photo at the counter may show them or their belongings, so a
privacy erasure of that person can find every such blob by ``user_id``.

Only ``handover.service`` imports this module (it re-exports the functions). Services flush, never commit.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import func, select

from marketplace import audit
from marketplace.agencies import service as agencies
from marketplace.bookings import service as bookings
from marketplace.errors import Conflict, NotFound, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.handover.models import Handover, Inspection, InspectionPhoto
from marketplace.handover.states import (
    INSPECTION_OPEN,
    DamageArea,
    DamageSeverity,
    InspectionKind,
    Stage,
)
from marketplace.images import VEHICLE_PHOTO_POLICY, process_image
from marketplace.permissions import Permission
from marketplace.security import Actor, require_in_agency
from marketplace.vault import service as vault

if TYPE_CHECKING:
    from marketplace.bookings.models import Booking

MAX_INSPECTION_PHOTOS = 12
MAX_DAMAGE_MARKS = 40
MAX_MILEAGE_KM = 2_000_000
DAMAGE_NOTE_MAX = 500
NOTE_MAX = 500
ACK_NAME_MAX = 120
PHOTO_KIND = "inspection_photo"


class InspectionNotOpen(Conflict):
    code = "inspection_not_open"
    message = (
        "A pick-up inspection is recorded after the identity match and before the handover; a return "
        "inspection after the handover and up to the return."
    )


class InspectionNotRecorded(Conflict):
    code = "inspection_not_recorded"
    message = "Record the inspection (mileage and fuel) first."


class InspectionAcknowledged(Conflict):
    code = "inspection_acknowledged"
    message = "The customer has acknowledged this inspection: it can no longer change."


class InspectionPhotoLimit(Unprocessable):
    code = "inspection_photo_limit"
    message = f"An inspection can have at most {MAX_INSPECTION_PHOTOS} photos."


class MileageBelowPickup(Unprocessable):
    code = "mileage_below_pickup"
    message = "The return mileage cannot be below the mileage recorded at pick-up."


def _invalid(field: str, message: str) -> Unprocessable:
    return Unprocessable(details={"fields": {field: [message]}})


# ---- loading, always through the staff member's agency --------------------------------------------------


def _staff_booking(actor: Actor, reference: str) -> Booking:
    booking = bookings.get_for_agency(actor, reference)  # another agency's booking: 404
    require_in_agency(actor, booking.agency_id, Permission.AGENCY_HANDOVER_PERFORM)
    return booking


def _handover(booking_id: int) -> Handover | None:
    return db.session.execute(select(Handover).where(Handover.booking_id == booking_id)).scalar_one_or_none()


def _inspection(booking_id: int, kind: InspectionKind, *, lock: bool = False) -> Inspection | None:
    stmt = select(Inspection).where(Inspection.booking_id == booking_id, Inspection.kind == kind)
    return db.session.execute(stmt.with_for_update() if lock else stmt).scalar_one_or_none()


def _inspections(booking_id: int) -> dict[str, Inspection]:
    rows = db.session.execute(select(Inspection).where(Inspection.booking_id == booking_id)).scalars()
    return {row.kind: row for row in rows}


def _photos(inspection_ids: list[int]) -> dict[int, list[InspectionPhoto]]:
    result: dict[int, list[InspectionPhoto]] = {i: [] for i in inspection_ids}
    if inspection_ids:
        for photo in db.session.execute(
            select(InspectionPhoto)
            .where(InspectionPhoto.inspection_id.in_(inspection_ids))
            .order_by(InspectionPhoto.id)
        ).scalars():
            result[photo.inspection_id].append(photo)
    return result


def _require_open(booking: Booking, kind: InspectionKind) -> Handover:
    row = _handover(booking.id)
    stage = row.stage if row is not None else Stage.AWAITING_CHECK
    if row is None or stage not in INSPECTION_OPEN[kind]:
        raise InspectionNotOpen(details={"kind": kind, "stage": stage})
    return row


def _open_for_change(booking: Booking, kind: InspectionKind) -> Inspection:
    """The recorded, not yet acknowledged inspection, locked, while its stage allows it."""
    _require_open(booking, kind)
    inspection = _inspection(booking.id, kind, lock=True)
    if inspection is None:
        raise InspectionNotRecorded(details={"kind": kind})
    if inspection.acknowledged_at is not None:
        raise InspectionAcknowledged(details={"kind": kind})
    return inspection


# ---- the checks a service repeats (the schemas state the same limits) -----------------------------------


def _clean(value: str | None, limit: int) -> str | None:
    return " ".join((value or "").split())[:limit] or None


def _damage(marks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(marks) > MAX_DAMAGE_MARKS:
        raise _invalid("damage", f"At most {MAX_DAMAGE_MARKS} damage marks.")
    cleaned: list[dict[str, Any]] = []
    for mark in marks:
        area, severity, note = mark.get("area"), mark.get("severity"), mark.get("note")
        if area not in set(DamageArea):
            raise _invalid("damage", f"area must be one of {', '.join(DamageArea)}.")
        if severity not in set(DamageSeverity):
            raise _invalid("damage", f"severity must be one of {', '.join(DamageSeverity)}.")
        if note is not None and (not isinstance(note, str) or len(note) > DAMAGE_NOTE_MAX):
            raise _invalid("damage", f"A damage note is at most {DAMAGE_NOTE_MAX} characters.")
        cleaned.append({"area": str(area), "severity": str(severity), "note": _clean(note, DAMAGE_NOTE_MAX)})
    return cleaned


# ---- recording, photos, the acknowledgement ---------------------------------------------------------------


def record_inspection(
    actor: Actor,
    reference: str,
    kind: InspectionKind,
    *,
    mileage_km: int,
    fuel_eighths: int,
    damage: list[dict[str, Any]],
    note: str | None,
) -> Inspection:
    """Record (or correct, until the customer acknowledged it) the pick-up or return inspection."""
    booking = _staff_booking(actor, reference)
    kind = InspectionKind(kind)
    _require_open(booking, kind)
    if not 0 <= mileage_km <= MAX_MILEAGE_KM:
        raise _invalid("mileage_km", f"Between 0 and {MAX_MILEAGE_KM}.")
    if not 0 <= fuel_eighths <= 8:
        raise _invalid("fuel_eighths", "Between 0 (empty) and 8 (full).")
    marks = _damage(damage)
    if kind == InspectionKind.RETURN:
        pickup = _inspection(booking.id, InspectionKind.PICKUP)
        if pickup is not None and mileage_km < pickup.mileage_km:
            raise MileageBelowPickup(details={"pickup_mileage_km": pickup.mileage_km})
    inspection = _inspection(booking.id, kind, lock=True)
    if inspection is not None and inspection.acknowledged_at is not None:
        raise InspectionAcknowledged(details={"kind": kind})
    now = utcnow()
    if inspection is None:
        inspection = Inspection(booking_id=booking.id, agency_id=booking.agency_id, kind=kind)
        db.session.add(inspection)
    inspection.mileage_km, inspection.fuel_eighths, inspection.damage = mileage_km, fuel_eighths, marks
    inspection.note = _clean(note, NOTE_MAX)
    inspection.recorded_by_id, inspection.recorded_at = actor.user.id, now
    db.session.flush()
    audit.record(
        actor,
        "inspection:record",
        booking,
        kind=kind,
        inspection=inspection.public_id,
        mileage_km=mileage_km,
        fuel_eighths=fuel_eighths,
        damage_marks=len(marks),
    )
    return inspection


def add_inspection_photo(actor: Actor, reference: str, kind: InspectionKind, upload: Any) -> InspectionPhoto:
    """A photo of the car for this inspection: through the image pipeline, encrypted in the vault.

    ``upload`` is the multipart part (``stream`` and ``mimetype``)."""
    booking = _staff_booking(actor, reference)
    kind = InspectionKind(kind)
    inspection = _open_for_change(booking, kind)
    count = db.session.execute(
        select(func.count()).select_from(InspectionPhoto).where(InspectionPhoto.inspection_id == inspection.id)
    ).scalar_one()
    if count >= MAX_INSPECTION_PHOTOS:
        raise InspectionPhotoLimit(details={"limit": MAX_INSPECTION_PHOTOS})
    stream: IO[bytes] = upload.stream
    image = process_image(stream, policy=VEHICLE_PHOTO_POLICY, declared_type=getattr(upload, "mimetype", None))
    agency = agencies.agency_by_id(booking.agency_id)
    assert agency is not None
    blob = vault.store(
        agencies.vault_owner(agency),
        PHOTO_KIND,
        image.data,
        mime=image.mime,
        width=image.width,
        height=image.height,
        user_id=booking.customer_id,
    )
    now = utcnow()
    blob.attached_at = now  # claimed at once: never swept as an orphan upload
    photo = InspectionPhoto(
        inspection_id=inspection.id,
        blob_id=blob.id,
        width=image.width,
        height=image.height,
        uploaded_by_id=actor.user.id,
        created_at=now,
    )
    db.session.add(photo)
    inspection.updated_at = now
    db.session.flush()
    audit.record(actor, "inspection:photo", booking, kind=kind, photo=photo.public_id)
    return photo


def acknowledge_inspection(actor: Actor, reference: str, kind: InspectionKind, *, name: str) -> Inspection:
    """The customer, at the counter, acknowledges the recorded inspection by typing their name; it is frozen."""
    booking = _staff_booking(actor, reference)
    kind = InspectionKind(kind)
    typed = _clean(name, ACK_NAME_MAX)
    if typed is None:
        raise _invalid("name", "The customer types their name.")
    inspection = _open_for_change(booking, kind)
    inspection.acknowledged_at, inspection.acknowledged_name = utcnow(), typed
    db.session.flush()
    audit.record(actor, "inspection:acknowledge", booking, kind=kind, inspection=inspection.public_id)
    return inspection


# ---- views -----------------------------------------------------------------------------------------------


def _inspection_out(inspection: Inspection | None, photos: list[InspectionPhoto]) -> dict[str, Any] | None:
    if inspection is None:
        return None
    return {
        "id": inspection.public_id,
        "kind": inspection.kind,
        "mileage_km": inspection.mileage_km,
        "fuel_eighths": inspection.fuel_eighths,
        "damage": list(inspection.damage or []),
        "note": inspection.note,
        "recorded_at": inspection.recorded_at,
        "acknowledged_at": inspection.acknowledged_at,
        "acknowledged_name": inspection.acknowledged_name,
        "photos": [{"id": p.public_id, "width": p.width, "height": p.height} for p in photos],
    }


def _view(booking: Booking) -> dict[str, Any]:
    rows = _inspections(booking.id)
    photos = _photos([row.id for row in rows.values()])
    handover = _handover(booking.id)
    pickup, back = rows.get(InspectionKind.PICKUP), rows.get(InspectionKind.RETURN)
    return {
        "reference": booking.reference,
        "pickup": _inspection_out(pickup, photos.get(pickup.id, []) if pickup else []),
        "return": _inspection_out(back, photos.get(back.id, []) if back else []),
        "handed_over_at": handover.handed_over_at if handover else None,
        "returned_at": handover.returned_at if handover else None,
        "late_by_minutes": handover.late_by_minutes if handover else None,
    }


def inspection_view(actor: Actor, reference: str, *, audited: bool = True) -> dict[str, Any]:
    """Both inspections of one of the staff member's agency's bookings, with their photos' ids (audited;
    ``audited=False`` only for the answer to a change that was itself audited)."""
    booking = _staff_booking(actor, reference)
    view = _view(booking)
    if audited:
        audit.record(actor, "inspection:view", booking)
    return view


def customer_inspection_view(actor: Actor, reference: str) -> dict[str, Any]:
    """The same, for the customer who booked (another person's booking: 404), audited."""
    booking = bookings.get_for_customer(actor, reference)
    view = _view(booking)
    audit.record(actor, "inspection:view", booking, by="customer")
    return view


def _photo_row(photo_public_id: str) -> tuple[InspectionPhoto, Inspection] | None:
    row = db.session.execute(
        select(InspectionPhoto, Inspection)
        .join(Inspection, Inspection.id == InspectionPhoto.inspection_id)
        .where(InspectionPhoto.public_id == photo_public_id[:36])
    ).one_or_none()
    return (row[0], row[1]) if row is not None else None


def _photo_data(photo: InspectionPhoto) -> bytes:
    blob = vault.get_blob(photo.blob_id)
    if blob is None or blob.deleted_at is not None or blob.kind != PHOTO_KIND:
        raise NotFound()
    return vault.read(blob)


def inspection_photo(actor: Actor, photo_public_id: str) -> bytes:
    """One inspection photo, for handover staff of the booking's agency only (anyone else: 404), audited."""
    found = _photo_row(photo_public_id)
    if found is None or found[1].agency_id not in actor.agency_ids:
        raise NotFound()
    photo, inspection = found
    booking = bookings.get(inspection.booking_id)
    require_in_agency(actor, booking.agency_id, Permission.AGENCY_HANDOVER_PERFORM)
    data = _photo_data(photo)
    audit.record(actor, "inspection:photo_view", booking, photo=photo.public_id)
    return data


def customer_inspection_photo(actor: Actor, reference: str, photo_public_id: str) -> bytes:
    """One photo of an inspection of the customer's own booking (anything else: 404), audited."""
    booking = bookings.get_for_customer(actor, reference)
    found = _photo_row(photo_public_id)
    if found is None or found[1].booking_id != booking.id:
        raise NotFound()
    data = _photo_data(found[0])
    audit.record(actor, "inspection:photo_view", booking, photo=found[0].public_id, by="customer")
    return data


# ---- for the charges area (service to service, no actor) ---------------------------------------------------


def _facts(inspection: Inspection | None, photos: list[InspectionPhoto]) -> dict[str, Any] | None:
    if inspection is None:
        return None
    return {
        "mileage_km": inspection.mileage_km,
        "fuel_eighths": inspection.fuel_eighths,
        "damage": list(inspection.damage or []),
        "photo_ids": [p.public_id for p in photos],
        "recorded_at": inspection.recorded_at,
        "acknowledged_at": inspection.acknowledged_at,
    }


def inspection_facts(booking_id: int) -> dict[str, Any] | None:
    """What the counter recorded for a booking (None when it never reached the counter)."""
    handover = _handover(booking_id)
    rows = _inspections(booking_id)
    if handover is None and not rows:
        return None
    photos = _photos([row.id for row in rows.values()])
    pickup, back = rows.get(InspectionKind.PICKUP), rows.get(InspectionKind.RETURN)
    return {
        "pickup": _facts(pickup, photos.get(pickup.id, []) if pickup else []),
        "return": _facts(back, photos.get(back.id, []) if back else []),
        "handed_over_at": handover.handed_over_at if handover else None,
        "returned_at": handover.returned_at if handover else None,
        "late_by_minutes": handover.late_by_minutes if handover else None,
    }


def inspection_photo_bytes(photo_id: str) -> bytes:
    """An inspection photo's JPEG by its public id, for an evidence pack (the caller decides who sees it)."""
    found = _photo_row(photo_id)
    if found is None:
        raise NotFound()
    return _photo_data(found[0])


def returned_before(booking_ids: Collection[int], cutoff: datetime) -> set[int]:
    """Which of these bookings came back before ``cutoff`` (one query, for a batch)."""
    if not booking_ids:
        return set()
    return set(db.session.execute(select(Handover.booking_id).where(
        Handover.booking_id.in_(list(booking_ids)), Handover.returned_at < cutoff)).scalars())


def rental_period(booking_id: int) -> tuple[datetime | None, datetime | None]:
    """The actual handover and return times of a booking (None while not yet)."""
    handover = _handover(booking_id)
    if handover is None:
        return None, None
    return handover.handed_over_at, handover.returned_at
