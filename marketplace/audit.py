"""Append-only, hash-chained audit log, in independent chains, with client addresses that can expire.

**Chains, not one lock (issue 8 item 5).** The log is ``CHAINS`` (32) independent hash chains. Each row
names its chain and its place in it (``chain``, ``seq`` = 1, 2, 3 ... with no gaps; unique together) and
carries the SHA-256 of the row before it *in its chain*; the hash covers every column, chain and place
included. An append locks only its chain (``pg_advisory_xact_lock(CLASS, chain)`` until commit), reads
that chain's tail and links to it, so audited writes in different chains never wait for each other;
on PostgreSQL the lock and the tail come back in one round trip (``audit_chain_claim``, migration 0008). A
transaction keeps the chain of its first audit row for all later ones: it never holds two chain locks,
so chain locks cannot deadlock each other. The first row picks its chain by a stable key (the subject,
else the actor, request or action, hashed), and if another open transaction holds that chain it takes
the next free one it finds (``pg_try_advisory_xact_lock``) before it would queue; which chain a row is in
carries no meaning, only that it is linked. SQLite serialises writers itself, so it takes no lock.

The alternative, lock-free appends linked later by a sequencer job in commit order, was not chosen:
rows would sit unlinked (not yet tamper-evident) until the job ran, verification would need a bound on
that delay, and the job would be one more thing that must run. Chains keep every row linked at commit.

``flask audit verify`` walks every chain by ``seq`` and reports the first broken row: content that no
longer matches its hash (edited), a gap in ``seq`` or a ``prev_hash`` that is not its predecessor's hash
(row deleted, or rows reordered), two rows in one place or a row in a chain that cannot exist (row
inserted). As with one chain, a forger who also recomputes every later hash of a chain, or who appends
at a chain's end, is not caught by the chain alone; the append-only triggers (see the migrations) refuse
UPDATE and DELETE for the application's own role. Rows written before migration 0008 (``chain`` NULL)
stay one legacy chain in ``id`` order, hashed as they were.

**Client addresses expire (issue 8 item 6).** Audit rows can never change, yet security data such as a
client's IP address must be unreadable after 12 months. So a row never holds the address in clear: it
holds ``ip_sealed``, the address encrypted (AES-256-GCM, ``crypto.encrypt_value``) under the key of its
calendar month (``key_period`` = ``YYYY-MM``, UTC), and the chain hashes that ciphertext. Month keys live
in ``audit_keys``, wrapped by the master key like every data key (master-key rotation re-wraps them,
``rewrap_keys``). Retention calls :func:`forget_expired` (or :func:`forget_period` for one month): it
logs the key in the destroyed-key log (re-applied after a restore) and deletes it; the month's addresses
become unreadable while every row, and so the chain, stays exactly as it was. The console's audit search
does not look rows up by address, so no searchable (keyed-hash) copy is stored: it would outlive the
key. Legacy rows (before 0008) keep ``ip_address`` in clear; changing them would break their chain.

``record`` writes in the caller's transaction, so an audited change and its audit row commit or roll
back together. ``record_now`` is for refusals (a failed sign-in, a denied view): the row is written
whether or not the request's own work commits (kept work of the unit of work, ``transactions.keep``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from flask import current_app, g, has_request_context, request
from sqlalchemy import (
    BigInteger,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, scoped_session

from marketplace import transactions
from marketplace.crypto import (
    DecryptionFailed,
    WrappedKey,
    decrypt_value,
    encrypt_value,
    new_data_key,
    rewrap,
    unwrap_data_key,
    wrap_data_key,
)
from marketplace.crypto.keyring import MasterKeyProvider
from marketplace.crypto.shred import DestroyedKeyLog
from marketplace.extensions import Model, db, utcnow

log = logging.getLogger("marketplace.audit")
GENESIS = "0" * 64
CHAINS = 32
RETENTION_MONTHS = 12  # client addresses are security data: readable for 12 months, then their key goes
_LOCK_CLASS = 0x61756469  # "audi": first key of every chain's advisory lock; the second is the chain number
_TRY_OTHER_CHAINS = 4  # free chains tried (without waiting) when the preferred one is busy, before queueing

AnySession = Session | scoped_session[Any]


class AuditEvent(Model):
    __tablename__ = "audit_events"
    __table_args__ = (Index("uq_audit_events_chain_seq", "chain", "seq", unique=True),)

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
    ip_address: Mapped[str | None] = mapped_column(String(64))  # legacy rows only (before migration 0008)
    chain: Mapped[int | None] = mapped_column(SmallInteger)  # None: a legacy row
    seq: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    key_period: Mapped[str | None] = mapped_column(String(7))  # "YYYY-MM": the month key sealing ip_sealed
    ip_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditKey(Model):
    """One month's key for the sealed parts of audit rows, wrapped by a master key; destroyed by retention."""

    __tablename__ = "audit_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    period: Mapped[str] = mapped_column(String(7), unique=True)
    master_key_id: Mapped[str | None] = mapped_column(String(128), index=True)
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)  # None once destroyed
    created_at: Mapped[datetime]
    rewrapped_at: Mapped[datetime | None]
    destroyed_at: Mapped[datetime | None]


