"""Production configuration is locked down (IN-06): no start without secrets, no debugger, strict headers."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from marketplace.config import ConfigError, load_settings
from marketplace.crypto import KeyRing, KeyRingError
from marketplace.extensions import db

STRONG_SECRET = "p" * 16 + "r0duct10n-s3cret-key-of-enough-length"
ALLOWED_ORIGIN = "https://app.carejar.example"


@pytest.fixture
def production(app: Flask, app_overrides: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Production settings with every secret present; tests take pieces away."""
    return {
        **app_overrides,
        "MARKETPLACE_ENV": "production",
        "SECRET_KEY": STRONG_SECRET,
        "MASTER_KEYRING": KeyRing.generate().to_json(),
        "KEYRING_PATH": str(tmp_path / "no-keyring-here.json"),
        "STRIPE_SECRET_KEY": "sk_live_" + "x" * 24,
        "STRIPE_API_BASE": None,
        "CORS_ORIGINS": ALLOWED_ORIGIN,
    }


def build(overrides: dict[str, Any]) -> Flask:
    from marketplace import create_app

    return create_app(overrides, start_background=False)


@pytest.fixture
def production_app(production: dict[str, Any]) -> Iterator[Flask]:
    application = build(production)
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ({"SECRET_KEY": None}, "SECRET_KEY"),
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"SECRET_KEY": "too-short-secret"}, "SECRET_KEY"),
        ({"MASTER_KEYRING": None}, "MASTER_KEYRING"),
        ({"MASTER_KEYRING": ""}, "MASTER_KEYRING"),
        ({"STRIPE_SECRET_KEY": None}, "STRIPE_SECRET_KEY"),
        ({"STRIPE_SECRET_KEY": ""}, "STRIPE_SECRET_KEY"),
        ({"STRIPE_SECRET_KEY": "pk_live_publishable_not_secret"}, "STRIPE_SECRET_KEY"),
    ],
)
def test_production_refuses_to_start_without_its_secrets(production, missing, message):  # IN-06
    with pytest.raises(ConfigError) as caught:
        build({**production, **missing})
    assert message in str(caught.value)
    # the refusal never quotes a secret
    assert STRONG_SECRET not in str(caught.value)


def test_production_refuses_a_master_key_ring_that_is_not_a_key_ring(production):  # IN-06
    with pytest.raises(KeyRingError) as caught:
        build({**production, "MASTER_KEYRING": "not-a-key-ring"})
    assert "not-a-key-ring" not in str(caught.value)


def test_production_never_falls_back_to_a_generated_secret_or_key_ring(production, tmp_path):  # IN-06
    keyring = Path(production["KEYRING_PATH"])
    with pytest.raises(ConfigError):
        build({**production, "MASTER_KEYRING": None})
    assert not keyring.exists()  # no key ring is quietly created in production
    secret_file = tmp_path / "var" / "secret_key"
    with pytest.raises(ConfigError):
        build({**production, "SECRET_KEY": None, "VAR_DIR": str(tmp_path / "var")})
    assert not secret_file.exists()  # nor a random secret key


def test_development_still_starts_without_them(app_overrides):
    settings = load_settings({**app_overrides, "MARKETPLACE_ENV": "development", "STRIPE_SECRET_KEY": None,
                              "MASTER_KEYRING": None})
    assert not settings.production


@pytest.mark.parametrize("encoding", ["json", "base64"])
def test_production_starts_with_its_secrets(production, encoding):  # IN-06
    ring = KeyRing.generate()
    value = ring.to_json()
    if encoding == "base64":
        value = base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")
    application = build({**production, "MASTER_KEYRING": value})
    try:
        settings = application.config["SETTINGS"]
        assert settings.production
        assert application.config["SECRET_KEY"] == STRONG_SECRET
        assert application.extensions["keyring"].active_key_id == ring.active_key_id
        assert settings.stripe_api_base is None  # never a local Stripe stand-in in production
        assert application.config["SESSION_COOKIE_SECURE"] is True
        assert application.config["PREFERRED_URL_SCHEME"] == "https"
    finally:
        with application.app_context():
            db.engine.dispose()


def test_debug_and_the_werkzeug_debugger_are_off(production, monkeypatch):  # IN-06
    monkeypatch.setenv("FLASK_DEBUG", "1")
    application = build(production)
    try:
        assert application.debug is False
        assert application.config["DEBUG"] is False
        assert application.config["PROPAGATE_EXCEPTIONS"] is False
        assert "Debugged" not in type(application.wsgi_app).__name__
        response = application.test_client().get("/console/?__debugger__=yes&cmd=resource&f=style.css")
        assert response.status_code != 200 or b"Werkzeug" not in response.get_data()
    finally:
        with application.app_context():
            db.engine.dispose()


def test_production_responses_carry_hsts_and_the_security_headers(production_app):  # IN-06
    client = production_app.test_client()
    for response in (client.get("/api/v1/ping"), client.get("/api/v1/nope"), client.get("/api/v1/me")):
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        max_age = int(response.headers["Strict-Transport-Security"].split("max-age=")[1].split(";")[0])
        assert max_age >= 31536000
        assert "includeSubDomains" in response.headers["Strict-Transport-Security"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"


def test_no_hsts_outside_production(client):  # IN-06
    assert "Strict-Transport-Security" not in client.get("/api/v1/ping").headers


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (ALLOWED_ORIGIN, True),
        ("https://app.carejar.example.evil.test", False),
        ("https://evil.test", False),
        ("http://app.carejar.example", False),
        ("https://APP.carejar.example", False),
        ("null", False),
        (ALLOWED_ORIGIN + "/", False),
    ],
)
def test_cors_is_an_exact_allow_list(production_app, origin, allowed):  # IN-06
    response = production_app.test_client().get("/api/v1/ping", headers={"Origin": origin})
    if allowed:
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "Origin" in response.headers["Vary"]
    else:
        assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers.get("Access-Control-Allow-Credentials") is None


@pytest.mark.parametrize("value", ["-1", "11", "many"])
def test_stripe_network_retries_must_be_a_small_whole_number(app_overrides, value):
    with pytest.raises(ConfigError, match="STRIPE_MAX_NETWORK_RETRIES"):
        load_settings({**app_overrides, "STRIPE_MAX_NETWORK_RETRIES": value})
    assert load_settings({**app_overrides, "STRIPE_MAX_NETWORK_RETRIES": None}).stripe_max_network_retries == 2
