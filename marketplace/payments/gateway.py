"""The one door to Stripe: the only module that imports ``stripe`` (an import contract says so).

It wraps one ``stripe.StripeClient`` built from settings and speaks the product's language: its verbs are
``start_card_setup``, ``pay_booking``, ``hold_deposit``, ``charge_off_session``..., they take ``Money`` and our
ids and return the small frozen dataclasses below, never a Stripe object. The rules behind it are in
``STRIPE.md`` (the sections are cited where a choice follows from one):

- **Idempotency keys come from our rows** (§1.5): every call that changes something at Stripe takes a
  ``key`` the caller derived from its own records (``charge:<id>:attempt:<n>``, ``deposit:<booking>:hold:<n>``,
  ``refund:<row id>``, ``transfer:<row id>``...). stripe-python would otherwise put a random key on each
  POST, which protects only its own network retries: a job that runs again would charge twice.
- **Every Stripe error becomes one of ours** (``payments/errors.py``): an outage, timeout, 5xx or rate limit is
  503 ``payment_provider_unavailable`` (the outcome is unknown: retry with the same key), a decline 402
  ``card_declined``, a 3-D Secure demand 402 ``authentication_required``, a reused key with other parameters
  409 ``idempotency_conflict`` (a bug, logged as an error), a request Stripe refuses 422 ``payment_invalid``.
- **Both shapes** of what Stripe and localstripe return are read (§3.4): ``latest_charge`` as an id or an
  embedded object, missing ``amount_capturable``/``amount_received``, a 3-D Secure card off-session as a 402
  error or as an intent left in ``requires_action``, a decline with or without ``decline_code``.
- Amounts are whole fils in AED, sent as ``currency="aed"``; every intent is for cards only. stripe-python 16
  speaks API version 2026-10-28.endive, where the writable ``payment_method_types`` is gone (400
  ``payment_method_types_no_longer_supported`` since 2026-09-30.endive, Stripe changelog) and
  ``allowed_payment_method_types=["card"]`` takes its place; never ``automatic_payment_methods``.

Card numbers never pass through here: the mobile SDK confirms the SetupIntent with Stripe directly, and
``card_details`` returns brand, last four digits and expiry only.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import stripe
from flask import Flask, current_app

from marketplace.config import Settings
from marketplace.money import CURRENCY, Money
from marketplace.payments.errors import (
    AuthenticationRequired,
    CardDeclined,
    IdempotencyConflict,
    InvalidIdempotencyKey,
    InvalidSignature,
    PaymentInvalid,
    PaymentProviderUnavailable,
)

if TYPE_CHECKING:  # stripe's own TypedDicts: mypy checks every parameter we send
    from stripe.params import (
        DisputeUpdateParams,
        PaymentIntentCreateParams,
        RefundCreateParams,
        SetupIntentCreateParams,
        TransferCreateParams,
    )

log = logging.getLogger(__name__)

STRIPE_CURRENCY = CURRENCY.lower()
MAX_KEY_LENGTH = 255  # Stripe "Idempotent requests"
WEBHOOK_TOLERANCE_SECONDS = 300  # Stripe's default: older signed timestamps are refused
CARD_ONLY = ["card"]  # as allowed_payment_method_types; never automatic_payment_methods (STRIPE.md, top)
_KEY = re.compile(rf"^[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}$")  # printable ASCII: it travels in a header
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class IntentStatus(StrEnum):
    """A PaymentIntent's status, as Stripe names it."""

    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_CONFIRMATION = "requires_confirmation"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    CANCELED = "canceled"
    SUCCEEDED = "succeeded"


@dataclass(frozen=True)
class CardSetup:
    """A SetupIntent for the mobile SDK to confirm; ``client_secret`` goes to that customer's app only."""

    setup_intent_id: str
    status: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True)
