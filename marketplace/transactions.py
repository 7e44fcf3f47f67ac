"""Units of work: the one place that commits, for every request, every job and every operator command.

A request, a job or a CLI command is one unit of work. Views, services and job handlers only flush;
the edge commits once at the end: ``edge`` wraps every view of every gated blueprint (applied by
``register_gated``, as indico's ``RH.process`` does), ``run`` is the job runner's, and
``unit_of_work()`` is the CLI commands'. The response is made before the commit and returned only
after it succeeded: a failed commit is a 409 (unique or exclusion violation) or a 503 (database
unavailable), never a 2xx for lost work.

- An exception, or a view that answers with an error status (4xx/5xx), rolls the whole unit back.
- SQLite: a request that may write (any method but GET/HEAD/OPTIONS, or a view marked ``@writes``)
  begins with BEGIN IMMEDIATE, so writers queue behind the busy timeout instead of failing with
  "database is locked" (in WAL mode a transaction that read and then writes after another writer's
  commit fails at once, whatever the timeout, F3). A read that turns into a write before anything
  else happened (the session keep-alive of a GET) restarts as an immediate transaction (``upgrade``);
  any other deferred transaction that hits the lock is re-run as an immediate one.
- PostgreSQL: deadlocks and serialisation failures (40P01, 40001) re-run the whole unit a bounded
  number of times with jitter (F2); when attempts run out, the error named with ``on_contention``
  (409 ``vehicle_unavailable`` for a car's time), else 409 ``contended``. Work may raise ``Retry``
  to be re-run the same way (a random reference that collided).
- ``keep(func)``: what a refusal must leave behind although its request fails (its audit row, a
  revoked session, the session keep-alive). ``func`` runs in the unit's commit; if the unit fails,
  in a transaction of its own after the rollback. Kept work from before a retry's attempt (the gate's)
  survives the retry; the attempt's own is dropped and registered again by the re-run.
- After-commit hooks (``jobs.enqueue_after_commit``, ``jobs.run_after_commit``) fire on the one commit;
  a rollback drops them, a retry's included.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, has_app_context, request
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from marketplace.errors import AppError, Conflict
from marketplace.extensions import db

log = logging.getLogger("marketplace.transactions")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EXCLUSION_VIOLATION = "23P01"
UNIQUE_VIOLATION = "23505"
RETRYABLE = {"40P01", "40001"}  # deadlock detected, serialization failure
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ATTEMPTS = 4
_G_KEY = "unit_of_work"


def sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state:
        return str(state)
    text = str(orig).lower()
    if "unique constraint failed" in text:
        return UNIQUE_VIOLATION
    if "database is locked" in text or "database table is locked" in text:
        return "40001"
    return None


class Retry(Exception):
    """Raised by work to run its whole unit of work again (it counts as one of the attempts)."""


class Contended(Conflict):
    code = "contended"
    message = "Other requests changed the same data at the same moment. Try again."


def writes(view: F) -> F:
    """Mark a GET view that writes (it spends a single-use link, issues a grant): on SQLite its request
    begins with BEGIN IMMEDIATE like any POST."""
    view._writes = True  # type: ignore[attr-defined]
    return view


def _is_sqlite() -> bool:
    return bool(db.engine.dialect.name == "sqlite")


@dataclass(eq=False)
class UnitOfWork:
    write: bool
    immediate: bool = False  # the current transaction began with BEGIN IMMEDIATE (SQLite)
    owns_transaction: bool = True  # False when it joined a transaction its caller had open (tests)
    kept: list[Callable[[], None]] = field(default_factory=list)
    contention: Callable[[], AppError] = Contended
    error_response_commits: bool = False
    finished: bool = False

    def begin(self) -> None:
        """Start the attempt's transaction now: on SQLite, IMMEDIATE when the unit may write (see
        ``sqlite_begin_mode``). A read-only unit begins lazily, at its first statement."""
        if self.write and _is_sqlite() and not db.session().in_transaction():
            db.session.connection()

    def upgrade(self) -> bool:
        """The unit must write after all, and has only read so far: on SQLite restart it as an immediate
        transaction now, rather than fail at the commit if another writer committed meanwhile. True if it
        restarted (the caller's unflushed changes are gone and must be made again)."""
        if self.immediate or not self.owns_transaction or not _is_sqlite():
            return False
        db.session.rollback()
        self.write = True
        self.begin()
        return True

    def commit(self) -> None:
        for func in self.kept:
            func()
        _commit()
        self.finished = True

    def fail(self) -> None:
        """Roll the work back, then write what must outlast it in a transaction of its own."""
        db.session.rollback()
        kept, self.kept = self.kept, []
        try:
            if kept:
                self.write = True
                self.begin()
                for func in kept:
                    func()
                _commit()
        except Exception:
            db.session.rollback()
            log.exception("what a failed unit of work must keep could not be written")
        finally:
            self.finished = True


def sqlite_begin_mode() -> str | None:
    """How SQLite begins a transaction of the current unit of work (the engine's ``begin`` event asks)."""
    unit = current()
    if unit is None:
        return None
    unit.immediate = unit.write
    return "immediate" if unit.write else None


@event.listens_for(Engine, "begin")
def _sqlite_begin(conn: Any) -> None:
    """SQLite's BEGIN: explicit options first; otherwise the unit of work decides (a writing unit's every
    transaction, the one after a view's rollback included, takes the write lock up front)."""
    if conn.dialect.name == "sqlite":
        mode = (conn.info.pop("sqlite_begin", None) or conn.get_execution_options().get("sqlite_begin")
                or sqlite_begin_mode())
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "immediate" else "BEGIN")


