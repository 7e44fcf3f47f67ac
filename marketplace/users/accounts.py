"""Looking up accounts for other areas and the operator commands, and the sessions and secrets those need.

Other areas hold user ids (a booking's customer, a case's reviewer); they load the person here instead of
querying users' tables. The demo seed and the key rotation command use the session and TOTP helpers.
"""

from __future__ import annotations

from datetime import date

import pyotp
from flask import current_app
from sqlalchemy import select

from marketplace.crypto import decrypt_field, encrypt_field, field_key_id, reencrypt_field
from marketplace.errors import NotFound
from marketplace.extensions import db, utcnow
from marketplace.security import Actor
from marketplace.users import passwords, sessions
from marketplace.users.consent_texts import CURRENT as CURRENT_TEXTS
from marketplace.users.consent_texts import ConsentText
from marketplace.users.errors import ConsentVersionMismatch
from marketplace.users.models import Consent, User
from marketplace.users.rules import _settings, normalise_email
from marketplace.users.states import AccountStatus, AccountType, ConsentKind, SessionChannel

new_token = sessions.new_token
token_hash = sessions.token_hash
check_password_policy = passwords.check_policy
WeakPassword = passwords.WeakPassword


def get_user(user_id: int) -> User | None:
    return db.session.get(User, user_id)


def user_by_id(user_id: int) -> User:
    """A user known by database id (another area holding a foreign key, e.g. an invoice's recipient)."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound()
    return user


def find_by_public_id(public_id: str) -> User | None:
    return db.session.execute(select(User).where(User.public_id == public_id)).scalar_one_or_none()


def find_by_email(email: str) -> User | None:
    """The account using this (already normalised) e-mail address, if any."""
    return db.session.execute(select(User).where(User.email == email)).scalar_one_or_none()


def is_open(user: User) -> bool:
    """Active or awaiting its e-mail confirmation (not disabled or closed)."""
    return user.status in (AccountStatus.ACTIVE, AccountStatus.PENDING)


def equal_hashing_work(password: str) -> None:
    """Hash a password and drop it: an answer that must not reveal an existing account costs the same."""
    passwords.hash_password(password)


# ---- consent texts --------------------------------------------------------------------------------


def current_text_version(kind: ConsentKind | str) -> str:
    """The version of a consent text that must be accepted now (``rental_terms``, ``mit_mandate``, ...)."""
    return CURRENT_TEXTS[ConsentKind(kind)].version


def mit_mandate_text() -> ConsentText:
    """The MIT mandate (P-20) as shown at booking: version, exact text and its SHA-256."""
    return CURRENT_TEXTS[ConsentKind.MIT_MANDATE]


def ensure_current_text(kind: ConsentKind, version: str) -> None:
    """The caller accepted the current text of ``kind`` (``consent_version_outdated`` otherwise)."""
    if CURRENT_TEXTS[kind].version != version:
        raise ConsentVersionMismatch(details={"kind": kind, "current_version": CURRENT_TEXTS[kind].version})


def ever_consented(user: User, kind: ConsentKind) -> bool:
    """Whether the person ever gave this consent (withdrawn or not)."""
    return db.session.execute(
        select(Consent.id).where(Consent.user_id == user.id, Consent.kind == kind).limit(1)
    ).first() is not None


# ---- operator commands: demo accounts and key rotation ---------------------------------------------


def create_verified_customer(*, email: str, phone: str, password: str, full_name: str, date_of_birth: date,
                             nationality: str, address_line1: str, address_city: str, address_country: str,
                             emergency_contact_name: str | None = None,
                             emergency_contact_phone: str | None = None) -> User:
    """An active customer whose e-mail counts as confirmed (the demo seed); no consents are given here."""
    now = utcnow()
    user = User(
        account_type=AccountType.CUSTOMER, status=AccountStatus.ACTIVE, email=normalise_email(email),
        email_verified_at=now, phone=phone, password_hash=passwords.hash_password(password),
        password_changed_at=now, full_name=full_name, date_of_birth=date_of_birth, nationality=nationality,
        address_line1=address_line1, address_city=address_city, address_country=address_country,
        emergency_contact_name=emergency_contact_name, emergency_contact_phone=emergency_contact_phone,
    )
    db.session.add(user)
    db.session.flush()
    return user


def open_api_session(user: User, *, mfa_done: bool = False) -> Actor:
    """A session for a command acting as this person (the demo seed goes through the real verbs)."""
    issued = sessions.start_session(user, SessionChannel.API, _settings(), mfa_done=mfa_done)
    return Actor.for_session(issued.session)


def close_session(actor: Actor, reason: str) -> None:
    sessions.revoke(actor.session, reason)


def _aad(user: User) -> bytes:
    return f"totp:{user.public_id}".encode()


def enrol_totp(user: User) -> str:
    """Enrol a new TOTP secret at once and return it (demo staff accounts, printed for the operator)."""
    secret = pyotp.random_base32(32)
    user.totp_secret_enc = encrypt_field(current_app.extensions["keyring"], secret.encode(), aad=_aad(user))
    user.totp_enrolled_at = utcnow()
    return secret


def current_totp_code(email: str) -> str | None:
    """The current code of an enrolled account (demo accounts only; the command checks)."""
    user = find_by_email(email)
    if user is None or user.totp_secret_enc is None:
        return None
    secret = decrypt_field(current_app.extensions["keyring"], user.totp_secret_enc, aad=_aad(user)).decode()
    return pyotp.TOTP(secret).now()


def rewrap_totp_secrets() -> int:
    """Seal every TOTP secret under the active master key; returns how many moved."""
    ring = current_app.extensions["keyring"]
    moved = 0
    for user in db.session.execute(select(User).where(User.totp_secret_enc.is_not(None))).scalars():
        token = user.totp_secret_enc
        assert token is not None
        if field_key_id(token) != ring.active_key_id:
            user.totp_secret_enc = reencrypt_field(ring, token, aad=_aad(user))
            moved += 1
    return moved
