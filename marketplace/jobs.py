"""Background work: the durable-work table is the source of truth, rq only carries row ids.

Anything that must happen later is a ``WorkItem`` row written in the same transaction as the change
that caused it. After the commit its id is queued on rq; the job reloads the row, returns at once if
the work is already done, runs the handler and records the outcome. A sweeper (every minute) re-queues
rows that are due and not in flight, so a lost Redis or a killed worker delays work but never loses it.

Queue backends (``JOBS_MODE``):
- ``redis``: rq on ``REDIS_URL``; run ``flask jobs worker`` (workers) and ``flask jobs sweeper``.
- ``thread`` (the embedded default, no Redis needed): rq on an in-process Redis double, drained by a
  worker thread inside the web process; the same thread runs the sweeper every minute.
- ``sync``: jobs run right after the commit, in the committing thread (tests).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import fakeredis
from flask import Flask, current_app, has_app_context
from redis import Redis
from rq import Queue, SimpleWorker
from rq.timeouts import TimerDeathPenalty
from sqlalchemy import ForeignKey, Index, Integer, String, event, or_, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from marketplace import transactions
from marketplace.extensions import Model, db, utcnow

log = logging.getLogger("marketplace.jobs")

QUEUE_NAME = "marketplace"
LEASE = timedelta(minutes=5)
MAX_ATTEMPTS = 8


class WorkStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"  # gave up after MAX_ATTEMPTS; visible to operators


class WorkItem(Model):
    __tablename__ = "work_items"
    __table_args__ = (Index("ix_work_items_due", "status", "due_at"), Index("ix_work_items_kind_ref", "kind", "ref"))

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(48))
    ref: Mapped[str] = mapped_column(String(64))
    dedupe_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    status: Mapped[str] = mapped_column(String(12), default=WorkStatus.PENDING)
    due_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=MAX_ATTEMPTS)
    leased_until: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


Handler = Callable[[str], None]
_HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register the function that performs one kind of work; it receives the row's ``ref``."""

    def decorate(func: Handler) -> Handler:
        _HANDLERS[kind] = func
        return func

    return decorate


def schedule(
    kind: str,
    ref: str | int,
    *,
    due_at: datetime | None = None,
    dedupe_key: str | None = None,
    user_id: int | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    session: Session | None = None,
) -> WorkItem:
    """Write a work row in the caller's transaction; it is queued once that transaction commits.

    ``session``: a transaction of its own that commits whatever the request's fate (a refusal's side
    effects, such as the e-mail about a locked MFA step); default the request's ``db.session``.
    """
    if kind not in _HANDLERS:
        raise KeyError(f"no handler registered for work kind {kind!r}")
    now = utcnow()
    item = WorkItem(
        kind=kind,
        ref=str(ref),
        dedupe_key=dedupe_key,
        status=WorkStatus.PENDING,
        due_at=due_at or now,
        created_at=now,
        user_id=user_id,
        max_attempts=max_attempts,
    )
    target = session or db.session
    target.add(item)
    target.flush()
    if item.due_at <= now + timedelta(seconds=1):
        if session is None:
            enqueue_after_commit(run_work_item, item.id)
        else:
            session.info.setdefault(_PENDING_KEY, []).append((run_work_item, (item.id,)))
    return item


def has_open(kind: str, ref: str | int) -> bool:
    """Whether work of this kind for this ref is still to run (pending, whenever due, or running)."""
    return db.session.execute(select(WorkItem.id).where(
        WorkItem.kind == kind, WorkItem.ref == str(ref),
        WorkItem.status.in_([WorkStatus.PENDING, WorkStatus.RUNNING])).limit(1)).first() is not None


# ---- enqueue after commit ----------------------------------------------------------------------

_PENDING_KEY = "jobs_after_commit"


