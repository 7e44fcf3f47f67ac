"""Registration (21+, current consent texts) and e-mail verification, with the one-time tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import select

from marketplace import audit
from marketplace.extensions import db, utcnow
from marketplace.notifications import service as notifications
from marketplace.users import passwords, sessions
from marketplace.users.consent_texts import CURRENT as CURRENT_TEXTS
from marketplace.users.consents import _grant
from marketplace.users.errors import ConsentVersionMismatch, TokenInvalid
from marketplace.users.models import AccountStatus, AccountType, ConsentKind, OneTimeToken, TokenPurpose, User
from marketplace.users.rules import ensure_adult, normalise_email, normalise_phone


@dataclass(frozen=True)
class Registration:
    full_name: str
    date_of_birth: date
    nationality: str
    email: str
    phone: str
    address: dict[str, str]
    password: str
    accepted_terms_version: str
    accepted_privacy_version: str
    marketing_opt_in: bool = False
    device: str | None = None
    emergency_contact: dict[str, str] | None = None


def register(reg: Registration) -> None:
    """Create a customer account awaiting e-mail confirmation.

    The answer is the same whether or not the e-mail or phone is already registered (no account
    enumeration); the owner of an existing account is told by e-mail instead.
    """
    ensure_adult(reg.date_of_birth)  # nothing is stored for someone under 21
    email = normalise_email(reg.email)
    phone = normalise_phone(reg.phone)
    passwords.check_policy(reg.password, email=email, name=reg.full_name)
    for kind, version in ((ConsentKind.TERMS, reg.accepted_terms_version),
                          (ConsentKind.PRIVACY, reg.accepted_privacy_version)):
        if CURRENT_TEXTS[kind].version != version:
            raise ConsentVersionMismatch(details={"kind": kind, "current_version": CURRENT_TEXTS[kind].version})
    emergency_phone = None
    if reg.emergency_contact and reg.emergency_contact.get("phone"):
        emergency_phone = normalise_phone(reg.emergency_contact["phone"], "emergency_contact.phone")

    existing = db.session.execute(
        select(User).where((User.email == email) | (User.phone == phone))
    ).scalars().first()
    if existing is not None:
        passwords.hash_password(reg.password)  # same work as a real registration
        if existing.status in (AccountStatus.ACTIVE, AccountStatus.PENDING):
            notifications.send_email(to=existing.email, kind="account_exists", context={"user": existing},
                                     user=existing)
        audit.record(None, "account:register_duplicate", existing, outcome="refused")
        return

    address = reg.address
    user = User(
        account_type=AccountType.CUSTOMER,
        status=AccountStatus.PENDING,
        email=email,
        phone=phone,
        password_hash=passwords.hash_password(reg.password),
        password_changed_at=utcnow(),
        full_name=" ".join(reg.full_name.split()),
        date_of_birth=reg.date_of_birth,
        nationality=reg.nationality.upper(),
        address_line1=address["line1"],
        address_line2=address.get("line2"),
        address_city=address["city"],
        address_region=address.get("region"),
        address_postal_code=address.get("postal_code"),
        address_country=address["country"].upper(),
        emergency_contact_name=(reg.emergency_contact or {}).get("name"),
        emergency_contact_phone=emergency_phone,
    )
    db.session.add(user)
    db.session.flush()
    kinds = [ConsentKind.TERMS, ConsentKind.PRIVACY] + ([ConsentKind.MARKETING] if reg.marketing_opt_in else [])
    for kind in kinds:
        _grant(user, kind, CURRENT_TEXTS[kind].version, device=reg.device)
    _send_verification(user, user.email)
    audit.record(None, "account:register", user)


def _issue_token(user: User, purpose: TokenPurpose, ttl_minutes: int) -> str:
    token, digest = sessions.new_token("")
    now = utcnow()
    db.session.add(OneTimeToken(user_id=user.id, purpose=purpose, token_hash=digest, created_at=now,
                                expires_at=now + timedelta(minutes=ttl_minutes)))
    db.session.flush()
    return token


def _consume_token(token: str, purpose: TokenPurpose) -> OneTimeToken:
    row = db.session.execute(
        select(OneTimeToken).where(OneTimeToken.token_hash == sessions.token_hash(token or ""))
        .with_for_update()
    ).scalar_one_or_none()
    if row is None or row.purpose != purpose or row.used_at is not None or row.expires_at <= utcnow():
        raise TokenInvalid()
    row.used_at = utcnow()
    return row


def _retire_tokens(user: User, purpose: TokenPurpose) -> None:
    for row in db.session.execute(
        select(OneTimeToken).where(OneTimeToken.user_id == user.id, OneTimeToken.used_at.is_(None),
                                   OneTimeToken.purpose == purpose)
    ).scalars():
        row.used_at = utcnow()


def _send_verification(user: User, address: str) -> None:
    token = _issue_token(user, TokenPurpose.EMAIL_VERIFY, 24 * 60)
    notifications.send_email(to=address, kind="verify_email", context={"user": user, "token": token},
                             user=user, sensitive=True)


def verify_email(token: str) -> User:
    row = _consume_token(token, TokenPurpose.EMAIL_VERIFY)
    user = db.session.get(User, row.user_id)
    assert user is not None
    if user.pending_email:
        if db.session.execute(select(User.id).where(User.email == user.pending_email)).first():
            user.pending_email = None
            raise TokenInvalid()
        user.email = user.pending_email
        user.pending_email = None
    elif user.status == AccountStatus.PENDING:
        user.status = AccountStatus.ACTIVE
    user.email_verified_at = utcnow()
    db.session.flush()
    audit.record(None, "account:email_verified", user)
    return user
