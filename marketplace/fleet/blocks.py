"""Availability blocks: an agency takes a car off the market for a period. The car's time itself is
``availability.service``'s: a block holds its exact period (no turnaround buffer) through it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from marketplace import audit
from marketplace.availability import service as availability
from marketplace.availability.service import Holder
from marketplace.availability.states import HolderKind
from marketplace.errors import NotFound
from marketplace.extensions import db, utcnow
from marketplace.fleet.models import AvailabilityBlock, Vehicle
from marketplace.fleet.scope import require_in_agency
from marketplace.permissions import Permission
from marketplace.security import Actor, require


def list_blocks(actor: Actor, vehicle: Vehicle, *, include_past: bool = False) -> list[AvailabilityBlock]:
    """A car's current and future blocks (and past ones if asked), earliest first."""
    require(actor, Permission.AGENCY_VEHICLE_READ)
    stmt = select(AvailabilityBlock).where(AvailabilityBlock.vehicle_id == vehicle.id)
    if not include_past:
        stmt = stmt.where(AvailabilityBlock.ends_at > utcnow())
    return list(db.session.execute(stmt.order_by(AvailabilityBlock.starts_at).limit(500)).scalars())


def check_block_period(starts_at: datetime, ends_at: datetime) -> None:
    """422 unless the block has a time zone, ends after it starts, lasts at most 90 days and is not over."""
    availability.check_period(starts_at, ends_at, availability.BLOCK)


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
        if not availability.is_free(current, start, end, kind=HolderKind.BLOCK):
            raise availability.VehicleUnavailable()
        block = AvailabilityBlock(vehicle_id=vehicle_id, starts_at=start, ends_at=end, reason=reason,
                                  created_by_id=user_id, created_at=utcnow())
        db.session.add(block)
        db.session.flush()
        availability.hold(current, start, end, Holder.block(block.id))
        audit.record(actor, "vehicle:block:create", current, block=block.public_id, starts_at=start, ends_at=end)
        return block

    return availability.serialised(work)


def delete_block(actor: Actor, vehicle: Vehicle, block_public_id: str) -> None:
    """Put the car back on the market for a blocked period."""
    require_in_agency(actor, vehicle.agency_id, Permission.AGENCY_VEHICLE_WRITE)
    block = db.session.execute(
        select(AvailabilityBlock).where(AvailabilityBlock.vehicle_id == vehicle.id,
                                        AvailabilityBlock.public_id == block_public_id)
    ).scalar_one_or_none()
    if block is None:
        raise NotFound()
    availability.release(Holder.block(block.id))
    db.session.delete(block)
    db.session.flush()
    audit.record(actor, "vehicle:block:delete", vehicle, block=block_public_id)
