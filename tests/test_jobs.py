"""Durable work: the database row is the source of truth, rq only carries its id (JB-03, JB-05 in miniature).

The session app runs jobs synchronously after each commit, or through rq on ``TEST_REDIS_URL``
(``drain_jobs`` runs them). Tests that need a real Redis use ``TEST_REDIS_URL`` when it is set and
otherwise start their own ``redis-server`` on a free loopback port (no persistence), killed by pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from redis import Redis
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from marketplace import jobs
from marketplace.extensions import db, utcnow
from marketplace.jobs import WorkItem, WorkStatus
from marketplace.notifications.models import OutboxMessage, OutboxStatus
from tests import factories
from tests.conftest import drain_jobs, free_port

# ---- job functions and handlers (module level: rq imports them by name) -------------------------------

CALLS: list[tuple[str, str]] = []
_CALLS_LOCK = threading.Lock()


def remember(value: str) -> None:
    """A plain job for enqueue_after_commit."""
    with _CALLS_LOCK:
        CALLS.append(("job", value))


@jobs.handler("test.count")
def _count_handler(ref: str) -> None:
    with _CALLS_LOCK:
        CALLS.append(("count", ref))


@jobs.handler("test.fail")
def _failing_handler(ref: str) -> None:
    with _CALLS_LOCK:
        CALLS.append(("fail", ref))
    raise RuntimeError("the downstream service said no")


class WorkerKilled(BaseException):
    """Stands for the process dying mid-run: nothing in the job gets to record an outcome."""


@jobs.handler("test.dies_once")
def _dies_once_handler(ref: str) -> None:
    with _CALLS_LOCK:
        CALLS.append(("dies_once", ref))
        first = sum(1 for c in CALLS if c == ("dies_once", ref)) == 1
    if first:
        raise WorkerKilled()


@pytest.fixture(autouse=True)
def _clear_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


def _calls(kind: str) -> Counter[str]:
    return Counter(ref for k, ref in CALLS if k == kind)


def _insert(kind: str, ref: str, *, status: str = WorkStatus.PENDING, due_at: datetime | None = None,
            attempts: int = 0, max_attempts: int = jobs.MAX_ATTEMPTS, leased_until: datetime | None = None) -> int:
    """A work row committed directly (not through ``schedule``, so nothing is queued for it)."""
    now = utcnow()
    item = WorkItem(kind=kind, ref=ref, status=status, due_at=due_at or now, attempts=attempts,
                    max_attempts=max_attempts, leased_until=leased_until, created_at=now)
    db.session.add(item)
    db.session.commit()
    return item.id


def _item(app: Flask, item_id: int) -> WorkItem:
    with app.app_context():
        item = db.session.get(WorkItem, item_id)
        assert item is not None
        db.session.expunge(item)
        return item


# ---- a real Redis --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[tuple[str, bool]]:
    """(url, owned): ``TEST_REDIS_URL``, or our own redis-server without persistence."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url, False
        return
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("set TEST_REDIS_URL or install redis-server to run the real-Redis job tests")
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, loopback only
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = Redis.from_url(url)
        deadline = time.monotonic() + 10  # hang guard
        while True:
            try:
                client.ping()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield url, True
    finally:
        proc.terminate()  # only the process this fixture started, by its pid
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def real_rq(app: Flask, redis_server: tuple[str, bool]) -> Iterator[tuple[jobs.RqBackend, bool]]:
    """The app's jobs go through rq on a real Redis for this test: (backend, we own the server)."""
    url, owned = redis_server
    current = app.extensions["jobs_backend"]
    if isinstance(current, jobs.RqBackend) and not owned:
        yield current, False  # the session app already runs on TEST_REDIS_URL
        return
    connection = Redis.from_url(url)
    connection.flushdb()
    backend = jobs.RqBackend(app, connection)
    app.extensions["jobs_backend"] = backend
    try:
        yield backend, owned
    finally:
        app.extensions["jobs_backend"] = current
        connection.flushdb()
        connection.close()


# ---- enqueue after commit ----------------------------------------------------------------------------


def test_enqueue_after_commit_runs_only_after_the_commit(app: Flask) -> None:
    from marketplace import audit

    with app.app_context():
        backend = jobs.backend()
        audit.record(None, "test:work")
        jobs.enqueue_after_commit(remember, "committed")
        assert CALLS == []  # nothing runs before the commit
        if isinstance(backend, jobs.RqBackend):
            assert len(backend.queue) == 0  # ... and nothing is even queued
        db.session.commit()
    drain_jobs(app)
    assert CALLS == [("job", "committed")]