def enqueue_after_commit(func: Callable[..., Any], *args: Any) -> None:
    """Queue ``func(*args)`` only if and when the current transaction commits."""
    db.session.connection()  # tie it to a transaction, so a rollback is seen and drops it
    pending: list[tuple[Callable[..., Any], tuple[Any, ...]]] = db.session.info.setdefault(_PENDING_KEY, [])
    pending.append((func, args))


_INLINE_KEY = "run_after_commit"


def run_after_commit(func: Callable[..., Any], *args: Any) -> None:
    """Call ``func(*args)`` in this process right after the current transaction commits (never after a
    rollback). For quick, idempotent side effects such as removing a file whose row is gone; anything
    slow or that must survive a crash is durable work (``schedule``) instead."""
    db.session.connection()  # tie it to a transaction, so a rollback is seen and drops it
    pending: list[tuple[Callable[..., Any], tuple[Any, ...]]] = db.session.info.setdefault(_INLINE_KEY, [])
    pending.append((func, args))


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the real commit is still to come
        return
    for func, args in session.info.pop(_INLINE_KEY, None) or []:
        try:
            func(*args)
        except Exception:  # the commit stands; a leftover file is ciphertext and is logged
            log.exception("after-commit action failed", extra={"event": {"action": getattr(func, "__name__", "")}})
    pending = session.info.pop(_PENDING_KEY, None)
    if not pending:
        return
    backend = _backend_or_none()
    if backend is None:
        return
    for func, args in pending:
        backend.enqueue(func, *args)


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outermost transaction rolled back
        session.info.pop(_PENDING_KEY, None)
        session.info.pop(_INLINE_KEY, None)


# ---- running one work item ---------------------------------------------------------------------


def run_work_item(item_id: int) -> str:
    """The rq job: reload the row, skip finished work, run the handler, record the outcome."""
    return in_app_context(lambda: _run(item_id))


def _run(item_id: int) -> str:
    """Claim the row (committed, so a second runner skips it), then the handler's work and the row's
    outcome in one unit of work; a failure rolls the handler back and is recorded in a unit of its own."""
    if not transactions.run(lambda: _claim(item_id)):
        return "skipped"
    try:
        # one attempt: a failed job is retried by the work row's back-off, not at once
        transactions.run(lambda: _perform(item_id), attempts=1)
    except Exception as exc:
        failure = exc
        transactions.run(lambda: _record_failure(item_id, failure))
        # the innermost frames only, never the exception's message: it can carry personal data
        # (smtplib's SMTPRecipientsRefused names the address) and logs hold none (PV-03)
        log.warning(
            "work item failed",
            extra={"event": {"work_item": item_id, "error": type(exc).__name__,
                             "trace": "".join(traceback.format_tb(exc.__traceback__, limit=-3))[-600:]}},
        )
        return "failed"
    return "done"


def _claim(item_id: int) -> bool:
    now = utcnow()
    claimed = db.session.execute(
        update(WorkItem)
        .where(
            WorkItem.id == item_id,
            WorkItem.status == WorkStatus.PENDING,
            WorkItem.due_at <= now,
            or_(WorkItem.leased_until.is_(None), WorkItem.leased_until < now),
        )
        .values(status=WorkStatus.RUNNING, leased_until=now + LEASE, attempts=WorkItem.attempts + 1)
    )
    return bool(claimed.rowcount)  # type: ignore[attr-defined]


def _perform(item_id: int) -> None:
    item = db.session.get(WorkItem, item_id)
    assert item is not None
    func = _HANDLERS.get(item.kind)
    if func is None:
        raise LookupError(f"no handler for {item.kind}")
    func(item.ref)
    item.status = WorkStatus.DONE
    item.finished_at = utcnow()
    item.leased_until = None
    item.last_error = None


