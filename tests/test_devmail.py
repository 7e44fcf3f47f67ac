"""The development mail catcher at /dev/mail (issue 7 item 11): e-mailed codes readable without the console
under `make run`, and nowhere else (404 in production, in tests unless enabled, and to other machines)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from marketplace.config import ConfigError
from marketplace.crypto import KeyRing
from marketplace.extensions import db
from tests.factories import outbox_token, registration_body


def _build(overrides: dict[str, Any]) -> Flask:
    from marketplace import create_app

    other = create_app(overrides, start_background=False)
    other.config["TESTING"] = True
    return other


@pytest.fixture
def dev_app(app: Flask, app_overrides: dict[str, Any]) -> Iterator[Flask]:
    """The app as `make run` configures it (development, DEV_MAILBOX left at its default), on the test database."""
    other = _build({**app_overrides, "MARKETPLACE_ENV": "development", "DEV_MAILBOX": None})
    yield other
    with other.app_context():
        db.engine.dispose()


def _registered(client: FlaskClient) -> str:
    body = registration_body()
    assert client.post("/api/v1/auth/register", json=body).status_code == 202
    return str(body["email"])


def test_development_shows_the_outbox_with_its_codes(dev_app: Flask) -> None:
    # issue 7 item 11: a newcomer reads the sign-up code without an admin sign-in
    client = dev_app.test_client()
    email = _registered(client)
    code = outbox_token(dev_app, to=email, kind="verify_email")
    response = client.get("/dev/mail")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert email in page and code in page
    assert f'href="http://127.0.0.1:5000/confirm-email#code={code}"' in page  # the link is clickable
    assert response.headers["Cache-Control"] == "no-store"
    for host in ("localhost", "127.0.0.1:5000", "[::1]:5000"):
        assert client.get("/dev/mail", headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize(("remote", "host"), [
    ("192.168.1.20", "127.0.0.1:5000"),  # another machine on the network
    ("10.1.2.3", "localhost"),
    ("127.0.0.1", "rebind.attacker.example"),  # a loopback connection for a foreign name: DNS rebinding
    ("127.0.0.1", "0.0.0.0:5000"),
])
def test_development_refuses_anyone_but_this_machine(dev_app: Flask, remote: str, host: str) -> None:
    client = dev_app.test_client()
    _registered(client)
    response = client.get("/dev/mail", environ_base={"REMOTE_ADDR": remote}, headers={"Host": host})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_not_served_in_tests_unless_enabled_nor_when_switched_off(app: Flask, client: FlaskClient,
                                                                  app_overrides: dict[str, Any]) -> None:
    _registered(client)
    assert client.get("/dev/mail").status_code == 404  # MARKETPLACE_ENV=test: off by default
    off = _build({**app_overrides, "MARKETPLACE_ENV": "development", "DEV_MAILBOX": "0"})
    try:
        assert off.test_client().get("/dev/mail").status_code == 404
    finally:
        with off.app_context():
            db.engine.dispose()


@pytest.fixture
def production(app_overrides: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    return {**app_overrides, "MARKETPLACE_ENV": "production", "SECRET_KEY": "p" * 48,
            "MASTER_KEYRING": KeyRing.generate().to_json(), "KEYRING_PATH": str(tmp_path / "none.json"),
            "STRIPE_SECRET_KEY": "sk_live_" + "x" * 24, "STRIPE_API_BASE": None, "DEV_MAILBOX": None}


def test_production_answers_404(app: Flask, production: dict[str, Any]) -> None:
    # issue 7 item 11: never in production
    prod = _build(production)
    try:
        client = prod.test_client()
        _registered(client)
        response = client.get("/dev/mail")
        assert response.status_code == 404 and "Development mailbox" not in response.get_data(as_text=True)
    finally:
        with prod.app_context():
            db.engine.dispose()


def test_production_refuses_to_start_with_the_mailbox_switched_on(production: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="DEV_MAILBOX"):
        _build({**production, "DEV_MAILBOX": "1"})