def test_enqueue_after_commit_never_runs_after_a_rollback(app: Flask) -> None:
    from marketplace import audit

    with app.app_context():
        audit.record(None, "test:work")
        jobs.enqueue_after_commit(remember, "rolled-back")
        db.session.rollback()
        audit.record(None, "test:work")
        db.session.commit()  # a later commit in the same session does not resurrect it
    drain_jobs(app)
    assert CALLS == []


def test_a_savepoint_rollback_keeps_the_outer_transactions_jobs(app: Flask) -> None:
    from marketplace import audit

    with app.app_context():
        audit.record(None, "test:work")
        jobs.enqueue_after_commit(remember, "outer")
        savepoint = db.session.begin_nested()
        savepoint.rollback()
        db.session.commit()
    drain_jobs(app)
    assert ("job", "outer") in CALLS


# ---- schedule ------------------------------------------------------------------------------------------


def test_schedule_writes_the_row_in_the_callers_transaction(app: Flask) -> None:
    with app.app_context():
        item_id = jobs.schedule("test.count", "rolled-back").id
        db.session.rollback()
        assert db.session.get(WorkItem, item_id) is None
    drain_jobs(app)
    assert CALLS == []

    with app.app_context():
        item_id = jobs.schedule("test.count", "r1", dedupe_key="test:r1").id
        db.session.commit()
    drain_jobs(app)
    assert _calls("count") == Counter({"r1": 1})
    item = _item(app, item_id)
    assert (item.status, item.attempts, item.last_error) == (WorkStatus.DONE, 1, None)
    assert item.finished_at is not None and item.leased_until is None


def test_schedule_refuses_unknown_kinds_and_duplicate_keys(app: Flask) -> None:
    with app.app_context():
        with pytest.raises(KeyError):
            jobs.schedule("test.no_such_kind", "x")
        jobs.schedule("test.count", "a", dedupe_key="test:once", due_at=utcnow() + timedelta(hours=1))
        db.session.commit()
        with pytest.raises(IntegrityError):
            jobs.schedule("test.count", "b", dedupe_key="test:once", due_at=utcnow() + timedelta(hours=1))
        db.session.rollback()
        assert len(db.session.execute(select(WorkItem)).scalars().all()) == 1


def test_future_work_waits_for_its_due_time(app: Flask) -> None:
    start = utcnow()
    with app.app_context():
        item_id = jobs.schedule("test.count", "later", due_at=start + timedelta(hours=2)).id
        db.session.commit()
        assert jobs.sweep() == 0
    drain_jobs(app)
    assert CALLS == []
    with app.app_context():
        assert jobs.run_work_item(item_id) == "skipped"  # a stray early job does nothing either
    with time_machine.travel(start + timedelta(hours=2, seconds=1), tick=True):
        with app.app_context():
            assert jobs.sweep() == 1
        drain_jobs(app)
    assert _calls("count") == Counter({"later": 1})
    assert _item(app, item_id).status == WorkStatus.DONE


# ---- running one item ------------------------------------------------------------------------------------


def test_run_work_item_is_idempotent(app: Flask) -> None:
    with app.app_context():
        item_id = _insert("test.count", "once")
        assert jobs.run_work_item(item_id) == "done"
        assert jobs.run_work_item(item_id) == "skipped"
        assert jobs.run_work_item(item_id) == "skipped"
    assert _calls("count") == Counter({"once": 1})
    assert _item(app, item_id).attempts == 1


def test_the_same_row_queued_twice_runs_once(app: Flask) -> None:
    with app.app_context():
        item_id = _insert("test.count", "twice-queued")
        jobs.enqueue_after_commit(jobs.run_work_item, item_id)
        jobs.enqueue_after_commit(jobs.run_work_item, item_id)
        db.session.commit()
    drain_jobs(app)
    assert _calls("count") == Counter({"twice-queued": 1})


def test_failures_back_off_and_end_dead_after_max_attempts(app: Flask) -> None:
    start = utcnow()
    with time_machine.travel(start, tick=False), app.app_context():
        item_id = _insert("test.fail", "flaky", max_attempts=3)
        assert jobs.run_work_item(item_id) == "failed"
    item = _item(app, item_id)
    assert (item.status, item.attempts) == (WorkStatus.PENDING, 1)
    assert item.due_at == start + jobs.backoff(1)
    assert item.last_error == "RuntimeError: the downstream service said no"
    assert item.leased_until is None

    with time_machine.travel(start + timedelta(seconds=10), tick=False), app.app_context():
        assert jobs.run_work_item(item_id) == "skipped"  # still backing off
        assert jobs.sweep() == 0

    now = start
    for attempt in (2, 3):
        now = now + jobs.backoff(attempt - 1) + timedelta(seconds=1)
        with time_machine.travel(now, tick=False), app.app_context():
            assert jobs.run_work_item(item_id) == "failed"
        item = _item(app, item_id)
        assert item.attempts == attempt
    assert item.status == WorkStatus.DEAD
    assert item.finished_at is not None
    assert jobs.backoff(1) < jobs.backoff(2) <= jobs.backoff(30) == timedelta(hours=1)

    with time_machine.travel(now + timedelta(days=1), tick=False), app.app_context():
        assert jobs.sweep() == 0  # dead work stays dead until an operator acts
        assert jobs.run_work_item(item_id) == "skipped"
    assert _calls("fail") == Counter({"flaky": 3})