class SetupOutcome:
    """A SetupIntent after the customer confirmed it: which card it saved, if any."""

    setup_intent_id: str
    status: str
    customer_id: str | None
    payment_method_id: str | None
    last_error_code: str | None = None


@dataclass(frozen=True)
class CardDetails:
    """What we keep and show of a saved card: no number, no fingerprint, no CVC."""

    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class Intent:
    """A PaymentIntent as the payments service needs it."""

    id: str
    status: IntentStatus
    amount: Money
    amount_capturable: Money  # what a hold can still capture (0 unless requires_capture)
    amount_received: Money | None  # None where the provider does not say (take it from our ledger)
    charge_id: str | None
    payment_method_id: str | None
    capture_before: datetime | None  # a hold's binding deadline, when the provider gives it
    last_error_code: str | None
    decline_code: str | None
    client_secret: str | None = field(default=None, repr=False)  # for the customer's SDK only (3-D Secure)

    @property
    def needs_customer(self) -> bool:
        """The customer has to act (3-D Secure, or another card) before this intent can go on."""
        return self.status in (IntentStatus.REQUIRES_ACTION, IntentStatus.REQUIRES_PAYMENT_METHOD)


@dataclass(frozen=True)
class RefundResult:
    id: str
    status: str  # succeeded, pending (see pending_reason), failed, canceled
    amount: Money
    charge_id: str | None
    pending_reason: str | None = None


@dataclass(frozen=True)
class DisputeResult:
    """A dispute after we submitted evidence (or as Stripe reports it)."""

    id: str
    status: str  # needs_response, under_review, won, lost, warning_* ...
    submission_count: int


@dataclass(frozen=True)
class TransferResult:
    id: str
    amount: Money
    destination: str
    transfer_group: str | None


@dataclass(frozen=True)
class ConnectedAccount:
    """An agency's Stripe connected account as far as payouts care: may it take transfers yet?"""

    id: str
    details_submitted: bool
    payouts_enabled: bool

    @property
    def ready(self) -> bool:
        return self.details_submitted and self.payouts_enabled


def connected_account_from(data: Mapping[str, Any]) -> ConnectedAccount:
    """An Account from Stripe's answer or a verified ``account.updated`` event's ``data.object``."""
    return ConnectedAccount(id=str(data["id"]), details_submitted=bool(data.get("details_submitted")),
                            payouts_enabled=bool(data.get("payouts_enabled")))


class PaymentGateway(Protocol):
    """The gateway's surface; ``tests/payments/fake_stripe.py`` implements the same one."""

    def ensure_customer(self, user_ref: str, email: str, *, key: str) -> str: ...
    def start_card_setup(self, customer_id: str, *, key: str,
                         metadata: Mapping[str, str] | None = None) -> CardSetup: ...
    def card_setup_outcome(self, setup_intent_id: str) -> SetupOutcome: ...
    def card_details(self, payment_method_id: str) -> CardDetails: ...
    def attach_if_needed(self, payment_method_id: str, customer_id: str, *, key: str) -> CardDetails: ...
    def detach_card(self, payment_method_id: str, *, key: str) -> None: ...
    def pay_booking(self, *, customer_id: str, payment_method_id: str, amount: Money, key: str,
                    metadata: Mapping[str, str] | None = None, transfer_group: str | None = None) -> Intent: ...
    def hold_deposit(self, *, customer_id: str, payment_method_id: str, amount: Money, key: str,
                     metadata: Mapping[str, str] | None = None, off_session: bool = False) -> Intent: ...
    def capture_deposit(self, intent_id: str, amount: Money, *, key: str) -> Intent: ...
    def release_deposit(self, intent_id: str, *, key: str) -> Intent: ...
    def charge_off_session(self, *, customer_id: str, payment_method_id: str, amount: Money, key: str,
                           metadata: Mapping[str, str] | None = None) -> Intent: ...
    def confirm_off_session(self, intent_id: str, *, key: str) -> Intent: ...
    def retrieve_intent(self, intent_id: str) -> Intent: ...
    def refund(self, charge_or_intent: str, amount: Money, *, key: str,
               metadata: Mapping[str, str] | None = None) -> RefundResult: ...
    def transfer_to_agency(self, account_id: str, amount: Money, *, transfer_group: str, key: str,
                           source_charge_id: str | None = None,
                           metadata: Mapping[str, str] | None = None) -> TransferResult: ...
    def retrieve_refund(self, refund_id: str) -> RefundResult: ...
    def submit_dispute_evidence(self, dispute_id: str, evidence: Mapping[str, str], *,
                                key: str) -> DisputeResult: ...
    def create_connected_account(self, *, email: str | None, key: str,
                                 metadata: Mapping[str, str] | None = None) -> ConnectedAccount: ...
    def onboarding_link(self, account_id: str, *, refresh_url: str, return_url: str) -> str: ...
    def connected_account(self, account_id: str) -> ConnectedAccount: ...
    def verify_webhook(self, raw_body: bytes, signature_header: str | None) -> dict[str, Any]: ...


