"""The audit log is append-only and hash-chained (PV-02); security events are logged as encoded JSON (PV-04).

Runs on SQLite and on PostgreSQL (``TEST_DATABASE_URL``). "Bypassing the triggers" stands for a
superuser editing the table directly: on SQLite the trigger is dropped (and put back), on PostgreSQL the
superuser sets ``session_replication_role = replica``.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from marketplace import audit
from marketplace.audit import GENESIS, AuditEvent, compute_hash, verify_chain
from marketplace.extensions import db
from marketplace.logs import JsonFormatter
from tests import factories
from tests.conftest import is_postgres


def _events(app: Flask) -> list[AuditEvent]:
    with app.app_context():
        rows = list(db.session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())
        db.session.expunge_all()
        return rows


def _count(app: Flask) -> int:
    with app.app_context():
        return int(db.session.execute(select(func.count()).select_from(AuditEvent)).scalar_one())


def _chain(app: Flask) -> audit.ChainReport:
    with app.app_context():
        return verify_chain(db.session)


@contextmanager
def _superuser_edit(app: Flask) -> Iterator[Connection]:
    """A direct edit of the audit table with its append-only triggers out of the way."""
    with app.app_context(), db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))  # superuser only
            yield conn
            return
        triggers = conn.execute(text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'"
        )).all()
        assert triggers, "the append-only triggers are missing"
        for name, _ in triggers:
            conn.execute(text(f'DROP TRIGGER "{name}"'))
        yield conn
        for _, sql in triggers:
            conn.execute(text(sql))


def _append_three(app: Flask) -> list[AuditEvent]:
    with app.app_context():
        for n in range(3):
            audit.record(None, "test:append", ("things", f"t-{n}"), n=n)
        db.session.commit()
    return _events(app)


# ---- the chain -------------------------------------------------------------------------------------


def test_record_appends_a_chained_row_in_the_callers_transaction(app: Flask) -> None:  # PV-02
    with app.app_context():
        audit.record(None, "test:rolled_back", ("things", "t-0"))
        db.session.rollback()
    assert _count(app) == 0  # rolled back with the change it described

    rows = _append_three(app)
    assert [r.action for r in rows] == ["test:append"] * 3
    assert rows[0].prev_hash == GENESIS
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    assert all(compute_hash(r) == r.hash for r in rows)
    assert json.loads(rows[2].data) == {"n": 2}
    assert (rows[1].subject_type, rows[1].subject_id, rows[1].actor_type) == ("things", "t-1", "system")

    report = _chain(app)
    assert report.ok and report.checked == 3


def test_record_now_commits_even_when_the_request_fails(app: Flask, client: FlaskClient) -> None:  # PV-02
    with app.app_context():
        person = factories.make_customer()
    response = client.post("/api/v1/auth/login", json={"email": person.email, "password": "wrong-password-1"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_credentials"

    failed = [e for e in _events(app) if e.action == "auth:login"]
    assert len(failed) == 1
    event = failed[0]
    assert event.outcome == "failed"
    assert (event.subject_type, event.subject_id) == ("users", person.public_id)
    assert event.request_id == response.headers["X-Request-ID"]
    assert "wrong-password" not in event.data and person.email not in event.data
    assert _chain(app).ok


def test_cli_verify_reports_an_intact_chain(app: Flask) -> None:  # PV-02
    _append_three(app)
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "audit chain ok: 3 rows" in result.output


# ---- append-only -------------------------------------------------------------------------------------


@pytest.mark.parametrize("statement", [
    "UPDATE audit_events SET action = 'test:rewritten' WHERE id = :id",
    "UPDATE audit_events SET data = '{}', hash = hash WHERE id = :id",
    "DELETE FROM audit_events WHERE id = :id",
    "DELETE FROM audit_events",
])
def test_the_app_connection_cannot_update_or_delete_audit_rows(app: Flask, statement: str) -> None:  # PV-02
    rows = _append_three(app)
    with app.app_context():
        with pytest.raises(DBAPIError, match="append-only"):
            db.session.execute(text(statement), {"id": rows[1].id})
        db.session.rollback()
    assert [(r.id, r.action, r.hash) for r in _events(app)] == [(r.id, r.action, r.hash) for r in rows]
    assert _chain(app).ok


def test_truncate_is_refused_on_postgresql(app: Flask) -> None:  # PV-02
    if not is_postgres(app):
        pytest.skip("SQLite has no TRUNCATE; its DELETE guard is covered above")
    _append_three(app)
    with app.app_context():
        with pytest.raises(DBAPIError, match="append-only"):
            db.session.execute(text("TRUNCATE audit_events"))
        db.session.rollback()
    assert _count(app) == 3


# ---- tampering with the triggers bypassed is detected ---------------------------------------------------


def test_a_direct_edit_is_reported_by_verify_chain_and_the_cli(app: Flask) -> None:  # PV-02
    rows = _append_three(app)
    target = rows[1]
    with _superuser_edit(app) as conn:
        edited = conn.execute(text("UPDATE audit_events SET outcome = 'success', data = :d WHERE id = :id"),
                              {"d": '{"n":99}', "id": target.id})
        assert edited.rowcount == 1  # the superuser's edit went through

    report = _chain(app)
    assert not report.ok
    assert report.first_broken_id == target.id
    assert "edited" in (report.reason or "")

    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 1
    assert f"BROKEN at row {target.id}" in result.output


def test_rehashing_an_edited_row_still_breaks_the_chain_at_the_next_row(app: Flask) -> None:  # PV-02
    """An editor who recomputes the edited row's hash breaks the link to the row after it."""
    rows = _append_three(app)
    target = rows[1]
    with app.app_context():
        forged = db.session.get(AuditEvent, target.id)
        assert forged is not None
        db.session.expunge(forged)
        forged.data = '{"n":42}'
        new_hash = compute_hash(forged)
    with _superuser_edit(app) as conn:
        conn.execute(text("UPDATE audit_events SET data = :d, hash = :h WHERE id = :id"),
                     {"d": '{"n":42}', "h": new_hash, "id": target.id})
    report = _chain(app)
    assert report.first_broken_id == rows[2].id
    assert "removed or reordered" in (report.reason or "")


