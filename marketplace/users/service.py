"""Account rules: registration (21+), sign-in, tokens, password reset, profile, consents, staff.

Services flush but never commit; the request's, job's or CLI command's unit of work commits once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email
from flask import current_app, request
from sqlalchemy import select

from marketplace import audit, transactions
from marketplace.config import Settings
from marketplace.errors import (
    AppError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthenticated,
    Unprocessable,
)
from marketplace.extensions import db, utcnow
from marketplace.notifications import service as notifications
from marketplace.permissions import AGENCY_ROLES, Role
from marketplace.security import Actor, SystemActor, require_recent_auth
from marketplace.users import mfa, passwords, sessions
from marketplace.users.consent_texts import CURRENT as CURRENT_TEXTS
from marketplace.users.consent_texts import ConsentText
from marketplace.users.models import (
    AccountStatus,
    AccountType,
    AuthSession,
    Consent,
    ConsentKind,
    OneTimeToken,
    RetiredRefreshToken,
    RoleAssignment,
    SessionChannel,
    StaffInvitation,
    TokenPurpose,
    User,
)

BUSINESS_TZ = ZoneInfo("Asia/Dubai")
MINIMUM_AGE = 21


class Underage(Unprocessable):
    code = "underage"
    message = "You must be at least 21 years old to use CareJar."


class InvalidCredentials(Unauthenticated):
    code = "invalid_credentials"
    message = "The e-mail or password is wrong."


class EmailUnverified(Forbidden):
    code = "email_unverified"
    message = "Confirm your e-mail address first: we sent you a link."


class TokenInvalid(BadRequest):
    code = "token_invalid"
    message = "This code is invalid, expired or already used."


class ConsentVersionMismatch(Conflict):
    code = "consent_version_outdated"
    message = "The consent text has changed. Show the current text and ask again."


class ConsentRequired(Conflict):
    code = "consent_required_for_account"
    message = "This consent is needed to keep an account. Close the account instead."


class PhoneInvalid(Unprocessable):
    code = "validation_error"


# ---- normalisation -------------------------------------------------------------------------------

_PHONE = re.compile(r"^\+[1-9][0-9]{7,14}$")  # ASCII digits only (\d would take Arabic-Indic digits too)


def normalise_email(raw: str) -> str:
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise Unprocessable(details={"fields": {"email": ["Not a valid e-mail address."]}}) from exc
    return result.normalized.lower()


def normalise_phone(raw: str, field: str = "phone") -> str:
    cleaned = re.sub(r"[\s\-().]", "", raw.strip())
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    if not _PHONE.match(cleaned):
        raise Unprocessable(
            details={"fields": {field: ["Use international format with the country code, e.g. +971501234567."]}}
        )
    return cleaned


def business_today() -> date:
    return datetime.now(BUSINESS_TZ).date()


def age_on(dob: date, day: date) -> int:
    years = day.year - dob.year
    if (day.month, day.day) < (dob.month, dob.day):
        years -= 1
    return years


def ensure_adult(dob: date) -> None:
    today = business_today()
    if dob > today:
        raise Unprocessable(details={"fields": {"date_of_birth": ["Date of birth is in the future."]}})
    if age_on(dob, today) < MINIMUM_AGE:
        raise Underage()
    if age_on(dob, today) > 120:
        raise Unprocessable(details={"fields": {"date_of_birth": ["Date of birth is not plausible."]}})


def _settings() -> Settings:
    value: Settings = current_app.config["SETTINGS"]
    return value


def _client() -> tuple[str | None, str | None]:
    try:
        return request.remote_addr, (request.user_agent.string or None)
    except RuntimeError:
        return None, None


# ---- registration and e-mail verification ---------------------------------------------------------


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
    from datetime import timedelta

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


# ---- sign-in, tokens, sign-out -----------------------------------------------------------------


def _find_by_email(raw_email: str) -> User | None:
    try:
        email = normalise_email(raw_email)
    except AppError:
        return None
    return db.session.execute(select(User).where(User.email == email)).scalar_one_or_none()


def authenticate(raw_email: str, password: str, *, channel: SessionChannel) -> User:
    """Check the password; the same answer and the same hashing work for unknown accounts."""
    user = _find_by_email(raw_email)
    ok = passwords.verify_password(user.password_hash if user else None, password)
    if not ok or user is None or user.status in (AccountStatus.DISABLED, AccountStatus.CLOSED):
        audit.record_now(None, "auth:login", ("users", user.public_id) if user else None,
                         outcome="failed", channel=str(channel))
        raise InvalidCredentials()
    if user.status == AccountStatus.PENDING:
        raise EmailUnverified()
    if user.is_staff and not user.roles:
        raise InvalidCredentials()
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    return user


def login_api(raw_email: str, password: str) -> sessions.IssuedTokens:
    user = authenticate(raw_email, password, channel=SessionChannel.API)
    issued = sessions.start_session(user, SessionChannel.API, _settings())
    audit.record(Actor.for_session(issued.session), "auth:login", user, channel="api",
                 mfa_pending=user.is_staff)
    return issued


def complete_mfa_api(actor: Actor, code: str) -> sessions.IssuedTokens:
    if not actor.is_staff:
        raise Forbidden()
    mfa.verify_code(actor.user, code)
    actor.session.mfa_at = utcnow()
    issued = sessions.rotate(actor.session, _settings())
    audit.record(actor, "auth:mfa", actor.user, channel="api")
    return issued


def refresh(refresh_token: str) -> sessions.IssuedTokens:
    digest = sessions.token_hash(refresh_token or "")
    session = db.session.execute(
        # lock only the session row: PostgreSQL refuses FOR UPDATE on the outer join that loads its user
        select(AuthSession).where(AuthSession.refresh_token_hash == digest).with_for_update(of=AuthSession)
    ).scalar_one_or_none()
    now = utcnow()
    if session is None:
        reused = db.session.execute(
            select(AuthSession).join(RetiredRefreshToken, RetiredRefreshToken.session_id == AuthSession.id)
            .where(RetiredRefreshToken.token_hash == digest)
        ).scalar_one_or_none()
        if reused is not None and reused.revoked_at is None:
            # a rotated token came back: someone else holds this session's tokens. The revocation stands
            # although this request fails (kept work of the unit of work)
            reused_id = reused.id
            transactions.keep(lambda: _revoke_reused(reused_id))
        raise Unauthenticated()
    if (
        session.revoked_at is not None
        or session.refresh_expires_at is None
        or session.refresh_expires_at <= now
        or session.user.status != AccountStatus.ACTIVE
    ):
        raise Unauthenticated()
    return sessions.rotate(session, _settings())


def _revoke_reused(session_id: int) -> None:
    reused = db.session.get(AuthSession, session_id)
    if reused is None or reused.revoked_at is not None:
        return
    sessions.revoke(reused, "refresh_reuse")
    audit.record(None, "auth:refresh_reuse", ("auth_sessions", reused.public_id), outcome="revoked")


def logout(actor: Actor, *, everywhere: bool = False) -> None:
    if everywhere:
        sessions.revoke_all(actor.user, "logout_all")
    else:
        sessions.revoke(actor.session, "logout")
    audit.record(actor, "auth:logout", actor.user, everywhere=everywhere)


def reauthenticate(actor: Actor, password: str, code: str | None) -> None:
    """Step-up: a fresh password check (and, for staff, a fresh TOTP code)."""
    if not passwords.verify_password(actor.user.password_hash, password):
        audit.record_now(actor, "auth:reauth", actor.user, outcome="failed")
        raise InvalidCredentials()
    now = utcnow()
    if actor.is_staff:
        mfa.verify_code(actor.user, code or "")
        actor.session.mfa_at = now
    actor.session.auth_at = now
    db.session.flush()
    audit.record(actor, "auth:reauth", actor.user)


# ---- password reset and change -----------------------------------------------------------------


def request_password_reset(raw_email: str) -> None:
    user = _find_by_email(raw_email)
    if user is None or user.status not in (AccountStatus.ACTIVE, AccountStatus.PENDING):
        return
    ttl_minutes = int(_settings().password_reset_ttl.total_seconds() // 60)
    token = _issue_token(user, TokenPurpose.PASSWORD_RESET, ttl_minutes)
    notifications.send_email(to=user.email, kind="password_reset", user=user, sensitive=True,
                             context={"user": user, "token": token, "ttl_minutes": ttl_minutes})
    audit.record(None, "auth:password_reset_requested", user)


def confirm_password_reset(token: str, new_password: str) -> None:
    row = _consume_token(token, TokenPurpose.PASSWORD_RESET)
    user = db.session.get(User, row.user_id)
    assert user is not None
    passwords.check_policy(new_password, email=user.email, name=user.full_name)
    _set_password(user, new_password)
    _retire_tokens(user, TokenPurpose.PASSWORD_RESET)  # other outstanding reset codes die with this one
    sessions.revoke_all(user, "password_reset")
    mfa.unlock(user)  # the e-mailed code proves the mailbox; MFA is still asked at the next sign-in
    if user.status == AccountStatus.PENDING:
        # the reset code was delivered to the address, which proves it
        user.status = AccountStatus.ACTIVE
        user.email_verified_at = utcnow()
    audit.record(None, "auth:password_reset", user)
    notifications.send_email(to=user.email, kind="password_changed", context={"user": user}, user=user)


def change_password(actor: Actor, current: str, new_password: str) -> None:
    if not passwords.verify_password(actor.user.password_hash, current):
        audit.record_now(actor, "account:password_change", actor.user, outcome="failed")
        raise InvalidCredentials(details={"fields": {"current_password": ["Wrong password."]}})
    passwords.check_policy(new_password, email=actor.user.email, name=actor.user.full_name)
    _set_password(actor.user, new_password)
    sessions.revoke_all(actor.user, "password_change", keep=actor.session)
    actor.session.auth_at = utcnow()
    audit.record(actor, "account:password_change", actor.user)
    notifications.send_email(to=actor.user.email, kind="password_changed", context={"user": actor.user},
                             user=actor.user)


def _set_password(user: User, password: str) -> None:
    user.password_hash = passwords.hash_password(password)
    user.password_changed_at = utcnow()
    db.session.flush()


# ---- profile (rectification) -------------------------------------------------------------------

_PLAIN_FIELDS = {"full_name", "nationality"}
_ADDRESS_FIELDS = {"line1": "address_line1", "line2": "address_line2", "city": "address_city",
                   "region": "address_region", "postal_code": "address_postal_code",
                   "country": "address_country"}


def update_profile(actor: Actor, changes: dict[str, Any]) -> User:  # noqa: PLR0912 - one branch per field
    user = actor.user
    changed: list[str] = []
    if "email" in changes or "phone" in changes:
        require_recent_auth(actor)
    for name in _PLAIN_FIELDS & changes.keys():
        value = changes[name]
        setattr(user, name, " ".join(value.split()) if name == "full_name" else value.upper())
        changed.append(name)
    if "date_of_birth" in changes:
        ensure_adult(changes["date_of_birth"])
        user.date_of_birth = changes["date_of_birth"]
        changed.append("date_of_birth")
    if "address" in changes:
        for key, column in _ADDRESS_FIELDS.items():
            if key in changes["address"]:
                value = changes["address"][key]
                setattr(user, column, value.upper() if key == "country" and value else value)
        changed.append("address")
    if "emergency_contact" in changes:
        contact = changes["emergency_contact"] or {}
        user.emergency_contact_name = contact.get("name")
        phone = contact.get("phone")
        user.emergency_contact_phone = normalise_phone(phone, "emergency_contact.phone") if phone else None
        changed.append("emergency_contact")
    if "phone" in changes:
        phone = normalise_phone(changes["phone"])
        if phone != user.phone:
            taken = db.session.execute(select(User.id).where(User.phone == phone, User.id != user.id)).first()
            if taken:
                raise Conflict(details={"fields": {"phone": ["This number cannot be used."]}})
            user.phone = phone
            changed.append("phone")
    if "email" in changes:
        email = normalise_email(changes["email"])
        if email != user.email:
            # a code sent to an earlier pending address must not confirm this one
            _retire_tokens(user, TokenPurpose.EMAIL_VERIFY)
            # the same answer whether or not the address is taken (no enumeration); only a free one gets a code
            user.pending_email = email
            if not db.session.execute(select(User.id).where(User.email == email)).first():
                _send_verification(user, email)
            notifications.send_email(to=user.email, kind="email_change_requested", context={"user": user},
                                     user=user)
            changed.append("email")
    db.session.flush()
    if changed:
        audit.record(actor, "account:update", user, fields=sorted(changed))
    return user


# ---- consents ------------------------------------------------------------------------------------


def grant_consent(user: User, kind: ConsentKind, version: str, *, device: str | None = None,
                  context: str | None = None) -> Consent:
    """Record a consent row for the current text (used by other areas, e.g. a booking's mandate)."""
    return _grant(user, kind, version, device=device, context=context)


def _grant(user: User, kind: ConsentKind, version: str, *, device: str | None = None,
           context: str | None = None) -> Consent:
    text = CURRENT_TEXTS[kind]
    if version != text.version:
        raise ConsentVersionMismatch(details={"kind": kind, "current_version": text.version})
    ip, agent = _client()
    consent = Consent(
        user_id=user.id,
        kind=kind,
        text_version=text.version,
        text_sha256=text.sha256,
        granted_at=utcnow(),
        ip_address=ip,
        device=(device or agent or "")[:300] or None,
        context=context,
    )
    db.session.add(consent)
    db.session.flush()
    return consent


def mit_mandate_text() -> ConsentText:
    """The MIT mandate (P-20) as shown at booking: version, exact text and its SHA-256."""
    return CURRENT_TEXTS[ConsentKind.MIT_MANDATE]


def current_text_version(kind: str) -> str:
    """The version of a consent text that must be accepted now (``rental_terms``, ``mit_mandate``, ...)."""
    return CURRENT_TEXTS[ConsentKind(kind)].version


def active_consent(user: User, kind: ConsentKind) -> Consent | None:
    return db.session.execute(
        select(Consent)
        .where(Consent.user_id == user.id, Consent.kind == kind, Consent.withdrawn_at.is_(None))
        .order_by(Consent.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def list_consents(user: User) -> list[Consent]:
    return list(db.session.execute(
        select(Consent).where(Consent.user_id == user.id).order_by(Consent.id.desc())
    ).scalars())


def give_consent(actor: Actor, kind: ConsentKind, version: str, device: str | None = None) -> tuple[Consent, bool]:
    """Record a consent; giving the same version again returns the existing row (created=False)."""
    current = active_consent(actor.user, kind)
    if current is not None and current.text_version == version == CURRENT_TEXTS[kind].version:
        return current, False
    if kind in (ConsentKind.MIT_MANDATE, ConsentKind.RENTAL_TERMS):
        raise Conflict("The rental terms and the post-rental charges mandate are accepted with each booking.",
                       details={"kind": kind})
    consent = _grant(actor.user, kind, version, device=device)
    if current is not None:  # superseded by the new version
        current.withdrawn_at = consent.granted_at
    audit.record(actor, "consent:grant", consent, kind=str(kind), version=version)
    return consent, True


def withdraw_consent(actor: Actor, kind: ConsentKind) -> list[Consent]:
    if kind in (ConsentKind.TERMS, ConsentKind.PRIVACY):
        raise ConsentRequired(details={"kind": kind})
    ip, _ = _client()
    rows = list(db.session.execute(
        select(Consent).where(Consent.user_id == actor.user.id, Consent.kind == kind,
                              Consent.withdrawn_at.is_(None))
    ).scalars())
    if not rows:
        raise NotFound(details={"kind": kind})
    now = utcnow()
    for row in rows:
        row.withdrawn_at = now
        row.withdrawn_ip_address = ip
    db.session.flush()
    audit.record(actor, "consent:withdraw", actor.user, kind=str(kind))
    return rows


def preferences(user: User) -> dict[str, bool]:
    return {
        "email": user.notify_email,
        "in_app": user.notify_in_app,
        "marketing": active_consent(user, ConsentKind.MARKETING) is not None,
    }


def update_preferences(actor: Actor, changes: dict[str, bool]) -> dict[str, bool]:
    user = actor.user
    if "email" in changes:
        user.notify_email = changes["email"]
    if "in_app" in changes:
        user.notify_in_app = changes["in_app"]
    if "marketing" in changes:
        has = active_consent(user, ConsentKind.MARKETING) is not None
        if changes["marketing"] and not has:
            _grant(user, ConsentKind.MARKETING, CURRENT_TEXTS[ConsentKind.MARKETING].version)
        elif not changes["marketing"] and has:
            withdraw_consent(actor, ConsentKind.MARKETING)
    db.session.flush()
    audit.record(actor, "account:preferences", user, changes={k: bool(v) for k, v in changes.items()})
    return preferences(user)


# ---- staff ---------------------------------------------------------------------------------------


def create_staff(
    *,
    email: str,
    full_name: str,
    password: str,
    roles: list[tuple[Role, int | None]],
    granted_by: User | None = None,
) -> User:
    """Used by the CLI (first admin, demo data) and by accepted invitations."""
    email = normalise_email(email)
    passwords.check_policy(password, email=email, name=full_name)
    if db.session.execute(select(User.id).where(User.email == email)).first():
        raise Conflict(details={"fields": {"email": ["An account with this e-mail exists."]}})
    now = utcnow()
    user = User(
        account_type=AccountType.STAFF,
        status=AccountStatus.ACTIVE,
        email=email,
        password_hash=passwords.hash_password(password),
        password_changed_at=now,
        full_name=" ".join(full_name.split()),
        email_verified_at=now,
    )
    db.session.add(user)
    db.session.flush()
    for role, agency_id in roles:
        _assign(user, role, agency_id, granted_by)
    audit.record(SystemActor("cli") if granted_by is None else None, "staff:create", user,
                 roles=[str(r) for r, _ in roles])
    return user


def _assign(user: User, role: Role, agency_id: int | None, granted_by: User | None) -> RoleAssignment:
    if role == Role.CUSTOMER:
        raise Unprocessable(details={"fields": {"role": ["Not a staff role."]}})
    if (role in AGENCY_ROLES) != (agency_id is not None):
        raise Unprocessable(details={"fields": {"agency": ["Agency roles need an agency; others must not."]}})
    assignment = RoleAssignment(user_id=user.id, role=role, agency_id=agency_id,
                                granted_by_id=granted_by.id if granted_by else None, granted_at=utcnow())
    user.roles.append(assignment)
    db.session.flush()
    return assignment


def invite_staff(actor: Actor, *, email: str, full_name: str, role: Role, agency_id: int | None) -> StaffInvitation:
    from datetime import timedelta

    _check_may_grant(actor, role, agency_id)
    email = normalise_email(email)
    token, digest = sessions.new_token("")
    now = utcnow()
    invitation = StaffInvitation(
        email=email, full_name=" ".join(full_name.split()), role=role, agency_id=agency_id, token_hash=digest,
        invited_by_id=actor.user.id, created_at=now,
        expires_at=now + (_settings().invitation_ttl or timedelta(days=7)),
    )
    db.session.add(invitation)
    db.session.flush()
    door = "agency" if role in AGENCY_ROLES else "console"
    notifications.send_email(to=email, kind="staff_invitation",
                             context={"invitation": invitation, "token": token, "door": door,
                                      "inviter": actor.user.full_name}, sensitive=True)
    audit.record(actor, "staff:invite", invitation, role=str(role), agency_id=agency_id)
    return invitation


def _check_may_grant(actor: Actor, role: Role, agency_id: int | None) -> None:
    from marketplace.permissions import Permission, permissions_for

    if role in AGENCY_ROLES:
        if agency_id is None:
            raise Unprocessable(details={"fields": {"agency": ["Agency roles need an agency."]}})
        if actor.can(Permission.STAFF_MANAGE):
            return
        here = actor.agency_roles(agency_id)  # the rights held in THIS agency, not in any agency
        if Permission.AGENCY_STAFF_MANAGE in permissions_for(here):
            if role == Role.AGENCY_OWNER and Role.AGENCY_OWNER not in here:
                raise Forbidden()
            return
        raise Forbidden()
    if not actor.can(Permission.STAFF_MANAGE):
        raise Forbidden()


def accept_invitation(token: str, password: str) -> User:
    invitation = db.session.execute(
        select(StaffInvitation).where(StaffInvitation.token_hash == sessions.token_hash(token or ""))
        .with_for_update()
    ).scalar_one_or_none()
    now = utcnow()
    if (invitation is None or invitation.accepted_at is not None or invitation.revoked_at is not None
            or invitation.expires_at <= now):
        raise TokenInvalid()
    inviter = db.session.get(User, invitation.invited_by_id) if invitation.invited_by_id else None
    existing = db.session.execute(select(User).where(User.email == invitation.email)).scalar_one_or_none()
    if existing is not None:
        if not existing.is_staff or not passwords.verify_password(existing.password_hash, password):
            raise InvalidCredentials()
        _assign(existing, Role(invitation.role), invitation.agency_id, inviter)
        if existing.status == AccountStatus.DISABLED:
            existing.status = AccountStatus.ACTIVE
        user = existing
    else:
        user = create_staff(email=invitation.email, full_name=invitation.full_name, password=password,
                            roles=[(Role(invitation.role), invitation.agency_id)], granted_by=inviter)
    invitation.accepted_at = now
    audit.record(None, "staff:invitation_accepted", invitation, user=user.public_id)
    return user


def remove_role(actor: Actor, user: User, role: Role, agency_id: int | None) -> None:
    """Take a role away; every session of that person dies at once (P-04)."""
    _check_may_grant(actor, role, agency_id)
    if user.id == actor.user.id and role == Role.ADMIN:
        raise Conflict("An admin cannot remove their own admin role.")
    match = [a for a in user.roles if a.role == role and a.agency_id == agency_id]
    if not match:
        raise NotFound()
    for assignment in match:
        user.roles.remove(assignment)
    if not user.roles:
        user.status = AccountStatus.DISABLED
    sessions.revoke_all(user, "role_removed")
    db.session.flush()
    audit.record(actor, "staff:role_remove", user, role=str(role), agency_id=agency_id)


def get_staff(public_id: str) -> User:
    user = db.session.execute(
        select(User).where(User.public_id == public_id, User.account_type == AccountType.STAFF)
    ).scalar_one_or_none()
    if user is None:
        raise NotFound()
    return user


def list_staff() -> list[User]:
    return list(db.session.execute(
        select(User).where(User.account_type == AccountType.STAFF).order_by(User.full_name)
    ).scalars())


def start_web_session(user: User) -> sessions.IssuedTokens:
    if not user.is_staff:
        raise InvalidCredentials()
    issued = sessions.start_session(user, SessionChannel.WEB, _settings())
    audit.record(Actor.for_session(issued.session), "auth:login", user, channel="web")
    return issued


def list_agencies_for_invites() -> list[Any]:
    from marketplace.agencies.models import Agency

    return list(db.session.execute(select(Agency).order_by(Agency.business_name)).scalars())


def agency_id_from_public(public_id: str | None) -> int | None:
    from marketplace.agencies.models import Agency

    if not public_id:
        return None
    agency_id = db.session.execute(select(Agency.id).where(Agency.public_id == public_id)).scalar_one_or_none()
    if agency_id is None:
        raise NotFound(details={"fields": {"agency": ["Unknown agency."]}})
    return agency_id


def unlock_staff_mfa(email: str) -> tuple[User, bool]:
    """Lift the MFA lock that repeated wrong codes put on a staff account; says whether it was locked."""
    user = db.session.execute(select(User).where(User.email == normalise_email(email))).scalar_one_or_none()
    if user is None or not user.is_staff:
        raise NotFound("No staff account uses this e-mail.")
    was_locked = mfa.is_locked(user)
    mfa.unlock(user)
    audit.record(None, "auth:mfa_unlocked", user, was_locked=was_locked)
    return user, was_locked


def public_id_of(user_id: int) -> str | None:
    """The public id of a user known by database id (another area holding a foreign key asks this)."""
    return db.session.execute(select(User.public_id).where(User.id == user_id)).scalar_one_or_none()


def user_by_id(user_id: int) -> User:
    """A user known by database id (another area holding a foreign key, e.g. an invoice's recipient)."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound()
    return user
