"""A first end-to-end pass over registration and sign-in (fuller suites live beside this file)."""

from __future__ import annotations

from tests.factories import api_login, bearer, make_customer, outbox_token, registration_body


def test_register_verify_login_me(app, client):  # enforces P-01, P-02
    body = registration_body()
    response = client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 202
    token = outbox_token(app, to=body["email"], kind="verify_email")
    assert client.post("/api/v1/auth/verify-email", json={"token": token}).status_code == 200
    tokens = client.post("/api/v1/auth/login", json={"email": body["email"], "password": body["password"]}).get_json()
    me = client.get("/api/v1/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200
    assert me.get_json()["email"] == body["email"]


def test_factory_customer_can_sign_in(app, client, app_ctx):
    person = make_customer()
    tokens = api_login(client, person)
    assert client.get("/api/v1/me", headers=bearer(tokens["access_token"])).status_code == 200
