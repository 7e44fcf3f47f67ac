"""The pages the customer e-mails link to, and what the e-mails, the API and its document call the code.

issue 7 item 10: the e-mail's link (``/confirm-email#code=...``) was a 404. The browser journeys (the page's
script calling the API) are in tests/browser/test_customer_pages.py.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from marketplace.extensions import db
from marketplace.notifications.models import OutboxMessage
from tests.factories import make_customer, outbox_token, registration_body

LINK = re.compile(r"^(http://\S+)/(confirm-email|reset-password)#code=(\S+)$", re.M)


def _body(app: Flask, *, to: str, kind: str) -> str:
    with app.app_context():
        message = db.session.execute(
            select(OutboxMessage).where(OutboxMessage.to_address == to, OutboxMessage.kind == kind)
            .order_by(OutboxMessage.id.desc()).limit(1)
        ).scalar_one()
        return message.body_text


@pytest.mark.parametrize(("path", "endpoint"), [("/confirm-email", "/api/v1/auth/verify-email"),
                                                 ("/reset-password", "/api/v1/auth/password-reset/confirm")])
def test_the_linked_pages_are_served_with_their_script(client: FlaskClient, path: str, endpoint: str) -> None:
    # issue 7 item 10
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert f'data-endpoint="{endpoint}"' in page
    assert 'name="token"' in page  # the API's field name
    scripts = re.findall(r"<script([^>]*)>", page)
    assert scripts == [' src="/static/code-form.js"']  # no inline script: the CSP allows 'self' only
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    script = client.get("/static/code-form.js")
    assert script.status_code == 200 and script.mimetype in ("text/javascript", "application/javascript")
    assert "#code=" not in page  # the code is read in the browser, never put in the page by the server
    source = script.get_data(as_text=True)
    assert "code=" in source and endpoint not in source  # one script, told its endpoint by the page
    script.close()


def test_the_emailed_link_carries_the_printed_code_to_a_page_that_exists(app: Flask, client: FlaskClient) -> None:
    # issue 7 item 10: the link's page is served, and the code it carries is the one the API takes as `token`
    body = registration_body()
    assert client.post("/api/v1/auth/register", json=body).get_json()["message"] == (
        "If this e-mail can be used, a confirmation code is on its way.")
    text = _body(app, to=body["email"], kind="verify_email")
    printed = outbox_token(app, to=body["email"], kind="verify_email")
    base, page, code = LINK.search(text).groups()  # type: ignore[union-attr]
    assert base == app.config["SETTINGS"].public_base_url and code == printed
    assert "code" in text and "token" not in text  # the customer is told of a code, never of a "token"
    assert client.get(f"/{page}").status_code == 200
    assert client.post("/api/v1/auth/verify-email", json={"token": code}).status_code == 200


def test_the_reset_email_links_to_its_page_and_states_the_configured_lifetime(app: Flask, client: FlaskClient) -> None:
    # issue 7 item 10: the reset e-mail said "valid 60 minutes" whatever PASSWORD_RESET_TTL_MINUTES said
    with app.app_context():
        person = make_customer()
    old = app.config["SETTINGS"]
    app.config["SETTINGS"] = dataclasses.replace(old, password_reset_ttl=timedelta(minutes=25))
    try:
        assert client.post("/api/v1/auth/password-reset", json={"email": person.email}).status_code == 202
    finally:
        app.config["SETTINGS"] = old
    text = _body(app, to=person.email, kind="password_reset")
    assert "valid 25 minutes" in text
    _, page, code = LINK.search(text).groups()  # type: ignore[union-attr]
    assert page == "reset-password" and code == outbox_token(app, to=person.email, kind="password_reset")
    assert client.get(f"/{page}").status_code == 200


def test_the_openapi_document_calls_the_token_the_emailed_code(client: FlaskClient) -> None:
    # issue 7 item 10: the e-mail says "code", the field is `token`: the document says they are the same
    spec: dict[str, Any] = client.get("/api/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    for path in ("/api/v1/auth/verify-email", "/api/v1/auth/password-reset/confirm"):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        token = schemas[ref.rsplit("/", 1)[-1]]["properties"]["token"]
        assert "code from the e-mail" in token["description"], path
        assert "token" in spec["paths"][path]["post"]["summary"] + spec["paths"][path]["post"].get("description", "")
    register = spec["paths"]["/api/v1/auth/register"]["post"]
    assert "link" not in register["summary"] and "code" in register["summary"]


def test_api_index_links_to_the_docs(client: FlaskClient) -> None:
    # issue 7 item 10: the first URL `make run` prints was a 404
    response = client.get("/api/v1")
    assert response.status_code == 200 and response.mimetype == "application/json"
    index = response.get_json()
    assert index["links"]["docs"] == "/api/docs" and index["links"]["openapi"] == "/api/openapi.json"
    for link in index["links"].values():
        assert client.get(link).status_code == 200, link
    spec = client.get("/api/openapi.json").get_json()
    assert spec["paths"]["/api/v1"]["get"]["security"] == []  # documented as public
