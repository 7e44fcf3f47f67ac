"""E-mail and in-app notices, through the outbox.

``send_email`` and ``notify`` write outbox rows in the caller's transaction; delivery happens in a
job after the commit (``email.send``), with bounded retries. With no ``SMTP_URL`` the e-mail is kept
in the outbox and shown in the console, so the embedded demo needs no mail server.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formataddr, make_msgid, parseaddr
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from flask import current_app, render_template
from sqlalchemy import select
from sqlalchemy.orm import Session

from marketplace import jobs, transactions
from marketplace.errors import NotFound
from marketplace.extensions import db, utcnow
from marketplace.notifications.models import Channel, OutboxMessage, OutboxStatus

if TYPE_CHECKING:
    from marketplace.users.models import User

SMTP_TIMEOUT = 15


def send_email(
    *,
    to: str,
    kind: str,
    context: dict[str, Any],
    user: User | None = None,
    sensitive: bool = False,
    session: Session | None = None,
) -> OutboxMessage:
    """Render ``email/<kind>.txt`` (first line ``Subject: ...``) and queue it for delivery.

    ``session``: write in that transaction instead of the request's (see ``jobs.schedule``).
    """
    subject, body = _render(kind, context)
    message = OutboxMessage(
        user_id=user.id if user else None,
        channel=Channel.EMAIL,
        kind=kind,
        to_address=to,
        subject=subject,
        body_text=body,
        sensitive=sensitive,
        status=OutboxStatus.QUEUED,
        created_at=utcnow(),
    )
    target = session or db.session
    target.add(message)
    target.flush()
    jobs.schedule("email.send", message.id, dedupe_key=f"email:{message.id}", user_id=message.user_id,
                  session=session)
    return message


def notify(user: User, *, kind: str, context: dict[str, Any], essential: bool = False) -> list[OutboxMessage]:
    """An in-app notice plus an e-mail, as the user's preferences allow (essential ones always go)."""
    subject, body = _render(kind, context)
    sent: list[OutboxMessage] = []
    if essential or user.notify_in_app:
        notice = OutboxMessage(
            user_id=user.id,
            channel=Channel.IN_APP,
            kind=kind,
            subject=subject,
            body_text=body,
            status=OutboxStatus.DELIVERED,
            created_at=utcnow(),
            sent_at=utcnow(),
        )
        db.session.add(notice)
        sent.append(notice)
    if essential or user.notify_email:
        sent.append(send_email(to=user.email, kind=kind, context=context, user=user))
    db.session.flush()
    return sent


def _render(kind: str, context: dict[str, Any]) -> tuple[str, str]:
    settings = current_app.config["SETTINGS"]
    text = render_template(f"email/{kind}.txt", base_url=settings.public_base_url, **context)
    first, _, rest = text.partition("\n")
    if not first.startswith("Subject:"):
        raise ValueError(f"email template {kind} must start with a Subject: line")
    return first.removeprefix("Subject:").strip(), rest.lstrip("\n")


def list_in_app(user: User, *, after_id: int | None, limit: int) -> list[OutboxMessage]:
    stmt = (
        select(OutboxMessage)
        .where(OutboxMessage.user_id == user.id, OutboxMessage.channel == Channel.IN_APP)
        .order_by(OutboxMessage.id.desc())
        .limit(limit)
    )
    if after_id is not None:
        stmt = stmt.where(OutboxMessage.id < after_id)
    return list(db.session.execute(stmt).scalars())


def get_in_app(user: User, public_id: str) -> OutboxMessage:
    notice = db.session.execute(
        select(OutboxMessage).where(
            OutboxMessage.public_id == public_id,
            OutboxMessage.user_id == user.id,
            OutboxMessage.channel == Channel.IN_APP,
        )
    ).scalar_one_or_none()
    if notice is None:
        raise NotFound()
    return notice


def mark_read(user: User, public_id: str) -> OutboxMessage:
    notice = get_in_app(user, public_id)
    if notice.read_at is None:
        notice.read_at = utcnow()
    db.session.flush()
    return notice


# ---- delivery ------------------------------------------------------------------------------------


@jobs.handler("email.send")
def deliver_email(ref: str) -> None:
    message = db.session.get(OutboxMessage, int(ref))
    if message is None or message.status in (OutboxStatus.SENT, OutboxStatus.KEPT):
        return
    settings = current_app.config["SETTINGS"]
    message.attempts += 1
    if not settings.smtp_url:
        message.status = OutboxStatus.KEPT
        return
    try:
        _smtp_send(settings.smtp_url, settings.mail_from, message)
    except (OSError, smtplib.SMTPException) as exc:
        # the job fails (the work row backs off), but the message keeps the count of its attempts
        message_id, attempts, error = message.id, message.attempts, f"{type(exc).__name__}"[:300]
        transactions.keep(lambda: _note_failed_attempt(message_id, attempts, error))
        raise
    message.status = OutboxStatus.SENT
    message.sent_at = utcnow()
    message.last_error = None
    if message.sensitive:
        message.body_text = "[removed after delivery: this message held a one-time code]"


def _note_failed_attempt(message_id: int, attempts: int, error: str) -> None:
    message = db.session.get(OutboxMessage, message_id)
    if message is None:
        return
    message.attempts = max(message.attempts, attempts)
    message.last_error = error
    if message.attempts >= jobs.MAX_ATTEMPTS:
        message.status = OutboxStatus.FAILED


def _smtp_send(url: str, sender: str, message: OutboxMessage) -> None:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (465 if parts.scheme == "smtps" else 25)
    email = EmailMessage()
    name, address = parseaddr(sender)
    email["From"] = formataddr((name, address))
    email["To"] = message.to_address or ""
    email["Subject"] = message.subject
    email["Message-ID"] = make_msgid(idstring=message.public_id, domain=address.split("@")[-1] or None)
    email.set_content(message.body_text)
    if parts.scheme == "smtps":
        client: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=SMTP_TIMEOUT, context=ssl.create_default_context())
    else:
        client = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT)
    with client:
        if parts.scheme == "smtp+starttls":
            client.starttls(context=ssl.create_default_context())
        if parts.username:
            client.login(unquote(parts.username), unquote(parts.password or ""))
        client.send_message(email)


def recent_emails(*, limit: int) -> list[OutboxMessage]:
    return list(db.session.execute(
        select(OutboxMessage).where(OutboxMessage.channel == Channel.EMAIL)
        .order_by(OutboxMessage.id.desc()).limit(limit)
    ).scalars())


def get_email(public_id: str) -> OutboxMessage:
    message = db.session.execute(
        select(OutboxMessage).where(OutboxMessage.public_id == public_id, OutboxMessage.channel == Channel.EMAIL)
    ).scalar_one_or_none()
    if message is None:
        raise NotFound()
    return message


def messages_mentioning(user_id: int, text: str, *, limit: int = 50) -> list[OutboxMessage]:
    """A person's notices that name ``text`` (a booking reference), oldest first: dispute evidence (P-24)
    shows what we told the customer and when it was delivered."""
    return list(db.session.execute(
        select(OutboxMessage).where(OutboxMessage.user_id == user_id,
                                    (OutboxMessage.subject.contains(text)) | (OutboxMessage.body_text.contains(text)))
        .order_by(OutboxMessage.id).limit(limit)
    ).scalars())
