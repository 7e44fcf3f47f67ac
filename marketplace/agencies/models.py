"""Rental agencies: the businesses that list cars (P-12)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.agencies.states import AgencyDocumentKind, AgencyStatus  # noqa: F401 - re-exported (vocabulary in states)
from marketplace.extensions import Model
from marketplace.modelbase import PublicIdMixin, TimestampMixin


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
    verified_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    suspended_at: Mapped[datetime | None]
    status_reason: Mapped[str | None] = mapped_column(String(300))
    # default gap between two rentals of one car, for cleaning and checks (minutes)
    turnaround_minutes: Mapped[int] = mapped_column(Integer, default=120, server_default="120")


class AgencyDocument(PublicIdMixin, Model):
    """A verification document (trade licence, VAT certificate, representative ID, authorisation letter),
    stored through the same encrypted image pipeline as KYC documents."""

    __tablename__ = "agency_documents"
    __table_args__ = (UniqueConstraint("agency_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"))
    uploaded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    uploaded_at: Mapped[datetime]
