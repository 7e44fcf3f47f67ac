"""Helpers for driving the staff web pages (``/console``, ``/agency``) with the Flask test client.

``factories.web_login`` signs in in one go; these helpers expose each step, its response and the
cookies, so the sign-in tests can look at what happens between the steps.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pyotp
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from marketplace.extensions import db
from tests.factories import Person, csrf_from

STAFF_COOKIE = "cj_staff"  # the test settings are not production: no __Host- prefix


def password_step(client: FlaskClient, person: Person, door: str = "console",
                  password: str | None = None) -> TestResponse:
    page = client.get(f"/{door}/login")
    assert page.status_code == 200
    return client.post(f"/{door}/login", data={
        "email": person.email, "password": person.password if password is None else password,
        "csrf_token": csrf_from(page.get_data(as_text=True)),
    })


def mfa_step(client: FlaskClient, code: str, door: str = "console") -> TestResponse:
    page = client.get(f"/{door}/mfa")
    assert page.status_code == 200, page.status_code
    return client.post(f"/{door}/mfa", data={"code": code, "csrf_token": csrf_from(page.get_data(as_text=True))})


def page_csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, (path, page.status_code)
    return csrf_from(page.get_data(as_text=True))


def staff_cookie(client: FlaskClient) -> str | None:
    cookie = client.get_cookie(STAFF_COOKIE)
    return cookie.value if cookie is not None else None


def set_staff_cookie(client: FlaskClient, value: str) -> None:
    client.set_cookie(STAFF_COOKIE, value)


def set_cookie_header(response: TestResponse, name: str = STAFF_COOKIE) -> str | None:
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith(name + "="):
            return header
    return None


def error_code(response: TestResponse) -> str | None:
    """The stable error code, from the JSON error shape or from the staff HTML error page."""
    if response.is_json:
        body: dict[str, Any] = response.get_json()
        return str(body["error"]["code"])
    match = re.search(r"Error code: <code>([^<]+)</code>", response.get_data(as_text=True))
    return match.group(1) if match else None


def location(response: TestResponse) -> str:
    return response.headers.get("Location", "")


def unused_code(secret: str) -> str:
    """A well-formed 6-digit code that is wrong for every step the server could accept now."""
    totp = pyotp.TOTP(secret)
    now_step = int(time.time()) // 30
    valid = {totp.generate_otp(step) for step in range(now_step - 3, now_step + 4)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444") if c not in valid)


# bookkeeping that any authenticated request may move (the idle-timeout clock), not a change of state
_VOLATILE = {"auth_sessions": frozenset({"last_seen_at"})}


def db_snapshot(app: Flask) -> dict[str, list[str]]:
    """Every row of every table (as sorted text), to prove a refused request changed nothing."""
    with app.app_context(), db.engine.connect() as conn:
        result = {}
        for table in db.metadata.sorted_tables:
            columns = [c for c in table.columns if c.name not in _VOLATILE.get(table.name, frozenset())]
            result[table.name] = sorted(repr(tuple(row)) for row in conn.execute(select(*columns)))
        return result
