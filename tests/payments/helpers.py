"""What the customer's mobile SDK does with Stripe, and a raw look at localstripe's store: test code only.

Real Stripe refuses raw card numbers from a server; localstripe accepts them, so a test can play the SDK's
part (confirm a SetupIntent with a card, using the publishable key and the client secret) without a browser.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import stripe

from marketplace.payments.gateway import CardSetup
from tests.stripe_fixtures import SECRET_KEY, LocalStripe

PUBLISHABLE_KEY = "pk_test_localstripe_tests"


def sdk_confirm_setup(server: LocalStripe, setup: CardSetup, number: str = "4242424242424242",
                      *, exp_month: int = 12, exp_year: int = 2034) -> tuple[int, dict[str, Any]]:
    """POST /v1/setup_intents/{id}/confirm as the SDK does: pk_ key + client_secret + the card (test only)."""
    form = {"key": PUBLISHABLE_KEY, "client_secret": setup.client_secret,
            "payment_method_data[type]": "card", "payment_method_data[card][number]": number,
            "payment_method_data[card][exp_month]": str(exp_month),
            "payment_method_data[card][exp_year]": str(exp_year), "payment_method_data[card][cvc]": "123"}
    request = urllib.request.Request(  # noqa: S310 - loopback localstripe
        f"{server.base_url}/v1/setup_intents/{setup.setup_intent_id}/confirm",
        data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback localstripe
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def raw_client(server: LocalStripe) -> stripe.StripeClient:
    """stripe-python straight at localstripe, to look behind the gateway (counting intents, accounts)."""
    return stripe.StripeClient(SECRET_KEY, base_addresses={"api": server.base_url}, max_network_retries=0)


def http(server: LocalStripe, method: str, path: str, form: dict[str, str] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One raw request with the secret key: status, headers and JSON body (for the extension's own tests)."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(  # noqa: S310 - loopback localstripe
        f"{server.base_url}{path}", data=data, method=method,
        headers={"Authorization": f"Bearer {SECRET_KEY}", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback localstripe
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {"raw": body.decode(errors="replace")}
        return exc.code, dict(exc.headers), parsed