# ---- the sweeper -------------------------------------------------------------------------------------------


def test_sweeper_requeues_work_whose_queue_entry_was_lost(app: Flask, real_rq: Any) -> None:  # JB-03
    backend, owned = real_rq
    refs = [f"jb03-{n}" for n in range(20)]
    with app.app_context():
        ids = [jobs.schedule("test.count", ref).id for ref in refs]
        db.session.commit()
    assert len(backend.queue) == len(refs)  # queued on Redis after the commit

    if owned:
        backend.connection.flushall()  # Redis loses everything (our own server)
    else:
        backend.connection.flushdb()  # the shared TEST_REDIS_URL server: only our database
    assert len(backend.queue) == 0
    drain_jobs(app)
    assert CALLS == []
    with app.app_context():
        statuses = set(db.session.execute(select(WorkItem.status).where(WorkItem.id.in_(ids))).scalars())
    assert statuses == {WorkStatus.PENDING}  # nothing lost: the rows still say what is owed

    with app.app_context():
        assert jobs.sweep() == len(refs)
        assert jobs.sweep() == 0  # just queued: not queued again
    drain_jobs(app)
    assert _calls("count") == Counter({ref: 1 for ref in refs})  # each exactly once

    with time_machine.travel(utcnow() + timedelta(minutes=5), tick=False), app.app_context():
        assert jobs.sweep() == 0  # done work is never re-queued
    drain_jobs(app)
    assert _calls("count") == Counter({ref: 1 for ref in refs})
    with app.app_context():
        statuses = set(db.session.execute(select(WorkItem.status).where(WorkItem.id.in_(ids))).scalars())
    assert statuses == {WorkStatus.DONE}


def test_sweeper_requeues_work_whose_worker_died_mid_run(app: Flask) -> None:
    start = utcnow()
    with app.app_context():
        item_id = _insert("test.dies_once", "crash")
        with pytest.raises(WorkerKilled):
            jobs.run_work_item(item_id)
        db.session.rollback()
    item = _item(app, item_id)
    assert item.status == WorkStatus.RUNNING and item.leased_until is not None

    with time_machine.travel(start + timedelta(minutes=1), tick=False), app.app_context():
        assert jobs.sweep() == 0  # the lease still holds: maybe the worker is just slow
    drain_jobs(app)
    assert _calls("dies_once") == Counter({"crash": 1})

    with time_machine.travel(start + jobs.LEASE + timedelta(minutes=1), tick=False), app.app_context():
        assert jobs.sweep() == 1
    drain_jobs(app)
    item = _item(app, item_id)
    assert (item.status, item.attempts) == (WorkStatus.DONE, 2)
    assert _calls("dies_once") == Counter({"crash": 2})


# ---- Redis down when work is created (JB-05) ------------------------------------------------------------


def _separate_app(app_overrides: dict[str, Any], *, start_background: bool = False, **changes: Any) -> Flask:
    """Another app on the same database (rows are cleaned with the session app's)."""
    from marketplace import create_app

    other = create_app({**app_overrides, **changes}, start_background=start_background)
    other.config["TESTING"] = True
    return other


def _dispose(other: Flask) -> None:
    with other.app_context():
        db.engine.dispose()


def test_registration_succeeds_while_redis_is_down_and_runs_later(
    app: Flask, app_overrides: dict[str, Any],
) -> None:  # JB-05
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    broken = _separate_app(app_overrides, JOBS_MODE="redis", REDIS_URL=dead_redis)
    try:
        body = factories.registration_body()
        response = broken.test_client().post("/api/v1/auth/register", json=body)
        assert response.status_code == 202, response.get_json()
    finally:
        _dispose(broken)

    with app.app_context():
        items = db.session.execute(select(WorkItem)).scalars().all()
        assert [(i.kind, i.status, i.attempts) for i in items] == [("email.send", WorkStatus.PENDING, 0)]
        message = db.session.get(OutboxMessage, int(items[0].ref))
        assert message is not None
        assert (message.to_address, message.status) == (body["email"], OutboxStatus.QUEUED)
        item_id = items[0].id
        # Redis is back (or the sync backend): the sweeper finds the committed row
        assert jobs.sweep() == 1
    drain_jobs(app)
    assert _item(app, item_id).status == WorkStatus.DONE
    with app.app_context():
        message = db.session.execute(select(OutboxMessage)).scalar_one()
        assert message.status == OutboxStatus.KEPT  # no SMTP in the suite: kept in the outbox
        assert message.attempts == 1


