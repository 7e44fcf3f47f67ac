"""Accounts (customers and staff), their sessions, one-time tokens, consents and staff roles."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from marketplace.extensions import Model
from marketplace.modelbase import PublicIdMixin, TimestampMixin
from marketplace.permissions import Role
from marketplace.users.states import AccountStatus, AccountType, ConsentKind, SessionChannel, TokenPurpose  # noqa: F401 - re-exported


class User(PublicIdMixin, TimestampMixin, Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24), default=AccountStatus.PENDING)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    pending_email: Mapped[str | None] = mapped_column(String(254))
    email_verified_at: Mapped[datetime | None]
    phone: Mapped[str | None] = mapped_column(String(20), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    password_changed_at: Mapped[datetime | None]
    full_name: Mapped[str] = mapped_column(String(200))
    date_of_birth: Mapped[date | None] = mapped_column(Date)
    nationality: Mapped[str | None] = mapped_column(String(2))
    address_line1: Mapped[str | None] = mapped_column(String(200))
    address_line2: Mapped[str | None] = mapped_column(String(200))
    address_city: Mapped[str | None] = mapped_column(String(100))
    address_region: Mapped[str | None] = mapped_column(String(100))
    address_postal_code: Mapped[str | None] = mapped_column(String(20))
    address_country: Mapped[str | None] = mapped_column(String(2))
    emergency_contact_name: Mapped[str | None] = mapped_column(String(200))
    emergency_contact_phone: Mapped[str | None] = mapped_column(String(20))
    notify_email: Mapped[bool] = mapped_column(Boolean, default=True)
    notify_in_app: Mapped[bool] = mapped_column(Boolean, default=True)
    # TOTP secret, encrypted under the master key ring (never stored in the clear)
    totp_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    totp_enrolled_at: Mapped[datetime | None]
    totp_last_counter: Mapped[int] = mapped_column(Integer, default=0)
    # wrong TOTP codes in a row, and the lock they caused (users/mfa.py): in the database, so every worker sees it
    mfa_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    mfa_locked_until: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]

    roles: Mapped[list[RoleAssignment]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin",
        foreign_keys="RoleAssignment.user_id",
    )

    @property
    def is_staff(self) -> bool:
        return self.account_type == AccountType.STAFF

    @property
    def first_name(self) -> str:
        return self.full_name.split()[0] if self.full_name.split() else ""

    @property
    def last_name(self) -> str:
        parts = self.full_name.split()
        return parts[-1] if len(parts) > 1 else ""

    def role_set(self) -> frozenset[Role]:
        if not self.is_staff:
            return frozenset({Role.CUSTOMER})
        return frozenset(Role(r.role) for r in self.roles)


class RoleAssignment(Model):
    """One role held by one staff member; agency roles name their agency."""

    __tablename__ = "role_assignments"
    __table_args__ = (UniqueConstraint("user_id", "role", "agency_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    agency_id: Mapped[int | None] = mapped_column(ForeignKey("agencies.id"), index=True)
    granted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    granted_at: Mapped[datetime]

    user: Mapped[User] = relationship(back_populates="roles", foreign_keys=[user_id])


class AuthSession(PublicIdMixin, Model):
    """A signed-in session. Only hashes of its tokens are stored; revoking it kills every token at once."""

    __tablename__ = "auth_sessions"
    __table_args__ = (Index("ix_auth_sessions_user_active", "user_id", "revoked_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(8))
    access_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    access_expires_at: Mapped[datetime]
    refresh_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    refresh_expires_at: Mapped[datetime | None]
    csrf_secret: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    auth_at: Mapped[datetime]  # last time the password was checked (step-up)
    mfa_at: Mapped[datetime | None]  # last time a TOTP code was checked
    revoked_at: Mapped[datetime | None]
    revoke_reason: Mapped[str | None] = mapped_column(String(32))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))

    user: Mapped[User] = relationship(lazy="joined")


class RetiredRefreshToken(Model):
    """Every refresh token a session has rotated away from: if one comes back, the session was stolen."""

    __tablename__ = "retired_refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True)
    retired_at: Mapped[datetime]


class OneTimeToken(Model):
    """An e-mailed single-use token; only its SHA-256 is kept."""

    __tablename__ = "one_time_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(24))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class Consent(PublicIdMixin, Model):
    """One consent given (and maybe withdrawn): what, which text version, when, from where."""

    __tablename__ = "consents"
    __table_args__ = (Index("ix_consents_user_kind", "user_id", "kind", "withdrawn_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(24))
    text_version: Mapped[str] = mapped_column(String(32))
    text_sha256: Mapped[str] = mapped_column(String(64))
    granted_at: Mapped[datetime]
    ip_address: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(300))
    withdrawn_at: Mapped[datetime | None]
    withdrawn_ip_address: Mapped[str | None] = mapped_column(String(64))
    context: Mapped[str | None] = mapped_column(Text)  # e.g. the booking a mandate belongs to


class StaffInvitation(PublicIdMixin, Model):
    __tablename__ = "staff_invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), index=True)
    full_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    agency_id: Mapped[int | None] = mapped_column(ForeignKey("agencies.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