class Gateway:
    """Our verbs over one ``StripeClient``. Thread-safe: the client holds no per-call state."""

    def __init__(self, *, secret_key: str, api_base: str | None = None, webhook_secret: str | None = None,
                 max_network_retries: int = 2) -> None:
        _check_api_base(api_base)
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=max_network_retries,
        )
        self._webhook_secret = webhook_secret
        self.api_base = api_base  # None: Stripe itself

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        return cls(secret_key=settings.stripe_secret_key, api_base=settings.stripe_api_base,
                   webhook_secret=settings.stripe_webhook_secret,
                   max_network_retries=settings.stripe_max_network_retries)

    # ---- customers and saved cards (P-19) ------------------------------------------------------------

    def ensure_customer(self, user_ref: str, email: str, *, key: str) -> str:
        """The Stripe customer for our user: found by e-mail and our reference, else created under ``key``."""
        key = _checked_key(key)
        with _stripe_errors("ensure_customer", key):
            found = self._client.v1.customers.list(params={"email": email, "limit": 100})
            for customer in found.data:
                if (_plain(customer).get("metadata") or {}).get("user_ref") == user_ref:
                    return str(customer.id)
            created = self._client.v1.customers.create(
                params={"email": email, "metadata": {"user_ref": user_ref}}, options={"idempotency_key": key})
        return str(created.id)

    def start_card_setup(self, customer_id: str, *, key: str,
                         metadata: Mapping[str, str] | None = None) -> CardSetup:
        """A SetupIntent for off-session use; the customer's SDK confirms it with Stripe (STRIPE.md §1.1)."""
        key = _checked_key(key)
        params: SetupIntentCreateParams = {"customer": customer_id, "usage": "off_session",
                                           "allowed_payment_method_types": CARD_ONLY, "metadata": _metadata(metadata)}
        with _stripe_errors("start_card_setup", key):
            intent = self._client.v1.setup_intents.create(params=params, options={"idempotency_key": key})
        data = _plain(intent)
        return CardSetup(setup_intent_id=data["id"], status=data["status"], client_secret=data["client_secret"])

    def card_setup_outcome(self, setup_intent_id: str) -> SetupOutcome:
        with _stripe_errors("card_setup_outcome"):
            data = _plain(self._client.v1.setup_intents.retrieve(setup_intent_id))
        error = data.get("last_setup_error") or {}
        return SetupOutcome(setup_intent_id=data["id"], status=data["status"], customer_id=_id(data.get("customer")),
                            payment_method_id=_id(data.get("payment_method")), last_error_code=error.get("code"))

    def card_details(self, payment_method_id: str) -> CardDetails:
        return _card_details(self._payment_method(payment_method_id))

    def attach_if_needed(self, payment_method_id: str, customer_id: str, *, key: str) -> CardDetails:
        """Attach the card to the customer unless it already is (Stripe attaches on SetupIntent success,
        localstripe does not); a card that belongs to another customer is refused."""
        key = _checked_key(key)
        data = self._payment_method(payment_method_id)
        owner = _id(data.get("customer"))
        if owner == customer_id:
            return _card_details(data)
        if owner is not None:
            log.error("card belongs to another customer", extra={"event": {
                "action": "attach_if_needed", "payment_method": payment_method_id, "customer": customer_id}})
            raise PaymentInvalid(stripe_code="payment_method_owned_elsewhere")
        with _stripe_errors("attach_if_needed", key):
            attached = self._client.v1.payment_methods.attach(
                payment_method_id, params={"customer": customer_id}, options={"idempotency_key": key})
        return _card_details(_plain(attached))

    def detach_card(self, payment_method_id: str, *, key: str) -> None:
        """Detach a saved card; a card already detached is left as it is."""
        key = _checked_key(key)
        if _id(self._payment_method(payment_method_id).get("customer")) is None:
            return
        with _stripe_errors("detach_card", key):
            self._client.v1.payment_methods.detach(payment_method_id, options={"idempotency_key": key})

    def _payment_method(self, payment_method_id: str) -> dict[str, Any]:
        with _stripe_errors("retrieve_payment_method"):
            data = _plain(self._client.v1.payment_methods.retrieve(payment_method_id))
        if data.get("type") != "card" or not isinstance(data.get("card"), dict):
            raise PaymentInvalid(stripe_code="payment_method_not_a_card")
        return data

    # ---- paying, holding, charging ------------------------------------------------------------------------

    def pay_booking(self, *, customer_id: str, payment_method_id: str, amount: Money, key: str,
                    metadata: Mapping[str, str] | None = None, transfer_group: str | None = None) -> Intent:
        """A customer-initiated payment with the saved card, captured at once. ``requires_action`` comes back
        as a status (the customer is present: their SDK completes 3-D Secure with ``client_secret``)."""
        params = self._intent_params(customer_id, payment_method_id, amount, metadata)
        params["capture_method"] = "automatic"
        params["confirm"] = True
        if transfer_group:
            params["transfer_group"] = transfer_group
        return self._create_intent("pay_booking", params, _checked_key(key), off_session=False)

    def hold_deposit(self, *, customer_id: str, payment_method_id: str, amount: Money, key: str,
                     metadata: Mapping[str, str] | None = None, off_session: bool = False) -> Intent:
        """An authorisation hold (manual capture); ``capture_before`` is set when the provider gives it.

        ``off_session=True`` for a re-hold placed by a job (an MIT): then 3-D Secure raises
        ``AuthenticationRequired`` instead of coming back as a status."""
        params = self._intent_params(customer_id, payment_method_id, amount, metadata)
        params["capture_method"] = "manual"
        params["confirm"] = True
        params["expand"] = ["latest_charge"]
        if off_session:
            params["off_session"] = True
        return self._create_intent("hold_deposit", params, _checked_key(key), off_session=off_session)

    def capture_deposit(self, intent_id: str, amount: Money, *, key: str) -> Intent:
        """Capture part or all of a hold, once; the rest is released (STRIPE.md §1.2)."""
        key = _checked_key(key)
        with _stripe_errors("capture_deposit", key):
            intent = self._client.v1.payment_intents.capture(
                intent_id, params={"amount_to_capture": _fils(amount), "expand": ["latest_charge"]},
                options={"idempotency_key": key})
        return _intent(_plain(intent))

    def release_deposit(self, intent_id: str, *, key: str) -> Intent:
        """Release a hold entirely (cancel the uncaptured intent); never refund an uncaptured hold."""
        key = _checked_key(key)
        with _stripe_errors("release_deposit", key):
            intent = self._client.v1.payment_intents.cancel(intent_id, options={"idempotency_key": key})
        return _intent(_plain(intent))

    def charge_off_session(self, *, customer_id: str, payment_method_id: str, amount: Money, key: str,
                           metadata: Mapping[str, str] | None = None) -> Intent:
        """Step one of a post-rental charge (MIT): create the intent, unconfirmed. The caller stores its id
        and commits, then calls ``confirm_off_session`` (STRIPE.md §1.3), so a retry after the key was pruned
        finds the intent instead of creating another."""
        key = _checked_key(key)
        params = self._intent_params(customer_id, payment_method_id, amount, metadata)
        with _stripe_errors("charge_off_session", key):
            intent = self._client.v1.payment_intents.create(params=params, options={"idempotency_key": key})
        return _intent(_plain(intent))

    def confirm_off_session(self, intent_id: str, *, key: str) -> Intent:
        """Step two: confirm with the customer absent. Use the attempt's key plus ``:confirm``.

        Raises ``AuthenticationRequired`` (the customer must confirm this same intent on-session),
        ``CardDeclined``, ``PaymentInvalid`` or ``PaymentProviderUnavailable`` (outcome unknown)."""
        key = _checked_key(key)
        with _stripe_errors("confirm_off_session", key):
            intent = self._client.v1.payment_intents.confirm(
                intent_id, params={"off_session": True}, options={"idempotency_key": key})
        return _off_session_outcome(_intent(_plain(intent)))

    def retrieve_intent(self, intent_id: str) -> Intent:
        with _stripe_errors("retrieve_intent"):
            intent = self._client.v1.payment_intents.retrieve(intent_id, params={"expand": ["latest_charge"]})
        return _intent(_plain(intent))

    def _intent_params(self, customer_id: str, payment_method_id: str, amount: Money,
                       metadata: Mapping[str, str] | None) -> PaymentIntentCreateParams:
        return {"amount": _fils(amount), "currency": STRIPE_CURRENCY, "customer": customer_id,
                "payment_method": payment_method_id, "allowed_payment_method_types": CARD_ONLY,
                "metadata": _metadata(metadata)}

    def _create_intent(self, action: str, params: PaymentIntentCreateParams, key: str, *, off_session: bool) -> Intent:
        with _stripe_errors(action, key):
            intent = self._client.v1.payment_intents.create(params=params, options={"idempotency_key": key})
        result = _intent(_plain(intent))
        return _off_session_outcome(result) if off_session else result

    # ---- refunds and payouts --------------------------------------------------------------------------------

    def refund(self, charge_or_intent: str, amount: Money, *, key: str,
               metadata: Mapping[str, str] | None = None) -> RefundResult:
        """Refund ``amount`` (always explicit, from our ledger: captured - refunded) of a captured payment."""
        key = _checked_key(key)
        params: RefundCreateParams = {"amount": _fils(amount), "metadata": _metadata(metadata)}
        if charge_or_intent.startswith("pi_"):
            params["payment_intent"] = charge_or_intent
        elif charge_or_intent.startswith("ch_"):
            params["charge"] = charge_or_intent
        else:
            raise ValueError("refund a charge (ch_) or a payment intent (pi_)")
        with _stripe_errors("refund", key):
            refund = self._client.v1.refunds.create(params=params, options={"idempotency_key": key})
        return refund_from(_plain(refund))

    def retrieve_refund(self, refund_id: str) -> RefundResult:
        with _stripe_errors("retrieve_refund"):
            refund = self._client.v1.refunds.retrieve(refund_id)
        return refund_from(_plain(refund))

    def transfer_to_agency(self, account_id: str, amount: Money, *, transfer_group: str, key: str,
                           source_charge_id: str | None = None,
                           metadata: Mapping[str, str] | None = None) -> TransferResult:
        """Pay an agency's connected account (separate charges and transfers, STRIPE.md §1.4).

        ``source_charge_id`` ties the transfer to a charge, so it waits for that charge's funds."""
        key = _checked_key(key)
        params: TransferCreateParams = {"amount": _fils(amount), "currency": STRIPE_CURRENCY,
                                        "destination": account_id, "transfer_group": transfer_group,
                                        "metadata": _metadata(metadata)}
        if source_charge_id:
            params["source_transaction"] = source_charge_id
        with _stripe_errors("transfer_to_agency", key):
            transfer = self._client.v1.transfers.create(params=params, options={"idempotency_key": key})
        data = _plain(transfer)
        return TransferResult(id=data["id"], amount=Money(int(data["amount"])),
                              destination=_id(data.get("destination")) or account_id,
                              transfer_group=data.get("transfer_group"))

    # ---- disputes (P-24) ---------------------------------------------------------------------------------------

    def submit_dispute_evidence(self, dispute_id: str, evidence: Mapping[str, str], *,
                                key: str) -> DisputeResult:
        """Send the evidence and submit it (``submit=True``: Stripe forwards it to the issuer; no later edits).

        Text fields only (Stripe's ``evidence`` hash; files would be uploaded first). ``key`` is derived from
        the dispute case row, so a retry after an outage replays the one submission."""
        key = _checked_key(key)
        if not dispute_id.startswith("dp_") and not dispute_id.startswith("du_"):
            raise ValueError("submit evidence for a dispute (dp_ or du_)")
        params: DisputeUpdateParams = {"evidence": dict(evidence), "submit": True}  # type: ignore[typeddict-item]
        with _stripe_errors("submit_dispute_evidence", key):
            dispute = self._client.v1.disputes.update(dispute_id, params=params, options={"idempotency_key": key})
        return dispute_from(_plain(dispute))

    # ---- Connect onboarding (STRIPE.md §1.4: separate charges and transfers) ----------------------------------

    def create_connected_account(self, *, email: str | None, key: str,
                                 metadata: Mapping[str, str] | None = None) -> ConnectedAccount:
        """An Express connected account in the UAE for an agency, able to receive transfers once its owner
        finishes Stripe's hosted onboarding [Stripe "Express accounts"]."""
        key = _checked_key(key)
        params: dict[str, Any] = {"type": "express", "country": "AE",
                                  "capabilities": {"transfers": {"requested": True}}, "metadata": _metadata(metadata)}
        if email:
            params["email"] = email
        with _stripe_errors("create_connected_account", key):
            account = self._client.v1.accounts.create(params=params,  # type: ignore[arg-type]
                                                      options={"idempotency_key": key})
        return connected_account_from(_plain(account))

    def onboarding_link(self, account_id: str, *, refresh_url: str, return_url: str) -> str:
        """A single-use link to Stripe's hosted onboarding (expires in minutes: make one per visit, never store it)."""
        with _stripe_errors("onboarding_link"):
            link = self._client.v1.account_links.create(params={
                "account": account_id, "refresh_url": refresh_url, "return_url": return_url,
                "type": "account_onboarding"})
        return str(_plain(link)["url"])

    def connected_account(self, account_id: str) -> ConnectedAccount:
        with _stripe_errors("connected_account"):
            account = self._client.v1.accounts.retrieve(account_id)
        return connected_account_from(_plain(account))

    # ---- webhooks (STRIPE.md §1.6) ----------------------------------------------------------------------------

    def verify_webhook(self, raw_body: bytes, signature_header: str | None) -> dict[str, Any]:
        """The event, if ``Stripe-Signature`` verifies against the raw body; else ``InvalidSignature`` (400).

        Replays inside the 300 s tolerance verify too: the caller deduplicates on the event id."""
        if not self._webhook_secret:
            log.error("STRIPE_WEBHOOK_SECRET is not set: refusing every webhook",
                      extra={"event": {"action": "verify_webhook", "outcome": "no_secret"}})
            raise InvalidSignature()
        if not isinstance(raw_body, bytes | bytearray):
            raise TypeError("verify the raw request body (bytes), never re-serialised JSON")
        try:
            stripe.WebhookSignature.verify_header(bytes(raw_body).decode("utf-8"), signature_header,
                                                  self._webhook_secret, tolerance=WEBHOOK_TOLERANCE_SECONDS)
            event = json.loads(raw_body)
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidSignature() from exc
        if not (isinstance(event, dict) and isinstance(event.get("id"), str) and isinstance(event.get("type"), str)):
            raise InvalidSignature("The signed body is not a Stripe event.")
        return event


