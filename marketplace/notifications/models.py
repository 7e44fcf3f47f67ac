"""The notifications outbox: every e-mail and in-app notice is a row first, sent after commit."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import Model
from marketplace.modelbase import PublicIdMixin


class Channel(StrEnum):
    EMAIL = "email"
    IN_APP = "in_app"


class OutboxStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"  # handed to the SMTP server
    KEPT = "kept"  # no SMTP configured: kept here and readable in the console
    FAILED = "failed"  # gave up after bounded retries
    DELIVERED = "delivered"  # in-app notices are delivered by being written


class OutboxMessage(PublicIdMixin, Model):
    __tablename__ = "outbox_messages"
    __table_args__ = (Index("ix_outbox_user_channel", "user_id", "channel", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(48))
    to_address: Mapped[str | None] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(200))
    body_text: Mapped[str] = mapped_column(Text)
    # a sensitive body (a reset or invitation code) is blanked once the message has been sent
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(12), default=OutboxStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
