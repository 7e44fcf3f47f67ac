"""Counting the SQL a request runs: round trips per page are a design property (issue 7 item 17), not a timing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from marketplace.extensions import db


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every SQL statement sent on the app's engine inside the block (BEGIN, ROLLBACK and SAVEPOINT left out)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "ROLLBACK", "COMMIT", "SAVEPOINT", "RELEASE")):
            seen.append(statement)

    engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