def _record_failure(item_id: int, exc: Exception) -> None:
    item = db.session.get(WorkItem, item_id)
    assert item is not None
    item.last_error = f"{type(exc).__name__}: {_redact(str(exc))[:300]}"
    item.leased_until = None
    if item.attempts >= item.max_attempts:
        item.status = WorkStatus.DEAD
        item.finished_at = utcnow()
        log.error("work item dead", extra={"event": {"work_item": item.id, "kind": item.kind}})
    else:
        item.status = WorkStatus.PENDING
        item.due_at = utcnow() + backoff(item.attempts)


_EMAIL = re.compile(r"[^\s@<>\"']+@[^\s@<>\"']+")
_DIGITS = re.compile(r"\+?\d[\d\s-]{6,}\d")


def _redact(message: str) -> str:
    """Error text is kept for operators; e-mail addresses and phone/ID-like numbers are not."""
    return _DIGITS.sub("<number>", _EMAIL.sub("<email>", message))


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(30 * 2 ** max(attempts - 1, 0), 3600))


def sweep(limit: int = 500) -> int:
    """Re-queue due work that is not in flight (lost queue, killed worker, expired lease)."""
    return transactions.run(lambda: _sweep(limit))


def _sweep(limit: int) -> int:
    now = utcnow()
    ids = db.session.execute(
        select(WorkItem.id)
        .where(
            or_(
                (WorkItem.status == WorkStatus.PENDING) & (WorkItem.due_at <= now),
                (WorkItem.status == WorkStatus.RUNNING) & (WorkItem.leased_until < now),
            ),
            or_(WorkItem.enqueued_at.is_(None), WorkItem.enqueued_at < now - timedelta(minutes=1)),
        )
        .order_by(WorkItem.due_at)
        .limit(limit)
    ).scalars().all()
    if not ids:
        return 0
    # an expired lease means the worker died mid-run: the handler is idempotent, so run it again
    db.session.execute(
        update(WorkItem)
        .where(WorkItem.id.in_(ids), WorkItem.status == WorkStatus.RUNNING)
        .values(status=WorkStatus.PENDING, leased_until=None)
    )
    db.session.execute(update(WorkItem).where(WorkItem.id.in_(ids)).values(enqueued_at=now))
    for item_id in ids:
        enqueue_after_commit(run_work_item, item_id)
    return len(ids)


# ---- backends ----------------------------------------------------------------------------------


def in_app_context(func: Callable[[], str]) -> str:
    if has_app_context():
        return func()
    app = _worker_app
    if app is None:
        raise RuntimeError("no app for this worker: start it with `flask jobs worker`, which hands its app in")
    with app.app_context():
        return func()


_worker_app: Flask | None = None


def bind_worker_app(app: Flask) -> None:
    """The worker entry (``flask jobs worker``) hands in the app its jobs run in. The app factory stays above
    this module: jobs.py builds no app and so reaches no blueprint."""
    global _worker_app  # noqa: PLW0603 - one app per worker process, handed in by its entry point
    _worker_app = app


class Backend:
    def enqueue(self, func: Callable[..., Any], *args: Any) -> None:
        raise NotImplementedError

    def drain(self) -> int:
        """Run everything queued now (tests and the in-process worker)."""
        return 0


