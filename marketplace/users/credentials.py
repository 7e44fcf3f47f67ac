"""Sign-in, MFA completion, token refresh and sign-out; password reset and change; step-up."""

from __future__ import annotations

from sqlalchemy import select

from marketplace import audit, transactions
from marketplace.errors import AppError, Forbidden, Unauthenticated
from marketplace.extensions import db, utcnow
from marketplace.notifications import service as notifications
from marketplace.security import Actor
from marketplace.users import mfa, passwords, sessions
from marketplace.users.errors import EmailUnverified, InvalidCredentials
from marketplace.users.models import AccountStatus, AuthSession, RetiredRefreshToken, SessionChannel, TokenPurpose, User
from marketplace.users.registration import _consume_token, _issue_token, _retire_tokens
from marketplace.users.rules import _settings, normalise_email


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
