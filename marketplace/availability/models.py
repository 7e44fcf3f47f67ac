"""The one table of taken time. Keyed by car id and holder (a booking or a block), it imports no other area's
models: the foreign keys name their tables, the rules are in ``availability.service``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import Model


class VehicleOccupancy(Model):
    """Every period a car is taken: an active booking (its turnaround buffer included) or a block.

    One table for both, so one database constraint refuses every overlap. On PostgreSQL an exclusion
    constraint (btree_gist) on ``(vehicle_id, tstzrange(starts_at, ends_at))`` does it (migration 0003);
    on SQLite writes are serialised with BEGIN IMMEDIATE and ``availability.service.hold`` checks first.
    Rows are deleted when a booking is cancelled or expires, or a block removed, so they never block.
    """

    __tablename__ = "vehicle_occupancies"
    __table_args__ = (Index("ix_vehicle_occupancies_vehicle_start", "vehicle_id", "starts_at", "ends_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id", ondelete="CASCADE"), unique=True)
    block_id: Mapped[int | None] = mapped_column(ForeignKey("availability_blocks.id", ondelete="CASCADE"),
                                                 unique=True)
