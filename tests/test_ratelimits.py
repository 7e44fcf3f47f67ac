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


# ---- issue 7 item 4: one count per limit across gunicorn's workers ---------------------------------------

REFRESH = "/api/v1/auth/refresh"


def _refresh_until_both_workers_answered(server: Any, *, at_least: int) -> list[int]:
    """Bogus refresh tokens (no password hashing), in bursts, until both workers have answered some.

    Which worker accepts a connection is up to the kernel; once both have answered and more attempts than
    the limit were made, per-process counters would let more than the limit through.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tests.live_gunicorn import request

    def attempt(i: int) -> int:
        return request(server.base, "POST", REFRESH, json_body={"refresh_token": f"bogus-{i}-" + "x" * 40})[0]

    statuses: list[int] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        while len(statuses) < 400:
            statuses += pool.map(attempt, range(len(statuses), len(statuses) + 8))
            if len(statuses) >= at_least and len(_pids(server, REFRESH)) == 2:
                return statuses
    pytest.fail("one worker answered 400 requests in a row: cannot tell shared from per-process counters")


def _pids(server: Any, path: str) -> set[str]:
    return {line.split()[0] for line in server.access_lines() if f'"POST {path}"' in line}


def test_each_limit_counts_once_across_gunicorn_workers(app, app_overrides, tmp_path):  # issue 7 item 4
    """`make run`'s shape (2 workers, no Redis, the embedded default storage): the limit holds exactly."""
    from tests.live_gunicorn import gunicorn

    limit = 12
    env = {"RATELIMIT_STORAGE_URI": f"sqlite:///{tmp_path / 'ratelimits.db'}",
           "RATELIMIT_REFRESH_CLIENT": f"{limit} per minute"}
    with gunicorn(app_overrides, tmp_path, env=env) as server:
        statuses = _refresh_until_both_workers_answered(server, at_least=limit + 4)
    assert statuses.count(401) == limit, statuses
    assert set(statuses) == {401, 429}, statuses


def test_negative_control_per_process_memory_counters_double_the_limit(app, app_overrides, tmp_path):  # issue 7 item 4
    """What the old default (memory://) did: each worker kept its own count."""
    from tests.live_gunicorn import gunicorn

    limit = 12
    env = {"RATELIMIT_STORAGE_URI": "memory://", "RATELIMIT_REFRESH_CLIENT": f"{limit} per minute"}
    with gunicorn(app_overrides, tmp_path, env=env) as server:
        statuses = _refresh_until_both_workers_answered(server, at_least=limit + 4)
    assert statuses.count(401) > limit, statuses


def test_the_embedded_default_storage_is_a_file_under_var(app, tmp_path):  # issue 7 item 4
    settings = load_settings({"REDIS_URL": None, "RATELIMIT_STORAGE_URI": None, "VAR_DIR": str(tmp_path)})
    assert settings.ratelimit_storage_uri == f"sqlite:///{tmp_path.resolve() / 'ratelimits.db'}"
    with_redis = load_settings({"REDIS_URL": "redis://127.0.0.1:6379/0", "RATELIMIT_STORAGE_URI": None})
    assert with_redis.ratelimit_storage_uri == "redis://127.0.0.1:6379/0"


# ---- issue 7 item 7: no personal data in the limiter's keys --------------------------------------------


def _limit_keys(app: Flask) -> list[str]:
    from marketplace.extensions import limiter
    from marketplace.ratelimit_sqlite import SQLiteStorage

    with app.app_context():
        storage = limiter.storage
        if isinstance(storage, SQLiteStorage):
            return storage.keys()
        import redis

        connection = redis.Redis.from_url(app.config["SETTINGS"].redis_url)
        return [k.decode() for k in connection.scan_iter(match="LIMIT*")]


def test_limit_keys_hold_no_email_address_or_client_address(app, client, app_ctx):  # issue 7 item 7
    from marketplace.permissions import Role
    from tests.factories import make_staff, next_totp

    customer = make_customer(email="keyscan.customer@example.com")
    staff = make_staff(Role.KYC_REVIEWER, email="keyscan.staff@staff.example")
    address = "192.0.2.77"
    there = {"environ_base": {"REMOTE_ADDR": address}}
    for _ in range(3):
        login(client, customer.email, **there)
    client.post(RESET, json={"email": customer.email}, **there)
    client.post(REGISTER, json=registration_body(email="keyscan.new@example.com"), **there)
    tokens = login(client, staff.email, PASSWORD, **there).get_json()
    client.post("/api/v1/auth/mfa", json={"code": next_totp(staff)},
                headers={"Authorization": f"Bearer {tokens['access_token']}"}, **there)
    web = app.test_client()
    page = web.get("/console/login")
    from tests.factories import csrf_from

    web.post("/console/login", data={"email": customer.email, "password": WRONG,
                                     "csrf_token": csrf_from(page.get_data(as_text=True))}, **there)
    keys = _limit_keys(app)
    assert len(keys) >= 6, keys  # the throttles did count
    for key in keys:
        lowered = key.lower()
        assert "keyscan" not in lowered and "example" not in lowered and "@" not in key, key
        assert address not in key and "127.0.0.1" not in key, key
    # the same account still lands on one counter (keyed hash, not a random one)
    from marketplace.ratelimits import account_key

    assert account_key(customer.email) == account_key(customer.email.upper())
    assert account_key(customer.email) != account_key(staff.email)
