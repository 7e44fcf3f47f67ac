"""The console's payment pages run on localstripe (tests/stripe_fixtures.py), started only by tests that ask."""

from tests.stripe_fixtures import localstripe, localstripe_server, stripe_gateway  # noqa: F401 - pytest fixtures
