"""Account rules: registration (21+), sign-in, tokens, password reset, profile, consents, staff.

The public surface of the users area. The rules live in the area's private modules (``rules``,
``registration``, ``credentials``, ``profile``, ``consents``, ``staff``; the errors in ``errors``); this
module names what other areas and the front doors may call. Services flush but never commit; the
request's, job's or CLI command's unit of work commits once.
"""

from __future__ import annotations

from marketplace.clock import business_today
from marketplace.users.consents import (
    active_consent,
    give_consent,
    grant_consent,
    list_consents,
    preferences,
    update_preferences,
    withdraw_consent,
)
from marketplace.users.credentials import (
    authenticate,
    change_password,
    complete_mfa_api,
    confirm_password_reset,
    login_api,
    logout,
    reauthenticate,
    refresh,
    request_password_reset,
)
from marketplace.users.errors import (
    ConsentRequired,
    ConsentVersionMismatch,
    EmailUnverified,
    InvalidCredentials,
    PhoneInvalid,
    TokenInvalid,
    Underage,
)
from marketplace.users.profile import (
    update_profile,
)
from marketplace.users.registration import (
    Registration,
    register,
    verify_email,
)
from marketplace.users.rules import (
    MINIMUM_AGE,
    age_on,
    ensure_adult,
    normalise_email,
    normalise_phone,
)
from marketplace.users.staff import (
    accept_invitation,
    agency_id_from_public,
    create_staff,
    get_staff,
    invite_staff,
    list_agencies_for_invites,
    list_staff,
    public_id_of,
    remove_role,
    start_web_session,
    unlock_staff_mfa,
)

__all__ = [
    "MINIMUM_AGE",
    "ConsentRequired",
    "ConsentVersionMismatch",
    "EmailUnverified",
    "InvalidCredentials",
    "PhoneInvalid",
    "Registration",
    "TokenInvalid",
    "Underage",
    "accept_invitation",
    "active_consent",
    "age_on",
    "agency_id_from_public",
    "authenticate",
    "business_today",
    "change_password",
    "complete_mfa_api",
    "confirm_password_reset",
    "create_staff",
    "ensure_adult",
    "get_staff",
    "give_consent",
    "grant_consent",
    "invite_staff",
    "list_agencies_for_invites",
    "list_consents",
    "list_staff",
    "login_api",
    "logout",
    "normalise_email",
    "normalise_phone",
    "preferences",
    "public_id_of",
    "reauthenticate",
    "refresh",
    "register",
    "remove_role",
    "request_password_reset",
    "start_web_session",
    "unlock_staff_mfa",
    "update_preferences",
    "update_profile",
    "verify_email",
    "withdraw_consent",
]