class Subject(Protocol):
    __tablename__: str
    public_id: str


class ActorLike(Protocol):
    @property
    def audit_identity(self) -> tuple[str, str | None, str | None]: ...


# ---- hashing ------------------------------------------------------------------------------------------


def _canonical(event: AuditEvent) -> bytes:
    payload: dict[str, Any] = {
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
    if event.chain is not None:  # rows since 0008; legacy rows hash exactly as they were written
        payload.update({
            "v": 2,
            "chain": event.chain,
            "seq": event.seq,
            "key_period": event.key_period,
            "ip_sealed": None if event.ip_sealed is None else base64.b64encode(event.ip_sealed).decode(),
        })
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def compute_hash(event: AuditEvent) -> str:
    return hashlib.sha256(_canonical(event)).hexdigest()


# ---- chains -------------------------------------------------------------------------------------------


def preferred_chain(event: AuditEvent) -> int:
    """A stable chain for an event: the same subject (else actor, request, action) always maps to it."""
    if event.subject_id is not None:
        key = f"s:{event.subject_type}:{event.subject_id}"
    elif event.actor_id is not None:
        key = f"a:{event.actor_type}:{event.actor_id}"
    else:
        key = f"r:{event.request_id or event.action}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % CHAINS


def _transaction(session: AnySession) -> object | None:
    """The session's current root transaction (a new object after every commit or rollback)."""
    real = session() if isinstance(session, scoped_session) else session
    return real.get_transaction()


def _held_chain(session: AnySession) -> int | None:
    """The chain this session's open transaction already appended to, if any."""
    held = session.info.get("audit_chain")
    if held is not None and held[0] is _transaction(session):
        return int(held[1])
    return None


# On PostgreSQL one round trip claims a chain: ``audit_chain_claim`` (created by migration 0008) tries the
# candidate chains' locks in order without waiting, else queues for ``wait_on``, then reads the tail of the
# chain it holds. The tail query is a statement of its own inside a VOLATILE function, so under READ
# COMMITTED it sees every append committed before the lock was granted (a single statement doing both
# would read a snapshot taken before it waited).


def _claim(session: AnySession, event: AuditEvent) -> tuple[int, int, str]:
    """Choose the event's chain, hold its lock until the transaction ends (PostgreSQL), and return
    ``(chain, seq of its last row, hash of its last row)``; ``(chain, 0, GENESIS)`` for an empty chain."""
    held = _held_chain(session)
    if session.get_bind().dialect.name != "postgresql":
        # SQLite lets one writer at a time in: the tail cannot move under us, no lock needed
        chain = held if held is not None else preferred_chain(event)
        return (chain, *_chain_tail(session, chain))
    if held is not None:
        # held already (re-entrant); taken again in case a rolled-back savepoint released it
        candidates, wait_on = [], held
    else:
        preferred = preferred_chain(event)
        own = None
        if session is not db.session and db.session.registry.has():
            # a side transaction of this thread (a refusal written beside the request's own work) must
            # never queue behind the chain the request itself holds: nobody would ever release it
            own = _held_chain(db.session)
        # busy: another open transaction is appending there; any free chain serves as well as this one.
        # 7 is coprime with 32, so the steps visit distinct chains.
        steps = [(preferred + step * 7) % CHAINS for step in range(_TRY_OTHER_CHAINS + 1)]
        candidates = [c for c in steps if c != own]
        wait_on = preferred if preferred != own else (preferred + 1) % CHAINS
    row = session.execute(text("SELECT chain, seq, hash FROM audit_chain_claim(:k, :c, :w)"),
                          {"k": _LOCK_CLASS, "c": candidates, "w": wait_on}).one()
    return int(row[0]), int(row[1]), str(row[2])


def _chain_tail(session: AnySession, chain: int) -> tuple[int, str]:
    """(seq, hash) of the chain's last row, or (0, GENESIS) for an empty chain."""
    row = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.chain == chain)
        .order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    return (0, GENESIS) if row is None else (int(row[0] or 0), str(row[1]))


