"""Append-only, hash-chained audit log.

Each row carries the SHA-256 of the row before it, so editing or deleting any row breaks the chain
from that row on; ``flask audit verify`` reports the first broken row. Database triggers (see the
migrations) refuse UPDATE and DELETE on the table for the application's own role.

``record`` writes in the caller's transaction, so an audited change and its audit row commit or roll
back together. ``record_now`` is for refusals (a failed sign-in, a denied view): the row is written
whether or not the request's own work commits (kept work of the unit of work, ``transactions.keep``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from flask import g, has_request_context, request
from sqlalchemy import BigInteger, Integer, String, Text, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column, scoped_session

from marketplace import transactions
from marketplace.extensions import Model, db, utcnow

log = logging.getLogger("marketplace.audit")
GENESIS = "0" * 64
_ADVISORY_LOCK = 0x61756469  # "audi": serialises appends so the chain stays linear on PostgreSQL


class AuditEvent(Model):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    occurred_at: Mapped[datetime]
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(36), index=True)
    actor_roles: Mapped[str | None] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    subject_type: Mapped[str | None] = mapped_column(String(32))
    subject_id: Mapped[str | None] = mapped_column(String(64), index=True)
    data: Mapped[str] = mapped_column(Text, default="{}")
    request_id: Mapped[str | None] = mapped_column(String(36))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class Subject(Protocol):
    __tablename__: str
    public_id: str


class ActorLike(Protocol):
    @property
    def audit_identity(self) -> tuple[str, str | None, str | None]: ...


def _canonical(event: AuditEvent) -> bytes:
    payload = {
        "occurred_at": event.occurred_at.isoformat(),
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "actor_roles": event.actor_roles,
        "action": event.action,
        "outcome": event.outcome,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "data": event.data,
        "request_id": event.request_id,
        "ip_address": event.ip_address,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def compute_hash(event: AuditEvent) -> str:
    return hashlib.sha256(_canonical(event)).hexdigest()


def _lock_chain(session: Session | scoped_session[Any]) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})


def _last_hash(session: Session | scoped_session[Any]) -> str:
    last = session.execute(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).scalar()
    return last or GENESIS


def _build(
    actor: ActorLike | None,
    action: str,
    subject: Subject | tuple[str, str] | None,
    outcome: str,
    data: dict[str, Any],
) -> AuditEvent:
    actor_type, actor_id, roles = actor.audit_identity if actor is not None else ("system", None, None)
    if subject is None:
        subject_type, subject_id = None, None
    elif isinstance(subject, tuple):
        subject_type, subject_id = subject
    else:
        subject_type, subject_id = subject.__tablename__, subject.public_id
    in_request = has_request_context()
    return AuditEvent(
        occurred_at=utcnow(),
        actor_type=actor_type,
        actor_id=actor_id,
        actor_roles=roles,
        action=action,
        outcome=outcome,
        subject_type=subject_type,
        subject_id=subject_id,
        data=json.dumps(data, sort_keys=True, separators=(",", ":"), default=str),
        request_id=getattr(g, "request_id", None) if in_request else None,
        ip_address=request.remote_addr if in_request else None,
    )


def _append(session: Session | scoped_session[Any], event: AuditEvent) -> AuditEvent:
    _lock_chain(session)
    event.prev_hash = _last_hash(session)
    event.hash = compute_hash(event)
    session.add(event)
    session.flush()
    log.info(
        "audit",
        extra={"event": {"action": event.action, "outcome": event.outcome, "actor": event.actor_id,
                         "subject": f"{event.subject_type}:{event.subject_id}", "request_id": event.request_id}},
    )
    return event


def record(
    actor: ActorLike | None,
    action: str,
    subject: Subject | tuple[str, str] | None = None,
    *,
    outcome: str = "success",
    **data: Any,
) -> AuditEvent:
    """Append an audit row in the current transaction (it commits with the change it describes)."""
    return _append(db.session, _build(actor, action, subject, outcome, data))


def record_now(
    actor: ActorLike | None,
    action: str,
    subject: Subject | tuple[str, str] | None = None,
    *,
    outcome: str = "denied",
    **data: Any,
) -> None:
    """Record a refusal that must stand although the request fails, without touching its work.

    The row is built now (its time, request id and address) and appended by the unit of work: with
    its commit if the request succeeds, or in a transaction of its own after the rollback if it fails.
    Outside a unit of work (a test or a shell) it is appended and committed at once on a connection
    of its own.
    """
    event = _build(actor, action, subject, outcome, data)
    if transactions.current() is None:
        transactions.apart(lambda session: _append(session, event))
        return

    def append() -> None:
        # a copy each time: a row rolled back with a failed commit is written again as a new one
        _append(db.session, _copy(event))

    transactions.keep(append)


def _copy(event: AuditEvent) -> AuditEvent:
    chained = {"id", "prev_hash", "hash"}
    return AuditEvent(**{c.key: getattr(event, c.key) for c in AuditEvent.__table__.columns if c.key not in chained})


@dataclass(frozen=True)
class ChainReport:
    checked: int
    first_broken_id: int | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.first_broken_id is None


def iter_events(session: Session | scoped_session[Any], batch: int = 1000) -> Iterator[AuditEvent]:
    last_id = 0
    while True:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
        ).scalars().all()
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id
        session.expunge_all()


def verify_chain(session: Session | scoped_session[Any]) -> ChainReport:
    previous = GENESIS
    checked = 0
    for event in iter_events(session):
        checked += 1
        if event.prev_hash != previous:
            reason = "prev_hash does not match the previous row (row removed or reordered)"
            return ChainReport(checked, event.id, reason)
        if compute_hash(event) != event.hash:
            return ChainReport(checked, event.id, "row content does not match its hash (row edited)")
        previous = event.hash
    return ChainReport(checked, None, None)


def search(*, limit: int, action: str | None = None, actor: str | None = None,
           subject: str | None = None) -> list[AuditEvent]:
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if action:
        stmt = stmt.where(AuditEvent.action.startswith(action))
    if actor:
        stmt = stmt.where(AuditEvent.actor_id == actor)
    if subject:
        stmt = stmt.where(AuditEvent.subject_id == subject)
    return list(db.session.execute(stmt).scalars())
