"""E-mail and in-app notices through the outbox: a real SMTP server (aiosmtpd on loopback), a kept
outbox without SMTP, retries while SMTP is down, and notification preferences.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from marketplace import jobs
from marketplace.extensions import db, utcnow
from marketplace.jobs import WorkItem, WorkStatus
from marketplace.logs import JsonFormatter
from marketplace.notifications import service as notifications
from marketplace.notifications.models import Channel, OutboxMessage, OutboxStatus
from tests import factories
from tests.conftest import drain_jobs, free_port

CODE_LINE = re.compile(r"^ {4}(\S+)\r?$", re.M)  # SMTP delivers CRLF lines
RESET_SUBJECT = "Your CareJar password reset code"


def _messages(app: Flask, **where: Any) -> list[OutboxMessage]:
    with app.app_context():
        stmt = select(OutboxMessage).order_by(OutboxMessage.id)
        for key, value in where.items():
            stmt = stmt.where(getattr(OutboxMessage, key) == value)
        rows = list(db.session.execute(stmt).scalars())
        db.session.expunge_all()
        return rows


def _work_items(app: Flask) -> list[WorkItem]:
    with app.app_context():
        rows = list(db.session.execute(select(WorkItem).order_by(WorkItem.id)).scalars())
        db.session.expunge_all()
        return rows


def _customer(app: Flask, **fields: Any) -> factories.Person:
    with app.app_context():
        return factories.make_customer(**fields)


def _request_reset(client: FlaskClient, email: str) -> None:
    response = client.post("/api/v1/auth/password-reset", json={"email": email})
    assert response.status_code == 202, response.get_json()


@pytest.fixture
def smtp_url(app: Flask) -> Iterator[Any]:
    """Point the app's SMTP_URL somewhere for a block of the test: ``with smtp_url(url): ...``."""
    from contextlib import contextmanager

    @contextmanager
    def pointing_at(url: str | None) -> Iterator[None]:
        old = app.config["SETTINGS"]
        app.config["SETTINGS"] = dataclasses.replace(old, smtp_url=url)
        try:
            yield
        finally:
            app.config["SETTINGS"] = old

    return pointing_at


# ---- delivery through a real SMTP server ------------------------------------------------------------------


def test_password_reset_code_is_delivered_by_smtp_and_blanked_in_the_outbox(
    app: Flask, client: FlaskClient, smtp_server: Any,
) -> None:
    person = _customer(app)
    _request_reset(client, person.email)
    drain_jobs(app)

    assert len(smtp_server.messages) == 1
    mail = smtp_server.messages[0]
    assert mail["To"] == person.email
    assert mail["Subject"] == RESET_SUBJECT
    assert mail["From"] == "CareJar <no-reply@carejar.example>"
    assert mail["Message-ID"]
    body = mail.get_content()
    match = CODE_LINE.search(body)
    assert match, body
    code = match.group(1)
    assert f"/reset-password#code={code}" in body

    (stored,) = _messages(app, kind="password_reset")
    assert (stored.status, stored.attempts, stored.sensitive) == (OutboxStatus.SENT, 1, True)
    assert stored.sent_at is not None
    assert code not in stored.body_text  # the one-time code does not stay readable in the outbox
    assert "removed after delivery" in stored.body_text
    assert [(w.kind, w.status) for w in _work_items(app)] == [("email.send", WorkStatus.DONE)]

    # the delivered code is the real one: it sets a new password (and that notice is delivered too)
    response = client.post("/api/v1/auth/password-reset/confirm",
                           json={"token": code, "new_password": "Fresh-Cardamom-Orbit-63"})
    assert response.status_code == 200, response.get_json()
    drain_jobs(app)
    assert [m["Subject"] for m in smtp_server.messages] == [RESET_SUBJECT, "Your CareJar password was changed"]
    (changed,) = _messages(app, kind="password_changed")
    assert changed.status == OutboxStatus.SENT
    assert "password of your CareJar account was just changed" in changed.body_text  # not sensitive: kept


def test_without_smtp_the_message_is_kept_and_readable(app: Flask, client: FlaskClient) -> None:
    assert app.config["SETTINGS"].smtp_url is None
    person = _customer(app)
    _request_reset(client, person.email)
    drain_jobs(app)

    (stored,) = _messages(app, kind="password_reset")
    assert stored.status == OutboxStatus.KEPT
    assert stored.to_address == person.email and stored.subject == RESET_SUBJECT
    code = factories.outbox_token(app, to=person.email, kind="password_reset")
    assert code in stored.body_text  # readable in the console outbox, for the embedded demo
    response = client.post("/api/v1/auth/password-reset/confirm",
                           json={"token": code, "new_password": "Fresh-Cardamom-Orbit-63"})
    assert response.status_code == 200