# ---- the embedded default: an in-process worker thread ----------------------------------------------------


def test_thread_mode_processes_email_in_the_background(app: Flask, app_overrides: dict[str, Any]) -> None:
    embedded = _separate_app(app_overrides, start_background=True, JOBS_MODE="thread", REDIS_URL=None)
    try:
        assert "jobs_thread" in embedded.extensions
        body = factories.registration_body()
        response = embedded.test_client().post("/api/v1/auth/register", json=body)
        assert response.status_code == 202, response.get_json()

        deadline = time.monotonic() + 10  # a hang guard, not a timing assertion
        status = None
        while time.monotonic() < deadline:
            with app.app_context():
                status = db.session.execute(
                    select(OutboxMessage.status).where(OutboxMessage.to_address == body["email"])
                ).scalar_one_or_none()
            if status == OutboxStatus.KEPT:
                break
            time.sleep(0.05)
        assert status == OutboxStatus.KEPT
        with app.app_context():
            item = db.session.execute(select(WorkItem)).scalar_one()
            assert (item.kind, item.status, item.attempts) == ("email.send", WorkStatus.DONE, 1)
    finally:
        assert jobs.stop_background(embedded)
        _dispose(embedded)


# ---- rq workers on a real Redis ----------------------------------------------------------------------------


def test_an_rq_simple_worker_burst_processes_the_queue(app: Flask, real_rq: Any) -> None:
    from rq import SimpleWorker
    from rq.job import JobStatus
    from rq.timeouts import TimerDeathPenalty

    class Worker(SimpleWorker):
        death_penalty_class = TimerDeathPenalty  # leave SIGALRM to pytest-timeout

        def _install_signal_handlers(self) -> None:  # and SIGINT/SIGTERM to pytest
            return None

    backend, _ = real_rq
    refs = [f"burst-{n}" for n in range(5)]
    with app.app_context():
        ids = [jobs.schedule("test.count", ref).id for ref in refs]
        db.session.commit()
    queued = backend.queue.get_jobs()
    assert [job.args for job in queued] == [(i,) for i in ids]  # rq carries only the row id

    with app.app_context():
        assert Worker([backend.queue], connection=backend.connection).work(burst=True)
    assert len(backend.queue) == 0
    assert {job.get_status(refresh=True) for job in queued} == {JobStatus.FINISHED}
    assert [job.return_value() for job in queued] == ["done"] * len(refs)
    assert _calls("count") == Counter({ref: 1 for ref in refs})
    with app.app_context():
        statuses = set(db.session.execute(select(WorkItem.status).where(WorkItem.id.in_(ids))).scalars())
    assert statuses == {WorkStatus.DONE}


def test_stored_job_errors_hide_addresses_and_numbers():  # PV-03: personal data stays out of operator fields
    from marketplace.jobs import _redact

    text = _redact("550 <layla@example.com> refused; call +971 50 123 4567 or ID 784-1990-1234567-1")
    assert "layla@example.com" not in text and "4567" not in text
    assert text.count("<email>") == 1 and text.count("<number>") == 2


def test_run_after_commit_runs_inline_once_and_never_after_rollback(app):
    from marketplace.extensions import db

    calls: list[str] = []
    with app.app_context():
        jobs.run_after_commit(calls.append, "kept")
        db.session.commit()
        jobs.run_after_commit(calls.append, "dropped")
        db.session.rollback()
        db.session.commit()
    assert calls == ["kept"]


def test_a_blob_file_outlives_a_rolled_back_delete(app):  # nothing half-written: row and file agree
    from marketplace.extensions import db
    from marketplace.vault import service as vault

    with app.app_context():
        blob = vault.store("user:test-owner", "id_front", b"\x00" * 32, mime="image/jpeg", width=1, height=1)
        db.session.commit()
        vault.delete(blob)
        db.session.rollback()
        assert vault.blob_store().exists(blob.storage_key)
        vault.delete(db.session.get(type(blob), blob.id))
        db.session.commit()
        assert not vault.blob_store().exists(blob.storage_key)
