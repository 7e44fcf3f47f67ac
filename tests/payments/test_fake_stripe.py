"""The in-process fake (tests/payments/fake_stripe.py) stands in for the gateway where localstripe cannot go.

Why the fake here and not localstripe: holds never lapse in localstripe and it has no ``capture_before``
clock (hold expiry, ``charge.expired``); it never prunes idempotency keys (a retry 3 days later); it has no
disputes; and it cannot drop the connection *after* acting (the outcome-unknown case). First the fake is held
to the gateway: the same methods and signatures, and one scenario that gives the same answers on both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from marketplace.money import Money
from marketplace.payments.errors import (
    AuthenticationRequired,
    CardDeclined,
    IdempotencyConflict,
    InvalidSignature,
    PaymentInvalid,
    PaymentProviderUnavailable,
)
from marketplace.payments.gateway import Gateway, IntentStatus, PaymentGateway
from tests.payments.fake_stripe import CIT_HOLD_WINDOW, VISA_MIT_HOLD_WINDOW, FakeStripe
from tests.payments.helpers import sdk_confirm_setup
from tests.stripe_fixtures import SECRET_KEY

VISA = "4242424242424242"


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def test_the_fake_has_the_gateways_methods_with_the_same_signatures():
    gateway, fake = _public_methods(Gateway), _public_methods(FakeStripe)
    protocol = {name for name in vars(PaymentGateway) if not name.startswith("_")}
    assert protocol <= set(gateway), "Gateway lacks a method of the PaymentGateway protocol"
    for name in protocol:
        assert name in fake, f"the fake lacks {name}"
        assert str(fake[name]) == str(gateway[name]), name


# ---- one scenario, both backends ---------------------------------------------------------------------------


def _on_localstripe(request: pytest.FixtureRequest) -> tuple[PaymentGateway, Callable[[str, str], str]]:
    server = request.getfixturevalue("localstripe")
    gateway = server.gateway()

    def save_card(customer: str, number: str) -> str:
        setup = gateway.start_card_setup(customer, key=f"card-setup:{customer}:{number}")
        sdk_confirm_setup(server, setup, number)
        pm = gateway.card_setup_outcome(setup.setup_intent_id).payment_method_id
        assert pm
        return pm

    return gateway, save_card


def _on_fake(request: pytest.FixtureRequest) -> tuple[PaymentGateway, Callable[[str, str], str]]:
    fake = FakeStripe()

    def save_card(customer: str, number: str) -> str:
        setup = fake.start_card_setup(customer, key=f"card-setup:{customer}:{number}")
        pm = fake.add_card(number)
        fake.confirm_setup(setup.setup_intent_id, pm)
        return pm

    return fake, save_card


@pytest.mark.parametrize("backend", [_on_localstripe, _on_fake], ids=["localstripe", "fake"])
def test_the_fake_and_localstripe_agree_on_one_journey(request, backend: Any):
    gateway, save_card = backend(request)
    customer = gateway.ensure_customer("u1", "u1@example.com", key="customer:u1")
    pm = save_card(customer, VISA)
    card = gateway.attach_if_needed(pm, customer, key=f"attach:{pm}")
    assert (card.brand, card.last4) == ("visa", "4242")

    paid = gateway.pay_booking(customer_id=customer, payment_method_id=pm, amount=Money(10_500), key="pay:1")
    assert paid.status is IntentStatus.SUCCEEDED and paid.amount_received == Money(10_500)
    assert gateway.pay_booking(customer_id=customer, payment_method_id=pm, amount=Money(10_500),
                               key="pay:1").id == paid.id
    with pytest.raises(IdempotencyConflict):
        gateway.pay_booking(customer_id=customer, payment_method_id=pm, amount=Money(10_600), key="pay:1")

    hold = gateway.hold_deposit(customer_id=customer, payment_method_id=pm, amount=Money(50_000), key="hold:1")
    assert hold.status is IntentStatus.REQUIRES_CAPTURE and hold.amount_capturable == Money(50_000)
    assert hold.capture_before is not None
    captured = gateway.capture_deposit(hold.id, Money(20_000), key="capture:1")
    assert captured.status is IntentStatus.SUCCEEDED and captured.amount_received == Money(20_000)

    assert gateway.refund(paid.id, Money(500), key="refund:1").amount == Money(500)
    with pytest.raises(PaymentInvalid):
        gateway.refund(paid.id, Money(10_001), key="refund:2")

    charge = gateway.charge_off_session(customer_id=customer, payment_method_id=pm, amount=Money(3_000),
                                        key="charge:1:attempt:1")
    assert charge.status is IntentStatus.REQUIRES_CONFIRMATION
    done = gateway.confirm_off_session(charge.id, key="charge:1:attempt:1:confirm")
    assert done.status is IntentStatus.SUCCEEDED

    risky = save_card(customer, "4000000000000341")  # saves fine, every charge declines
    risky_charge = gateway.charge_off_session(customer_id=customer, payment_method_id=risky, amount=Money(3_000),
                                              key="charge:2:attempt:1")
    with pytest.raises(CardDeclined) as declined:
        gateway.confirm_off_session(risky_charge.id, key="charge:2:attempt:1:confirm")
    assert declined.value.intent_id == risky_charge.id


# ---- only the fake: hold expiry --------------------------------------------------------------------------------


def _customer_with_card(fake: FakeStripe, number: str = VISA) -> tuple[str, str]:
    customer = fake.ensure_customer("u1", "u1@example.com", key="customer:u1")
    pm = fake.add_card(number)
    fake.attach_if_needed(pm, customer, key=f"attach:{pm}")
    return customer, pm


def test_a_hold_lapses_after_capture_before_with_charge_expired():  # P-22, STRIPE.md §1.2 (fake: no expiry in ls)
    fake = FakeStripe()
    customer, pm = _customer_with_card(fake)
    hold = fake.hold_deposit(customer_id=customer, payment_method_id=pm, amount=Money(50_000), key="hold:1")
    assert hold.capture_before == fake.now + CIT_HOLD_WINDOW
    fake.advance(CIT_HOLD_WINDOW - timedelta(seconds=1))
    assert fake.expire_holds() == []
    fake.advance(timedelta(seconds=1))
    assert fake.expire_holds() == [hold.id]
    assert fake.retrieve_intent(hold.id).status is IntentStatus.CANCELED
    assert [e["type"] for e in fake.events] == ["charge.expired", "payment_intent.canceled"]
    with pytest.raises(PaymentInvalid):  # the capture that came too late (woocommerce-payments#739)
        fake.capture_deposit(hold.id, Money(10_000), key="capture:1")


def test_a_visa_hold_placed_by_our_job_lasts_4_days_18_hours():  # STRIPE.md §1.2 table
    fake = FakeStripe()
    customer, pm = _customer_with_card(fake)
    rehold = fake.hold_deposit(customer_id=customer, payment_method_id=pm, amount=Money(50_000), key="hold:2",
                               off_session=True)
    assert rehold.capture_before == fake.now + VISA_MIT_HOLD_WINDOW


# ---- only the fake: key pruning and the outcome-unknown case ---------------------------------------------------


def test_a_key_is_replayed_for_24_hours_then_pruned():  # PY-06 (fake: localstripe never prunes keys)
    fake = FakeStripe()
    customer, pm = _customer_with_card(fake)
    first = fake.charge_off_session(customer_id=customer, payment_method_id=pm, amount=Money(3_000), key="charge:1:1")
    fake.advance(timedelta(hours=23, minutes=59))
    assert fake.charge_off_session(customer_id=customer, payment_method_id=pm, amount=Money(3_000),
                                   key="charge:1:1").id == first.id
    fake.advance(timedelta(days=3))
    late = fake.charge_off_session(customer_id=customer, payment_method_id=pm, amount=Money(3_000), key="charge:1:1")
    assert late.id != first.id  # why the stored intent id, not the key, is what a late retry must use
    assert fake.retrieve_intent(first.id).status is IntentStatus.REQUIRES_CONFIRMATION


def test_a_connection_lost_after_stripe_acted_is_recovered_by_the_same_key():  # JB-01, TESTING.md F4
    """(fake: localstripe cannot drop the connection after acting)."""
    fake = FakeStripe()
    customer, pm = _customer_with_card(fake)
    fake.fail_next(after_effect=True)
    with pytest.raises(PaymentProviderUnavailable):
        fake.pay_booking(customer_id=customer, payment_method_id=pm, amount=Money(10_500), key="pay:1")
    retried = fake.pay_booking(customer_id=customer, payment_method_id=pm, amount=Money(10_500), key="pay:1")
    assert retried.status is IntentStatus.SUCCEEDED
    assert len(fake._intents) == 1  # charged once


def test_a_connection_refused_before_stripe_acted_changes_nothing():
    fake = FakeStripe()
    customer, pm = _customer_with_card(fake)
    fake.fail_next()
    with pytest.raises(PaymentProviderUnavailable):
        fake.pay_booking(customer_id=customer, payment_method_id=pm, amount=Money(10_500), key="pay:1")
    assert fake._intents == {}


def test_the_fake_fails_3ds_off_session_and_replays_it():
    fake = FakeStripe()
    customer, pm = _customer_with_card(fake, "4000002760003184")
    charge = fake.charge_off_session(customer_id=customer, payment_method_id=pm, amount=Money(3_000), key="c:1")
    for _ in range(2):
        with pytest.raises(AuthenticationRequired) as needs:
            fake.confirm_off_session(charge.id, key="c:1:confirm")
        assert needs.value.intent_id == charge.id
    assert fake.calls.count("confirm_off_session") == 2


# ---- only the fake: disputes and signed synthetic events --------------------------------------------------------


def test_a_dispute_event_is_signed_like_stripe_and_verifies_with_the_real_gateway():  # P-24 (fake: no disputes)
    fake = FakeStripe()
    customer, pm = _customer_with_card(fake)
    paid = fake.pay_booking(customer_id=customer, payment_method_id=pm, amount=Money(10_500), key="pay:1")
    assert paid.charge_id
    dispute = fake.open_dispute(paid.charge_id)
    event = fake.events[-1]
    assert event["type"] == "charge.dispute.created" and event["data"]["object"]["id"] == dispute["id"]
    body, header = fake.signed(event)
    # the fake's signer and stripe-python's verifier (inside the real gateway) agree
    assert fake.verify_webhook(body, header)["id"] == event["id"]
    real = Gateway(secret_key=SECRET_KEY, webhook_secret=fake.webhook_secret)
    assert real.verify_webhook(body, header)["id"] == event["id"]
    forged_body, forged_header = fake.signed(event, secret="whsec_forger")
    for verifier in (fake, real):
        with pytest.raises(InvalidSignature):
            verifier.verify_webhook(forged_body, forged_header)
