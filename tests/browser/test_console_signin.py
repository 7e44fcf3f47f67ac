"""Staff sign-in journeys and the API docs in the system's headless Chromium (TESTING.md section 6, rule 8).

Each journey fails on any browser console error or uncaught page error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask

from marketplace.extensions import db
from marketplace.permissions import Role
from tests.conftest import chromium_path
from tests.factories import Person, make_staff, next_totp
from tests.staff_web import unused_code

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]

# every browser journey: skipped, with its reason, only where Debian's chromium is missing (make test and
# .ci/run install it when they run as root)
BROWSER_JOURNEY = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None or str(chromium_path()) != CHROMIUM,
                       reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"),
]
pytestmark = BROWSER_JOURNEY


@dataclass
class Journal:
    """What the page said and asked for while the test drove it."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Journal]]:
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    journal = Journal()
    tab.on("console", lambda msg: journal.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: journal.errors.append(f"pageerror: {exc}"))
    tab.on("request", lambda req: journal.requests.append(req.url))
    try:
        yield tab, journal
    finally:
        context.close()


def _sign_in_with_password(tab: Any, live_server: str, person: Person) -> None:
    tab.goto(f"{live_server}/console/login")
    tab.fill("#email", person.email)
    tab.fill("#password", person.password)
    tab.click("button[type=submit]")
    tab.wait_for_url(f"{live_server}/console/mfa")


def _enter_code(tab: Any, live_server: str, code: str) -> None:
    tab.fill("#code", code)
    tab.click("form button[type=submit]:has-text('Verify')")
    tab.wait_for_url(f"{live_server}/console/")


def _fresh() -> None:
    """End the test's own read transaction: the live server writes from other threads, and on SQLite
    a transaction keeps reading the snapshot it started with."""
    db.session.rollback()


def _full_name(person: Person) -> str:
    _fresh()
    return person.user().full_name


def _code(person: Person) -> str:
    _fresh()
    return next_totp(person)


def test_staff_signs_in_with_password_and_totp(app: Flask, app_ctx: None, live_server: str,
                                               page: tuple[Any, Journal]) -> None:
    # enforces P-04: password, then a TOTP code, then the console
    tab, journal = page
    admin = make_staff(Role.ADMIN)
    _sign_in_with_password(tab, live_server, admin)
    assert tab.locator("h1").inner_text() == "Two-step verification"
    assert tab.locator("#totp-secret").count() == 0
    _enter_code(tab, live_server, _code(admin))

    assert tab.locator("h1").inner_text() == f"Welcome, {_full_name(admin).split()[0]}"
    assert _full_name(admin) in tab.locator("header").inner_text()
    assert tab.locator("nav a", has_text="Staff").count() == 1
    cookies = {c["name"]: c for c in tab.context.cookies()}
    assert cookies["cj_staff"]["httpOnly"] is True and cookies["cj_staff"]["sameSite"] == "Strict"
    assert tab.evaluate("document.cookie") == ""  # nothing readable from scripts
    assert journal.errors == []


def test_first_sign_in_enrols_the_authenticator(app: Flask, app_ctx: None, live_server: str,
                                                page: tuple[Any, Journal]) -> None:
    # enforces P-04: a staff member without MFA sets it up before reaching anything
    import pyotp

    tab, journal = page
    reviewer = make_staff(Role.KYC_REVIEWER, mfa=False)
    _sign_in_with_password(tab, live_server, reviewer)
    assert tab.locator("h1").inner_text() == "Set up your authenticator"
    assert tab.locator(".qr svg").count() == 1
    secret = tab.locator("#totp-secret").inner_text().strip()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)

    # going elsewhere first is not possible: the console sends the person back to this page
    tab.goto(f"{live_server}/console/")
    tab.wait_for_url(f"{live_server}/console/mfa")
    assert tab.locator("#totp-secret").inner_text().strip() == secret

    reviewer.totp_secret = secret
    code = _code(reviewer)
    assert pyotp.TOTP(secret).verify(code, valid_window=1)
    _enter_code(tab, live_server, code)
    assert _full_name(reviewer) in tab.locator("header").inner_text()
    assert tab.locator("nav a", has_text="KYC queue").count() == 1
    assert tab.locator("nav a", has_text="Staff").count() == 0
    _fresh()
    assert reviewer.user().totp_enrolled_at is not None
    assert journal.errors == []


def test_wrong_code_shows_an_error_without_console_errors(app: Flask, app_ctx: None, live_server: str,
                                                          page: tuple[Any, Journal]) -> None:
    tab, journal = page
    admin = make_staff(Role.ADMIN)
    _sign_in_with_password(tab, live_server, admin)
    tab.fill("#code", unused_code(admin.totp_secret or ""))
    with tab.expect_response(f"{live_server}/console/mfa") as answer:
        tab.click("form button[type=submit]:has-text('Verify')")
    assert answer.value.status == 401
    assert tab.locator("[role=alert]").count() == 1
    # the 401 document itself is expected; anything else in the console is not
    assert [e for e in journal.errors if "status of 401" not in e] == []


def test_journal_sees_console_and_page_errors(live_server: str, page: tuple[Any, Journal]) -> None:
    # negative control for the journeys above: a planted error is caught (TESTING.md section 6, rule 6)
    tab, journal = page
    tab.goto(f"{live_server}/console/login")
    assert journal.errors == []
    with tab.expect_console_message():
        tab.evaluate("console.error('planted console error')")
    with tab.expect_event("pageerror"):
        tab.evaluate("setTimeout(() => { throw new Error('planted page error'); }, 0)")
    assert any("planted console error" in e for e in journal.errors)
    assert any("planted page error" in e for e in journal.errors)


def test_api_docs_render_offline(app: Flask, live_server: str, page: tuple[Any, Journal]) -> None:
    tab, journal = page
    tab.goto(f"{live_server}/api/docs")
    tab.wait_for_selector(".swagger-ui .info .title")
    tab.wait_for_selector(".opblock")
    assert "CareJar" in tab.locator(".swagger-ui .info .title").inner_text()
    assert tab.locator(".opblock").count() > 10
    hosts = {urlsplit(url).hostname for url in journal.requests if not url.startswith(("data:", "blob:"))}
    assert hosts == {"127.0.0.1"}, journal.requests
    assert any(url.endswith("/api/openapi.json") for url in journal.requests)
    assert journal.errors == []