# ---- month keys for the sealed parts ----------------------------------------------------------------------

# the current month's key per database, unwrapped, for sealing only (reading always goes to the table).
# Only a key read back as committed is kept: one this transaction created could still roll back.
_SEAL_KEY: dict[tuple[str, str], bytes] = {}


def clear_key_cache() -> None:
    """Forget the cached sealing key: for when ``audit_keys`` was emptied or restored behind the app's
    back (the test harness; restart the app after restoring a backup anyway)."""
    _SEAL_KEY.clear()


def period_of(when: datetime) -> str:
    return f"{when.year:04d}-{when.month:02d}"


def _key_owner(period: str) -> str:
    return f"audit:{period}"


def _ring() -> MasterKeyProvider:
    value: MasterKeyProvider = current_app.extensions["keyring"]
    return value


def _period_key(session: AnySession, period: str, *, create: bool) -> bytes:
    slot = (str(session.get_bind().engine.url), period)
    cached = _SEAL_KEY.get(slot) if create else None
    if cached is not None:
        return cached
    row = session.execute(select(AuditKey).where(AuditKey.period == period)).scalar_one_or_none()
    if row is None:
        if not create:
            raise DecryptionFailed("no_key")
        key = new_data_key()
        wrapped = wrap_data_key(_ring(), key, owner=_key_owner(period))
        try:
            with session.begin_nested():  # two first appends of a month: one key wins, the other reads it
                session.add(AuditKey(period=period, master_key_id=wrapped.key_id, wrapped=wrapped.blob,
                                     created_at=utcnow()))
        except IntegrityError:
            return _period_key(session, period, create=False)  # the winner's key, committed meanwhile
        session.info["audit_new_key"] = (_transaction(session), period)
        return key
    if row.wrapped is None or row.master_key_id is None:
        raise DecryptionFailed("destroyed")
    key = unwrap_data_key(_ring(), WrappedKey(row.master_key_id, row.wrapped), owner=_key_owner(period))
    created_here = session.info.get("audit_new_key")
    if create and created_here != (_transaction(session), period):
        for old in [s for s in _SEAL_KEY if s[0] == slot[0]]:
            del _SEAL_KEY[old]  # one month at a time: last month's key leaves memory when this one arrives
        _SEAL_KEY[slot] = key
    return key


def _seal(session: AnySession, period: str, field: str, value: str) -> bytes:
    key = _period_key(session, period, create=True)
    return encrypt_value(key, value.encode("utf-8"), owner=_key_owner(period), field=f"audit_events.{field}")


