"""The errors users' rules raise (public: other areas and the front doors catch them by class)."""

from __future__ import annotations

from marketplace.errors import BadRequest, Conflict, Forbidden, Unauthenticated, Unprocessable


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
