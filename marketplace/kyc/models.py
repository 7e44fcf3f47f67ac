"""Identity data, KYC cases, reviewer decisions and short-lived image grants."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import Model
from marketplace.kyc.states import CaseStatus
from marketplace.modelbase import PublicIdMixin, TimestampMixin
from marketplace.users import service as users
from marketplace.vault import service as vault


def data_owner(user_public_id: str) -> str:
    """The vault owner whose data key seals a customer's images and identity numbers."""
    return f"user:{user_public_id}"


class KycIdentity(TimestampMixin, Model):
    """The identity and licence data a customer declares (P-05); one row per customer.

    The ID document and driving-licence numbers are stored only sealed under the customer's data key
    (AES-256-GCM, bound to the owner and the column), so erasing the customer by destroying that key
    makes them unreadable with the images (issue 7 item 7). ``id_document_number`` and
    ``licence_number`` read and write the plain values; reading a destroyed key's value raises
    ``DecryptionFailed``. Nothing looks identities up by number, so no searchable (hashed) copy is kept:
    a keyed hash would be one more identifier that survives the key's destruction.
    """

    __tablename__ = "kyc_identities"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    legal_name: Mapped[str] = mapped_column(String(200))
    date_of_birth: Mapped[date] = mapped_column(Date)
    nationality: Mapped[str] = mapped_column(String(2))
    id_document_type: Mapped[str] = mapped_column(String(16))
    id_document_number_enc: Mapped[bytes] = mapped_column(LargeBinary)
    id_document_expiry: Mapped[date] = mapped_column(Date)
    licence_number_enc: Mapped[bytes] = mapped_column(LargeBinary)
    licence_issuer: Mapped[str] = mapped_column(String(8))
    licence_expiry: Mapped[date] = mapped_column(Date)
    licence_category: Mapped[str] = mapped_column(String(16))

    @property
    def id_document_number(self) -> str:
        return self._open("id_document_number")

    @id_document_number.setter
    def id_document_number(self, value: str) -> None:
        self._seal("id_document_number", value)

    @property
    def licence_number(self) -> str:
        return self._open("licence_number")

    @licence_number.setter
    def licence_number(self, value: str) -> None:
        self._seal("licence_number", value)

    def _owner(self) -> str:
        public_id = users.public_id_of(self.user_id) if self.user_id is not None else None
        if public_id is None:
            raise ValueError("set user_id before the identity numbers: they are sealed under the user's key")
        return data_owner(public_id)

    def _plain(self) -> dict[str, str]:
        # decrypted once per loaded row: a page that shows the number twice opens the key once
        cache: dict[str, str] | None = getattr(self, "_plain_values", None)
        if cache is None:
            cache = {}
            self._plain_values = cache
        return cache

    def _open(self, name: str) -> str:
        cache = self._plain()
        if name not in cache:
            cache[name] = vault.open_value(self._owner(), sealed_field(name), getattr(self, f"{name}_enc"))
        return cache[name]

    def _seal(self, name: str, value: str) -> None:
        setattr(self, f"{name}_enc", vault.seal_value(self._owner(), sealed_field(name), value))
        self._plain()[name] = value


def sealed_field(name: str) -> str:
    """The associated-data label of a sealed identity column (migration 0008 uses the same)."""
    return f"kyc_identities.{name}"


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
