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
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import DBAPIError

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
    prev = [r.prev_hash for r in rows]
    assert len(set(prev)) == len(prev), "two rows claim the same predecessor: the chain forked"
    report = _chain(app)
    assert report.ok and report.checked == THREADS * PER_THREAD


def test_without_the_chain_lock_concurrent_appends_fork_the_chain(
    app: Flask, monkeypatch: pytest.MonkeyPatch,
) -> None:  # PV-02 negative control for the advisory lock
    if not is_postgres(app):
        pytest.skip("SQLite serialises writers itself (a stale reader fails instead of forking); "
                    "the advisory lock is a PostgreSQL safeguard")
    with app.app_context():
        audit.record(None, "test:seed")
        db.session.commit()
    both_read = threading.Barrier(2, timeout=30)
    real_last_hash = audit._last_hash

    def last_hash_then_wait(session: Any) -> str:
        value = real_last_hash(session)
        both_read.wait()  # both writers have read the same tail before either inserts
        return value

    monkeypatch.setattr(audit, "_lock_chain", lambda session: None)
    monkeypatch.setattr(audit, "_last_hash", last_hash_then_wait)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with app.app_context():
                audit.record_now(None, "test:race", ("things", str(n)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    rows = _events(app)
    assert rows[1].prev_hash == rows[2].prev_hash == rows[0].hash  # forked
    assert not _chain(app).ok


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
