"""Run localstripe for the tests and the demo: loopback only, in memory, with the extension that closes its gaps.

    python -m devtools.localstripe_server PORT [--stock] [--store PATH]

The test fixtures (tests/stripe_fixtures.py) and ``make run`` (devtools/with_localstripe.py) both start it.
localstripe (GPL-3.0-or-later) is a dev/demo dependency run as this separate process; the product (the
``marketplace`` and ``agency_app`` packages) never imports it and the wheel does not contain ``devtools/``.
The stock ``localstripe --port N`` binds every interface and pickles its whole store to a shared
``/tmp/localstripe.pickle`` after each write (STRIPE.md §3.2), so this launcher runs its app itself.

Always (``--stock`` too) it accepts ``allowed_payment_method_types``, the name stripe-python 16's API version
(2026-10-28.endive) sends where localstripe, which ignores ``Stripe-Version``, knows only the older
``payment_method_types`` (removed as a request parameter in 2026-09-30.endive).

Without ``--stock`` it also patches localstripe 1.15.10 *inside this process* so that it behaves like real
Stripe where STRIPE.md §3.4 lists a difference our code depends on ("Closing the gaps"). Each patch names the
Stripe behaviour it models; they touch localstripe's internals, so the version is pinned and asserted here
and ``tests/payments/test_localstripe_extension.py`` checks every patch against the stock behaviour:

1. ``Idempotency-Key`` replay: the first response for (API key, idempotency key) is stored and replayed
   (``Idempotent-Replayed: true``); the same key with another method, path or parameters gets 400
   ``idempotency_error``; a second request while the first is still running gets 409. As on Stripe, a request
   rejected before it ran (400/401/404 validation) saves nothing [Stripe "Idempotent requests"].
2. ``off_session`` accepted on ``confirm`` and ``payment_method`` on confirm of a failed intent.
3. Off-session confirmation of a card that needs 3DS (and was not set up for off-session use) fails as on
   Stripe: 402 ``card_error`` ``authentication_required`` with ``error.payment_intent`` (now
   ``requires_payment_method``) and ``error.payment_method``, instead of a PI in ``requires_action``.
4. Declines are ``card_error`` + ``decline_code`` (402), on charge as well as on attach and SetupIntent
   confirmation; ``error.payment_intent`` is present for a PaymentIntent; ``last_payment_error`` has them too.
5. ``latest_charge`` is an id unless expanded; ``amount_capturable``, ``amount_received`` on the PI and
   ``amount_captured`` and ``payment_method_details.card`` (with ``capture_before``, 7 days after an
   uncaptured authorisation placed with the customer present) on the charge. A partial capture records the
   captured amount instead of inventing a refund for the released part.
6. A SetupIntent that succeeds attaches its card to the SetupIntent's customer (and marks it set up for
   off-session use when ``usage=off_session``).
7. Refunds default to the remainder of the captured amount; more than the remainder, or any refund of an
   uncaptured or fully refunded charge, is refused (400).
8. Connect stubs: ``POST/GET /v1/accounts`` (an Express or Custom account starts with charges and payouts
   disabled, as on Stripe), ``POST /v1/account_links`` (onboarding) whose ``url`` is a loopback page
   ``/_config/connect/onboard/<link>`` standing in for Stripe's hosted form: opening it marks the account onboarded,
   fires ``account.updated`` and redirects to ``return_url``; ``POST/GET /v1/transfers`` (destination must
   exist; the amount must be covered by the platform's balance: captured charges - refunds - transfers).
9. ``POST /v1/webhook_endpoints`` (and GET/DELETE) registers a localstripe webhook with a fresh ``whsec_``.
10. More ``pm_card_*`` test ids (``pm_card_authenticationRequired``, ``pm_card_chargeDeclinedInsufficientFunds``,
    ...), the card brand from the number, and the PaymentIntent keeps the real ``pm_`` id behind a test id.
11. ``DELETE /_config/data`` also forgets the idempotency keys and the registered webhooks.
12. Creating a PaymentIntent or SetupIntent with ``payment_method_types`` is refused with 400
    ``payment_method_types_no_longer_supported``, as Stripe does on stripe-python 16's API version.

Hold expiry (``charge.expired``), key pruning after 24 h and disputes are not modelled here: those tests use
``tests/payments/fake_stripe.py``.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

warnings.simplefilter("ignore", DeprecationWarning)  # localstripe's sync handlers; this process only

import localstripe  # noqa: E402 - after the warning filter
import localstripe.resources as ls  # noqa: E402
from aiohttp import web  # noqa: E402
from localstripe import webhooks as ls_webhooks  # noqa: E402
from localstripe.errors import UserError  # noqa: E402

LOCALSTRIPE_VERSION = "1.15.10"
assert localstripe.__version__ == LOCALSTRIPE_VERSION, (
    f"the extension patches localstripe {LOCALSTRIPE_VERSION} internals; found {localstripe.__version__}")

HOLD_WINDOW_SECONDS = 7 * 24 * 3600  # Stripe's card hold window for a customer-present authorisation

# ---- always: in memory, never a pickle (STRIPE.md §3.2) ---------------------------------------------------
ls.Store.dump_to_disk = lambda self: None
ls.Store.try_load_from_disk = lambda self: None


def _accept_allowed_payment_method_types(cls: Any) -> None:
    stock_init = cls.__init__

    def init(self: Any, *args: Any, allowed_payment_method_types: Any = None, **kwargs: Any) -> None:
        if allowed_payment_method_types is not None:
            kwargs["payment_method_types"] = allowed_payment_method_types
        stock_init(self, *args, **kwargs)
        self.allowed_payment_method_types = allowed_payment_method_types
        self.payment_method_types = kwargs.get("payment_method_types") or ["card"]  # stock drops it on a PI

    cls.__init__ = init


_accept_allowed_payment_method_types(ls.PaymentIntent)
_accept_allowed_payment_method_types(ls.SetupIntent)


class CardError(UserError):
    """A 402 shaped as Stripe's ``card_error`` (localstripe's UserError is always ``invalid_request_error``)."""

    def __init__(self, message: str, contents: dict[str, Any]) -> None:
        super().__init__(402, message, contents)
        self.body["error"]["type"] = "card_error"


# card number -> (code, decline_code), per Stripe "Testing" (declines)
DECLINES: dict[str, tuple[str, str]] = {
    "4000000000000002": ("card_declined", "generic_decline"),
    "4000000000009995": ("card_declined", "insufficient_funds"),
    "4000000000009987": ("card_declined", "lost_card"),
    "4000000000009979": ("card_declined", "stolen_card"),
    "4000000000000069": ("expired_card", "expired_card"),
    "4000000000000127": ("incorrect_cvc", "incorrect_cvc"),
    "4000000000000119": ("processing_error", "processing_error"),
    "4000000000000341": ("card_declined", "generic_decline"),
    "4000008260003178": ("card_declined", "insufficient_funds"),
    "4000008400001629": ("card_declined", "card_declined"),
}
# cards that need authentication on every transaction, set up or not (Stripe "Testing", 3D Secure)
ALWAYS_AUTHENTICATE = {"4000002760003184", "4000008260003178"}

TEST_PAYMENT_METHODS: dict[str, str] = {
    "pm_card_mastercard": "5555555555554444",
    "pm_card_visa_debit": "4000056655665556",
    "pm_card_authenticationRequired": "4000002760003184",
    "pm_card_authenticationRequiredOnSetup": "4000002500003155",
    "pm_card_authenticationRequiredSetupForOffSession": "4000003800000446",
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": "4000008260003178",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedLostCard": "4000000000009987",
    "pm_card_chargeDeclinedStolenCard": "4000000000009979",
    "pm_card_chargeDeclinedExpiredCard": "4000000000000069",
    "pm_card_chargeDeclinedIncorrectCvc": "4000000000000127",
    "pm_card_chargeDeclinedProcessingError": "4000000000000119",
}

# localstripe's extra routes hold bound methods taken at import time: a patched classmethod must replace its
# entry in ``extra_apis`` too, before ``localstripe.server`` builds its routes from that list.
_EXTRA_ROUTES: list[tuple[Any, tuple[str, ...]]] = []  # (resource class, its verbs)
_BASE_URL = ["http://127.0.0.1:8420"]  # where this process listens (set by main), for onboarding links


def _replace_route(method: str, url: str, func: Any) -> None:
    for index, (m, u, _) in enumerate(ls.extra_apis):
        if m == method and u == url:
            ls.extra_apis[index] = (m, u, func)
            return
    raise AssertionError(f"localstripe has no route {method} {url} to patch")


def _pm(pm_id: str | None) -> Any:
    return ls.store.get(f"payment_method:{pm_id}") if pm_id else None


def _number(pm: Any) -> str | None:
    return getattr(pm, "_card_number", None)


def _decline_for(pm: Any) -> tuple[str, str]:
    return DECLINES.get(_number(pm) or "", ("card_declined", "generic_decline"))


def _brand(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or number[:1] == "2":
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    return "unknown"


def _extend() -> None:
    PaymentIntent, PaymentMethod, Charge, Refund, SetupIntent = (  # noqa: N806 - localstripe's class names
        ls.PaymentIntent, ls.PaymentMethod, ls.Charge, ls.Refund, ls.SetupIntent)

    # -- 10. more pm_card_* ids, the brand from the number, and the PI keeps the real pm_ id ------------------
    stock_canonical = PaymentMethod._try_get_canonical_test_article.__func__

    def canonical(cls: Any, id: str) -> Any:
        found = stock_canonical(cls, id)
        if found is None and id in TEST_PAYMENT_METHODS:
            found = PaymentMethod(type="card", card={"number": TEST_PAYMENT_METHODS[id], "exp_month": "12",
                                                     "exp_year": "2034", "cvc": "123"})
        return found

    PaymentMethod._try_get_canonical_test_article = classmethod(canonical)

    stock_pm_init = PaymentMethod.__init__

    def pm_init(self: Any, *args: Any, **kwargs: Any) -> None:
        stock_pm_init(self, *args, **kwargs)
        self._ext_set_up_off_session = False
        if self.type == "card":
            self.card["brand"] = _brand(self._card_number)

    PaymentMethod.__init__ = pm_init

    stock_pm_charging_declined = PaymentMethod._charging_is_declined

    def charging_is_declined(self: Any) -> bool:
        # 4. real Stripe declines these cards on a charge too, not only when attaching them
        return bool(stock_pm_charging_declined(self) or _number(self) in DECLINES)

    PaymentMethod._charging_is_declined = charging_is_declined

    # -- 4. declines on attach: card_error + decline_code --------------------------------------------------------
    stock_attach = PaymentMethod._api_attach.__func__

    def attach(cls: Any, id: str, customer: Any = None, **kwargs: Any) -> Any:
        try:
            return stock_attach(cls, id, customer=customer, **kwargs)
        except UserError as exc:
            if exc.code != 402:
                raise
            code, decline = _decline_for(cls._api_retrieve(id))
            raise CardError("Your card was declined.", {"code": code, "decline_code": decline}) from None

    PaymentMethod._api_attach = classmethod(attach)
    _replace_route("POST", "/v1/payment_methods/{id}/attach", PaymentMethod._api_attach)

    # -- 4. declines on a charge: card_error + decline_code (+ payment_intent on a PI) ---------------------------
    def set_auth_failure(self: Any) -> None:
        code, decline = _decline_for(_pm(self.payment_method))
        self.status = "failed"
        self.failure_code = code
        self.failure_message = "Your card was declined."
        self._ext_decline_code = decline

    Charge._set_auth_failure = set_auth_failure

    def charge_raise_failure(self: Any) -> None:
        raise CardError(self.failure_message, {"code": self.failure_code, "charge": self.id,
                                               "decline_code": getattr(self, "_ext_decline_code", None)})

    Charge._raise_failure = charge_raise_failure

    stock_report_failure = PaymentIntent._report_failure

    def report_failure(self: Any) -> None:
        try:
            stock_report_failure(self)
        except UserError as exc:
            pm = _pm(self.payment_method)
            exc.body["error"]["payment_intent"] = self._export()
            exc.body["error"]["payment_method"] = pm._export() if pm is not None else None
            raise

    PaymentIntent._report_failure = report_failure

    stock_last_error = PaymentIntent.last_payment_error.fget

    def last_payment_error(self: Any) -> Any:
        if getattr(self, "_ext_last_error", None):
            return self._ext_last_error
        error = stock_last_error(self)
        if error and self.latest_charge is not None and self.latest_charge.status == "failed":
            error = {**error, "type": "card_error",
                     "decline_code": getattr(self.latest_charge, "_ext_decline_code", None),
                     "payment_method": {"id": self.latest_charge.payment_method}}
        return error

    PaymentIntent.last_payment_error = property(last_payment_error)

    # -- 2./3. off_session on confirm; 3DS off-session -> 402 authentication_required --------------------------
    def needs_authentication_off_session(pm: Any) -> bool:
        if pm is None or not pm._requires_authentication():
            return False
        return _number(pm) in ALWAYS_AUTHENTICATE or not getattr(pm, "_ext_set_up_off_session", False)

    stock_confirm = PaymentIntent._confirm

    def confirm(self: Any, on_failure_now: Any, off_session: bool = False) -> None:
        self._ext_last_error = None
        pm = PaymentMethod._api_retrieve(self.payment_method)
        if off_session and needs_authentication_off_session(pm):
            error = {"type": "card_error", "code": "authentication_required",
                     "decline_code": "authentication_required",
                     "message": "Your card was declined. This transaction requires authentication.",
                     "payment_method": pm._export()}
            self.payment_method = None  # Stripe: the intent goes back to requires_payment_method
            self._ext_last_error = error
            ls.schedule_webhook(ls.Event("payment_intent.payment_failed", self))
            raise CardError(error["message"], {**error, "payment_intent": self._export()})
        stock_confirm(self, on_failure_now)

    PaymentIntent._confirm = confirm

    def resolve_pm(payment_method: Any) -> Any:
        if isinstance(payment_method, str) and payment_method.startswith("pm_card_"):
            return PaymentMethod._api_retrieve(payment_method).id  # a fresh pm_ as on Stripe
        return payment_method

    def refuse_payment_method_types(data: dict[str, Any]) -> None:
        # 12. as Stripe on the API version stripe-python 16 sends (2026-09-30.endive and later)
        if "payment_method_types" in data:
            raise UserError(400, "payment_method_types is no longer supported; use allowed_payment_method_types",
                            {"code": "payment_method_types_no_longer_supported", "param": "payment_method_types"})

    stock_si_create = SetupIntent._api_create.__func__

    def si_create(cls: Any, **data: Any) -> Any:
        refuse_payment_method_types(data)
        return stock_si_create(cls, **data)

    SetupIntent._api_create = classmethod(si_create)

    accepted_pi_params = ("description", "statement_descriptor_suffix", "transfer_group", "receipt_email")

    def pi_create(cls: Any, confirm: Any = None, off_session: Any = None, **data: Any) -> Any:
        refuse_payment_method_types(data)
        confirm = ls.try_convert_to_bool(confirm)
        off_session = ls.try_convert_to_bool(off_session)
        if off_session is not None and (type(off_session) is not bool or confirm is not True):
            raise UserError(400, "Bad request")
        echoed = {name: data.pop(name) for name in accepted_pi_params if name in data}
        if "payment_method" in data:
            data["payment_method"] = resolve_pm(data["payment_method"])
        obj = cls(**data)
        for name in accepted_pi_params:
            setattr(obj, name, echoed.get(name))
        if confirm:
            obj._confirm(on_failure_now=obj._report_failure, off_session=bool(off_session))
        return obj

    PaymentIntent._api_create = classmethod(pi_create)

    def pi_confirm(cls: Any, id: str, payment_method: Any = None, off_session: Any = None,
                   **kwargs: Any) -> Any:
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        off_session = ls.try_convert_to_bool(off_session)
        if off_session is not None and type(off_session) is not bool:
            raise UserError(400, "Bad request")
        if not (isinstance(id, str) and id.startswith("pi_")):
            raise UserError(400, "Bad request")
        obj = cls._api_retrieve(id)
        if payment_method is not None:
            if obj.status not in ("requires_payment_method", "requires_confirmation"):
                raise UserError(400, "Bad request", {"code": "payment_intent_unexpected_state"})
            obj.payment_method = resolve_pm(payment_method)
            PaymentMethod._api_retrieve(obj.payment_method)  # 404 if unknown
            obj.latest_charge = None
        if obj.status != "requires_confirmation":
            raise UserError(400, "Bad request", {"code": "payment_intent_unexpected_state"})
        obj._confirm(on_failure_now=obj._report_failure, off_session=bool(off_session))
        return obj

    PaymentIntent._api_confirm = classmethod(pi_confirm)
    _replace_route("POST", "/v1/payment_intents/{id}/confirm", PaymentIntent._api_confirm)

    # -- 5. latest_charge as an id; amounts on the PI and the charge; partial capture -----------------------
    stock_pi_export = PaymentIntent._export

    def pi_export(self: Any, expand: Any = None) -> Any:
        obj = stock_pi_export(self, expand=expand)
        expanded = any(path.split(".")[0] == "latest_charge" for path in (expand or []))
        if isinstance(obj.get("latest_charge"), dict) and not expanded:
            obj["latest_charge"] = obj["latest_charge"]["id"]
        obj.pop("charges", None)  # removed from the API in 2022-11-15
        return obj

    PaymentIntent._export = pi_export

    def amount_capturable(self: Any) -> int:
        return int(self.amount) if self.status == "requires_capture" else 0

    def amount_received(self: Any) -> int:
        charge = self.latest_charge
        return charge.amount_captured if charge is not None and charge.captured and charge.paid else 0

    PaymentIntent.amount_capturable = property(amount_capturable)
    PaymentIntent.amount_received = property(amount_received)

    def amount_captured(self: Any) -> int:
        if not self.captured or self.status != "succeeded":
            return 0
        return getattr(self, "_ext_amount_captured", None) or int(self.amount)

    def payment_method_details(self: Any) -> Any:
        pm = _pm(self.payment_method)
        if pm is None or pm.type != "card":
            return None
        card = {key: pm.card[key] for key in ("brand", "last4", "exp_month", "exp_year")}
        if not self.captured and self.status == "succeeded":
            card["capture_before"] = self.created + HOLD_WINDOW_SECONDS
        return {"type": "card", "card": card}

    Charge.amount_captured = property(amount_captured)
    Charge.payment_method_details = property(payment_method_details)

    def capture(self: Any, amount: Any, on_success: Any = None) -> None:
        amount = ls.try_convert_to_int(self.amount if amount is None else amount)
        if not (type(amount) is int and 0 < amount <= self.amount):
            raise UserError(400, "Bad request", {"code": "amount_too_large"})
        if self.captured or self.status != "succeeded":
            raise UserError(400, "Bad request", {"code": "payment_intent_unexpected_state"})
        self._ext_amount_captured = amount

        def done() -> None:
            self.captured = True
            if on_success:
                on_success()

        self._trigger_payment(on_success=done)

    Charge._capture = capture

    # -- 6. a SetupIntent that succeeds attaches its card --------------------------------------------------------
    stock_si_confirm = SetupIntent._api_confirm.__func__

    def si_confirm(cls: Any, id: str, **kwargs: Any) -> Any:
        try:
            obj = stock_si_confirm(cls, id, **kwargs)
        except UserError as exc:
            if exc.code != 402:
                raise
            obj = cls._api_retrieve(id)
            code, decline = _decline_for(_pm(obj.payment_method))
            obj.status = "requires_payment_method"  # Stripe keeps the intent open for another card
            raise CardError("Your card was declined.", {"code": code, "decline_code": decline,
                                                        "setup_intent": obj._export()}) from None
        pm = _pm(obj.payment_method)
        if obj.status == "succeeded" and pm is not None:
            if obj.customer and pm.customer is None:
                pm.customer = obj.customer
            pm._ext_set_up_off_session = obj.usage == "off_session"
        return obj

    SetupIntent._api_confirm = classmethod(si_confirm)
    _replace_route("POST", "/v1/setup_intents/{id}/confirm", SetupIntent._api_confirm)

    # -- 7. refunds: the remainder by default, never more ------------------------------------------------------
    stock_refund_init = Refund.__init__

    def refund_init(self: Any, charge: Any = None, payment_intent: Any = None, amount: Any = None,
                    **kwargs: Any) -> None:
        target = None
        if isinstance(payment_intent, str) and charge is None:
            intent = PaymentIntent._api_retrieve(payment_intent)
            target = intent.latest_charge
            if target is None:
                raise UserError(400, "This PaymentIntent has no charge to refund.",
                                {"code": "charge_not_captured"})
        elif isinstance(charge, str):
            target = Charge._api_retrieve(charge)
        if target is not None:
            refunded = sum(r.amount for r in target.refunds._list)
            remainder = target.amount_captured - refunded
            if target.status != "succeeded" or not target.captured:
                raise UserError(400, "This charge has not been captured.", {"code": "charge_not_captured"})
            if remainder <= 0:
                raise UserError(400, "This charge has already been refunded.",
                                {"code": "charge_already_refunded"})
            amount = ls.try_convert_to_int(remainder if amount is None else amount)
            if type(amount) is int and amount > remainder:
                raise UserError(400, f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                                     f"({remainder})", {"code": "amount_too_large", "param": "amount"})
        stock_refund_init(self, charge=charge, payment_intent=payment_intent, amount=amount, **kwargs)

    Refund.__init__ = refund_init

    # -- 8. Connect stubs --------------------------------------------------------------------------------------
    class Account(ls.StripeObject):
        object = "account"
        _id_prefix = "acct_"

        def __init__(self, *, type: Any = "express", country: Any = "AE", email: Any = None,
                     metadata: Any = None, capabilities: Any = None, business_type: Any = None,
                     **kwargs: Any) -> None:
            if kwargs:
                raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
            if type not in ("express", "custom", "standard"):
                raise UserError(400, "Bad request")
            super().__init__()
            self.type = type
            self.country = country
            self.email = email
            self.business_type = business_type
            self.metadata = metadata or {}
            self.capabilities = {name: "active" for name in (capabilities or {})}
            # Stripe: an Express or Custom account can take nothing until its owner finished onboarding
            # (details_submitted, charges/payouts enabled); a Standard account here is as if onboarded
            onboarded = type == "standard"
            self.charges_enabled = onboarded
            self.payouts_enabled = onboarded
            self.details_submitted = onboarded
            self.requirements = {"currently_due": [] if onboarded else ["external_account", "tos_acceptance.date"],
                                 "disabled_reason": None if onboarded else "requirements.past_due"}

        def _finish_onboarding(self) -> None:
            self.charges_enabled = self.payouts_enabled = self.details_submitted = True
            self.requirements = {"currently_due": [], "disabled_reason": None}
            ls_webhooks.schedule_webhook(ls.Event("account.updated", self))

    class AccountLink(ls.StripeObject):
        """Stripe's hosted onboarding, here one loopback page: ``GET /_config/connect/onboard/<link>`` marks the
        account onboarded (as if its owner filled Stripe's form), fires ``account.updated`` and redirects to
        ``return_url`` [Stripe "Connect onboarding", "Account Links"]."""

        object = "account_link"
        _id_prefix = "acctlink_"

        def __init__(self, *, account: Any = None, refresh_url: Any = None, return_url: Any = None,
                     type: Any = None, collect: Any = None, **kwargs: Any) -> None:
            if kwargs:
                raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
            if not (isinstance(account, str) and ls.store.get(f"account:{account}")):
                raise UserError(400, f"No such account: '{account}'", {"param": "account"})
            if type not in ("account_onboarding", "account_update"):
                raise UserError(400, "Invalid type", {"param": "type"})
            for name, url in (("refresh_url", refresh_url), ("return_url", return_url)):
                if not (isinstance(url, str) and url.startswith("http")):
                    raise UserError(400, f"Invalid {name}", {"param": name})
            super().__init__()
            self.account = account
            self.refresh_url = refresh_url
            self.return_url = return_url
            self.type = type
            self.expires_at = self.created + 300
            self.url = f"{_BASE_URL[0]}/_config/connect/onboard/{self.id}"


    def available_balance() -> int:
        charges = sum(c.amount_captured for k, c in ls.store.items() if k.startswith("charge:"))
        refunds = sum(r.amount for k, r in ls.store.items() if k.startswith("refund:"))
        transfers = sum(t.amount for k, t in ls.store.items() if k.startswith("transfer:"))
        return charges - refunds - transfers

    class Transfer(ls.StripeObject):
        object = "transfer"
        _id_prefix = "tr_"

        def __init__(self, *, amount: Any = None, currency: Any = None, destination: Any = None,
                     transfer_group: Any = None, metadata: Any = None, description: Any = None,
                     source_transaction: Any = None, **kwargs: Any) -> None:
            if kwargs:
                raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
            amount = ls.try_convert_to_int(amount)
            if not (type(amount) is int and amount > 0 and isinstance(currency, str) and currency):
                raise UserError(400, "Bad request")
            if not (isinstance(destination, str) and ls.store.get(f"account:{destination}")):
                raise UserError(400, f"No such destination: '{destination}'", {"param": "destination"})
            if source_transaction is None and amount > available_balance():
                raise UserError(400, "You have insufficient available funds in your Stripe account.",
                                {"code": "balance_insufficient"})
            super().__init__()
            self.amount = amount
            self.currency = currency
            self.destination = destination
            self.transfer_group = transfer_group
            self.source_transaction = source_transaction
            self.description = description
            self.metadata = metadata or {}
            self.reversed = False
            self.amount_reversed = 0

    # -- 9. webhook endpoints --------------------------------------------------------------------------------
    class WebhookEndpoint(ls.StripeObject):
        object = "webhook_endpoint"
        _id_prefix = "we_"

        def __init__(self, url: Any = None, enabled_events: Any = None, description: Any = None,
                     metadata: Any = None, api_version: Any = None, **kwargs: Any) -> None:
            if kwargs:
                raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
            if not (isinstance(url, str) and url.startswith("http")) or not isinstance(enabled_events, list):
                raise UserError(400, "Bad request")
            super().__init__()
            self.url = url
            self.enabled_events = enabled_events
            self.description = description
            self.metadata = metadata or {}
            self.api_version = api_version
            self.status = "enabled"
            self.secret = "whsec_" + secrets.token_hex(16)
            ls_webhooks.register_webhook(self.id, url, self.secret,
                                         None if "*" in enabled_events else enabled_events)

        @classmethod
        def _api_delete(cls, id: str) -> Any:
            ls_webhooks._webhooks.pop(id, None)
            return super()._api_delete(id)

    _EXTRA_ROUTES.extend([(Account, ("create", "retrieve", "list")), (AccountLink, ("create",)),
                          (Transfer, ("create", "retrieve", "list")),
                          (WebhookEndpoint, ("create", "retrieve", "list", "delete"))])
    for cls in (Account, AccountLink, Transfer, WebhookEndpoint):  # module-level names, so --store can pickle them
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls


# ---- 1. Idempotency-Key replay -------------------------------------------------------------------------------

_replies: dict[tuple[str, str], tuple[str, int, bytes]] = {}
_running: set[tuple[str, str]] = set()
_NOT_SAVED = {400, 401, 403, 404, 409, 429}  # rejected before running: Stripe saves no result for these


def _fingerprint(method: str, path: str, body: bytes, query: str) -> str:
    return hashlib.sha256(b"\0".join([method.encode(), path.encode(), query.encode(), body])).hexdigest()


def _stripe_error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


@web.middleware
async def idempotency_middleware(request: web.Request,
                                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    if request.method == "DELETE" and request.path == "/_config/data":  # 11. a reset forgets keys and webhooks
        _replies.clear()
        ls_webhooks._webhooks.clear()
        return await handler(request)
    key = request.headers.get("Idempotency-Key")
    if request.method not in ("POST", "DELETE") or not key or not request.path.startswith("/v1/"):
        return await handler(request)
    scope = (request.headers.get("Authorization", ""), key)
    body = await request.read()  # cached: localstripe's handlers read it again
    fingerprint = _fingerprint(request.method, request.path, body, request.query_string)
    if scope in _running:
        return _stripe_error(409, "idempotency_error", "There is currently another in-progress request using "
                                                       "this Idempotent Key.")
    if scope in _replies:
        saved_fingerprint, status, saved = _replies[scope]
        if saved_fingerprint != fingerprint:
            return _stripe_error(400, "idempotency_error", "Keys for idempotent requests can only be used with the "
                                                           "same parameters they were first used with.")
        return web.Response(body=saved, status=status, content_type="application/json",
                            headers={"Idempotent-Replayed": "true", "Idempotency-Key": key})
    _running.add(scope)
    try:
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            response = _stripe_error(500, "api_error", "An unexpected error occurred.")
        if isinstance(response, web.Response) and response.status not in _NOT_SAVED:
            _replies[scope] = (fingerprint, response.status, bytes(response.body or b""))  # type: ignore[arg-type]
        return response
    finally:
        _running.discard(scope)


async def onboard(request: web.Request) -> web.StreamResponse:
    """Stripe's hosted onboarding form, already filled in: the account becomes ready; back to ``return_url``."""
    link = ls.store.get(f"account_link:{request.match_info['link']}")
    if link is None or link.expires_at < int(time.time()):
        return _stripe_error(404, "invalid_request_error", "This onboarding link is invalid or expired.")
    account = ls.store[f"account:{link.account}"]
    account._finish_onboarding()
    raise web.HTTPFound(link.return_url)


def build_app(*, stock: bool = False) -> web.Application:
    if not stock:
        _extend()
    from localstripe import server  # builds its routes from extra_apis: after the patches above

    app = server.app
    if not stock:
        app.middlewares.insert(0, idempotency_middleware)  # outermost: sees the final response or error
        for cls, verbs in _EXTRA_ROUTES:
            url = f"/v1/{cls.object}s"
            if "create" in verbs:
                app.router.add_post(url, server.api_create(cls, url))
            if "list" in verbs:
                app.router.add_get(url, server.api_list_all(cls, url))
            if "retrieve" in verbs:
                app.router.add_get(url + "/{id}", server.api_retrieve(cls, url))
            if "delete" in verbs:
                app.router.add_delete(url + "/{id}", server.api_delete(cls, url))
        app.router.add_get("/_config/connect/onboard/{link}", onboard)
    return app


def keep_store_in(path: str) -> None:
    """``--store PATH`` (the demo's, never the tests'): the store is kept in this one file (mode 0600), loaded at
    start and written after each change, so a restarted ``make run`` still knows the Stripe ids in ``var/``."""
    import os
    import pickle

    def dump(self: Any) -> None:
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(path + ".tmp", path)

    def load(self: Any) -> None:
        try:
            with open(path, "rb") as f:
                saved = pickle.load(f)  # noqa: S301 - our own file under var/, written by dump above
        except FileNotFoundError:
            return
        dict.clear(self)
        dict.update(self, saved)

    ls.Store.dump_to_disk = dump
    ls.Store.try_load_from_disk = load
    ls.store.try_load_from_disk()


def main(argv: list[str]) -> None:
    port = int(argv[1])
    _BASE_URL[0] = f"http://127.0.0.1:{port}"
    app = build_app(stock="--stock" in argv[2:])
    if "--store" in argv[2:]:
        keep_store_in(argv[argv.index("--store") + 1])
    # loopback only, never the stock server's [::] (STRIPE.md §3.2); no access log: the tests read no output
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, handle_signals=True)


if __name__ == "__main__":
    main(sys.argv)