def _commit() -> None:
    db.session.commit()  # the only commit in the application (tests/test_transactions.py keeps it so)


def current() -> UnitOfWork | None:
    if not has_app_context():
        return None
    unit: UnitOfWork | None = g.get(_G_KEY)
    return unit if unit is not None and not unit.finished else None


def keep(func: Callable[[], None]) -> None:
    """Have ``func`` (which writes in ``db.session``) happen whether or not the unit of work succeeds.

    Outside a unit of work (a test or a shell calling a service) it runs at once, in the caller's
    transaction."""
    unit = current()
    if unit is None:
        func()
        return
    unit.kept.append(func)


def on_contention(error: Callable[[], AppError]) -> None:
    """Name the error for this unit when retries run out (e.g. ``VehicleUnavailable`` for a car's time)."""
    unit = current()
    if unit is not None:
        unit.contention = error


def commit_error_response() -> None:
    """This view's error page is an answer, not a failure: commit what it did (the MFA page stores the new
    enrolment secret it shows next to its error)."""
    unit = current()
    if unit is not None:
        unit.error_response_commits = True


def upgrade() -> bool:
    unit = current()
    return unit.upgrade() if unit is not None else False


def _retryable(exc: Exception, unit: UnitOfWork) -> bool:
    if isinstance(exc, Retry):
        return True
    if not isinstance(exc, DBAPIError) or isinstance(exc, IntegrityError) or exc.connection_invalidated:
        return False
    if sqlstate(exc) not in RETRYABLE:
        return False
    # on SQLite "locked" is retried only out of a deferred transaction: an immediate one already waited
    # the whole busy timeout, and a retry would only make its caller wait longer
    return not (unit.immediate and "locked" in str(exc.orig).lower())


def _attempts(unit: UnitOfWork, work: Callable[[], T], *, attempts: int,
              on_retry: Callable[[], None] | None = None) -> T:
    base = len(unit.kept)
    for attempt in range(1, attempts + 1):
        unit.begin()
        try:
            result = work()
            if isinstance(result, Response) and result.status_code >= 400 and not unit.error_response_commits:
                unit.fail()
            else:
                unit.commit()
            return result
        except Exception as exc:
            if not _retryable(exc, unit):
                unit.fail()
                if isinstance(exc, IntegrityError) and sqlstate(exc) in (UNIQUE_VIOLATION, EXCLUSION_VIOLATION):
                    raise Conflict() from exc  # e.g. a unique clash found by the commit itself
                raise
            db.session.rollback()
            del unit.kept[base:]
            unit.error_response_commits = False
            state = sqlstate(exc) if isinstance(exc, DBAPIError) else "retry"
            if attempt == attempts:
                error = unit.contention()
                unit.fail()
                log.warning("gave up after %s", state, extra={"event": {"sqlstate": state, "attempts": attempt}})
                raise error from exc
            log.info("retrying after %s", state, extra={"event": {"sqlstate": state, "attempt": attempt}})
            unit.write = True  # a deferred SQLite transaction that met the lock comes back immediate
            time.sleep(random.uniform(0.005, 0.03) * attempt)  # noqa: S311 - jitter, not security
            if on_retry is not None:
                on_retry()
    raise AssertionError("unreachable")


def serialised(work: Callable[[], T], *, on_conflict: Callable[[str | None], T | None],
               contended: Callable[[], AppError] | None = None) -> T:
    """A write that races others for the same rows (a car's time), inside the caller's unit of work.

    On SQLite the unit already holds the write lock (it began IMMEDIATE), so ``work`` checks and writes
    alone. On PostgreSQL the constraint decides: ``work`` runs in a savepoint, so a unique or exclusion
    violation rolls back only ``work``, and ``on_conflict(sqlstate)`` answers in the same transaction (whose
    next statement sees the winner): it returns a result, raises an ``AppError`` (e.g. 409), or raises
    ``Retry``. Deadlocks re-run the whole unit; when attempts run out, ``contended()`` is the answer.
    Outside any unit of work (a test or a shell calling the service) it is a unit of its own.
    """
    if current() is None:
        return run(lambda: serialised(work, on_conflict=on_conflict, contended=contended))
    if contended is not None:
        on_contention(contended)
    try:
        with db.session.begin_nested():
            return work()
    except IntegrityError as exc:
        outcome = on_conflict(sqlstate(exc))
        if outcome is not None:
            return outcome
        raise