def test_deleting_a_row_in_the_middle_is_detected(app: Flask) -> None:  # PV-02
    rows = _append_three(app)
    with _superuser_edit(app) as conn:
        assert conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": rows[1].id}).rowcount == 1

    report = _chain(app)
    assert report.first_broken_id == rows[2].id
    assert "removed" in (report.reason or "")
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 1
    assert f"BROKEN at row {rows[2].id}" in result.output


# ---- concurrent appends ------------------------------------------------------------------------------

THREADS = 8
PER_THREAD = 10


def _hammer(app: Flask, target: Any) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS, timeout=30)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            with app.app_context():
                target(n)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            with app.app_context():
                db.session.remove()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an appending thread hung"
    return errors


def _by_chain(rows: list[AuditEvent]) -> dict[int | None, list[AuditEvent]]:
    chains: dict[int | None, list[AuditEvent]] = {}
    for row in rows:
        chains.setdefault(row.chain, []).append(row)
    return {chain: sorted(members, key=lambda r: r.seq or 0) for chain, members in chains.items()}


def test_concurrent_appends_keep_the_chain_linear(app: Flask) -> None:  # PV-02
    # record_now (its own transaction) on both databases. record() inside a caller's deferred SQLite
    # transaction is F3 territory (SQLite is not where races are tested, CC-06), so it joins on PostgreSQL.
    mixed = is_postgres(app)

    def append_many(n: int) -> None:
        for i in range(PER_THREAD):
            if i % 2 or not mixed:
                audit.record_now(None, "test:concurrent", ("things", f"{n}-{i}"), outcome="denied")
            else:
                audit.record(None, "test:concurrent", ("things", f"{n}-{i}"))
                db.session.commit()

    errors = _hammer(app, append_many)
    assert errors == []
    rows = _events(app)
    assert len(rows) == THREADS * PER_THREAD
    for chain, members in _by_chain(rows).items():  # issue 8 item 5: one linear chain per chain number
        assert chain is not None and 0 <= chain < audit.CHAINS
        prev = [r.prev_hash for r in members]
        assert len(set(prev)) == len(prev), f"two rows of chain {chain} claim the same predecessor: it forked"
        assert [r.seq for r in members] == list(range(1, len(members) + 1))
        assert [r.prev_hash for r in members] == [GENESIS] + [r.hash for r in members[:-1]]
    report = _chain(app)
    assert report.ok and report.checked == THREADS * PER_THREAD


