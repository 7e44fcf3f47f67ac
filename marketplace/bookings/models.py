"""Bookings (P-15): reference, car, period, places, prices in fils, accepted texts, history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.bookings.states import BookingStatus
from marketplace.extensions import Model
from marketplace.modelbase import PublicIdMixin, TimestampMixin


class Booking(PublicIdMixin, TimestampMixin, Model):
    __tablename__ = "bookings"
    __table_args__ = (
        UniqueConstraint("customer_id", "idempotency_key"),
        Index("ix_bookings_agency_start", "agency_id", "starts_at"),
        Index("ix_bookings_agency_end", "agency_id", "ends_at"),
        Index("ix_bookings_customer", "customer_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(16), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id"), index=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"))
    status: Mapped[str] = mapped_column(String(20), default=BookingStatus.PENDING_PAYMENT)
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    pickup_place: Mapped[str] = mapped_column(String(300))
    dropoff_place: Mapped[str] = mapped_column(String(300))
    days: Mapped[int] = mapped_column(Integer)
    daily_rate_fils: Mapped[int] = mapped_column(Integer)
    rental_fils: Mapped[int] = mapped_column(Integer)
    platform_fee_fils: Mapped[int] = mapped_column(Integer)
    vat_fils: Mapped[int] = mapped_column(Integer)
    total_fils: Mapped[int] = mapped_column(Integer)
    deposit_fils: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), default="AED")
    terms_version: Mapped[str] = mapped_column(String(32))
    terms_consent_id: Mapped[int] = mapped_column(ForeignKey("consents.id"))
    mandate_version: Mapped[str] = mapped_column(String(32))
    mandate_consent_id: Mapped[int] = mapped_column(ForeignKey("consents.id"))
    pay_by: Mapped[datetime | None]  # pending_payment expires after this
    cancelled_at: Mapped[datetime | None]
    cancelled_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    cancel_reason: Mapped[str | None] = mapped_column(String(300))
    cancellation_fee_fils: Mapped[int | None] = mapped_column(Integer)
    flagged_at: Mapped[datetime | None]  # e.g. the agency was suspended: staff must look at it
    flag_reason: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(80))
    request_hash: Mapped[str | None] = mapped_column(String(64))


class BookingEvent(Model):
    """Status history, modifications and cancellations: who, when, what changed."""

    __tablename__ = "booking_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))  # created | status | modified | cancelled
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str | None] = mapped_column(String(20))
    data: Mapped[str] = mapped_column(Text, default="{}")
