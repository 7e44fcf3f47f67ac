"""A ``limits`` storage on a local SQLite file: one count per limit for every worker process.

The embedded default (``make run``: gunicorn with two workers, no Redis) used ``memory://``, so each
worker kept its own counters and every limit was doubled. This storage keeps them in
``var/ratelimits.db`` (``RATELIMIT_STORAGE_URI=sqlite:///<path>``), a file of its own so throttle
writes never wait for the application database's write lock.

Every read-then-write runs in ``BEGIN IMMEDIATE``: SQLite's write lock is taken before the count is
read, so two workers cannot both see "4 of 5" and both let a sixth attempt through. Supports the
moving-window strategy (the app's) and the fixed-window one. Importing this module registers the
``sqlite`` scheme with ``limits``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from limits.storage import MovingWindowSupport, Storage

SCHEME = "sqlite"
_PURGE_ODDS = 0.02  # expired rows are deleted by about one write in fifty

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS entries (key TEXT NOT NULL, at REAL NOT NULL, expires_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS entries_key_at ON entries (key, at)",
    "CREATE INDEX IF NOT EXISTS entries_expires_at ON entries (expires_at)",
)


def path_from_uri(uri: str) -> Path:
    """``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` (SQLAlchemy's convention)."""
    prefix = f"{SCHEME}:///"
    if not uri.startswith(prefix) or len(uri) == len(prefix):
        raise ValueError(f"a rate-limit storage URI looks like {prefix}/path/to/file.db, not {uri!r}")
    return Path(uri[len(prefix):])


def _wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch the file to WAL. Two gunicorn workers booting at once both ask; the switch needs the file to
    itself, and SQLite answers ``database is locked`` at once rather than waiting (the busy timeout does not
    cover it), which failed a worker's boot: ask again for up to ten seconds."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


class SQLiteStorage(Storage, MovingWindowSupport):
    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any) -> None:
        self.path = path_from_uri(uri or "")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return sqlite3.Error

    # ---- connections ---------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        # one connection per thread and per process: a connection must not cross a fork (gunicorn
        # --preload) and sqlite3 connections are not shared between threads safely
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            _wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")  # counters survive a process crash, not a power cut
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _maybe_purge(conn: sqlite3.Connection, now: float) -> None:
        if random.random() < _PURGE_ODDS:  # noqa: S311 - housekeeping odds, not security
            conn.execute("DELETE FROM entries WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM counters WHERE expires_at <= ?", (now,))

    # ---- fixed window --------------------------------------------------------------------------

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute("SELECT value, expires_at FROM counters WHERE key = ?", (key,)).fetchone()
            if row is None or row[1] <= now:
                value = amount
                conn.execute("INSERT OR REPLACE INTO counters (key, value, expires_at) VALUES (?, ?, ?)",
                             (key, value, now + expiry))
            else:
                value = int(row[0]) + amount
                conn.execute("UPDATE counters SET value = ? WHERE key = ?", (value, key))
            self._maybe_purge(conn, now)
        return value

    def get(self, key: str) -> int:
        row = self._connection().execute(
            "SELECT value FROM counters WHERE key = ? AND expires_at > ?", (key, time.time())
        ).fetchone()
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        now = time.time()
        row = self._connection().execute(
            "SELECT expires_at FROM counters WHERE key = ? AND expires_at > ?", (key, now)
        ).fetchone()
        return float(row[0]) if row else now

    # ---- moving window -------------------------------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        with self._transaction() as conn:
            (used,) = conn.execute(
                "SELECT count(*) FROM entries WHERE key = ? AND at >= ?", (key, now - expiry)
            ).fetchone()
            if used + amount > limit:
                return False
            conn.executemany("INSERT INTO entries (key, at, expires_at) VALUES (?, ?, ?)",
                             [(key, now, now + expiry)] * amount)
            self._maybe_purge(conn, now)
        return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        oldest, used = self._connection().execute(
            "SELECT min(at), count(*) FROM entries WHERE key = ? AND at >= ?", (key, now - expiry)
        ).fetchone()
        return (float(oldest), int(used)) if used else (now, 0)

    # ---- housekeeping --------------------------------------------------------------------------

    def check(self) -> bool:
        try:
            self._connection().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def reset(self) -> int | None:
        with self._transaction() as conn:
            removed = conn.execute("DELETE FROM counters").rowcount + conn.execute("DELETE FROM entries").rowcount
        return int(removed)

    def clear(self, key: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM counters WHERE key = ?", (key,))
            conn.execute("DELETE FROM entries WHERE key = ?", (key,))

    def keys(self) -> list[str]:
        """Every key held (operators and tests: nothing personal may appear in one)."""
        rows = self._connection().execute("SELECT key FROM counters UNION SELECT key FROM entries").fetchall()
        return sorted(str(r[0]) for r in rows)