def client_ip(event: AuditEvent, session: AnySession | None = None) -> str | None:
    """The client address of an event, or None when there was none or its month key is destroyed."""
    if event.ip_sealed is None or event.key_period is None:
        return event.ip_address  # a legacy row (or no address)
    try:
        key = _period_key(session if session is not None else db.session, event.key_period, create=False)
        return decrypt_value(key, event.ip_sealed, owner=_key_owner(event.key_period),
                             field="audit_events.ip_address").decode("utf-8")
    except DecryptionFailed:
        return None


def _destroyed_key_log() -> DestroyedKeyLog:
    # the vault's log: one file lists every destroyed key, re-applied after any restore
    return DestroyedKeyLog(Path(current_app.config["SETTINGS"].var_dir) / "destroyed-keys.jsonl")


def _check_period(period: str) -> None:
    try:
        datetime.strptime(period, "%Y-%m")
    except ValueError:
        raise ValueError("a period is a month, YYYY-MM") from None
    if len(period) != 7:
        raise ValueError("a period is a month, YYYY-MM")


def forget_period(period: str, *, now: datetime | None = None) -> bool:
    """Destroy the key of one month that has ended: its rows' client addresses become unreadable, the
    rows and the chain stay intact. Returns False if there was no key or it was already destroyed.

    Flushes, never commits (the caller's unit of work does). The destruction is logged first, so a
    crash in between leaves a logged erasure that replaying the log completes.
    """
    _check_period(period)
    if period >= period_of(now or utcnow()):
        raise ValueError(f"{period} has not ended: its key is still sealing new rows")
    row = db.session.execute(
        select(AuditKey).where(AuditKey.period == period).with_for_update()
    ).scalar_one_or_none()
    if row is None or row.destroyed_at is not None:
        return False
    _destroyed_key_log().record(owner=_key_owner(period), key_ref=f"audit_keys:{row.id}")
    row.wrapped = None
    row.master_key_id = None
    row.destroyed_at = utcnow()
    db.session.flush()
    for slot in [s for s in _SEAL_KEY if s[1] == period]:
        del _SEAL_KEY[slot]
    record(None, "audit:forget_period", ("audit_keys", period), period=period)
    return True


def forget_expired(*, now: datetime | None = None, keep_months: int = RETENTION_MONTHS) -> list[str]:
    """Retention: destroy every month key older than ``keep_months`` whole months; the periods forgotten."""
    at = now or utcnow()
    months = at.year * 12 + at.month - 1 - keep_months
    cutoff = f"{months // 12:04d}-{months % 12 + 1:02d}"
    periods = db.session.execute(
        select(AuditKey.period).where(AuditKey.destroyed_at.is_(None), AuditKey.period < cutoff)
        .order_by(AuditKey.period)
    ).scalars().all()
    return [p for p in periods if forget_period(p, now=at)]


def rewrap_keys(limit: int = 200) -> int:
    """Master-key rotation: re-wrap month keys not under the active master key; returns how many moved."""
    active = _ring().active_key_id
    rows = db.session.execute(
        select(AuditKey).where(AuditKey.wrapped.is_not(None), AuditKey.master_key_id != active)
        .order_by(AuditKey.id).limit(limit).with_for_update(skip_locked=True)
    ).scalars().all()
    for row in rows:
        assert row.wrapped is not None and row.master_key_id is not None
        moved = rewrap(_ring(), WrappedKey(row.master_key_id, row.wrapped), owner=_key_owner(row.period))
        row.master_key_id = moved.key_id
        row.wrapped = moved.blob
        row.rewrapped_at = utcnow()
    db.session.flush()
    return len(rows)


def keys_on(master_key_id: str) -> int:
    return int(db.session.execute(
        select(func.count()).select_from(AuditKey).where(AuditKey.master_key_id == master_key_id)
    ).scalar_one())


# ---- writing ------------------------------------------------------------------------------------------


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
        ip_address=request.remote_addr if in_request else None,  # sealed by _append, never stored in clear
    )


_TABLE: Table = AuditEvent.__table__  # type: ignore[assignment]
_COLUMNS = tuple(c.name for c in _TABLE.columns if c.name != "id")


