"""What a throttle counts by: keyed hashes of accounts and client addresses, never the values.

Limit keys end up in the storage's key names (``LIMITS:LIMITER/cj/account:<key>/...`` on Redis, rows in
``var/ratelimits.db``) and in Flask-Limiter's "exceeded" log line, so an e-mail address or an IP
address would sit there in the clear (issue 7 item 7). Every key is an HMAC-SHA256 under a key derived
from ``SECRET_KEY``: the same account always maps to the same counter, and nobody reading the storage
can tell whose counter it is or test a guessed address without the secret.
"""

from __future__ import annotations

from flask import g, request

from marketplace.errors import AppError
from marketplace.extensions import client_key, hashed
from marketplace.users.service import normalise_email

__all__ = ["account_key", "client_key", "form_account_key", "hashed", "json_account_key", "signed_in_account_key"]

def account_key(raw_email: object) -> str:
    """One counter per account, whatever the spelling of its address (case, spaces, full-width letters)."""
    if not isinstance(raw_email, str):
        return hashed("account", "-")

    try:
        normalised = normalise_email(raw_email[:320])
    except AppError:
        normalised = raw_email.strip().lower()[:254]
    return hashed("account", normalised)


def json_account_key() -> str:
    body = request.get_json(silent=True)
    return account_key(body.get("email") if isinstance(body, dict) else None)


def form_account_key() -> str:
    return account_key(request.form.get("email"))


def signed_in_account_key() -> str:
    """The signed-in account (the gate has run): the MFA step, counted once over the API and both web doors."""
    actor = g.get("actor")
    return hashed("account", f"id:{actor.user.id}" if actor is not None else "-")
