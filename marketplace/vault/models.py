"""Encrypted blobs and the per-owner data keys that encrypt them.

Only ciphertext is ever stored (in the blob store); the row keeps where it is and what it is. Each
owner (a customer, later an agency) has one 256-bit data key, stored only wrapped by a master key.
Destroying the wrapped key makes every copy of the owner's blobs unreadable (crypto-shredding).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import Model
from marketplace.modelbase import PublicIdMixin


class DataKey(Model):
    __tablename__ = "data_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(80), unique=True)  # "user:<public id>" or "agency:<public id>"
    master_key_id: Mapped[str | None] = mapped_column(String(128), index=True)
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)  # None once destroyed
    created_at: Mapped[datetime]
    rewrapped_at: Mapped[datetime | None]
    destroyed_at: Mapped[datetime | None]


class Blob(PublicIdMixin, Model):
    __tablename__ = "blobs"
    __table_args__ = (Index("ix_blobs_owner_kind", "owner", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(80))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    storage_key: Mapped[str] = mapped_column(String(128), unique=True)
    mime: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)  # ciphertext bytes
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    attached_at: Mapped[datetime | None]  # claimed by the case or record that needs it
    deleted_at: Mapped[datetime | None]
