"""The newcomer's sign-up in the system's headless Chromium (issue 7 items 10 and 11): register over the API,
read the e-mail in the development mailbox, follow its link, and the page's script confirms the account.
The same for a forgotten password. Each journey fails on any browser console error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from tests.browser import test_console_signin as signin
from tests.browser.test_console_signin import BROWSER_JOURNEY, Journal
from tests.factories import make_customer, registration_body

pytestmark = BROWSER_JOURNEY

browser = signin.browser
page = signin.page


@pytest.fixture
def dev_server(app: Flask, live_server: str) -> Iterator[str]:
    """The live server as `make run` has it: the mail catcher on, e-mailed links pointing at this server."""
    old = app.config["SETTINGS"]
    app.config["SETTINGS"] = dataclasses.replace(old, dev_mailbox=True, public_base_url=live_server)
    try:
        yield live_server
    finally:
        app.config["SETTINGS"] = old


def _open_mail_link(tab: Any, server: str, to: str, path: str) -> None:
    tab.goto(f"{server}/dev/mail")
    mail = tab.locator("div.mail", has=tab.locator(".mail-to", has_text=to)).first
    mail.locator(f"a[href*='{path}#code=']").click()
    tab.wait_for_url(f"{server}{path}")  # the script drops the code from the address bar


def test_sign_up_with_the_emailed_link(app: Flask, dev_server: str, page: tuple[Any, Journal]) -> None:
    # issue 7 items 10, 11: register -> read the e-mail without the console -> open the link -> account active
    tab, journal = page
    body = registration_body()
    client = app.test_client()
    assert client.post("/api/v1/auth/register", json=body).status_code == 202
    assert client.post("/api/v1/auth/login", json={"email": body["email"], "password": body["password"]}
                       ).get_json()["error"]["code"] == "email_unverified"

    _open_mail_link(tab, dev_server, body["email"], "/confirm-email")
    result = tab.locator("#result")
    result.wait_for(state="visible")
    assert "Your e-mail address is confirmed" in result.inner_text()
    assert tab.locator("#code-form").is_hidden()
    assert "code=" not in tab.url
    assert any(url.endswith("/api/v1/auth/verify-email") for url in journal.requests)
    response = client.post("/api/v1/auth/login", json={"email": body["email"], "password": body["password"]})
    assert response.status_code == 200, response.get_json()

    tab.goto(tab.url)  # the link again: the code is gone from the address, so the page asks for it
    tab.fill("#code", "not-a-real-code")
    tab.click("button[type=submit]")
    tab.locator("#result.error").wait_for()
    assert "invalid, expired or already used" in tab.locator("#result").inner_text()
    assert [e for e in journal.errors if "400 (BAD REQUEST)" not in e] == []  # the refused POST is expected


def test_reset_password_with_the_emailed_link(app: Flask, app_ctx: None, dev_server: str,
                                              page: tuple[Any, Journal]) -> None:
    # issue 7 item 10: the reset e-mail's link opens a page that sets the new password
    tab, journal = page
    person = make_customer()
    client = app.test_client()
    assert client.post("/api/v1/auth/password-reset", json={"email": person.email}).status_code == 202

    _open_mail_link(tab, dev_server, person.email, "/reset-password")
    assert tab.locator("#code").input_value() != ""
    tab.fill("#new_password", "Copper-Meadow-Signal-31")
    tab.fill("#new_password_again", "Copper-Meadow-Signal-39")
    tab.click("button[type=submit]")
    assert "not the same" in tab.locator("#result.error").inner_text()
    tab.fill("#new_password_again", "Copper-Meadow-Signal-31")
    tab.click("button[type=submit]")
    tab.locator("#result.notice").wait_for()
    assert "Your password is changed" in tab.locator("#result").inner_text()
    assert client.post("/api/v1/auth/login", json={"email": person.email, "password": "Copper-Meadow-Signal-31"}
                       ).status_code == 200
    assert journal.errors == []
