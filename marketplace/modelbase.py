"""Column helpers shared by every area's models."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import utcnow


def new_public_id() -> str:
    return str(uuid.uuid4())


class PublicIdMixin:
    """Integer keys stay inside; URLs and responses carry this UUID instead."""

    public_id: Mapped[str] = mapped_column(String(36), unique=True, default=new_public_id)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
