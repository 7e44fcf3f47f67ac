"""Rental agencies: the businesses that list cars (P-12)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import Model
from marketplace.modelbase import PublicIdMixin, TimestampMixin


class AgencyStatus(StrEnum):
    PENDING = "pending_verification"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"


class Agency(PublicIdMixin, TimestampMixin, Model):
    __tablename__ = "agencies"

    id: Mapped[int] = mapped_column(primary_key=True)
    business_name: Mapped[str] = mapped_column(String(200))
    trade_licence_number: Mapped[str] = mapped_column(String(64))
    trn: Mapped[str] = mapped_column(String(15))
    address_line1: Mapped[str] = mapped_column(String(200))
    address_city: Mapped[str] = mapped_column(String(100))
    address_country: Mapped[str] = mapped_column(String(2), default="AE")
    representative_name: Mapped[str] = mapped_column(String(200))
    contact_email: Mapped[str] = mapped_column(String(254))
    contact_phone: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(24), default=AgencyStatus.PENDING)
    verified_at: Mapped[datetime | None]
    suspended_at: Mapped[datetime | None]
