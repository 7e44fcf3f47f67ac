"""The payments gateway against real localstripe on loopback, with the test extension (issue 9, STRIPE.md).

Every test here talks to ``devtools/localstripe_server.py`` through ``Gateway`` (no mock): the
extension gives localstripe Stripe's idempotency replay, off-session 3-D Secure errors, ``card_error``
declines, refund limits and Connect stubs. The last section runs the same calls against *stock* localstripe
to show the gateway reads its shapes too. Hold expiry, key pruning and disputes are in test_fake_stripe.py.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import fields
from datetime import UTC, datetime, timedelta

import pytest
import stripe

from marketplace.money import Money
from marketplace.payments.errors import (
    AuthenticationRequired,
    CardDeclined,
    IdempotencyConflict,
    InvalidIdempotencyKey,
    InvalidSignature,
    PaymentInvalid,
    PaymentProviderUnavailable,
)
from marketplace.payments.gateway import CardDetails, Gateway, IntentStatus
from tests.payments.helpers import raw_client, sdk_confirm_setup
from tests.stripe_fixtures import SECRET_KEY, WEBHOOK_SECRET, LocalStripe, _free_port

AED_105 = Money(10500)
VISA = "4242424242424242"
ALWAYS_3DS = "4000002760003184"
CHARGE_FAILS = "4000000000000341"  # attaches fine, every charge declines (STRIPE.md §2)


def saved_card(server: LocalStripe, gateway: Gateway, number: str = VISA, *, ref: str = "u1") -> tuple[str, str]:
    """A customer with a card saved the way the app will do it: SetupIntent, SDK confirmation, attach."""
    customer = gateway.ensure_customer(ref, f"{ref}@example.com", key=f"customer:{ref}")
    setup = gateway.start_card_setup(customer, key=f"card-setup:{ref}:{number}")
    status, body = sdk_confirm_setup(server, setup, number)
    assert status == 200, body
    outcome = gateway.card_setup_outcome(setup.setup_intent_id)
    assert outcome.payment_method_id
    gateway.attach_if_needed(outcome.payment_method_id, customer, key=f"attach:{outcome.payment_method_id}")
    return customer, outcome.payment_method_id


# ---- saved cards (P-19) ------------------------------------------------------------------------------------


def test_a_card_is_saved_through_a_setup_intent_and_shown_by_brand_last4_and_expiry(localstripe):  # P-19
    gateway = localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    setup = gateway.start_card_setup(customer, key="card-setup:1")
    assert setup.setup_intent_id.startswith("seti_") and setup.client_secret.startswith(setup.setup_intent_id)
    assert setup.client_secret not in repr(setup)  # never into a log line by accident
    status, _ = sdk_confirm_setup(localstripe, setup, VISA, exp_month=7, exp_year=2031)
    assert status == 200

    outcome = gateway.card_setup_outcome(setup.setup_intent_id)
    assert outcome.status == "succeeded" and outcome.customer_id == customer
    assert outcome.payment_method_id is not None
    details = gateway.attach_if_needed(outcome.payment_method_id, customer, key="attach:1")
    assert details == CardDetails(outcome.payment_method_id, "visa", "4242", 7, 2031)
    assert {f.name for f in fields(CardDetails)} == {"payment_method_id", "brand", "last4", "exp_month", "exp_year"}
    assert gateway.card_details(outcome.payment_method_id) == details
    # the setup intent was for off-session use, card only
    seti = raw_client(localstripe).v1.setup_intents.retrieve(setup.setup_intent_id)
    assert seti.usage == "off_session" and list(seti.allowed_payment_method_types) == ["card"]


def test_ensure_customer_finds_the_customer_it_made(localstripe):
    gateway = localstripe.gateway()
    first = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    assert gateway.ensure_customer("u1", "u1@example.com", key="customer:u1:again") == first
    assert gateway.ensure_customer("u2", "u1@example.com", key="customer:u2") != first  # another user


def test_a_card_that_declines_when_saved_is_refused_by_stripe(localstripe):
    gateway = localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    setup = gateway.start_card_setup(customer, key="card-setup:1")
    status, body = sdk_confirm_setup(localstripe, setup, "4000000000009995")
    assert status == 402 and body["error"]["decline_code"] == "insufficient_funds"
    assert gateway.card_setup_outcome(setup.setup_intent_id).status == "requires_payment_method"


def test_attach_if_needed_attaches_a_loose_card_and_refuses_someone_elses(localstripe):
    gateway = localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    other = gateway.ensure_customer("u2", "u2@example.com", key="customer:u2")
    pm = raw_client(localstripe).v1.payment_methods.create(params={
        "type": "card", "card": {"number": VISA, "exp_month": 1, "exp_year": 2033, "cvc": "123"}})
    gateway.attach_if_needed(pm.id, customer, key=f"attach:{pm.id}")
    assert raw_client(localstripe).v1.payment_methods.retrieve(pm.id).customer == customer
    with pytest.raises(PaymentInvalid) as refused:
        gateway.attach_if_needed(pm.id, other, key=f"attach:{pm.id}:u2")
    assert refused.value.details["stripe_code"] == "payment_method_owned_elsewhere"


def test_detach_card_detaches_once_and_then_is_a_no_op(localstripe):
    gateway = localstripe.gateway()
    _, pm = saved_card(localstripe, gateway)
    gateway.detach_card(pm, key=f"detach:{pm}")
    assert raw_client(localstripe).v1.payment_methods.retrieve(pm).customer is None
    gateway.detach_card(pm, key=f"detach:{pm}")  # again: nothing to do, no error


# ---- paying, holding, charging ---------------------------------------------------------------------------


def test_pay_a_booking_with_the_saved_card(localstripe):
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway)
    paid = gateway.pay_booking(customer_id=customer, payment_method_id=pm, amount=AED_105, key="booking:1:pay:1",
                               metadata={"booking": "BK1"}, transfer_group="booking_1")
    assert paid.status is IntentStatus.SUCCEEDED
    assert paid.amount == AED_105 and paid.amount_received == AED_105
    assert paid.amount_capturable == Money.zero()
    assert paid.charge_id is not None and paid.charge_id.startswith("ch_")
    sent = raw_client(localstripe).v1.payment_intents.retrieve(paid.id)
    assert sent.currency == "aed" and list(sent.allowed_payment_method_types) == ["card"]
    assert sent.capture_method == "automatic" and sent.metadata["booking"] == "BK1"


def test_hold_then_capture_part_of_it(localstripe):  # P-22
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway)
    before = datetime.now(UTC)
    hold = gateway.hold_deposit(customer_id=customer, payment_method_id=pm, amount=Money(100_000),
                                key="deposit:1:hold:1")
    assert hold.status is IntentStatus.REQUIRES_CAPTURE
    assert hold.amount_capturable == Money(100_000) and hold.amount_received == Money.zero()
    assert hold.capture_before is not None  # from the charge's payment_method_details (the binding deadline)
    assert before + timedelta(days=6) < hold.capture_before < before + timedelta(days=8)

    captured = gateway.capture_deposit(hold.id, Money(30_000), key="deposit:1:capture")
    assert captured.status is IntentStatus.SUCCEEDED
    assert captured.amount_received == Money(30_000) and captured.amount_capturable == Money.zero()
    # the capture job running again replays the same answer; a new key cannot capture twice
    assert gateway.capture_deposit(hold.id, Money(30_000), key="deposit:1:capture") == captured
    with pytest.raises(PaymentInvalid):
        gateway.capture_deposit(hold.id, Money(30_000), key="deposit:1:capture:bug")


def test_hold_then_release(localstripe):  # P-22
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway)
    hold = gateway.hold_deposit(customer_id=customer, payment_method_id=pm, amount=Money(50_000),
                                key="deposit:2:hold:1")
    released = gateway.release_deposit(hold.id, key="deposit:2:release")
    assert released.status is IntentStatus.CANCELED and released.amount_capturable == Money.zero()
    assert gateway.retrieve_intent(hold.id).status is IntentStatus.CANCELED


def test_off_session_charge_in_two_steps_succeeds(localstripe):  # STRIPE.md §1.3
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway)
    created = gateway.charge_off_session(customer_id=customer, payment_method_id=pm, amount=Money(25_000),
                                         key="charge:7:attempt:1", metadata={"charge_id": "7", "attempt": "1"})
    assert created.status is IntentStatus.REQUIRES_CONFIRMATION  # nothing moved: the caller stores the id now
    confirmed = gateway.confirm_off_session(created.id, key="charge:7:attempt:1:confirm")
    assert confirmed.id == created.id and confirmed.status is IntentStatus.SUCCEEDED
    assert confirmed.amount_received == Money(25_000)
    assert gateway.retrieve_intent(created.id).status is IntentStatus.SUCCEEDED


def test_off_session_charge_on_a_3ds_card_is_authentication_required(localstripe):  # PY-05
    gateway = localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    pm = raw_client(localstripe).v1.payment_methods.create(params={
        "type": "card", "card": {"number": ALWAYS_3DS, "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    gateway.attach_if_needed(pm.id, customer, key=f"attach:{pm.id}")
    created = gateway.charge_off_session(customer_id=customer, payment_method_id=pm.id, amount=Money(25_000),
                                         key="charge:8:attempt:1")
    with pytest.raises(AuthenticationRequired) as needs:
        gateway.confirm_off_session(created.id, key="charge:8:attempt:1:confirm")
    assert needs.value.status == 402 and needs.value.code == "authentication_required"
    assert needs.value.intent_id == created.id and needs.value.details == {"intent_id": created.id}
    after = gateway.retrieve_intent(created.id)  # the customer confirms this same intent on-session later
    assert after.status is IntentStatus.REQUIRES_PAYMENT_METHOD
    assert after.last_error_code == "authentication_required"


def test_an_off_session_re_hold_on_a_3ds_card_is_authentication_required(localstripe):
    gateway = localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    with pytest.raises(AuthenticationRequired) as needs:
        gateway.hold_deposit(customer_id=customer, payment_method_id="pm_card_authenticationRequired",
                             amount=Money(50_000), key="deposit:3:hold:2", off_session=True)
    assert needs.value.intent_id is not None


def test_on_session_3ds_comes_back_as_a_status_with_the_client_secret(localstripe):
    gateway = localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    intent = gateway.pay_booking(customer_id=customer, payment_method_id="pm_card_authenticationRequired",
                                 amount=AED_105, key="booking:2:pay:1")
    assert intent.status is IntentStatus.REQUIRES_ACTION and intent.needs_customer
    assert intent.client_secret and intent.client_secret not in repr(intent)


def test_a_declined_card_is_card_declined_with_its_decline_code(localstripe):  # PY-05
    gateway = localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    with pytest.raises(CardDeclined) as declined:
        gateway.pay_booking(customer_id=customer, payment_method_id="pm_card_chargeDeclinedInsufficientFunds",
                            amount=AED_105, key="booking:3:pay:1")
    assert declined.value.status == 402 and declined.value.code == "card_declined"
    assert declined.value.details["decline_code"] == "insufficient_funds"
    assert declined.value.intent_id is not None and declined.value.details["intent_id"] == declined.value.intent_id
    failed = gateway.retrieve_intent(declined.value.intent_id)
    assert failed.status is IntentStatus.REQUIRES_PAYMENT_METHOD and failed.decline_code == "insufficient_funds"
    # the same key replays the same decline, it does not try the card again
    with pytest.raises(CardDeclined) as again:
        gateway.pay_booking(customer_id=customer, payment_method_id="pm_card_chargeDeclinedInsufficientFunds",
                            amount=AED_105, key="booking:3:pay:1")
    assert again.value.intent_id == declined.value.intent_id


def test_a_saved_card_that_declines_off_session(localstripe):  # PY-05: "a decline after the card was saved"
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway, CHARGE_FAILS)
    created = gateway.charge_off_session(customer_id=customer, payment_method_id=pm, amount=Money(9_000),
                                         key="charge:9:attempt:1")
    with pytest.raises(CardDeclined) as declined:
        gateway.confirm_off_session(created.id, key="charge:9:attempt:1:confirm")
    assert declined.value.intent_id == created.id
    assert declined.value.details["decline_code"] == "generic_decline"


def test_a_lost_or_stolen_card_shows_only_a_generic_decline(localstripe):
    gateway = localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    with pytest.raises(CardDeclined) as declined:
        gateway.pay_booking(customer_id=customer, payment_method_id="pm_card_chargeDeclinedStolenCard",
                            amount=AED_105, key="booking:4:pay:1")
    assert declined.value.details["decline_code"] == "generic_decline"  # what the customer is told
    assert declined.value.decline_code == "stolen_card"  # what ops sees


# ---- idempotency (STRIPE.md §1.5, PY-06) -------------------------------------------------------------------


def test_the_same_key_replays_the_same_intent(localstripe):
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway)
    first = gateway.pay_booking(customer_id=customer, payment_method_id=pm, amount=AED_105, key="booking:5:pay:1")
    second = gateway.pay_booking(customer_id=customer, payment_method_id=pm, amount=AED_105, key="booking:5:pay:1")
    assert second.id == first.id
    assert len(raw_client(localstripe).v1.payment_intents.list().data) == 1


def test_a_changed_amount_under_an_old_key_is_an_idempotency_conflict(localstripe, caplog):  # PY-06
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway)
    gateway.charge_off_session(customer_id=customer, payment_method_id=pm, amount=Money(25_000),
                               key="charge:10:attempt:1")
    with caplog.at_level(logging.ERROR, logger="marketplace.payments.gateway"), \
            pytest.raises(IdempotencyConflict) as conflict:
        gateway.charge_off_session(customer_id=customer, payment_method_id=pm, amount=Money(26_000),
                                   key="charge:10:attempt:1")
    assert conflict.value.status == 409 and conflict.value.code == "idempotency_conflict"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].event["idempotency_key"] == "charge:10:attempt:1"  # type: ignore[attr-defined]
    assert len(raw_client(localstripe).v1.payment_intents.list().data) == 1  # never charged the new amount


def test_negative_control_random_keys_create_two_intents_where_the_derived_key_creates_one(localstripe):
    """TESTING.md §6 rule 6: the harness can see a double charge. A job that ran twice with a fresh random key
    per call (what stripe-python does by itself) made two intents; with the key derived from the row, one."""
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway)

    def run_job(key: str) -> str:
        return gateway.charge_off_session(customer_id=customer, payment_method_id=pm, amount=Money(5_000),
                                          key=key).id

    random_ids = {run_job(f"random:{uuid.uuid4()}") for _ in range(2)}
    derived_ids = {run_job("charge:11:attempt:1") for _ in range(2)}
    assert len(random_ids) == 2
    assert len(derived_ids) == 1
    assert len(raw_client(localstripe).v1.payment_intents.list().data) == 3


@pytest.mark.parametrize("key", ["", " ", "a b", "x" * 256, "ключ", None, 42])
def test_a_key_that_is_not_derived_text_is_refused_before_any_call(key):
    gateway = Gateway(secret_key=SECRET_KEY, api_base=f"http://127.0.0.1:{_free_port()}", max_network_retries=0)
    with pytest.raises(InvalidIdempotencyKey):
        gateway.start_card_setup("cus_x", key=key)  # nothing listens there: a call would be a 503


def test_amounts_are_positive_money_in_dirhams():
    gateway = Gateway(secret_key=SECRET_KEY, api_base=f"http://127.0.0.1:{_free_port()}", max_network_retries=0)
    with pytest.raises(TypeError):
        gateway.capture_deposit("pi_x", 100, key="k")  # type: ignore[arg-type]
    for amount in (Money(0), Money(-1)):
        with pytest.raises(ValueError, match="positive"):
            gateway.capture_deposit("pi_x", amount, key="k")


def test_an_api_base_that_would_send_the_key_in_clear_text_is_refused():
    with pytest.raises(ValueError, match="STRIPE_API_BASE"):
        Gateway(secret_key=SECRET_KEY, api_base="http://stripe.example.com")
    Gateway(secret_key=SECRET_KEY, api_base="https://api.stripe.com")


# ---- refunds and payouts ------------------------------------------------------------------------------------


def test_refund_part_then_the_remainder_and_never_more(localstripe):
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway)
    paid = gateway.pay_booking(customer_id=customer, payment_method_id=pm, amount=AED_105, key="booking:6:pay:1")
    part = gateway.refund(paid.id, Money(4_000), key="refund:1")
    assert part.id.startswith("re_") and part.amount == Money(4_000) and part.status == "succeeded"
    assert part.charge_id == paid.charge_id
    assert paid.charge_id is not None
    rest = gateway.refund(paid.charge_id, Money(6_500), key="refund:2")
    assert rest.amount == Money(6_500)
    with pytest.raises(PaymentInvalid):
        gateway.refund(paid.id, Money(1), key="refund:3")
    with pytest.raises(ValueError, match="refund a charge"):
        gateway.refund("seti_x", Money(1), key="refund:4")


def test_an_over_refund_is_refused(localstripe):
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway)
    paid = gateway.pay_booking(customer_id=customer, payment_method_id=pm, amount=AED_105, key="booking:7:pay:1")
    with pytest.raises(PaymentInvalid) as refused:
        gateway.refund(paid.id, Money(10_501), key="refund:5")
    assert refused.value.status == 422 and refused.value.details["stripe_code"] == "amount_too_large"


def test_transfer_to_an_agency_account(localstripe):
    gateway = localstripe.gateway()
    customer, pm = saved_card(localstripe, gateway)
    gateway.pay_booking(customer_id=customer, payment_method_id=pm, amount=AED_105, key="booking:8:pay:1")
    account = raw_client(localstripe).v1.accounts.create(params={"type": "express", "country": "AE"})
    transfer = gateway.transfer_to_agency(account.id, Money(9_000), transfer_group="booking_8", key="transfer:1")
    assert transfer.id.startswith("tr_") and transfer.amount == Money(9_000)
    assert transfer.destination == account.id and transfer.transfer_group == "booking_8"
    assert gateway.transfer_to_agency(account.id, Money(9_000), transfer_group="booking_8",
                                      key="transfer:1") == transfer  # a re-run pays once
    with pytest.raises(PaymentInvalid) as short:  # only 15.00 left on the platform balance
        gateway.transfer_to_agency(account.id, Money(9_000), transfer_group="booking_8", key="transfer:2")
    assert short.value.details["stripe_code"] == "balance_insufficient"


# ---- webhooks (PY-01, TESTING.md F6) ---------------------------------------------------------------------------


def _event_body() -> str:
    return json.dumps({"id": "evt_1", "object": "event", "type": "payment_intent.succeeded",
                       "data": {"object": {"id": "pi_1", "object": "payment_intent"}}}, indent=2)


def _header(body: str, *, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=at)


def test_a_signed_webhook_verifies_on_its_raw_body():  # PY-01
    gateway = Gateway(secret_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET)
    body = _event_body()
    event = gateway.verify_webhook(body.encode(), _header(body))
    assert event["id"] == "evt_1" and event["type"] == "payment_intent.succeeded"
    # a replay inside the tolerance verifies too (F6): the caller deduplicates on the event id
    assert gateway.verify_webhook(body.encode(), _header(body, at=int(time.time()) - 299))["id"] == "evt_1"
    # during a secret rotation Stripe sends one v1 per secret: either one is enough
    rotated = f"{_header(body, secret='whsec_old')},v1={_header(body).split('v1=')[1]}"
    assert gateway.verify_webhook(body.encode(), rotated)["id"] == "evt_1"


@pytest.mark.parametrize("case", ["wrong_secret", "missing", "empty", "reserialised", "too_old", "garbage",
                                  "not_utf8", "no_v1"])
def test_a_forged_missing_or_altered_signature_is_invalid_signature(case):  # PY-01
    gateway = Gateway(secret_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET)
    body = _event_body()
    raw, header = body.encode(), _header(body)
    if case == "wrong_secret":
        header = _header(body, secret="whsec_forger")
    elif case == "missing":
        header = None  # type: ignore[assignment]
    elif case == "empty":
        header = ""
    elif case == "reserialised":  # same JSON, different bytes: what a framework's parse-and-dump gives
        raw = json.dumps(json.loads(body), separators=(",", ":")).encode()
    elif case == "too_old":
        header = _header(body, at=int(time.time()) - 301)
    elif case == "garbage":
        header = "t=notanumber,v1=zz"
    elif case == "not_utf8":
        raw = b"\xff\xfe" + raw
        header = f"t={int(time.time())},v1={'0' * 64}"
    elif case == "no_v1":
        header = header.split(",")[0]
    with pytest.raises(InvalidSignature) as refused:
        gateway.verify_webhook(raw, header)
    assert refused.value.status == 400 and refused.value.code == "invalid_signature"


def test_without_a_webhook_secret_every_webhook_is_refused(caplog):
    """Stripe's samples skip verification when no secret is set (STRIPE.md §1.6): ours refuses instead."""
    gateway = Gateway(secret_key=SECRET_KEY, webhook_secret=None)
    body = _event_body()
    with caplog.at_level(logging.ERROR), pytest.raises(InvalidSignature):
        gateway.verify_webhook(body.encode(), _header(body))
    assert any("STRIPE_WEBHOOK_SECRET" in r.getMessage() for r in caplog.records)