# ---- the request edge ----------------------------------------------------------------------------


def _marked_writes(view: Any) -> bool:
    if getattr(view, "_writes", False):
        return True
    view_class = getattr(view, "view_class", None)  # a MethodView: the marker is on the method
    method = getattr(view_class, request.method.lower(), None) if view_class is not None else None
    return bool(getattr(method, "_writes", False))


def begin_request() -> None:
    """Open the request's unit of work before any gate reads (the gate's reads are part of it)."""
    view = current_app.view_functions.get(request.endpoint or "")
    routed = request.routing_exception is None  # a 404 or 405 writes nothing: no need for the write lock
    unit = UnitOfWork(write=routed and (request.method not in SAFE_METHODS or _marked_writes(view)))
    unit.owns_transaction = not db.session().in_transaction()
    setattr(g, _G_KEY, unit)
    unit.begin()


def finish_request(response: Response) -> Response:
    """A request whose view never ran (a gate refused or redirected it) keeps only its kept work."""
    unit: UnitOfWork | None = g.pop(_G_KEY, None)
    if unit is not None and not unit.finished:
        unit.fail()
    return response


def end_request() -> None:
    g.pop(_G_KEY, None)


def _rewind_uploads() -> None:
    for _, upload in request.files.items(multi=True):
        upload.stream.seek(0)


def edge(view: F) -> F:
    """The view as one unit of work: committed once when it answers, rolled back when it fails."""

    @wraps(view)
    def in_unit_of_work(*args: Any, **kwargs: Any) -> Response:
        unit = current()
        if unit is None:  # an app built without ``begin_request`` (never in ``create_app``)
            unit = UnitOfWork(write=request.method not in SAFE_METHODS or _marked_writes(view))
            setattr(g, _G_KEY, unit)
        return _attempts(unit, lambda: current_app.make_response(view(*args, **kwargs)), attempts=ATTEMPTS,
                         on_retry=_rewind_uploads)

    in_unit_of_work._unit_of_work = True  # type: ignore[attr-defined]
    return in_unit_of_work  # type: ignore[return-value]


# ---- jobs and operator commands ------------------------------------------------------------------


def run(work: Callable[[], T], *, attempts: int = ATTEMPTS) -> T:
    """Run ``work`` as one unit of work and commit it (the job runner). Inside a unit, it joins it."""
    if current() is not None:
        return work()
    unit = UnitOfWork(write=True, owns_transaction=not db.session().in_transaction())
    setattr(g, _G_KEY, unit)
    try:
        return _attempts(unit, work, attempts=attempts)
    finally:
        g.pop(_G_KEY, None)


@contextmanager
def unit_of_work() -> Iterator[UnitOfWork]:
    """A block as one unit of work (CLI commands): committed at its end, rolled back if it raises."""
    outer = current()
    if outer is not None:
        yield outer
        return
    unit = UnitOfWork(write=True, owns_transaction=not db.session().in_transaction())
    setattr(g, _G_KEY, unit)
    try:
        unit.begin()
        try:
            yield unit
            unit.commit()
        except BaseException:
            unit.fail()
            raise
    finally:
        g.pop(_G_KEY, None)


def outside(call: Callable[[], T]) -> T:
    """Commit the unit's work so far, run ``call`` with no transaction open, then go on in a fresh one.

    For a request to an outside system that must follow a durable row: a Stripe call carries an
    idempotency key derived from a payment row, so that row is committed first (a crash during the call
    leaves the row, and the retry reuses its key), and no database lock is held while Stripe answers.
    The unit then carries on: what follows is committed at the edge as usual, and a failure rolls back only
    what came after this point (record a refusal's outcome with ``keep``). ``call`` must use plain values
    read before: touching an ORM object here would open a transaction again. Outside any unit of work
    (a test or a shell calling a service) the caller's transaction is committed."""
    unit = current()
    if unit is not None:
        kept, unit.kept = unit.kept, []
        for func in kept:
            func()
    _commit()
    result = call()
    if unit is not None:
        unit.begin()
    return result


def apart(func: Callable[[Session], object]) -> None:
    """Run ``func(session)`` in a short transaction on a connection of its own and commit it. For a write
    outside any unit of work that must not touch its caller's transaction (a refusal in a shell)."""
    engine = db.engine
    if engine.dialect.name == "sqlite":
        engine = engine.execution_options(sqlite_begin="immediate")
    with Session(engine) as session, session.begin():
        func(session)