def test_smtp_down_backs_off_and_retries_without_losing_the_message(
    app: Flask, client: FlaskClient, smtp_server: Any, smtp_url: Any,
) -> None:
    person = _customer(app)
    start = utcnow()
    with smtp_url(f"smtp://127.0.0.1:{free_port()}"):  # nothing listens: connection refused
        _request_reset(client, person.email)
        drain_jobs(app)
        (stored,) = _messages(app, kind="password_reset")
        assert (stored.status, stored.attempts, stored.last_error) == (
            OutboxStatus.QUEUED, 1, "ConnectionRefusedError")
        assert CODE_LINE.search(stored.body_text)  # not sent, so not blanked
        (item,) = _work_items(app)
        assert (item.status, item.attempts) == (WorkStatus.PENDING, 1)
        assert item.due_at > start and item.last_error and "ConnectionRefusedError" in item.last_error

        with app.app_context():
            assert jobs.sweep() == 0  # backing off
        drain_jobs(app)
        with time_machine.travel(item.due_at + timedelta(seconds=1), tick=True):
            with app.app_context():
                assert jobs.sweep() == 1  # due again: retried, still down
            drain_jobs(app)
        (item,) = _work_items(app)
        assert (item.status, item.attempts) == (WorkStatus.PENDING, 2)
        assert _messages(app, kind="password_reset")[0].status == OutboxStatus.QUEUED
    assert smtp_server.messages == []

    # SMTP is back: the next due retry delivers it, once
    with time_machine.travel(item.due_at + timedelta(seconds=1), tick=True):
        with app.app_context():
            assert jobs.sweep() == 1
        drain_jobs(app)
    assert [m["To"] for m in smtp_server.messages] == [person.email]
    (stored,) = _messages(app, kind="password_reset")
    assert (stored.status, stored.attempts, stored.last_error) == (OutboxStatus.SENT, 3, None)
    (item,) = _work_items(app)
    assert (item.status, item.attempts) == (WorkStatus.DONE, 3)


class _RefusingInbox:
    """An SMTP server that refuses every recipient (a bounce-at-RCPT)."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        return "550 5.1.1 mailbox unavailable"


def test_a_refused_recipient_keeps_the_address_out_of_the_logs(
    app: Flask, client: FlaskClient, smtp_url: Any,
) -> None:  # PV-03
    from aiosmtpd.controller import Controller

    person = _customer(app, email="refused.recipient.pv03@example.com")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("marketplace")
    logger.addHandler(handler)
    port = free_port()
    controller = Controller(_RefusingInbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with smtp_url(f"smtp://127.0.0.1:{port}"):
            _request_reset(client, person.email)
            drain_jobs(app)
    finally:
        controller.stop()
        logger.removeHandler(handler)

    (stored,) = _messages(app, kind="password_reset")
    assert (stored.status, stored.last_error) == (OutboxStatus.QUEUED, "SMTPRecipientsRefused")
    (item,) = _work_items(app)
    assert item.status == WorkStatus.PENDING and item.attempts == 1
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    failures = [r for r in records if r["message"] == "work item failed"]
    assert len(failures) == 1 and failures[0]["event"]["error"] == "SMTPRecipientsRefused"
    assert "refused.recipient.pv03" not in stream.getvalue()


# ---- notify() and preferences ------------------------------------------------------------------------------


@pytest.mark.parametrize(("prefs", "expected"), [
    ((True, True, False), {Channel.IN_APP, Channel.EMAIL}),
    ((False, True, False), {Channel.EMAIL}),
    ((True, False, False), {Channel.IN_APP}),
    ((False, False, False), set()),
    ((False, False, True), {Channel.IN_APP, Channel.EMAIL}),  # essential notices always go
], ids=["both", "email-only", "in-app-only", "none", "essential"])
def test_notify_respects_preferences_but_essential_notices_always_go(
    app: Flask, smtp_server: Any, prefs: tuple[bool, bool, bool], expected: set[str],
) -> None:
    in_app, email, essential = prefs
    person = _customer(app, notify_in_app=in_app, notify_email=email)
    with app.app_context():
        user = person.user()
        sent = notifications.notify(user, kind="password_changed", context={"user": user}, essential=essential)
        db.session.commit()
        assert {m.channel for m in sent} == expected
    drain_jobs(app)

    rows = _messages(app, user_id=person.user_id)
    assert {m.channel for m in rows} == expected
    for row in rows:
        if row.channel == Channel.IN_APP:
            assert (row.status, row.to_address) == (OutboxStatus.DELIVERED, None)
        else:
            assert (row.status, row.to_address) == (OutboxStatus.SENT, person.email)
    delivered = [m["To"] for m in smtp_server.messages]
    assert delivered == ([person.email] if Channel.EMAIL in expected else [])


def test_in_app_notices_reach_the_api_only_when_allowed(app: Flask, client: FlaskClient) -> None:
    on = _customer(app)
    off = _customer(app, notify_in_app=False)
    with app.app_context():
        for person in (on, off):
            user = person.user()
            notifications.notify(user, kind="password_changed", context={"user": user})
        db.session.commit()
    drain_jobs(app)

    items = client.get("/api/v1/me/notifications", headers=factories.auth_headers(client, on)).get_json()["items"]
    assert [i["title"] for i in items] == ["Your CareJar password was changed"]
    assert items[0]["read_at"] is None
    items = client.get("/api/v1/me/notifications", headers=factories.auth_headers(client, off)).get_json()["items"]
    assert items == []
