"""Extension singletons, bound to the app in ``create_app``."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from flask import current_app, request
from flask_limiter import Limiter
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, MetaData, TypeDecorator, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, registry

from marketplace import (
    clock,
    ratelimit_sqlite,  # noqa: F401 - registers the sqlite:// rate-limit storage
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite keeps no offset of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    registry = registry(
        metadata=MetaData(naming_convention=NAMING_CONVENTION),
        type_annotation_map={datetime: UTCDateTime()},
    )


db = SQLAlchemy(model_class=Base)

if TYPE_CHECKING:  # mypy cannot see through db.Model; at run time the real one is used

    class Model(Base):
        __abstract__ = True

else:
    Model = db.Model
migrate = Migrate(compare_type=True, render_as_batch=True)


_KEY_LABEL = b"carejar/rate-limit-keys/v1"


@lru_cache(maxsize=8)
def _derived_key(secret_key: str) -> bytes:
    # a key of its own, so a limit key can never be replayed as a CSRF token or any other HMAC of SECRET_KEY
    return hmac.new(secret_key.encode(), _KEY_LABEL, hashlib.sha256).digest()


def hashed(kind: str, value: str) -> str:
    """``<kind>:<32 hex digits>``: 128 bits of HMAC are plenty to keep counters apart."""
    key = _derived_key(current_app.config["SETTINGS"].secret_key)
    digest = hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{kind}:{digest}"


def client_key() -> str:
    """The client address (ProxyFix has set it from the trusted hops only)."""
    return hashed("client", request.remote_addr or "-")


def _client_address() -> str:
    # ProxyFix (configured with the real number of proxies) has already set remote_addr; the key is a keyed hash
    return client_key()


limiter = Limiter(key_func=_client_address, default_limits=[], headers_enabled=True)


def utcnow() -> datetime:
    """Now, in UTC: the one clock (``marketplace.clock``), which tests move with time-machine."""
    return clock.now()


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        # Let SQLAlchemy emit BEGIN itself so SAVEPOINT works and booking writes can BEGIN IMMEDIATE
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


IDLE_PING_SECONDS = 10.0


def ping_after_idle(engine: Engine) -> None:
    """Check a pooled server connection before use only if it sat idle ``IDLE_PING_SECONDS``: one in steady use
    was proven by its last request, and pinging it on every checkout (``pool_pre_ping``) cost a round trip per
    request. A dead idle connection is replaced before the request sees it (the pool retries the checkout); a
    connection lost mid-use is answered 503 and the pool is invalidated (errors.py), as before."""
    if engine.dialect.name == "sqlite":
        return
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("checked_in_at")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("idle connection failed its ping") from exc
