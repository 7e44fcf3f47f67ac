"""The charge journey pays through real localstripe on loopback (tests/stripe_fixtures.py)."""

from tests.stripe_fixtures import localstripe, localstripe_server, stripe_gateway  # noqa: F401 - pytest fixtures
