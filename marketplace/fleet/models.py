"""Vehicles an agency lists (P-13). Money is in AED minor units (fils)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Index, Integer, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import Model
from marketplace.fleet.states import VehicleStatus
from marketplace.modelbase import PublicIdMixin, TimestampMixin


class Vehicle(PublicIdMixin, TimestampMixin, Model):
    __tablename__ = "vehicles"
    # search: a city's listed cars in price order, read straight from the index (PERFORMANCE.md)
    __table_args__ = (Index("ix_vehicles_search", "city", "status", "daily_price_fils", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    make: Mapped[str] = mapped_column(String(60))
    model: Mapped[str] = mapped_column(String(60))
    year: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(24))
    plate: Mapped[str] = mapped_column(String(20))
    seats: Mapped[int] = mapped_column(Integer)
    transmission: Mapped[str] = mapped_column(String(12))
    city: Mapped[str] = mapped_column(String(60))
    latitude: Mapped[Decimal] = mapped_column(Numeric(9, 6))
    longitude: Mapped[Decimal] = mapped_column(Numeric(9, 6))
    daily_price_fils: Mapped[int] = mapped_column(Integer)
    deposit_fils: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), default="AED")
    mileage_limit_km_per_day: Mapped[int | None] = mapped_column(Integer)
    fuel_policy: Mapped[str] = mapped_column(String(24), default="full_to_full")
    status: Mapped[str] = mapped_column(String(16), default=VehicleStatus.UNLISTED)
    pickup_address: Mapped[str | None] = mapped_column(String(200))
    fuel_type: Mapped[str] = mapped_column(String(12), default="petrol", server_default="petrol")
    extra_km_fils: Mapped[int | None] = mapped_column(Integer)
    turnaround_minutes: Mapped[int] = mapped_column(Integer, default=120, server_default="120")
    deleted_at: Mapped[datetime | None]


class VehiclePhoto(PublicIdMixin, Model):
    """A public listing photo: re-encoded without metadata; not personal data, so stored unencrypted."""

    __tablename__ = "vehicle_photos"

    id: Mapped[int] = mapped_column(primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id", ondelete="CASCADE"), index=True)
    storage_key: Mapped[str] = mapped_column(String(128), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]


class AvailabilityBlock(PublicIdMixin, Model):
    """A period the agency takes the car off the market (maintenance, own use); the car's time itself is held
    in ``availability``'s ``vehicle_occupancies``."""

    __tablename__ = "availability_blocks"

    id: Mapped[int] = mapped_column(primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id", ondelete="CASCADE"), index=True)
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(String(200))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime]

