"""Account, session, token and consent kinds and statuses: users' public vocabulary.

Other areas read and compare these values (a consent kind, an account status) through this module; the
tables stay private to users.
"""

from __future__ import annotations

from enum import StrEnum


class AccountType(StrEnum):
    CUSTOMER = "customer"
    STAFF = "staff"


class AccountStatus(StrEnum):
    PENDING = "pending_verification"  # registered, e-mail not yet confirmed
    ACTIVE = "active"
    DISABLED = "disabled"  # staff removed or account locked by an admin
    CLOSED = "closed"


class SessionChannel(StrEnum):
    API = "api"  # bearer tokens for the mobile apps and staff API clients
    WEB = "web"  # cookie sessions for the console and the agency app


class TokenPurpose(StrEnum):
    PASSWORD_RESET = "password_reset"  # noqa: S105 - a token purpose, not a password
    EMAIL_VERIFY = "email_verify"


class ConsentKind(StrEnum):
    TERMS = "terms"
    PRIVACY = "privacy"
    FACE_DATA = "face_data"
    MIT_MANDATE = "mit_mandate"
    RENTAL_TERMS = "rental_terms"
    MARKETING = "marketing"
    PRECISE_LOCATION = "precise_location"
