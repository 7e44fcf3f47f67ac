"""An in-process stand-in for the payments gateway, following Stripe's documented behaviour, for what
localstripe cannot model even with the extension (TESTING.md §6 rule 2):

- **hold expiry**: a hold's ``capture_before`` (7 days with the customer present; 4 days 18 hours for a Visa
  hold our job placed, STRIPE.md §1.2); ``expire_holds()`` after the clock passes it cancels the intent and
  emits ``charge.expired``, and a late capture fails;
- **idempotency key pruning**: keys are replayed for 24 hours, then forgotten, so a late retry runs as a new
  request (Stripe "Idempotent requests"); replay and mismatch inside the window as on Stripe;
- **disputes**: ``open_dispute()`` debits nothing here but emits ``charge.dispute.created`` with an
  ``evidence_details.due_by``;
- **faults**: ``fail_next()`` makes the next call fail as an outage, before or *after* Stripe acted (the
  outcome-unknown case a job must survive);
- events for ``charge.*``/``refund.*``, signed like Stripe's (HMAC-SHA256 over ``timestamp.body``).

It has the same methods, arguments, results and errors as ``marketplace.payments.gateway.Gateway``
(``test_fake_stripe.py`` checks the signatures match and runs a shared scenario on both). Card behaviour
follows Stripe's test cards by number (``add_card``): 4242... succeeds, 4000002760003184 always needs
3-D Secure, 4000000000009995 declines ``insufficient_funds``, 4000000000000341 attaches but declines.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from marketplace.money import Money
from marketplace.payments.errors import (
    AuthenticationRequired,
    CardDeclined,
    IdempotencyConflict,
    InvalidSignature,
    PaymentInvalid,
    PaymentProviderUnavailable,
)
from marketplace.payments.gateway import (
    CardDetails,
    CardSetup,
    ConnectedAccount,
    DisputeResult,
    Intent,
    IntentStatus,
    RefundResult,
    SetupOutcome,
    TransferResult,
    _checked_key,
    _fils,
)

T = TypeVar("T")
KEY_RETENTION = timedelta(hours=24)
CIT_HOLD_WINDOW = timedelta(days=7)
VISA_MIT_HOLD_WINDOW = timedelta(days=4, hours=18)
DECLINES = {"4000000000009995": "insufficient_funds", "4000000000000002": "generic_decline",
            "4000000000000341": "generic_decline"}
DECLINED_ON_ATTACH = {"4000000000009995", "4000000000000002"}
ALWAYS_AUTHENTICATE = {"4000002760003184"}


@dataclass
class _Card:
    id: str
    number: str
    exp_month: int
    exp_year: int
    customer: str | None = None

    @property
    def brand(self) -> str:
        return "visa" if self.number.startswith("4") else "mastercard"

    def details(self) -> CardDetails:
        return CardDetails(self.id, self.brand, self.number[-4:], self.exp_month, self.exp_year)


@dataclass
class _Intent:
    id: str
    amount: int
    customer: str
    payment_method: str | None
    capture_method: str
    status: IntentStatus
    metadata: dict[str, str]
    charge_id: str | None = None
    captured: int = 0
    capture_before: datetime | None = None
    last_error_code: str | None = None
    decline_code: str | None = None

    def result(self) -> Intent:
        capturable = self.amount if self.status is IntentStatus.REQUIRES_CAPTURE else 0
        return Intent(id=self.id, status=self.status, amount=Money(self.amount),
                      amount_capturable=Money(capturable), amount_received=Money(self.captured),
                      charge_id=self.charge_id, payment_method_id=self.payment_method,
                      capture_before=self.capture_before if self.status is IntentStatus.REQUIRES_CAPTURE else None,
                      last_error_code=self.last_error_code, decline_code=self.decline_code,
                      client_secret=f"{self.id}_secret_fake")


@dataclass
class _Charge:
    id: str
    intent_id: str
    captured: int
    refunded: int = 0


@dataclass
class FakeStripe:
    """The fake gateway. ``now`` is its clock (aware UTC); move it with ``advance``."""

    webhook_secret: str = "whsec_fake_" + "0" * 24
    now: datetime = field(default_factory=lambda: datetime(2030, 1, 1, 12, tzinfo=UTC))
    events: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # every call that reached "Stripe", by method name

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._customers: dict[str, dict[str, Any]] = {}
        self._cards: dict[str, _Card] = {}
        self._setups: dict[str, dict[str, Any]] = {}
        self._intents: dict[str, _Intent] = {}
        self._charges: dict[str, _Charge] = {}
        self._transfers: dict[str, TransferResult] = {}
        self._refunds: dict[str, RefundResult] = {}
        self._disputes: dict[str, dict[str, Any]] = {}
        self._accounts: set[str] = set()
        self._onboarded: dict[str, bool] = {}  # accounts made by create_connected_account: onboarding finished?
        self._keys: dict[str, tuple[str, datetime, Any]] = {}
        self._faults: list[bool] = []

    # ---- test controls ------------------------------------------------------------------------------------

    def advance(self, delta: timedelta) -> None:
        self.now += delta

    def fail_next(self, count: int = 1, *, after_effect: bool = False) -> None:
        """The next ``count`` calls raise ``PaymentProviderUnavailable``; with ``after_effect`` Stripe has
        acted (and stored the key) before the connection dropped: the outcome is unknown to the caller."""
        self._faults.extend([after_effect] * count)

    def add_card(self, number: str = "4242424242424242", *, exp_month: int = 12, exp_year: int = 2034) -> str:
        """What the mobile SDK does with a card number: a PaymentMethod (test code only)."""
        card = _Card(self._new("pm"), number, exp_month, exp_year)
        self._cards[card.id] = card
        return card.id

    def confirm_setup(self, setup_intent_id: str, payment_method_id: str) -> str:
        """The SDK confirming a SetupIntent: attaches the card as Stripe does (or declines it)."""
        setup, card = self._setups[setup_intent_id], self._cards[payment_method_id]
        setup["payment_method"] = card.id
        if card.number in DECLINED_ON_ATTACH:
            setup["status"], setup["last_error_code"] = "requires_payment_method", "card_declined"
        elif card.number in ALWAYS_AUTHENTICATE:
            setup["status"] = "requires_action"
        else:
            setup["status"], card.customer = "succeeded", setup["customer"]
        return str(setup["status"])

    def add_account(self) -> str:
        account = self._new("acct")
        self._accounts.add(account)
        return account

    def expire_holds(self) -> list[str]:
        """Holds past ``capture_before`` lapse: canceled, funds released, ``charge.expired`` (STRIPE.md §1.2)."""
        lapsed = []
        for intent in self._intents.values():
            if (intent.status is IntentStatus.REQUIRES_CAPTURE and intent.capture_before is not None
                    and intent.capture_before <= self.now):
                intent.status = IntentStatus.CANCELED
                lapsed.append(intent.id)
                self._emit("charge.expired", {"id": intent.charge_id, "object": "charge", "payment_intent": intent.id,
                                              "amount": intent.amount, "captured": False})
                self._emit("payment_intent.canceled", {"id": intent.id, "object": "payment_intent",
                                                       "cancellation_reason": "automatic"})
        return lapsed

    def open_dispute(self, charge_id: str, *, reason: str = "fraudulent") -> dict[str, Any]:
        charge = self._charges[charge_id]
        dispute = {"id": self._new("dp"), "object": "dispute", "charge": charge_id,
                   "payment_intent": charge.intent_id, "amount": charge.captured - charge.refunded,
                   "currency": "aed", "reason": reason, "status": "needs_response",
                   "evidence_details": {"due_by": int((self.now + timedelta(days=7)).timestamp()),
                                        "has_evidence": False, "submission_count": 0}}
        self._disputes[dispute["id"]] = dispute
        self._emit("charge.dispute.created", dispute)
        return json.loads(json.dumps(dispute))

    def register_dispute(self, dispute: Mapping[str, Any]) -> None:
        """A dispute Stripe opened on a charge made elsewhere (a localstripe payment, whose server has no
        disputes): the fake then answers evidence submissions for it."""
        self._disputes[str(dispute["id"])] = json.loads(json.dumps(dict(dispute)))

    def withdraw_dispute_funds(self, dispute_id: str) -> dict[str, Any]:
        """Stripe takes the disputed amount from the balance: ``charge.dispute.funds_withdrawn``."""
        dispute = self._disputes[dispute_id]
        self._emit("charge.dispute.funds_withdrawn", dispute)
        return json.loads(json.dumps(dispute))

    def close_dispute(self, dispute_id: str, *, won: bool) -> dict[str, Any]:
        """The issuer decides: ``charge.dispute.closed``, and on a win ``charge.dispute.funds_reinstated``."""
        dispute = self._disputes[dispute_id]
        dispute["status"] = "won" if won else "lost"
        self._emit("charge.dispute.closed", dispute)
        if won:
            self._emit("charge.dispute.funds_reinstated", dispute)
        return json.loads(json.dumps(dispute))

    def dispute(self, dispute_id: str) -> dict[str, Any]:
        return json.loads(json.dumps(self._disputes[dispute_id]))

    def signed(self, event: Mapping[str, Any], *, timestamp: int | None = None,
               secret: str | None = None) -> tuple[bytes, str]:
        """A webhook delivery as Stripe sends it: the body and its ``Stripe-Signature`` header."""
        body = json.dumps(event, indent=2).encode()
        stamp = int(self.now.timestamp()) if timestamp is None else timestamp
        mac = hmac.new((secret or self.webhook_secret).encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        return body, f"t={stamp},v1={mac.hexdigest()}"

    # ---- the gateway's surface ------------------------------------------------------------------------------

    def ensure_customer(self, user_ref: str, email: str, *, key: str) -> str:
        for customer_id, customer in self._customers.items():
            if customer["email"] == email and customer["user_ref"] == user_ref:
                return customer_id

        def create() -> str:
            customer_id = self._new("cus")
            self._customers[customer_id] = {"email": email, "user_ref": user_ref}
            return customer_id

        return self._call("ensure_customer", key, (user_ref, email), create)

    def start_card_setup(self, customer_id: str, *, key: str,
                         metadata: Mapping[str, str] | None = None) -> CardSetup:
        def create() -> CardSetup:
            setup_id = self._new("seti")
            self._setups[setup_id] = {"customer": customer_id, "status": "requires_payment_method",
                                      "payment_method": None, "last_error_code": None}
            return CardSetup(setup_id, "requires_payment_method", f"{setup_id}_secret_fake")

        return self._call("start_card_setup", key, (customer_id, dict(metadata or {})), create)

    def card_setup_outcome(self, setup_intent_id: str) -> SetupOutcome:
        setup = self._read("card_setup_outcome", lambda: self._setups[setup_intent_id])
        return SetupOutcome(setup_intent_id, setup["status"], setup["customer"], setup["payment_method"],
                            setup["last_error_code"])

    def card_details(self, payment_method_id: str) -> CardDetails:
        return self._read("card_details", lambda: self._cards[payment_method_id]).details()

    def attach_if_needed(self, payment_method_id: str, customer_id: str, *, key: str) -> CardDetails:
        card = self._read("card_details", lambda: self._cards[payment_method_id])
        if card.customer == customer_id:
            return card.details()
        if card.customer is not None:
            raise PaymentInvalid(stripe_code="payment_method_owned_elsewhere")

        def attach() -> CardDetails:
            if card.number in DECLINED_ON_ATTACH:
                raise CardDeclined(decline_code=DECLINES[card.number], stripe_code="card_declined")
            card.customer = customer_id
            return card.details()

        return self._call("attach_if_needed", key, (payment_method_id, customer_id), attach)

    def detach_card(self, payment_method_id: str, *, key: str) -> None:
        card = self._read("card_details", lambda: self._cards[payment_method_id])
        if card.customer is None:
            return

        def detach() -> None:
            card.customer = None

        self._call("detach_card", key, (payment_method_id,), detach)

    def pay_booking(self, *, customer_id: str, payment_method_id: str, amount: Money, key: str,
                    metadata: Mapping[str, str] | None = None, transfer_group: str | None = None) -> Intent:
        params = (customer_id, payment_method_id, _fils(amount), dict(metadata or {}), transfer_group)
        return self._call("pay_booking", key, params, lambda: self._new_intent(
            customer_id, payment_method_id, amount, metadata, "automatic", confirm=True, off_session=False))

    def hold_deposit(self, *, customer_id: str, payment_method_id: str, amount: Money, key: str,
                     metadata: Mapping[str, str] | None = None, off_session: bool = False) -> Intent:
        params = (customer_id, payment_method_id, _fils(amount), dict(metadata or {}), off_session)
        return self._call("hold_deposit", key, params, lambda: self._new_intent(
            customer_id, payment_method_id, amount, metadata, "manual", confirm=True, off_session=off_session))

    def capture_deposit(self, intent_id: str, amount: Money, *, key: str) -> Intent:
        fils = _fils(amount)

        def capture() -> Intent:
            intent = self._intent(intent_id)
            if intent.status is not IntentStatus.REQUIRES_CAPTURE:
                raise PaymentInvalid(stripe_code="payment_intent_unexpected_state")
            if fils > intent.amount:
                raise PaymentInvalid(stripe_code="amount_too_large", param="amount_to_capture")
            intent.status, intent.captured = IntentStatus.SUCCEEDED, fils
            assert intent.charge_id is not None
            self._charges[intent.charge_id].captured = fils
            return intent.result()

        return self._call("capture_deposit", key, (intent_id, fils), capture)

    def release_deposit(self, intent_id: str, *, key: str) -> Intent:
        def cancel() -> Intent:
            intent = self._intent(intent_id)
            if intent.status in (IntentStatus.SUCCEEDED, IntentStatus.CANCELED, IntentStatus.PROCESSING):
                raise PaymentInvalid(stripe_code="payment_intent_unexpected_state")
            intent.status = IntentStatus.CANCELED
            return intent.result()

        return self._call("release_deposit", key, (intent_id,), cancel)

    def charge_off_session(self, *, customer_id: str, payment_method_id: str, amount: Money, key: str,
                           metadata: Mapping[str, str] | None = None) -> Intent:
        params = (customer_id, payment_method_id, _fils(amount), dict(metadata or {}))
        return self._call("charge_off_session", key, params, lambda: self._new_intent(
            customer_id, payment_method_id, amount, metadata, "automatic", confirm=False, off_session=True))

    def confirm_off_session(self, intent_id: str, *, key: str) -> Intent:
        def confirm() -> Intent:
            intent = self._intent(intent_id)
            if intent.status is not IntentStatus.REQUIRES_CONFIRMATION:
                raise PaymentInvalid(stripe_code="payment_intent_unexpected_state")
            self._confirm(intent, off_session=True)
            return intent.result()

        return self._call("confirm_off_session", key, (intent_id,), confirm)

    def retrieve_intent(self, intent_id: str) -> Intent:
        return self._read("retrieve_intent", lambda: self._intent(intent_id)).result()

    def refund(self, charge_or_intent: str, amount: Money, *, key: str,
               metadata: Mapping[str, str] | None = None) -> RefundResult:
        fils = _fils(amount)

        def refund() -> RefundResult:
            charge_id = (self._intent(charge_or_intent).charge_id if charge_or_intent.startswith("pi_")
                         else charge_or_intent)
            charge = self._charges.get(charge_id or "")
            if charge is None or charge.captured == 0:
                raise PaymentInvalid(stripe_code="charge_not_captured")
            if fils > charge.captured - charge.refunded:
                raise PaymentInvalid(stripe_code="amount_too_large", param="amount")
            charge.refunded += fils
            result = RefundResult(self._new("re"), "succeeded", Money(fils), charge.id)
            self._refunds[result.id] = result
            self._emit("charge.refunded", {"id": charge.id, "object": "charge", "amount_refunded": charge.refunded,
                                           "payment_intent": charge.intent_id})
            return result

        return self._call("refund", key, (charge_or_intent, fils, dict(metadata or {})), refund)

    def retrieve_refund(self, refund_id: str) -> RefundResult:
        def read() -> RefundResult:
            if refund_id not in self._refunds:
                raise PaymentInvalid(stripe_code="resource_missing")
            return self._refunds[refund_id]

        return self._read("retrieve_refund", read)

    def transfer_to_agency(self, account_id: str, amount: Money, *, transfer_group: str, key: str,
                           source_charge_id: str | None = None,
                           metadata: Mapping[str, str] | None = None) -> TransferResult:
        fils = _fils(amount)

        def transfer() -> TransferResult:
            if account_id not in self._accounts:
                raise PaymentInvalid(stripe_code="resource_missing", param="destination")
            result = TransferResult(self._new("tr"), Money(fils), account_id, transfer_group)
            self._transfers[result.id] = result
            self._emit("transfer.created", {"id": result.id, "object": "transfer", "amount": fils,
                                            "destination": account_id, "transfer_group": transfer_group})
            return result

        params = (account_id, fils, transfer_group, source_charge_id, dict(metadata or {}))
        return self._call("transfer_to_agency", key, params, transfer)

    def submit_dispute_evidence(self, dispute_id: str, evidence: Mapping[str, str], *,
                                key: str) -> DisputeResult:
        """Stripe "Respond to disputes": ``submit=true`` sends the evidence on; a dispute no longer awaiting a
        response (submitted, closed, or past ``due_by``) refuses further evidence."""
        fields = dict(evidence)

        def submit() -> DisputeResult:
            dispute = self._disputes.get(dispute_id)
            if dispute is None:
                raise PaymentInvalid(stripe_code="resource_missing")
            details = dispute["evidence_details"]
            if dispute["status"] not in ("needs_response", "warning_needs_response") or \
                    self.now.timestamp() > details["due_by"]:
                raise PaymentInvalid(stripe_code="dispute_not_open", param="evidence")
            dispute["evidence"] = fields
            dispute["status"] = "under_review" if dispute["status"] == "needs_response" else "warning_under_review"
            details["has_evidence"], details["submission_count"] = True, details["submission_count"] + 1
            self._emit("charge.dispute.updated", dispute)
            return DisputeResult(dispute_id, dispute["status"], details["submission_count"])

        return self._call("submit_dispute_evidence", key, (dispute_id, tuple(sorted(fields.items()))), submit)

    # ---- Connect onboarding: an Express account takes nothing until onboarded [Stripe "Express accounts"] -----

    def create_connected_account(self, *, email: str | None, key: str,
                                 metadata: Mapping[str, str] | None = None) -> ConnectedAccount:
        def create() -> ConnectedAccount:
            account = self.add_account()
            self._onboarded[account] = False
            return ConnectedAccount(account, details_submitted=False, payouts_enabled=False)

        return self._call("create_connected_account", key, (email, dict(metadata or {})), create)

    def onboarding_link(self, account_id: str, *, refresh_url: str, return_url: str) -> str:
        self.calls.append("onboarding_link")
        if account_id not in self._accounts:
            raise PaymentInvalid(stripe_code="resource_missing", param="account")
        return f"https://connect.stripe.test/setup/e/{account_id}/{self._new('link')}"

    def finish_onboarding(self, account_id: str) -> None:
        """Test control: the owner completed Stripe's form; ``account.updated`` follows, as on Stripe."""
        self._onboarded[account_id] = True
        self._emit("account.updated", {"id": account_id, "object": "account", "details_submitted": True,
                                       "payouts_enabled": True, "charges_enabled": True})

    def connected_account(self, account_id: str) -> ConnectedAccount:
        self.calls.append("connected_account")
        if account_id not in self._accounts:
            raise PaymentInvalid(stripe_code="resource_missing", param="account")
        done = self._onboarded.get(account_id, True)
        return ConnectedAccount(account_id, details_submitted=done, payouts_enabled=done)

    def verify_webhook(self, raw_body: bytes, signature_header: str | None) -> dict[str, Any]:
        if not isinstance(raw_body, bytes | bytearray):
            raise TypeError("verify the raw request body (bytes), never re-serialised JSON")
        try:
            parts = [item.split("=", 1) for item in (signature_header or "").split(",")]
            stamp = int(next(value for name, value in parts if name == "t"))
            signatures = [value for name, value in parts if name == "v1"]
            expected = hmac.new(self.webhook_secret.encode(), f"{stamp}.".encode() + bytes(raw_body),
                                hashlib.sha256).hexdigest()
            if not any(hmac.compare_digest(expected, s) for s in signatures):
                raise InvalidSignature()
            if stamp < self.now.timestamp() - 300:
                raise InvalidSignature()
            event = json.loads(raw_body)
        except (StopIteration, ValueError) as exc:
            raise InvalidSignature() from exc
        if not isinstance(event, dict):
            raise InvalidSignature()
        return event

    # ---- Stripe's behaviour underneath --------------------------------------------------------------------------

    def _new(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):06d}"

    def _emit(self, kind: str, obj: Mapping[str, Any]) -> None:
        self.events.append({"id": self._new("evt"), "object": "event", "type": kind,
                            "created": int(self.now.timestamp()), "data": {"object": dict(obj)}})

    def _intent(self, intent_id: str) -> _Intent:
        intent = self._intents.get(intent_id)
        if intent is None:
            raise PaymentInvalid(stripe_code="resource_missing")
        return intent

    def _read(self, name: str, read: Callable[[], T]) -> T:
        self._fault(name, after_effect=None)
        try:
            return read()
        except KeyError:
            raise PaymentInvalid(stripe_code="resource_missing") from None

    def _fault(self, name: str, *, after_effect: bool | None) -> bool:
        """Pop the next planned fault; True when it strikes after the effect."""
        self.calls.append(name)
        if not self._faults:
            return False
        late = self._faults.pop(0)
        if not late or after_effect is None:
            raise PaymentProviderUnavailable()
        return True

    def _call(self, name: str, key: str, params: Any, effect: Callable[[], T]) -> T:
        """One mutating request under an idempotency key, replayed as Stripe does (errors included)."""
        key = _checked_key(key)
        late_fault = self._fault(name, after_effect=True)
        fingerprint = hashlib.sha256(repr((name, params)).encode()).hexdigest()
        saved = self._keys.get(key)
        if saved is not None and self.now - saved[1] >= KEY_RETENTION:
            saved = None  # pruned: the key runs as a new request
        if saved is not None:
            if saved[0] != fingerprint:
                raise IdempotencyConflict()
            outcome = saved[2]
        else:
            try:
                outcome = ("ok", effect())
            except (CardDeclined, AuthenticationRequired) as exc:  # executed: saved and replayed
                outcome = ("error", exc)
            self._keys[key] = (fingerprint, self.now, outcome)
        if late_fault:
            raise PaymentProviderUnavailable()
        kind, value = outcome
        if kind == "error":
            raise value  # the same error again, as Stripe replays a saved 402
        return value  # type: ignore[no-any-return]

    def _new_intent(self, customer_id: str, payment_method_id: str, amount: Money,
                    metadata: Mapping[str, str] | None, capture_method: str, *, confirm: bool,
                    off_session: bool) -> Intent:
        if payment_method_id not in self._cards or customer_id not in self._customers:
            raise PaymentInvalid(stripe_code="resource_missing")
        intent = _Intent(self._new("pi"), _fils(amount), customer_id, payment_method_id, capture_method,
                         IntentStatus.REQUIRES_CONFIRMATION, dict(metadata or {}))
        self._intents[intent.id] = intent
        if confirm:
            self._confirm(intent, off_session=off_session)
        return intent.result()

    def _confirm(self, intent: _Intent, *, off_session: bool) -> None:
        assert intent.payment_method is not None
        card = self._cards[intent.payment_method]
        if card.number in ALWAYS_AUTHENTICATE:
            if not off_session:
                intent.status = IntentStatus.REQUIRES_ACTION
                return
            intent.status, intent.last_error_code = IntentStatus.REQUIRES_PAYMENT_METHOD, "authentication_required"
            intent.payment_method = None
            raise AuthenticationRequired(intent_id=intent.id, payment_method_id=card.id)
        if card.number in DECLINES:
            intent.status, intent.last_error_code = IntentStatus.REQUIRES_PAYMENT_METHOD, "card_declined"
            intent.decline_code = DECLINES[card.number]
            raise CardDeclined(decline_code=intent.decline_code, intent_id=intent.id, stripe_code="card_declined")
        charge = _Charge(self._new("ch"), intent.id, captured=0)
        self._charges[charge.id] = charge
        intent.charge_id, intent.last_error_code, intent.decline_code = charge.id, None, None
        if intent.capture_method == "manual":
            intent.status = IntentStatus.REQUIRES_CAPTURE
            window = VISA_MIT_HOLD_WINDOW if off_session and card.brand == "visa" else CIT_HOLD_WINDOW
            intent.capture_before = self.now + window
        else:
            intent.status, intent.captured, charge.captured = IntentStatus.SUCCEEDED, intent.amount, intent.amount
