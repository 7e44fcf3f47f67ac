"""Payments tests run against real localstripe on loopback (tests/stripe_fixtures.py), or the fake where it falls
short (tests/payments/fake_stripe.py); each test says which and why."""

from tests.stripe_fixtures import (  # noqa: F401 - pytest fixtures
    localstripe,
    localstripe_server,
    stock_localstripe,
    stock_localstripe_server,
    stripe_gateway,
)
