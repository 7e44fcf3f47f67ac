"""Units of work that must win or lose cleanly under concurrency.

Most requests commit once in their view. Writes that race for a car (booking, changing dates,
blocking days) run through ``run_serialised``: on SQLite the transaction starts with BEGIN IMMEDIATE
(writers queue instead of reading stale data, F3); on PostgreSQL the exclusion constraint decides, and
deadlocks or serialisation failures (40P01, 40001) are retried a bounded number of times (F2).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from marketplace.extensions import db

log = logging.getLogger("marketplace.transactions")
T = TypeVar("T")

EXCLUSION_VIOLATION = "23P01"
UNIQUE_VIOLATION = "23505"
RETRYABLE = {"40P01", "40001"}  # deadlock detected, serialization failure


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
    """Raised by a conflict handler to ask for another attempt."""


def run_serialised(
    work: Callable[[], T],
    *,
    on_conflict: Callable[[str | None], T | None],
    attempts: int = 4,
) -> T:
    """Run ``work`` in its own transaction and commit it.

    ``on_conflict(sqlstate)`` is called (after rollback) for integrity errors: it returns a result,
    raises an ``AppError`` (e.g. 409), or raises ``Retry``. Retryable errors are retried with jitter;
    when attempts run out ``on_conflict(None)`` decides.
    """
    db.session.commit()  # end whatever the gate read, so this work starts its own transaction
    for attempt in range(attempts):
        if db.engine.dialect.name == "sqlite":
            db.session.connection(execution_options={"sqlite_begin": "immediate"})
        try:
            result = work()
            db.session.commit()
            return result
        except IntegrityError as exc:
            db.session.rollback()
            try:
                outcome = on_conflict(sqlstate(exc))
            except Retry:
                continue
            if outcome is not None:
                return outcome
            raise
        except (OperationalError, DBAPIError) as exc:
            db.session.rollback()
            state = sqlstate(exc)
            if state not in RETRYABLE or exc.connection_invalidated:
                raise
            log.info("retrying after %s", state, extra={"event": {"sqlstate": state, "attempt": attempt + 1}})
            time.sleep(random.uniform(0.005, 0.03) * (attempt + 1))  # noqa: S311 - jitter, not security
    outcome = on_conflict(None)
    if outcome is None:
        raise RuntimeError("on_conflict must raise or return a result when attempts run out")
    return outcome