def test_only_raw_bytes_are_verified():
    gateway = Gateway(secret_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET)
    body = _event_body()
    with pytest.raises(TypeError):
        gateway.verify_webhook(json.loads(body), _header(body))  # type: ignore[arg-type]


# ---- Stripe unreachable: 503, never a 500 ------------------------------------------------------------------


def test_stripe_down_is_payment_provider_unavailable(localstripe):
    down = Gateway(secret_key=SECRET_KEY, api_base=f"http://127.0.0.1:{_free_port()}", max_network_retries=0)
    calls = [
        lambda: down.ensure_customer("u1", "u1@example.com", key="customer:u1"),
        lambda: down.pay_booking(customer_id="cus_x", payment_method_id="pm_x", amount=AED_105, key="k:1"),
        lambda: down.confirm_off_session("pi_x", key="k:2"),
        lambda: down.retrieve_intent("pi_x"),
        lambda: down.refund("pi_x", AED_105, key="k:3"),
    ]
    for call in calls:
        with pytest.raises(PaymentProviderUnavailable) as unavailable:
            call()
        assert unavailable.value.status == 503 and unavailable.value.code == "payment_provider_unavailable"


def test_a_wrong_api_key_is_unavailable_and_logged_as_an_error(localstripe, caplog):
    gateway = localstripe.gateway(secret_key="pk_test_not_a_secret_key")
    with caplog.at_level(logging.ERROR), pytest.raises(PaymentProviderUnavailable):
        gateway.retrieve_intent("pi_x")
    assert any("credentials" in r.getMessage() for r in caplog.records)


