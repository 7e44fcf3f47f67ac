"""Payment schemas. Unknown fields are refused, and so is anything that looks like card data (P-19): the
backend never receives a card number or CVV (the SDK sends them to Stripe), so a request carrying one is
refused with ``card_data_refused`` before any field is read, and the value is never echoed or logged."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import fields, pre_load, validate

from marketplace.errors import Unprocessable
from marketplace.schemas import OutSchema, StrictSchema, Text

_DIGIT_RUN = re.compile(r"(?:\d[ -]?){12,18}\d")
_CVV_NAMES = re.compile(r"^(cvv|cvc|cvv2|cvc2|csc|cid|security_?code|card_?verification.*)$", re.IGNORECASE)
_CARD_NAMES = re.compile(r"^(card_?number|pan|cc_?number|number)$", re.IGNORECASE)


class CardDataRefused(Unprocessable):
    code = "card_data_refused"
    message = ("Card numbers and security codes are never sent to CareJar: the app hands them to Stripe. "
               "Remove them from the request.")


def luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


_HASH = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{64})$")  # a digest, e.g. the mandate text's SHA-256
# our own ids (a saved card's id in a payment request): a UUID's dash-separated groups can read as 13+ digits
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def looks_like_card_number(text: str) -> bool:
    """13-19 digits (spaces or dashes allowed between them) passing the Luhn check; card numbers never
    start with 0 (ISO/IEC 7812), and a hex digest or a UUID is not one."""
    if _HASH.match(text) or _UUID.match(text):
        return False
    for match in _DIGIT_RUN.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and digits[0] != "0" and luhn(digits):
            return True
    return False


def card_data_path(value: Any, path: str = "") -> str | None:  # noqa: PLR0911 - one return per finding
    """Where in a JSON value card data sits (a path, never the value), or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _CVV_NAMES.match(str(key)) and item not in (None, ""):
                return where
            if _CARD_NAMES.match(str(key)) and isinstance(item, str | int) and not isinstance(item, bool) \
                    and re.fullmatch(r"[\d -]{12,}", str(item)):
                return where
            if looks_like_card_number(str(key)):
                return path or "(key)"
            found = card_data_path(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = card_data_path(item, f"{path}[{index}]")
            if found:
                return found
    elif isinstance(value, str | int) and not isinstance(value, bool) and looks_like_card_number(str(value)):
        return path or "(body)"
    return None


class CardSafeSchema(StrictSchema):
    """Every payment input: card data anywhere in the body is refused first."""

    @pre_load
    def _no_card_data(self, data: Any, **kwargs: Any) -> Any:
        where = card_data_path(data)
        if where is not None:
            raise CardDataRefused(details={"field": where})
        return data


class SetupOut(OutSchema):
    setup_intent_id = fields.String(required=True)
    client_secret = fields.String(required=True, metadata={
        "description": "For the mobile SDK's confirmSetup; the card goes from the SDK to Stripe, never to us"})


class CardConfirmIn(CardSafeSchema):
    setup_intent_id = fields.String(required=True, validate=[validate.Length(max=64),
                                                             validate.Regexp(r"^seti_[A-Za-z0-9_]+$")])


class CardPatchIn(CardSafeSchema):
    is_default = fields.Boolean(required=True, validate=validate.Equal(True),
                                metadata={"description": "true makes this card the default"})


class CardOut(OutSchema):
    id = fields.String(required=True)
    brand = fields.String(required=True)
    last4 = fields.String(required=True)
    exp_month = fields.Integer(required=True)
    exp_year = fields.Integer(required=True)
    is_default = fields.Boolean(required=True)


class CardListOut(OutSchema):
    items = fields.List(fields.Nested(CardOut), required=True)


class MandateIn(CardSafeSchema):
    version = Text(max_length=32, required=True)
    text_sha256 = fields.String(required=True, validate=validate.Regexp(r"^[0-9a-f]{64}$"),
                                metadata={"description": "SHA-256 of the exact mandate text shown"})
    accepted = fields.Boolean(required=True, validate=validate.Equal(True),
                              metadata={"description": "The customer ticked the (unticked) box"})


class PayIn(CardSafeSchema):
    payment_method_id = fields.UUID(required=True, metadata={"description": "One of your saved cards"})
    mit_mandate = fields.Nested(MandateIn, required=True)
    device = Text(max_length=100, load_default=None)


class IntentOut(OutSchema):
    state = fields.String(required=True)
    amount = fields.Integer(required=True, metadata={"description": "fils"})
    currency = fields.String(required=True)
    error_code = fields.String(allow_none=True)
    capture_before = fields.DateTime(allow_none=True)
    captured = fields.Integer(allow_none=True)


class RefundOut(OutSchema):
    amount = fields.Integer(required=True)
    state = fields.String(required=True)
    reason = fields.String(required=True)


class PaymentOut(OutSchema):
    reference = fields.String(required=True)
    booking_status = fields.String(required=True)
    payment = fields.Nested(IntentOut, allow_none=True)
    deposit = fields.Nested(IntentOut, allow_none=True)
    refunds = fields.List(fields.Nested(RefundOut), required=True)
    client_secret = fields.String(allow_none=True, metadata={
        "description": "Present when the bank asks for 3-D Secure: confirm this intent with the SDK"})


class MandateOut(OutSchema):
    booking = fields.String(required=True)
    text_version = fields.String(required=True)
    text_sha256 = fields.String(required=True)
    text = fields.String(required=True)
    language = fields.String(required=True)
    accepted_at = fields.DateTime(required=True)
    ip_address = fields.String(allow_none=True)
    device = fields.String(allow_none=True)
    card = fields.Dict(required=True)


class WebhookOut(OutSchema):
    received = fields.Boolean(required=True)
    outcome = fields.String(required=True)


class PayoutOut(OutSchema):
    booking = fields.String(required=True)
    amount = fields.Integer(required=True, metadata={"description": "fils paid to the agency"})
    platform_fee = fields.Integer(required=True, metadata={"description": "fils kept as the platform fee"})
    currency = fields.String(required=True)
    state = fields.String(required=True)
    transfer_id = fields.String(allow_none=True)
    created_at = fields.DateTime(required=True)
    settled_at = fields.DateTime(allow_none=True)


class PayoutListOut(OutSchema):
    items = fields.List(fields.Nested(PayoutOut), required=True)


class OnboardingIn(StrictSchema):
    agency = fields.UUID(load_default=None, metadata={"description": "Needed only if you work for several"})


class PayoutAccountOut(OutSchema):
    account_id = fields.String(allow_none=True, metadata={"description": "the Stripe connected account (acct_...)"})
    details_submitted = fields.Boolean(required=True)
    payouts_enabled = fields.Boolean(required=True)
    ready = fields.Boolean(required=True, metadata={"description": "Stripe can pay this agency out"})
    required = fields.Boolean(required=True, metadata={
        "description": "true in production: no car is listed or booked before the account is ready"})


class OnboardingOut(PayoutAccountOut):
    onboarding_url = fields.String(required=True, metadata={
        "description": "Stripe's hosted onboarding; single use, expires within minutes: open it at once"})
