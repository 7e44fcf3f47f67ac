"""Post-rental charges (P-21): the charge with its notice, dispute, decision and collection schedule, and its
evidence files (encrypted in the vault: the agency's under its key, the customer's dispute files under theirs)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.charges.states import ChargeStatus
from marketplace.extensions import Model
from marketplace.modelbase import PublicIdMixin, TimestampMixin


class Charge(PublicIdMixin, TimestampMixin, Model):
    __tablename__ = "charges"
    __table_args__ = (
        Index("ix_charges_status_due", "status", "due_at"),
        Index("ix_charges_customer_status", "customer_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(Text)
    amount_fils: Mapped[int] = mapped_column(Integer)  # as raised and noticed, VAT included where VAT applies
    vat_fils: Mapped[int] = mapped_column(Integer)
    collect_fils: Mapped[int] = mapped_column(Integer)  # what is collected: the notice's amount, or less if reduced
    collect_vat_fils: Mapped[int] = mapped_column(Integer)
    incurred_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20), default=ChargeStatus.NOTICED)
    raised_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    review_reason: Mapped[str | None] = mapped_column(String(300))  # why it went to platform review
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reviewed_at: Mapped[datetime | None]
    # the notice (P-21): when it went out, its outbox messages (their delivery times are dispute evidence)
    notice_sent_at: Mapped[datetime | None]
    notice_email_id: Mapped[str | None] = mapped_column(String(36))
    notice_in_app_id: Mapped[str | None] = mapped_column(String(36))
    due_at: Mapped[datetime | None]
    accepted_at: Mapped[datetime | None]
    disputed_at: Mapped[datetime | None]
    dispute_reason: Mapped[str | None] = mapped_column(Text)
    decision: Mapped[str | None] = mapped_column(String(10))  # uphold | reduce | waive
    decision_reason: Mapped[str | None] = mapped_column(Text)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None]
    # collection: attempts so far, the next try, the lease of the attempt with the provider
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    collecting_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(64))
    paid_at: Mapped[datetime | None]
    paid_via: Mapped[str | None] = mapped_column(String(12))  # deposit | card | on_session
    payment_id: Mapped[int | None] = mapped_column(Integer)  # payments' charge payment row that collected it
    withdrawn_at: Mapped[datetime | None]
    withdrawn_reason: Mapped[str | None] = mapped_column(String(300))


class ChargeEvidence(PublicIdMixin, Model):
    __tablename__ = "charge_evidence"

    id: Mapped[int] = mapped_column(primary_key=True)
    charge_id: Mapped[int] = mapped_column(ForeignKey("charges.id", ondelete="CASCADE"), index=True)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"))
    side: Mapped[str] = mapped_column(String(10))  # agency | customer
    uploaded_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