class SyncBackend(Backend):
    """Runs jobs in the committing thread right after the commit, in a fresh session."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._running = threading.local()

    def enqueue(self, func: Callable[..., Any], *args: Any) -> None:
        queue: list[tuple[Callable[..., Any], tuple[Any, ...]]] = getattr(self._running, "queue", None) or []
        queue.append((func, args))
        if getattr(self._running, "active", False):
            self._running.queue = queue
            return
        self._running.active = True
        self._running.queue = queue
        try:
            while self._running.queue:
                f, a = self._running.queue.pop(0)
                with self.app.app_context():
                    f(*a)
        finally:
            self._running.active = False
            self._running.queue = []


class RqBackend(Backend):
    def __init__(self, app: Flask, connection: Any) -> None:
        self.app = app
        self.connection = connection
        self.queue = Queue(QUEUE_NAME, connection=connection, default_timeout=300)
        self.wakeup = threading.Event()

    def enqueue(self, func: Callable[..., Any], *args: Any) -> None:
        try:
            self.queue.enqueue(func, *args, job_timeout=300, result_ttl=3600, failure_ttl=7 * 86400)
        except Exception:  # Redis down: the row is committed and the sweeper will queue it later
            log.warning("could not queue job; the sweeper will retry", exc_info=True)
            return
        self.wakeup.set()

    def drain(self) -> int:
        if not self.queue.count:
            return 0
        worker = _thread_worker(self.queue, self.connection)
        with self.app.app_context():
            worker.work(burst=True)
        return 0


def _thread_worker(queue: Any, connection: Any) -> Any:
    class ThreadWorker(SimpleWorker):
        death_penalty_class = TimerDeathPenalty  # SIGALRM only works on the main thread

        def _install_signal_handlers(self) -> None:  # signals belong to the main thread
            return None

    logging.getLogger("rq.worker").setLevel(logging.WARNING)  # one line per job pass is noise here
    return ThreadWorker([queue], connection=connection, default_result_ttl=3600)


def _backend_or_none() -> Backend | None:
    if not has_app_context():
        return None
    backend: Backend | None = current_app.extensions.get("jobs_backend")
    return backend


def backend() -> Backend:
    value: Backend = current_app.extensions["jobs_backend"]
    return value


def init_app(app: Flask, *, start_background: bool) -> None:
    settings = app.config["SETTINGS"]
    mode = settings.jobs_mode
    if mode == "sync":
        app.extensions["jobs_backend"] = SyncBackend(app)
        return
    if mode == "redis":
        connection = Redis.from_url(settings.redis_url)
        app.extensions["jobs_backend"] = RqBackend(app, connection)
        return
    rq_backend = RqBackend(app, fakeredis.FakeRedis())
    app.extensions["jobs_backend"] = rq_backend
    if start_background:
        _start_thread_worker(app, rq_backend)


def _start_thread_worker(app: Flask, rq_backend: RqBackend) -> None:
    stop = threading.Event()

    def loop() -> None:
        next_sweep = 0.0
        while not stop.is_set():
            rq_backend.wakeup.wait(timeout=5)
            rq_backend.wakeup.clear()
            if stop.is_set():
                return
            try:
                if time.monotonic() >= next_sweep:
                    with app.app_context():
                        sweep()
                        run_periodic()
                    next_sweep = time.monotonic() + 60
                rq_backend.drain()
            except Exception:
                log.exception("in-process worker pass failed")
                stop.wait(2)

    thread = threading.Thread(target=loop, name="marketplace-jobs", daemon=True)
    app.extensions["jobs_thread"] = (thread, stop)
    thread.start()


def stop_background(app: Flask, timeout: float = 30) -> bool:
    """Stop the in-process worker thread after its current pass; True once it has ended (or never ran)."""
    worker: tuple[threading.Thread, threading.Event] | None = app.extensions.pop("jobs_thread", None)
    if worker is None:
        return True
    thread, stop = worker
    stop.set()
    backend_ = app.extensions.get("jobs_backend")
    if isinstance(backend_, RqBackend):
        backend_.wakeup.set()
    thread.join(timeout)
    return not thread.is_alive()


# ---- periodic tasks (run by the sweeper's clock) -----------------------------------------------

_PERIODIC: list[Callable[[], None]] = []


def periodic(func: Callable[[], None]) -> Callable[[], None]:
    """Register housekeeping that runs once per sweeper tick (each must be idempotent and cheap)."""
    _PERIODIC.append(func)
    return func


def run_periodic() -> None:
    for func in _PERIODIC:
        try:
            transactions.run(func)  # each task its own unit of work
        except Exception:
            log.exception("periodic task failed", extra={"event": {"task": func.__name__}})
