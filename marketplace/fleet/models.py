"""Vehicles an agency lists (P-13). Money is in AED minor units (fils)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import Model
from marketplace.modelbase import PublicIdMixin, TimestampMixin


class VehicleStatus(StrEnum):
    LISTED = "listed"
    UNLISTED = "unlisted"
    MAINTENANCE = "maintenance"


class Vehicle(PublicIdMixin, TimestampMixin, Model):
    __tablename__ = "vehicles"
    __table_args__ = (Index("ix_vehicles_city_status", "city", "status"),)

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
