"""One row per booking that reached the counter: the identity check, the actual handover and return times."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
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