def _append(session: AnySession, event: AuditEvent) -> AuditEvent:
    """Link ``event`` to the tail of a chain and insert it; returns it with its id (not in the session:
    the row never changes, so the unit of work has nothing to track)."""
    address, event.ip_address = event.ip_address, None
    session.flush()  # the caller's pending changes go first, before the chain's lock is held
    event.chain, seq, event.prev_hash = _claim(session, event)
    event.seq = seq + 1
    if address:
        event.key_period = period_of(event.occurred_at)
        event.ip_sealed = _seal(session, event.key_period, "ip_address", address)
    event.hash = compute_hash(event)
    # a Core INSERT: the ORM's unit of work cost more CPU than the rest of the append together
    result = session.execute(_TABLE.insert().values({c: getattr(event, c) for c in _COLUMNS}))
    assert isinstance(result, CursorResult)
    key = result.inserted_primary_key
    assert key is not None
    event.id = int(key[0])
    session.info["audit_chain"] = (_transaction(session), event.chain)
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


# ---- verifying ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainReport:
    checked: int
    first_broken_id: int | None
    reason: str | None
    chains: int = 0  # chains that hold rows (the legacy chain counts as one)
    broken_chain: int | None = None  # -1: the legacy chain

    @property
    def ok(self) -> bool:
        return self.first_broken_id is None


def iter_events(session: AnySession, batch: int = 1000) -> Iterator[AuditEvent]:
    """Every row: the legacy chain in id order, then each chain in seq order (ties by id)."""
    last_id = 0
    while True:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.chain.is_(None), AuditEvent.id > last_id)
            .order_by(AuditEvent.id).limit(batch)
        ).scalars().all()
        if not rows:
            break
        yield from rows
        last_id = rows[-1].id
        session.expunge_all()
    position: tuple[int, int, int] = (-1, 0, 0)
    while True:
        place = tuple_(AuditEvent.chain, func.coalesce(AuditEvent.seq, 0), AuditEvent.id)
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.chain.is_not(None), place > position)
            .order_by(AuditEvent.chain, func.coalesce(AuditEvent.seq, 0), AuditEvent.id).limit(batch)
        ).scalars().all()
        if not rows:
            return
        yield from rows
        last = rows[-1]
        position = (int(last.chain or 0), int(last.seq or 0), last.id)
        session.expunge_all()


def _problem(event: AuditEvent, expected_seq: int | None, previous: str) -> str | None:
    if event.chain is not None:
        if not 0 <= event.chain < CHAINS:
            return f"row in chain {event.chain}, which cannot exist (row inserted)"
        assert expected_seq is not None
        if event.seq is not None and event.seq < expected_seq:
            return "two rows claim the same place in the chain (row inserted)"
        if event.seq != expected_seq:
            return "a place in the chain is empty (row removed)"
    if event.prev_hash != previous:
        return "prev_hash does not match the previous row (row removed or reordered, or one inserted)"
    if compute_hash(event) != event.hash:
        return "row content does not match its hash (row edited)"
    return None


def verify_chain(session: AnySession) -> ChainReport:
    """Check every chain; report the broken row with the lowest id (each chain stops at its first)."""
    checked = 0
    chains: set[int] = set()
    broken: dict[int, tuple[int, str]] = {}  # chain (-1 legacy) -> (row id, reason)
    current: int | None = None
    expected_seq = 1
    previous = GENESIS
    for event in iter_events(session):
        checked += 1
        chain = -1 if event.chain is None else event.chain
        if chain != current:
            current, expected_seq, previous = chain, 1, GENESIS
            chains.add(chain)
        if chain in broken:
            continue
        problem = _problem(event, None if event.chain is None else expected_seq, previous)
        if problem is not None:
            broken[chain] = (event.id, problem)
            continue
        expected_seq += 1
        previous = event.hash
    if not broken:
        return ChainReport(checked, None, None, len(chains))
    chain, (row_id, reason) = min(broken.items(), key=lambda item: item[1][0])
    return ChainReport(checked, row_id, reason, len(chains), chain)


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