def current_gateway(app: Flask | None = None) -> PaymentGateway:
    """The app's one gateway, built from its settings on first use (tests may put a fake in its place)."""
    flask_app = app or current_app
    gateway: PaymentGateway | None = flask_app.extensions.get("payments_gateway")
    if gateway is None:
        gateway = Gateway.from_settings(flask_app.config["SETTINGS"])
        flask_app.extensions["payments_gateway"] = gateway
    return gateway


# ---- reading Stripe's answers (both shapes) -------------------------------------------------------------------


def _plain(obj: Any) -> dict[str, Any]:
    """A Stripe object as plain dicts (v16 objects are not dicts: ``obj.get`` raises)."""
    if isinstance(obj, dict):
        return obj
    data = obj.to_dict()
    assert isinstance(data, dict)
    return data


def _id(value: Any) -> str | None:
    """An expandable field: an id, an embedded object, or nothing."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return None


def _money(value: Any) -> Money | None:
    return Money(int(value)) if isinstance(value, int) and not isinstance(value, bool) else None


def intent_from(data: Mapping[str, Any]) -> Intent:
    """A PaymentIntent from a verified webhook event's ``data.object`` (either shape, as below)."""
    return _intent(data)


def refund_from(data: Mapping[str, Any]) -> RefundResult:
    """A Refund from Stripe's answer or a verified event's ``data.object``."""
    return RefundResult(id=data["id"], status=data.get("status") or "pending", amount=Money(int(data["amount"])),
                        charge_id=_id(data.get("charge")), pending_reason=data.get("pending_reason"))


