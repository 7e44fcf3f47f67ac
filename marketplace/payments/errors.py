"""What can go wrong when money moves, as our error codes (every Stripe failure maps to one of these).

The gateway raises these and nothing else; services let them through or turn them into a state of their
own row (a declined off-session charge becomes ``failed``, an unknown outcome stays ``pending``). The
attributes (``intent_id``, ``decline_code``) are for the service; ``details`` is what an API client sees.
"""

from __future__ import annotations

from typing import Any

from marketplace.errors import AppError

# Stripe: show these as a generic decline, never the real reason, to whoever presented the card
# ["Declines", decline codes: lost_card, stolen_card, fraudulent, ...]
HIDDEN_DECLINE_CODES = frozenset({"lost_card", "stolen_card", "fraudulent", "merchant_blacklist",
                                  "pickup_card", "restricted_card", "security_violation"})


class PaymentProviderUnavailable(AppError):
    """Stripe could not be reached or failed (connection, timeout, 5xx, rate limit): the outcome is unknown.

    Retry with the **same** idempotency key; never start a new attempt until it is resolved.
    """

    status = 503
    code = "payment_provider_unavailable"
    message = "The payment provider is temporarily unavailable. Try again shortly."


class CardDeclined(AppError):
    status = 402
    code = "card_declined"
    message = "The card was declined."

    def __init__(self, *, decline_code: str | None, intent_id: str | None = None,
                 charge_id: str | None = None, stripe_code: str | None = None) -> None:
        shown = "generic_decline" if decline_code in HIDDEN_DECLINE_CODES else decline_code
        details: dict[str, Any] = {"decline_code": shown}
        if intent_id:
            details["intent_id"] = intent_id
        super().__init__(details=details)
        self.decline_code = decline_code
        self.stripe_code = stripe_code
        self.intent_id = intent_id
        self.charge_id = charge_id


class AuthenticationRequired(AppError):
    """The issuer wants 3-D Secure: the customer has to come back and confirm this same intent on-session."""

    status = 402
    code = "authentication_required"
    message = "The bank asks the cardholder to confirm this payment."

    def __init__(self, *, intent_id: str | None, payment_method_id: str | None = None) -> None:
        super().__init__(details={"intent_id": intent_id} if intent_id else {})
        self.intent_id = intent_id
        self.payment_method_id = payment_method_id


class IdempotencyConflict(AppError):
    """An idempotency key was reused with other parameters: a bug on our side, never charge a changed amount."""

    status = 409
    code = "idempotency_conflict"
    message = "This payment request conflicts with an earlier one under the same key."


class PaymentInvalid(AppError):
    """Stripe refused the request itself (no such card, detached card, wrong state): our data needs review."""

    status = 422
    code = "payment_invalid"
    message = "The payment could not be processed and has been flagged for review."

    def __init__(self, message: str | None = None, *, stripe_code: str | None = None,
                 param: str | None = None) -> None:
        details = {key: value for key, value in (("stripe_code", stripe_code), ("param", param)) if value}
        super().__init__(message, details=details)
        self.stripe_code = stripe_code
        self.param = param


class InvalidSignature(AppError):
    """A webhook whose ``Stripe-Signature`` does not verify against the raw body (or has none)."""

    status = 400
    code = "invalid_signature"
    message = "The webhook signature is missing or invalid."


class InvalidIdempotencyKey(ValueError):
    """A caller passed an empty, overlong or non-text key: a programming error, never a client's."""


class PayoutsNotReady(AppError):
    """In production an agency's cars are listed and booked only once its Stripe connected account can take
    transfers (Connect onboarding finished), so the money of every booking can reach it."""

    status = 409
    code = "agency_payouts_not_ready"
    message = ("This agency has not finished setting up payouts (Stripe Connect onboarding): its cars cannot "
               "be listed or booked until it has.")
