"""TOTP multi-factor authentication for staff (RFC 6238, 30-second steps, 6 digits).

The shared secret is stored encrypted under the master key ring, bound to the user's public id.
A code is accepted at most once: the time step of the last accepted code is kept, and only a later
step is accepted next (AN-03).
"""

from __future__ import annotations

import hmac
import io
import time

import pyotp
import segno
from flask import current_app
from sqlalchemy import update

from marketplace import audit
from marketplace.crypto import decrypt_field, encrypt_field
from marketplace.crypto.keyring import MasterKeyProvider
from marketplace.errors import Conflict, Forbidden, MfaInvalid
from marketplace.extensions import db, utcnow
from marketplace.users.models import User

ISSUER = "CareJar"
STEP = 30
DRIFT_STEPS = 1  # accept the previous and next step for clock drift


class MfaEnrolmentRequired(Forbidden):
    code = "mfa_enrolment_required"
    message = "Set up your authenticator app first: sign in to the console or agency app."


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
            return
    _fail(user)


def _fail(user: User, *, reused: bool = False) -> None:
    audit.record_now(None, "auth:mfa", user, outcome="failed", reused=reused)
    raise MfaInvalid()


def reset_enrolment(user: User) -> None:
    """Admin action after a lost phone: the next sign-in enrols a new authenticator."""
    user.totp_secret_enc = None
    user.totp_enrolled_at = None
    db.session.flush()