def dispute_from(data: Mapping[str, Any]) -> DisputeResult:
    """A Dispute from Stripe's answer or a verified event's ``data.object``."""
    details = data.get("evidence_details") or {}
    count = details.get("submission_count") if isinstance(details, Mapping) else None
    return DisputeResult(id=str(data["id"]), status=str(data.get("status") or "needs_response"),
                         submission_count=int(count) if isinstance(count, int) else 0)


def _intent(data: Mapping[str, Any]) -> Intent:
    status = IntentStatus(data["status"])
    amount = Money(int(data["amount"]))
    charge = data.get("latest_charge")
    charge_data = charge if isinstance(charge, Mapping) else {}
    card = ((charge_data.get("payment_method_details") or {}).get("card") or {})
    capture_before = card.get("capture_before")
    capturable = _money(data.get("amount_capturable"))
    if capturable is None:  # localstripe leaves it out: it is the whole amount while the hold is open
        capturable = amount if status is IntentStatus.REQUIRES_CAPTURE else Money.zero()
    error = data.get("last_payment_error") or {}
    return Intent(
        id=data["id"],
        status=status,
        amount=amount,
        amount_capturable=capturable,
        amount_received=_money(data.get("amount_received")),
        charge_id=_id(charge),
        payment_method_id=_id(data.get("payment_method")) or _id(error.get("payment_method")),
        capture_before=datetime.fromtimestamp(capture_before, UTC) if isinstance(capture_before, int) else None,
        last_error_code=error.get("code"),
        decline_code=error.get("decline_code"),
        client_secret=data.get("client_secret"),
    )


