"""Sign-in, registration and reset throttles (AN-01, AN-02, IN-04).

The session app runs with the production proxy setting (``TRUSTED_PROXY_COUNT=0``: no proxy in front),
so forwarded headers are ignored. The negative control builds a second app on the same database that
wrongly trusts one proxy hop, and shows what that costs (TESTING.md §6 rule 6, fact F10).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient

from marketplace.config import load_settings
from marketplace.extensions import db
from tests.factories import PASSWORD, make_customer, registration_body, table_rows

LOGIN = "/api/v1/auth/login"
REGISTER = "/api/v1/auth/register"
RESET = "/api/v1/auth/password-reset"
WRONG = "Wrong-Password-000"


def error_code(response: Any) -> str:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    return str(body["error"]["code"])


def assert_rate_limited(response: Any) -> None:
    assert response.status_code == 429, response.get_json()
    assert error_code(response) == "rate_limited"
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) > 0


def spoofed(i: int) -> dict[str, str]:
    """Every header a client might use to claim another address."""
    address = f"198.51.100.{i % 250 + 1}"
    return {"X-Forwarded-For": address, "Forwarded": f"for={address};proto=https", "X-Real-IP": address,
            "X-Client-IP": address, "True-Client-IP": address, "CF-Connecting-IP": address}


def login(client: FlaskClient, email: str, password: str = WRONG, **kwargs: Any) -> Any:
    return client.post(LOGIN, json={"email": email, "password": password}, **kwargs)


@pytest.fixture
def proxy_app(app: Flask, app_overrides: dict[str, Any]) -> Iterator[Flask]:
    """A second app on the same (migrated) database that trusts one proxy hop it does not have."""
    from marketplace import create_app

    other = create_app({**app_overrides, "TRUSTED_PROXY_COUNT": "1"}, start_background=False)
    other.config["TESTING"] = True
    yield other
    with other.app_context():
        db.engine.dispose()


# ---- AN-01: per account, not global ---------------------------------------------------------------


def test_five_wrong_passwords_lock_that_account_only(app, client, app_ctx):  # AN-01
    a = make_customer()
    b = make_customer()
    for _ in range(5):
        response = login(client, a.email)
        assert response.status_code == 401
        assert error_code(response) == "invalid_credentials"
    assert_rate_limited(login(client, a.email))
    # even the right password does not get through while A is throttled
    assert_rate_limited(login(client, a.email, PASSWORD))
    # B signs in from the same address
    assert login(client, b.email, PASSWORD).status_code == 200


def test_the_account_throttle_ignores_case_spacing_and_unicode_variants_of_the_email(
        app, client, app_ctx):  # AN-01
    a = make_customer(email="throttle.target@example.com")
    fullwidth_e, ideographic_stop = "\uff45", "\u3002"  # e-mail normalisation maps them to "e" and "."
    variants = ["throttle.target@example.com", "THROTTLE.TARGET@EXAMPLE.COM", "  throttle.target@example.com ",
                "throttle.target@Example.Com", f"throttle.target@{fullwidth_e}xample.com",
                f"throttle.target@example{ideographic_stop}com"]
    # each variant names the same account ...
    for variant in variants[1:]:
        assert login(client, variant, PASSWORD).status_code == 200, variant
    from marketplace.extensions import limiter

    limiter.reset()
    # ... so they share one throttle
    for variant in variants[:5]:
        assert login(client, variant).status_code == 401
    for variant in variants:
        assert_rate_limited(login(client, variant, PASSWORD))
    assert login(client, make_customer().email, PASSWORD).status_code == 200
    assert a.email == "throttle.target@example.com"


def test_successful_sign_ins_do_not_count_towards_the_account_throttle(app, client, app_ctx):  # AN-01
    a = make_customer()
    for _ in range(8):
        assert login(client, a.email, PASSWORD).status_code == 200


def test_the_account_throttle_lifts_after_the_window(app, client, app_ctx):  # AN-01
    a = make_customer()
    for _ in range(5):
        assert login(client, a.email).status_code == 401
    locked = login(client, a.email, PASSWORD)
    assert_rate_limited(locked)
    with time_machine.travel(datetime.now(UTC) + timedelta(seconds=int(locked.headers["Retry-After"]) + 5)):
        assert login(client, a.email, PASSWORD).status_code == 200


# ---- AN-02: forwarded headers do not move the client ------------------------------------------------


def test_production_default_trusts_no_proxy(app):  # AN-02, IN-06
    assert load_settings({"TRUSTED_PROXY_COUNT": None}).trusted_proxy_count == 0
    assert app.config["SETTINGS"].trusted_proxy_count == 0


def test_rotating_forwarded_headers_do_not_dodge_the_account_throttle(app, client, app_ctx):  # AN-02
    a = make_customer()
    statuses = [login(client, a.email, headers=spoofed(i)).status_code for i in range(7)]
    assert statuses == [401] * 5 + [429] * 2


def test_rotating_forwarded_headers_do_not_dodge_the_client_throttle(app, client):  # AN-02
    limit = 30  # login_client: 30 per minute
    for i in range(limit):
        response = login(client, f"nobody{i}@example.com", headers=spoofed(i))
        assert response.status_code == 401, i
    # a fresh account name and yet another claimed address: still the same client
    assert_rate_limited(login(client, "somebody-else@example.com", headers=spoofed(999)))
    # another real client is not affected
    other = login(client, "nobody@example.com", environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert other.status_code == 401


def test_negative_control_trusting_a_proxy_that_is_not_there_lets_clients_dodge(proxy_app):  # AN-02
    """With ``TRUSTED_PROXY_COUNT=1`` and no proxy, a forged X-Forwarded-For becomes the client address."""
    client = proxy_app.test_client()
    for i in range(40):  # past the 30-per-minute client limit
        response = login(client, f"nobody{i}@example.com", headers={"X-Forwarded-For": f"203.0.113.{i + 1}"})
        assert response.status_code == 401, i  # never throttled: the per-client limit is dodged
    # without a forged header the real client is throttled as before
    for _ in range(30):
        login(client, "nobody@example.com")
    assert_rate_limited(login(client, "nobody@example.com"))


def test_negative_control_the_account_throttle_still_holds_behind_a_forged_proxy(proxy_app):  # AN-02, AN-01
    with proxy_app.app_context():
        a = make_customer()
    client = proxy_app.test_client()
    statuses = [login(client, a.email, headers={"X-Forwarded-For": f"203.0.113.{i + 1}"}).status_code
                for i in range(7)]
    assert statuses == [401] * 5 + [429] * 2
    assert_rate_limited(login(client, a.email, PASSWORD, headers={"X-Forwarded-For": "203.0.113.200"}))


# ---- registration and password reset (IN-04, AN-04) -------------------------------------------------


def test_registration_is_limited_per_client(app, client):  # IN-04
    limit = 20  # register_client: 20 per hour
    for i in range(limit):
        response = client.post(REGISTER, json=registration_body(), headers=spoofed(i))
        assert response.status_code == 202, (i, response.get_json())
    before = table_rows(app, "users", "consents", "outbox_messages")
    blocked = client.post(REGISTER, json=registration_body(), headers=spoofed(99))
    assert_rate_limited(blocked)
    assert table_rows(app, "users", "consents", "outbox_messages") == before
    # another client can still register
    other = client.post(REGISTER, json=registration_body(), environ_base={"REMOTE_ADDR": "192.0.2.20"})
    assert other.status_code == 202


def test_password_reset_is_limited_per_account(app, client, app_ctx):  # IN-04, AN-04
    a = make_customer()
    for variant in (a.email, a.email.upper(), f" {a.email} "):
        assert client.post(RESET, json={"email": variant}).status_code == 202
    assert_rate_limited(client.post(RESET, json={"email": a.email}))
    # unknown accounts are limited exactly the same way (no enumeration through the limiter)
    for _ in range(3):
        assert client.post(RESET, json={"email": "nobody@example.com"}).status_code == 202
    assert_rate_limited(client.post(RESET, json={"email": "nobody@example.com"}))
    # another account from the same client is not affected
    assert client.post(RESET, json={"email": make_customer().email}).status_code == 202


def test_password_reset_is_limited_per_client(app, client):  # IN-04
    limit = 20  # reset_client: 20 per hour
    for i in range(limit):
        assert client.post(RESET, json={"email": f"nobody{i}@example.com"}, headers=spoofed(i)).status_code == 202
    assert_rate_limited(client.post(RESET, json={"email": "fresh@example.com"}, headers=spoofed(77)))
    other = client.post(RESET, json={"email": "fresh@example.com"}, environ_base={"REMOTE_ADDR": "192.0.2.30"})
    assert other.status_code == 202