def test_an_unknown_intent_is_payment_invalid(localstripe):
    with pytest.raises(PaymentInvalid) as invalid:
        localstripe.gateway().retrieve_intent("pi_doesnotexist")
    assert invalid.value.status == 422 and invalid.value.code == "payment_invalid"


# ---- stock localstripe: the other shapes (STRIPE.md §3.4) --------------------------------------------------


def test_stock_shapes_embedded_charge_and_missing_amounts(stock_localstripe):
    """Stock localstripe embeds ``latest_charge``, has no ``amount_received``/``amount_capturable`` and no
    ``capture_before``; the gateway reads the charge id either way and derives what it can."""
    gateway = stock_localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    paid = gateway.pay_booking(customer_id=customer, payment_method_id="pm_card_visa", amount=AED_105,
                               key="booking:1:pay:1")
    assert paid.status is IntentStatus.SUCCEEDED and paid.charge_id and paid.charge_id.startswith("ch_")
    assert paid.amount_received is None  # unknown: the ledger has it
    hold = gateway.hold_deposit(customer_id=customer, payment_method_id="pm_card_visa", amount=Money(50_000),
                                key="deposit:1:hold:1")
    assert hold.amount_capturable == Money(50_000) and hold.capture_before is None


def test_stock_shapes_setup_intent_leaves_the_card_loose_and_attach_if_needed_attaches_it(stock_localstripe):
    gateway = stock_localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    setup = gateway.start_card_setup(customer, key="card-setup:1")
    sdk_confirm_setup(stock_localstripe, setup, VISA)
    pm = gateway.card_setup_outcome(setup.setup_intent_id).payment_method_id
    assert pm and raw_client(stock_localstripe).v1.payment_methods.retrieve(pm).customer is None
    gateway.attach_if_needed(pm, customer, key=f"attach:{pm}")
    assert raw_client(stock_localstripe).v1.payment_methods.retrieve(pm).customer == customer


