"""Identity data, KYC cases, reviewer decisions and short-lived image grants."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import Model
from marketplace.kyc.states import CaseStatus
from marketplace.modelbase import PublicIdMixin, TimestampMixin


class KycIdentity(TimestampMixin, Model):
    """The identity and licence data a customer declares (P-05); one row per customer."""

    __tablename__ = "kyc_identities"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    legal_name: Mapped[str] = mapped_column(String(200))
    date_of_birth: Mapped[date] = mapped_column(Date)
    nationality: Mapped[str] = mapped_column(String(2))
    id_document_type: Mapped[str] = mapped_column(String(16))
    id_document_number: Mapped[str] = mapped_column(String(32))
    id_document_expiry: Mapped[date] = mapped_column(Date)
    licence_number: Mapped[str] = mapped_column(String(32))
    licence_issuer: Mapped[str] = mapped_column(String(8))
    licence_expiry: Mapped[date] = mapped_column(Date)
    licence_category: Mapped[str] = mapped_column(String(16))


class KycCase(PublicIdMixin, TimestampMixin, Model):
    __tablename__ = "kyc_cases"
    __table_args__ = (Index("ix_kyc_cases_queue", "status", "submitted_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(32), default=CaseStatus.DRAFT)
    submitted_at: Mapped[datetime | None]
    claimed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    claimed_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    selfie_blob_id: Mapped[int | None] = mapped_column(ForeignKey("blobs.id"))
    id_front_blob_id: Mapped[int | None] = mapped_column(ForeignKey("blobs.id"))
    id_back_blob_id: Mapped[int | None] = mapped_column(ForeignKey("blobs.id"))
    licence_front_blob_id: Mapped[int | None] = mapped_column(ForeignKey("blobs.id"))
    licence_back_blob_id: Mapped[int | None] = mapped_column(ForeignKey("blobs.id"))
    face_consent_id: Mapped[int | None] = mapped_column(ForeignKey("consents.id"))
    face_consent_version: Mapped[str | None] = mapped_column(String(32))
    # what the customer must send again, and why (shown to them)
    resubmit_items: Mapped[str | None] = mapped_column(String(200))
    customer_reason: Mapped[str | None] = mapped_column(String(64))


class KycDecision(PublicIdMixin, Model):
    """Every reviewer decision. Rejections and overrides stay ``pending`` until a second reviewer confirms."""

    __tablename__ = "kyc_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("kyc_cases.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(32))
    reason_code: Mapped[str] = mapped_column(String(48))
    note: Mapped[str | None] = mapped_column(Text)
    items: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # final | pending | confirmed | overturned
    second_reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    second_decided_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class ImageGrant(Model):
    """A single-use, short-lived permission for one viewer to see one image (the signed link)."""

    __tablename__ = "image_grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id", ondelete="CASCADE"))
    viewer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(32))
    context: Mapped[str | None] = mapped_column(String(80))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
