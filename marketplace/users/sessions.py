"""Signed-in sessions and their tokens.

Tokens are random (256 bits) and only their SHA-256 is stored, so a database leak gives no usable
token. An access token is short-lived; the refresh token rotates on every use, and presenting an
already-rotated refresh token revokes the whole session (it was stolen or replayed).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from flask import request
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import joinedload

from marketplace.config import Settings
from marketplace.extensions import db, utcnow
from marketplace.users.models import AccountStatus, AuthSession, RetiredRefreshToken, SessionChannel, User

ACCESS_PREFIX = "cja_"
REFRESH_PREFIX = "cjr_"
WEB_PREFIX = "cjw_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> tuple[str, str]:
    token = prefix + secrets.token_urlsafe(32)
    return token, token_hash(token)


@dataclass(frozen=True)
class IssuedTokens:
    session: AuthSession
    access_token: str
    access_expires_at: datetime
    refresh_token: str | None
    refresh_expires_at: datetime | None


def _client() -> tuple[str | None, str | None]:
    try:
        return request.remote_addr, (request.user_agent.string or None)
    except RuntimeError:
        return None, None


def start_session(user: User, channel: SessionChannel, settings: Settings, *, mfa_done: bool = False) -> IssuedTokens:
    now = utcnow()
    ip, agent = _client()
    access, access_hash = new_token(WEB_PREFIX if channel == SessionChannel.WEB else ACCESS_PREFIX)
    if channel == SessionChannel.WEB:
        access_expires = now + settings.staff_session_max
        expires = access_expires
        refresh, refresh_hash, refresh_expires = None, None, None
    else:
        access_expires = now + settings.access_token_ttl
        refresh, refresh_hash = new_token(REFRESH_PREFIX)
        refresh_expires = now + settings.refresh_token_ttl
        expires = refresh_expires
    session = AuthSession(
        user_id=user.id,
        channel=channel,
        access_token_hash=access_hash,
        access_expires_at=access_expires,
        refresh_token_hash=refresh_hash,
        refresh_expires_at=refresh_expires,
        csrf_secret=secrets.token_hex(32) if channel == SessionChannel.WEB else None,
        created_at=now,
        last_seen_at=now,
        expires_at=expires,
        auth_at=now,
        mfa_at=now if mfa_done else None,
        ip_address=ip,
        user_agent=(agent or "")[:300] or None,
    )
    db.session.add(session)
    db.session.flush()
    return IssuedTokens(session, access, access_expires, refresh, refresh_expires)


def rotate(session: AuthSession, settings: Settings) -> IssuedTokens:
    """Issue a new access and refresh token for an API session, retiring the old pair."""
    now = utcnow()
    access, access_hash = new_token(ACCESS_PREFIX)
    refresh, refresh_hash = new_token(REFRESH_PREFIX)
    if session.refresh_token_hash:
        db.session.add(RetiredRefreshToken(token_hash=session.refresh_token_hash, session_id=session.id,
                                           retired_at=now))
    session.access_token_hash = access_hash
    session.access_expires_at = now + settings.access_token_ttl
    session.refresh_token_hash = refresh_hash
    session.refresh_expires_at = now + settings.refresh_token_ttl
    session.expires_at = session.refresh_expires_at
    session.last_seen_at = now
    db.session.flush()
    return IssuedTokens(session, access, session.access_expires_at, refresh, session.refresh_expires_at)


def rotate_web(session: AuthSession) -> str:
    """A new cookie value after a privilege change (MFA passed, re-authentication): no session fixation."""
    token, digest = new_token(WEB_PREFIX)
    session.access_token_hash = digest
    session.csrf_secret = secrets.token_hex(32)
    db.session.flush()
    return token


@cache
def _by_access_hash() -> Any:
    """Every signed-in request starts here: the session with its user in one query, built once. The user's roles
    load when asked (staff); a customer's never are, so their eager select-in was a second query on every
    customer request (issue 7 item 17)."""
    return (select(AuthSession).where(AuthSession.access_token_hash == bindparam("digest"))
            .options(joinedload(AuthSession.user).lazyload(User.roles)))


def find_active(token: str, channel: SessionChannel, settings: Settings) -> AuthSession | None:
    if not token or len(token) > 200:
        return None
    session = db.session.execute(_by_access_hash(), {"digest": token_hash(token)}).scalar_one_or_none()
    now = utcnow()
    if (
        session is None
        or session.channel != channel
        or session.revoked_at is not None
        or session.access_expires_at <= now
        or session.expires_at <= now
        or session.user.status != AccountStatus.ACTIVE
    ):
        return None
    if channel == SessionChannel.WEB and session.last_seen_at + settings.staff_session_idle <= now:
        return None
    if now - session.last_seen_at > timedelta(minutes=1):
        session.last_seen_at = now  # written at most once a minute
    return session


def revoke(session: AuthSession, reason: str) -> None:
    if session.revoked_at is None:
        session.revoked_at = utcnow()
        session.revoke_reason = reason
    db.session.flush()


def revoke_all(user: User, reason: str, *, keep: AuthSession | None = None) -> int:
    stmt = (
        update(AuthSession)
        .where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoke_reason=reason)
    )
    if keep is not None:
        stmt = stmt.where(AuthSession.id != keep.id)
    result = db.session.execute(stmt)
    db.session.flush()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def forget_retired_refresh_tokens(settings: Settings) -> int:
    """Retired refresh hashes are kept as long as a refresh token can live, then dropped."""
    result = db.session.execute(
        delete(RetiredRefreshToken).where(RetiredRefreshToken.retired_at < utcnow() - settings.refresh_token_ttl)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
