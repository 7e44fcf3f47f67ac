"""One row per booking that reached the counter: the identity check, the actual handover and return times."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import Model
from marketplace.handover.states import Stage
from marketplace.modelbase import PublicIdMixin, TimestampMixin


class Handover(PublicIdMixin, TimestampMixin, Model):
    __tablename__ = "handovers"

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id", ondelete="CASCADE"), unique=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    stage: Mapped[str] = mapped_column(String(20), default=Stage.AWAITING_CHECK)
    reveals: Mapped[int] = mapped_column(Integer, default=0)  # selfie links granted
    last_revealed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    outcome: Mapped[str | None] = mapped_column(String(20))  # the latest check: match | mismatch | licence_missing
    checked_at: Mapped[datetime | None]
    checked_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    handed_over_at: Mapped[datetime | None]
    handed_over_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    returned_at: Mapped[datetime | None]
    returned_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    late_by_minutes: Mapped[int | None] = mapped_column(Integer)  # set at return: 0 when on time


class Inspection(PublicIdMixin, TimestampMixin, Model):
    """The car's state at pick-up or at return, as staff recorded it and the customer acknowledged it."""

    __tablename__ = "inspections"
    __table_args__ = (UniqueConstraint("booking_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id", ondelete="CASCADE"))
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # pickup | return
    mileage_km: Mapped[int] = mapped_column(Integer)
    fuel_eighths: Mapped[int] = mapped_column(Integer)  # 0 (empty) .. 8 (full)
    damage: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # [{area, severity, note}]
    note: Mapped[str | None] = mapped_column(String(500))
    recorded_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    recorded_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_name: Mapped[str | None] = mapped_column(String(120))  # what the customer typed at the counter


class InspectionPhoto(PublicIdMixin, Model):
    """One photo of an inspection: re-encoded without metadata, encrypted in the vault."""

    __tablename__ = "inspection_photos"

    id: Mapped[int] = mapped_column(primary_key=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id", ondelete="CASCADE"), index=True)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    uploaded_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime]
