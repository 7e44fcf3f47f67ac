"""TOTP multi-factor authentication for staff (RFC 6238, 30-second steps, 6 digits).

The shared secret is stored encrypted under the master key ring, bound to the user's public id.
A code is accepted at most once: the time step of the last accepted code is kept, and only a later
step is accepted next (AN-03).

Wrong codes in a row are counted on the user's row, atomically and outside the request's transaction
(which a refusal rolls back). At ``MFA_LOCK_AFTER_FAILURES`` (10) the MFA step is locked for
``MFA_LOCK_MINUTES`` (15) for the API, both web doors and step-up alike: even the right code is refused
with ``423 mfa_locked``, and the staff member is e-mailed. A password reset, an admin's
``flask staff unlock-mfa`` or a new enrolment lifts the lock at once; a right code resets the count.
"""

from __future__ import annotations

import hmac
import io
import math
import time
from datetime import datetime

import pyotp
import segno
from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from marketplace import audit, transactions
from marketplace.crypto import decrypt_field, encrypt_field
from marketplace.crypto.keyring import MasterKeyProvider
from marketplace.errors import AppError, Conflict, Forbidden, MfaInvalid
from marketplace.extensions import db, utcnow
from marketplace.notifications import service as notifications
from marketplace.users.models import User

ISSUER = "CareJar"
STEP = 30
DRIFT_STEPS = 1  # accept the previous and next step for clock drift


class MfaEnrolmentRequired(Forbidden):
    code = "mfa_enrolment_required"
    message = "Set up your authenticator app first: sign in to the console or agency app."


class MfaLocked(AppError):
    status = 423
    code = "mfa_locked"
    message = ("Too many wrong codes: signing in with a code is paused. Try again later, or reset your "
               "password to lift the pause.")


def _ring() -> MasterKeyProvider:
    ring: MasterKeyProvider = current_app.extensions["keyring"]
    return ring


def _aad(user: User) -> bytes:
    return f"totp:{user.public_id}".encode()


def _secret(user: User) -> str:
    if user.totp_secret_enc is None:
        raise MfaEnrolmentRequired()
    return decrypt_field(_ring(), user.totp_secret_enc, aad=_aad(user)).decode()


def is_enrolled(user: User) -> bool:
    return user.totp_enrolled_at is not None


def begin_enrolment(user: User) -> str:
    """A new secret, stored encrypted but not active until a code from it is confirmed."""
    if is_enrolled(user):
        raise Conflict("MFA is already set up.")
    secret = pyotp.random_base32(length=32)
    user.totp_secret_enc = encrypt_field(_ring(), secret.encode(), aad=_aad(user))
    db.session.flush()
    return secret


def pending_secret(user: User) -> str | None:
    if user.totp_secret_enc is None or is_enrolled(user):
        return None
    return _secret(user)