def _off_session_outcome(intent: Intent) -> Intent:
    """With the customer absent, a 3-D Secure demand is a failure, whichever shape it came in (STRIPE.md §1.3)."""
    if intent.status is IntentStatus.REQUIRES_ACTION or intent.last_error_code == "authentication_required":
        raise AuthenticationRequired(intent_id=intent.id, payment_method_id=intent.payment_method_id)
    return intent


def _card_details(data: Mapping[str, Any]) -> CardDetails:
    card = data["card"]
    return CardDetails(payment_method_id=data["id"], brand=str(card.get("brand") or "unknown"),
                       last4=str(card["last4"]), exp_month=int(card["exp_month"]), exp_year=int(card["exp_year"]))


# ---- what we send --------------------------------------------------------------------------------------------


def _checked_key(key: str) -> str:
    """Keys are derived from our rows by the caller; an empty, random-looking or overlong one is a bug."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidIdempotencyKey(f"an idempotency key is 1-{MAX_KEY_LENGTH} printable characters without spaces")
    return key


def _fils(amount: Money) -> int:
    if not isinstance(amount, Money):
        raise TypeError("amounts are Money (whole fils), never a bare number")
    if amount.currency != CURRENCY or amount.fils <= 0:
        raise ValueError(f"a payment amount is a positive number of fils in {CURRENCY}")
    return amount.fils


def _metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (metadata or {}).items()}


def _check_api_base(api_base: str | None) -> None:
    """Our secret key travels to this address: https, or plain http only to a local stand-in (localstripe)."""
    if api_base is None:
        return
    parts = urlsplit(api_base)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS):
        return
    raise ValueError("STRIPE_API_BASE must be https, or http on loopback for localstripe")


# ---- Stripe's errors as ours -----------------------------------------------------------------------------------


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    return error if isinstance(error, dict) else {}


def _card_error(exc: stripe.CardError) -> CardDeclined | AuthenticationRequired:
    error = _error_body(exc)
    code = exc.code or error.get("code")
    intent_id = _id(error.get("payment_intent"))
    if code == "authentication_required" or error.get("decline_code") == "authentication_required":
        return AuthenticationRequired(intent_id=intent_id, payment_method_id=_id(error.get("payment_method")))
    # localstripe's ...0341 decline is a 402 typed invalid_request_error with no decline_code: read defensively
    decline = error.get("decline_code")
    return CardDeclined(decline_code=decline if isinstance(decline, str) else None, intent_id=intent_id,
                        charge_id=_id(error.get("charge")), stripe_code=code)


@contextmanager
def _stripe_errors(action: str, key: str | None = None) -> Iterator[None]:
    """Translate whatever stripe-python raises into our codes; nothing from Stripe escapes as a 500."""
    event: dict[str, Any] = {"action": action, "idempotency_key": key}
    try:
        yield
    except stripe.CardError as exc:
        mapped = _card_error(exc)
        log.info("card refused", extra={"event": {**event, "outcome": mapped.code,
                                                   "decline_code": getattr(mapped, "decline_code", None)}})
        raise mapped from exc
    except stripe.IdempotencyError as exc:
        # the same key with other parameters: our key derivation or our amounts changed under an old key
        log.error("idempotency key reused with different parameters",
                  extra={"event": {**event, "outcome": "idempotency_conflict"}})
        raise IdempotencyConflict() from exc
    except stripe.InvalidRequestError as exc:
        log.warning("Stripe refused the request", extra={"event": {
            **event, "outcome": "payment_invalid", "stripe_code": exc.code, "param": exc.param,
            "http_status": exc.http_status}})
        raise PaymentInvalid(stripe_code=exc.code, param=exc.param) from exc
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        log.error("Stripe refused our credentials", extra={"event": {**event, "outcome": "unavailable",
                                                                       "http_status": exc.http_status}})
        raise PaymentProviderUnavailable() from exc
    except stripe.StripeError as exc:  # APIConnectionError, APIError (5xx, bad answers), RateLimitError, ...
        log.warning("Stripe unavailable", extra={"event": {**event, "outcome": "unavailable",
                                                            "error": type(exc).__name__,
                                                            "http_status": exc.http_status}})
        raise PaymentProviderUnavailable() from exc
