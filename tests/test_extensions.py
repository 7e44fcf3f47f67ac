"""The database engine's connection handling (marketplace/extensions.py)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from marketplace import extensions
from marketplace.extensions import db


def _count_pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    dialect_class = type(db.engine.dialect)
    real = dialect_class.do_ping

    def counting(self: Any, dbapi_connection: Any) -> bool:
        calls.append(1)
        return bool(real(self, dbapi_connection))

    monkeypatch.setattr(dialect_class, "do_ping", counting)
    return calls


@pytest.mark.postgres_only
def test_connections_in_steady_use_are_not_pinged(app: Flask, client: FlaskClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 7 item 17: pool_pre_ping cost a round trip on every request's checkout
    with app.app_context():
        pings = _count_pings(monkeypatch)
        for _ in range(5):
            assert client.get("/api/v1/health").status_code == 200
        assert pings == []


@pytest.mark.postgres_only
def test_an_idle_connection_the_server_dropped_is_replaced_before_use(app: Flask, client: FlaskClient,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.get("/api/v1/health").status_code == 200  # a pooled connection now exists
    with app.app_context():
        pings = _count_pings(monkeypatch)
        name = db.engine.url.database
        admin = create_engine(db.engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # what a database restart or an idle-timeout proxy does
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
        admin.dispose()
    monkeypatch.setattr(extensions, "IDLE_PING_SECONDS", 0.0)
    try:
        assert client.get("/api/v1/health").status_code == 200  # not a 503: the dead connection was replaced
        assert pings
    finally:
        with app.app_context():
            db.engine.dispose()  # the pool's other dead connections, before the fixtures clean the database