def test_without_the_chain_lock_concurrent_appends_to_one_chain_collide(
    app: Flask, monkeypatch: pytest.MonkeyPatch,
) -> None:  # PV-02 negative control for the chain's advisory lock
    if not is_postgres(app):
        pytest.skip("SQLite serialises writers itself (a stale reader fails instead of forking); "
                    "the advisory lock is a PostgreSQL safeguard")
    with app.app_context():
        audit.record(None, "test:seed", ("things", "same"))
        db.session.commit()
    both_read = threading.Barrier(2, timeout=30)

    def claim_without_lock(session: Any, event: AuditEvent) -> tuple[int, int, str]:
        chain = audit.preferred_chain(event)
        value = (chain, *audit._chain_tail(session, chain))
        both_read.wait()  # both writers have read the same tail before either inserts
        return value

    monkeypatch.setattr(audit, "_claim", claim_without_lock)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with app.app_context():
                audit.record_now(None, "test:race", ("things", "same"), n=n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # both claimed the same place: the unique (chain, seq) index refuses the second, so the chain
    # cannot fork, but without the lock an audited write fails instead of waiting its turn
    assert len(errors) == 1 and "uq_audit_events_chain_seq" in str(errors[0])
    assert _count(app) == 2 and _chain(app).ok


def test_rows_of_one_transaction_stay_in_one_chain(app: Flask) -> None:  # issue 8 item 5
    """One chain lock per transaction, whatever its subjects: two transactions can never wait for each
    other's chain locks in opposite orders (no deadlock among chain locks)."""
    subjects = [("things", f"t-{n}") for n in range(12)]
    assert len({audit.preferred_chain(AuditEvent(subject_type=t, subject_id=i)) for t, i in subjects}) > 1
    with app.app_context():
        for subject in subjects:
            audit.record(None, "test:one_txn", subject)
        db.session.commit()
        audit.record(None, "test:next_txn", ("things", "t-5"))
        db.session.commit()
    rows = _events(app)
    assert len({r.chain for r in rows[:12]}) == 1
    assert rows[12].chain == audit.preferred_chain(rows[12])  # a new transaction chooses afresh
    assert _chain(app).ok


@contextmanager
def _open_append(app: Flask, subject: tuple[str, str]) -> Iterator[AuditEvent]:
    """An audited write whose transaction stays open (its chain lock held) until the block ends."""
    with app.app_context(), Session(db.engine) as session, session.begin():
        session.execute(text("SET LOCAL lock_timeout = '20s'"))  # a serialised append fails, never hangs
        yield audit._append(session, audit._build(None, "test:open", subject, "success", {}))


def test_audited_writes_in_different_chains_do_not_wait_for_each_other(app: Flask) -> None:  # issue 8 item 5
    if not is_postgres(app):
        pytest.skip("SQLite admits one writer at a time whatever the audit does; concurrency is PostgreSQL's")
    # a subject whose preferred chain differs from the first one's
    first = ("things", "a")
    other = next(("things", f"b{n}") for n in range(100)
                 if audit.preferred_chain(AuditEvent(subject_type="things", subject_id=f"b{n}"))
                 != audit.preferred_chain(AuditEvent(subject_type="things", subject_id="a")))
    # each append runs while the ones before it are still open: with the old single global lock the
    # second would wait for the first to commit, and its lock timeout would fail the test
    with (_open_append(app, first) as one, _open_append(app, other) as two,
          _open_append(app, first) as three):  # the same preferred chain as `one`, which is held: moves on
        assert one.chain != two.chain
        assert three.chain not in (one.chain, two.chain)
    rows = _events(app)
    assert len(rows) == 3 and all(r.seq == 1 for r in rows)
    assert _chain(app).ok


def test_a_side_transaction_never_queues_behind_its_own_requests_chain(
    app: Flask, monkeypatch: pytest.MonkeyPatch,
) -> None:  # issue 8 item 5: a refusal written beside the request's open work (record_now's new shape)
    if not is_postgres(app):
        pytest.skip("chain locks exist on PostgreSQL only")
    monkeypatch.setattr(audit, "_TRY_OTHER_CHAINS", 0)  # go straight to queueing: on its own chain it would hang
    with app.app_context():
        mine = audit.record(None, "test:request", ("things", "x"))
        with Session(db.engine) as side, side.begin():
            side.execute(text("SET LOCAL lock_timeout = '20s'"))
            refusal = audit._append(side, audit._build(None, "test:refusal", ("things", "x"), "denied", {}))
            assert refusal.chain != mine.chain
        db.session.commit()
    assert _chain(app).ok


# ---- tampering in any chain ----------------------------------------------------------------------------


def _several_chains(app: Flask) -> dict[int | None, list[AuditEvent]]:
    """Rows in at least three chains, three or more rows in one of them."""
    with app.app_context():
        for n in range(24):
            audit.record(None, "test:spread", ("things", f"s-{n % 8}"), n=n)
            db.session.commit()
    chains = _by_chain(_events(app))
    assert len(chains) >= 3
    return chains


def _longest_chain(chains: dict[int | None, list[AuditEvent]]) -> list[AuditEvent]:
    members = max(chains.values(), key=len)
    assert len(members) >= 3
    return members


def test_an_edited_row_in_any_chain_is_reported(app: Flask) -> None:  # PV-02, issue 8 item 5
    members = _longest_chain(_several_chains(app))
    target = members[1]
    with _superuser_edit(app) as conn:
        conn.execute(text("UPDATE audit_events SET outcome = 'refused' WHERE id = :id"), {"id": target.id})
    report = _chain(app)
    assert (report.first_broken_id, report.broken_chain) == (target.id, target.chain)
    assert "edited" in (report.reason or "")


def test_moving_a_row_to_another_place_is_reported(app: Flask) -> None:  # PV-02: chain and seq are hashed
    chains = _several_chains(app)
    members = _longest_chain(chains)
    spare = next(c for c in range(audit.CHAINS) if c not in chains)
    with _superuser_edit(app) as conn:
        conn.execute(text("UPDATE audit_events SET chain = :c, seq = 1 WHERE id = :id"),
                     {"c": spare, "id": members[-1].id})
    report = _chain(app)  # first in its new chain, it does not start from GENESIS
    assert report.first_broken_id == members[-1].id and "reordered" in (report.reason or "")


def test_a_deleted_row_in_any_chain_is_reported(app: Flask) -> None:  # PV-02, issue 8 item 5
    members = _longest_chain(_several_chains(app))
    with _superuser_edit(app) as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": members[1].id})
    report = _chain(app)
    assert (report.first_broken_id, report.broken_chain) == (members[2].id, members[2].chain)
    assert "removed" in (report.reason or "")
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 1 and f"BROKEN at row {members[2].id}" in result.output


def _forge(after: AuditEvent, **changes: Any) -> dict[str, Any]:
    """A row a forger who knows the hashing scheme builds to follow ``after`` in its chain."""
    forged = AuditEvent(occurred_at=after.occurred_at, actor_type="system", actor_id=None, actor_roles=None,
                        action="test:forged", outcome="success", subject_type="things", subject_id="forged",
                        data="{}", request_id=None, ip_address=None, chain=after.chain, seq=(after.seq or 0) + 1,
                        key_period=None, ip_sealed=None, prev_hash=after.hash)
    for name, value in changes.items():
        setattr(forged, name, value)
    forged.hash = compute_hash(forged)
    columns = ("occurred_at", "actor_type", "action", "outcome", "subject_type", "subject_id", "data", "chain",
               "seq", "prev_hash", "hash")
    return {c: getattr(forged, c) for c in columns}


_INSERT = text("INSERT INTO audit_events (occurred_at, actor_type, action, outcome, subject_type, subject_id, "
               "data, chain, seq, prev_hash, hash) VALUES (:occurred_at, :actor_type, :action, :outcome, "
               ":subject_type, :subject_id, :data, :chain, :seq, :prev_hash, :hash)")


def test_a_row_inserted_into_the_middle_of_a_chain_is_reported(app: Flask) -> None:  # PV-02, issue 8 item 5
    """Even with the unique (chain, seq) index out of the way, a well-formed forged row that claims a
    place taken by a real row is found."""
    members = _longest_chain(_several_chains(app))
    with _superuser_edit(app) as conn:
        conn.execute(text("DROP INDEX uq_audit_events_chain_seq"))
        conn.execute(_INSERT, _forge(members[0]))  # links correctly to row 1 and takes row 2's place
    try:
        report = _chain(app)
        forged_id = max(r.id for r in _events(app))
        assert (report.first_broken_id, report.broken_chain) == (forged_id, members[0].chain)
        assert "inserted" in (report.reason or "")
    finally:
        with _superuser_edit(app) as conn:
            conn.execute(text("DELETE FROM audit_events WHERE action = 'test:forged'"))
            conn.execute(text("CREATE UNIQUE INDEX uq_audit_events_chain_seq ON audit_events (chain, seq)"))
    assert _chain(app).ok


@pytest.mark.parametrize("where", ["tail_wrong_link", "unknown_chain"])
def test_a_forged_row_at_a_chain_end_or_outside_the_chains_is_reported(app: Flask, where: str) -> None:  # PV-02
    members = _longest_chain(_several_chains(app))
    forged = (_forge(members[-1], prev_hash="f" * 64) if where == "tail_wrong_link"
              else _forge(members[-1], chain=audit.CHAINS, seq=1, prev_hash=GENESIS))
    with _superuser_edit(app) as conn:
        conn.execute(_INSERT, forged)
    report = _chain(app)
    assert report.first_broken_id == max(r.id for r in _events(app))
    assert "inserted" in (report.reason or "")


def test_rows_from_before_the_chains_still_verify_as_one_legacy_chain(app: Flask) -> None:  # PV-02, migration 0008
    with app.app_context():
        legacy: list[AuditEvent] = []
        previous = GENESIS
        for n in range(2):
            row = AuditEvent(occurred_at=audit.utcnow(), actor_type="system", action="test:legacy", outcome="success",
                             subject_type="things", subject_id=f"old-{n}", data="{}", ip_address="192.0.2.9",
                             prev_hash=previous)
            row.hash = compute_hash(row)  # chain None: hashed as before migration 0008
            previous = row.hash
            legacy.append(row)
        db.session.add_all(legacy)
        db.session.commit()
        audit.record(None, "test:new", ("things", "new"))
        db.session.commit()
    assert _chain(app).ok and _chain(app).chains == 2
    with _superuser_edit(app) as conn:
        conn.execute(text("UPDATE audit_events SET ip_address = '192.0.2.10' WHERE subject_id = 'old-0'"))
    report = _chain(app)
    assert report.broken_chain == -1 and "edited" in (report.reason or "")


# ---- client addresses under month keys (issue 8 item 6) -----------------------------------------------------


def _login_failure(client: FlaskClient, ip: str) -> None:
    response = client.post("/api/v1/auth/login", json={"email": "nobody@example.com", "password": "Wrong-pass-1"},
                           environ_base={"REMOTE_ADDR": ip})
    assert response.status_code == 401


def test_the_client_address_is_stored_only_sealed_under_its_months_key(
    app: Flask, client: FlaskClient,
) -> None:  # issue 8 item 6
    _login_failure(client, "198.51.100.77")
    [event] = _events(app)
    assert event.ip_address is None and event.ip_sealed is not None
    assert b"198.51.100.77" not in event.ip_sealed
    assert event.key_period == audit.period_of(event.occurred_at)
    with app.app_context():
        assert audit.client_ip(event) == "198.51.100.77"
        dump = " ".join(str(v) for row in db.session.execute(text("SELECT * FROM audit_events")) for v in row)
        keys = db.session.execute(select(audit.AuditKey)).scalars().all()
    assert "198.51.100.77" not in dump
    assert [k.period for k in keys] == [event.key_period] and keys[0].wrapped is not None


def test_a_month_key_created_by_a_rolled_back_write_is_never_used_again(app: Flask) -> None:  # issue 8 item 6
    with app.test_request_context("/", environ_base={"REMOTE_ADDR": "192.0.2.1"}):
        audit.record(None, "test:rolled_back", ("things", "r"))  # creates this month's key ...
        audit.record(None, "test:rolled_back", ("things", "r"))  # ... and reads it back, uncommitted
        db.session.rollback()  # ... and both are gone
        for n in range(2):
            audit.record(None, "test:kept", ("things", f"k{n}"))
            db.session.commit()
        events = db.session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
        assert [audit.client_ip(e) for e in events] == ["192.0.2.1", "192.0.2.1"]
        assert db.session.execute(select(func.count()).select_from(audit.AuditKey)).scalar_one() == 1


def test_forgetting_a_month_makes_its_addresses_unreadable_and_keeps_the_chain(
    app: Flask, client: FlaskClient,
) -> None:  # issue 8 item 6: what retention (step 8) calls
    import time_machine

    with time_machine.travel("2025-03-14 10:00:00+00:00", tick=False):
        _login_failure(client, "203.0.113.5")
    with time_machine.travel("2025-04-02 10:00:00+00:00", tick=False):
        _login_failure(client, "203.0.113.6")
    _login_failure(client, "203.0.113.7")  # today
    with app.app_context():
        with pytest.raises(ValueError, match="has not ended"):
            audit.forget_period(audit.period_of(audit.utcnow()))
        forgotten = audit.forget_expired(now=datetime(2026, 4, 1, tzinfo=UTC))  # 12 months back: March 2025 only
        db.session.commit()
        assert forgotten == ["2025-03"]
        assert audit.forget_period("2025-03") is False  # already gone: safe to rerun
        db.session.commit()
        logins = db.session.execute(select(AuditEvent).where(AuditEvent.action == "auth:login")).scalars()
        addresses = sorted(str(audit.client_ip(e)) for e in logins)
    assert addresses == ["203.0.113.6", "203.0.113.7", "None"]
    rows = _events(app)
    assert [r.action for r in rows].count("audit:forget_period") == 1
    assert _chain(app).ok
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        entries = [e.owner for e in audit._destroyed_key_log()]
    assert "audit:2025-03" in entries  # re-applied after a restore of an older backup


def test_the_cli_forgets_a_month(app: Flask, client: FlaskClient) -> None:  # issue 8 item 6
    import time_machine

    with time_machine.travel("2024-11-20 08:00:00+00:00", tick=False):
        _login_failure(client, "192.0.2.200")
    result = app.test_cli_runner().invoke(args=["audit", "forget-period", "2024-11"])
    assert result.exit_code == 0, result.output
    assert "2024-11" in result.output
    with app.app_context():
        [event] = [e for e in db.session.execute(select(AuditEvent)).scalars() if e.action == "auth:login"]
        assert audit.client_ip(event) is None
    verified = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert verified.exit_code == 0 and "audit chain ok" in verified.output


# ---- structured, encoded security logs (PV-04) ------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything the ``marketplace`` loggers emit, formatted exactly as in production."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("marketplace")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    records = []
    for line in lines:
        record = json.loads(line)  # every physical line is one complete JSON event
        assert isinstance(record, dict)
        records.append(record)
    return records


INJECTED = '{"time":"2030-01-01T00:00:00.000+00:00","level":"INFO","logger":"marketplace.audit",' \
           '"message":"audit","event":{"action":"auth:login","outcome":"success","actor":"admin"}}'


def test_a_failed_login_is_one_structured_event_without_secrets(
    app: Flask, client: FlaskClient, json_log: io.StringIO,
) -> None:  # PV-04, PV-03
    with app.app_context():
        person = factories.make_customer()
    password = "Not-The-Password-77"
    response = client.post("/api/v1/auth/login", json={"email": person.email, "password": password})
    assert response.status_code == 401

    records = _records(json_log)
    logins = [r for r in records if r.get("event", {}).get("action") == "auth:login"]
    assert len(logins) == 1
    event = logins[0]
    assert event["event"]["outcome"] == "failed"
    assert event["event"]["subject"] == f"users:{person.public_id}"
    assert event["event"]["request_id"] == response.headers["X-Request-ID"]
    assert event["time"].endswith("+00:00")  # UTC
    text_out = json_log.getvalue()
    assert password not in text_out
    assert person.email not in text_out and person.email.split("@")[0] not in text_out


@pytest.mark.parametrize("email", [
    "zed.injector@example.com\r\n" + INJECTED,
    "zed.injector@example.com\n" + INJECTED + "\n",
    'zed.injector"},{"level":"CRITICAL","message":"forged@example.com',
])
def test_injected_log_lines_stay_inside_one_encoded_event(
    app: Flask, client: FlaskClient, json_log: io.StringIO, email: str,
) -> None:  # PV-04
    password = "Secret-Pass-Word-11"
    response = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code in (401, 422)

    records = _records(json_log)  # would raise if a raw line break had split an event
    assert all(r.get("event", {}).get("outcome") != "success" for r in records)
    assert all(r.get("time") != "2030-01-01T00:00:00.000+00:00" for r in records)
    assert all(r.get("level") != "CRITICAL" for r in records)
    text_out = json_log.getvalue()
    assert password not in text_out
    assert "zed.injector" not in text_out and "forged" not in text_out
    if response.status_code == 401:  # it reached the service: exactly one failed sign-in event
        logins = [r for r in records if r.get("event", {}).get("action") == "auth:login"]
        assert [r["event"]["outcome"] for r in logins] == ["failed"]


def test_the_formatter_encodes_line_breaks_inside_values(json_log: io.StringIO) -> None:  # PV-04
    from marketplace.logs import security_event

    name = "Mallory\r\n" + INJECTED + "\nlevel=CRITICAL"
    security_event("staff:invite", "denied", name=name)
    logging.getLogger("marketplace.test").warning("message with\r\na break\n" + INJECTED)

    raw = json_log.getvalue()
    assert raw.count("\n") == 2  # two events, two lines, whatever they contain
    records = _records(json_log)
    assert records[0]["event"] == {"action": "staff:invite", "outcome": "denied", "name": name}
    assert records[1]["message"] == "message with\r\na break\n" + INJECTED