def provisioning_uri(user: User, secret: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    buffer = io.BytesIO()
    segno.make(uri, error="m").save(buffer, kind="svg", scale=5, border=2, xmldecl=False, svgns=True)
    return buffer.getvalue().decode()


def confirm_enrolment(user: User, code: str) -> None:
    if is_enrolled(user):
        raise Conflict("MFA is already set up.")
    _check(user, code)
    user.totp_enrolled_at = utcnow()
    db.session.flush()
    audit.record(None, "auth:mfa_enrolled", user)


def verify_code(user: User, code: str) -> None:
    if not is_enrolled(user):
        raise MfaEnrolmentRequired()
    _check(user, code)


def _check(user: User, code: str) -> None:
    _refuse_if_locked(user)
    cleaned = "".join((code or "").split())
    if len(cleaned) != 6 or not cleaned.isdigit():
        _fail(user)
    totp = pyotp.TOTP(_secret(user))
    now_step = int(time.time()) // STEP
    for step in range(now_step - DRIFT_STEPS, now_step + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), cleaned):
            if step <= user.totp_last_counter:
                # refused before writing: on SQLite the update below would hold the write lock that
                # the refusal's own audit row (written in a separate transaction) has to wait for
                _fail(user, reused=True)
            # compare-and-set, so two requests racing with one code cannot both pass
            claimed = db.session.execute(
                update(User).where(User.id == user.id, User.totp_last_counter < step)
                .values(totp_last_counter=step)
                .execution_options(synchronize_session=False)
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                _fail(user, reused=True)
            user.totp_last_counter = step
            user.mfa_failures = 0
            user.mfa_locked_until = None
            return
    _fail(user)


def _fail(user: User, *, reused: bool = False) -> None:
    user_id = user.id
    audit.record_now(None, "auth:mfa", user, outcome="failed", reused=reused)
    if reused:
        raise MfaInvalid()  # a replayed right code is the owner's double submit, not a guess: not counted
    failures, locked_until = _count_failure(user_id)
    if locked_until is not None:
        audit.record_now(None, "auth:mfa_locked", user, outcome="locked", failures=failures)
        raise _locked(locked_until)
    raise MfaInvalid()


def _count_failure(user_id: int) -> tuple[int, datetime | None]:
    """Add one failure that outlasts the refused request; lock (and e-mail) when it reaches the threshold.

    The increment is one UPDATE (row lock on PostgreSQL, the write lock on SQLite), so concurrent wrong
    codes through several workers each get a distinct count and exactly one of them locks. On PostgreSQL it
    commits at once on a connection of its own. On SQLite the refused request already holds the database's
    write lock (it began IMMEDIATE), so no other connection could write until it ends: the answer is worked
    out from the committed count, and the increment is kept work of the request's unit (written after its
    rollback, or with its commit), still one atomic UPDATE that alone decides the lock and its e-mail.
    """
    now = utcnow()
    if db.engine.dialect.name != "sqlite":
        with Session(db.engine) as session, session.begin():
            return _increment(session, user_id, now)
    settings = current_app.config["SETTINGS"]
    row = db.session.execute(select(User.mfa_failures, User.mfa_locked_until).where(User.id == user_id)).one()
    expired = row.mfa_locked_until is not None and row.mfa_locked_until <= now
    failures = (0 if expired else row.mfa_failures) + 1

    def count() -> None:
        _increment(db.session(), user_id, now)

    transactions.keep(count)
    if failures < settings.mfa_lock_after_failures:
        return failures, None
    locked = None if expired else row.mfa_locked_until
    return failures, locked or now + settings.mfa_lock_duration


def _increment(session: Session, user_id: int, now: datetime) -> tuple[int, datetime | None]:
    settings = current_app.config["SETTINGS"]
    # a lock that ran out starts a fresh count
    session.execute(update(User).where(User.id == user_id, User.mfa_locked_until <= now)
                    .values(mfa_failures=0, mfa_locked_until=None).execution_options(synchronize_session=False))
    failures = session.execute(
        update(User).where(User.id == user_id).values(mfa_failures=User.mfa_failures + 1)
        .returning(User.mfa_failures).execution_options(synchronize_session=False)
    ).scalar_one()
    if failures < settings.mfa_lock_after_failures:
        return failures, None
    if failures > settings.mfa_lock_after_failures:  # a concurrent attempt locked it a moment ago
        locked_until = session.execute(select(User.mfa_locked_until).where(User.id == user_id)).scalar_one()
        return failures, locked_until
    locked_until = now + settings.mfa_lock_duration
    session.execute(update(User).where(User.id == user_id).values(mfa_locked_until=locked_until)
                    .execution_options(synchronize_session=False))
    user = session.get(User, user_id)
    assert user is not None

    notifications.send_email(to=user.email, kind="mfa_locked", user=user, session=session,
                             context={"user": user, "failures": failures, "locked_until": locked_until})
    return failures, locked_until


def _refuse_if_locked(user: User) -> None:
    locked_until = user.mfa_locked_until
    if locked_until is not None and locked_until > utcnow():
        audit.record_now(None, "auth:mfa", user, outcome="locked")
        raise _locked(locked_until)


def _locked(locked_until: datetime) -> MfaLocked:
    seconds = max(1, math.ceil((locked_until - utcnow()).total_seconds()))
    return MfaLocked(details={"locked_until": locked_until.isoformat()}, headers={"Retry-After": str(seconds)})


def is_locked(user: User) -> bool:
    return user.mfa_locked_until is not None and user.mfa_locked_until > utcnow()


def unlock(user: User) -> None:
    """Lift an MFA lock and forget the failures (password reset, an admin, a new enrolment)."""
    user.mfa_failures = 0
    user.mfa_locked_until = None
    db.session.flush()


def reset_enrolment(user: User) -> None:
    """Admin action after a lost phone: the next sign-in enrols a new authenticator."""
    user.totp_secret_enc = None
    user.totp_enrolled_at = None
    unlock(user)