def test_stock_shapes_3ds_off_session_left_in_requires_action_is_authentication_required(stock_localstripe):
    gateway = stock_localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    pm = raw_client(stock_localstripe).v1.payment_methods.create(params={
        "type": "card", "card": {"number": ALWAYS_3DS, "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    with pytest.raises(AuthenticationRequired) as needs:  # stock: the intent comes back requires_action, no error
        gateway.hold_deposit(customer_id=customer, payment_method_id=pm.id, amount=Money(5_000),
                             key="deposit:1:hold:2", off_session=True)
    assert needs.value.intent_id is not None
    assert gateway.retrieve_intent(needs.value.intent_id).status is IntentStatus.REQUIRES_ACTION


def test_stock_shapes_a_0341_decline_without_decline_code(stock_localstripe):
    """Stock ...0341: 402 typed ``invalid_request_error`` with no ``decline_code`` or ``payment_intent``."""
    gateway = stock_localstripe.gateway()
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    with pytest.raises(CardDeclined) as declined:
        gateway.pay_booking(customer_id=customer, payment_method_id="pm_card_chargeCustomerFail", amount=AED_105,
                            key="booking:1:pay:1")
    assert declined.value.decline_code is None and declined.value.intent_id is None
    assert declined.value.details == {"decline_code": None}


def test_stock_localstripe_has_no_transfers_which_is_unavailable_not_a_500(stock_localstripe):
    gateway = stock_localstripe.gateway()
    with pytest.raises(PaymentProviderUnavailable):  # a missing route: "Invalid response body from API: 404"
        gateway.transfer_to_agency("acct_x", Money(100), transfer_group="booking_1", key="transfer:1")


def test_the_app_has_one_gateway_built_from_its_settings(app):
    from marketplace.payments.gateway import current_gateway

    try:
        gateway = current_gateway(app)
        assert isinstance(gateway, Gateway) and current_gateway(app) is gateway
        with app.app_context():
            assert current_gateway() is gateway
    finally:
        app.extensions.pop("payments_gateway", None)
