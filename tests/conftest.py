"""Test harness: one app per run on the *migrated* schema, every table emptied between tests.

Databases: SQLite in a temporary directory by default; PostgreSQL when ``TEST_DATABASE_URL`` is set
(a fresh database is created for the run and dropped after). Jobs run synchronously after each
commit unless ``TEST_REDIS_URL`` is set, in which case they go through rq on that Redis and
``drain_jobs()`` runs them. No test may connect anywhere but loopback.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text

# ---- network guard: loopback only (TESTING.md §6 rule 2) ------------------------------------------

_real_connect = socket.socket.connect
_LOOPBACK = {"127.0.0.1", "::1", "localhost", "0.0.0.0"}  # noqa: S104 - a bind-any address is still local


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host not in _LOOPBACK and not str(host).startswith("127."):
            raise RuntimeError(f"test tried to connect to a non-loopback address: {host}")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]


# ---- database ----------------------------------------------------------------------------------


def _postgres_url() -> str | None:
    return os.environ.get("TEST_DATABASE_URL") or None


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = _postgres_url()
    if not base:
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        return
    from tests.pg import temporary_database

    with temporary_database(base, f"cj_test_{os.getpid()}") as url:
        yield url


def is_postgres(app: Flask) -> bool:
    from marketplace.extensions import db

    with app.app_context():
        return db.engine.dialect.name == "postgresql"


@pytest.fixture(scope="session")
def app_overrides(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    var_dir = tmp_path_factory.mktemp("var")
    redis_url = os.environ.get("TEST_REDIS_URL") or None
    return {
        "MARKETPLACE_ENV": "test",
        "VAR_DIR": str(var_dir),
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key-" + "x" * 32,
        "KEYRING_PATH": str(var_dir / "keyring.json"),
        "MASTER_KEYRING": None,
        "BLOB_STORE_URL": f"file://{var_dir / 'blobs'}",
        "REDIS_URL": redis_url,
        "JOBS_MODE": "redis" if redis_url else "sync",
        # the storage `make run` uses (a SQLite file shared by its workers), or Redis in the Redis job
        "RATELIMIT_STORAGE_URI": redis_url or f"sqlite:///{var_dir / 'ratelimits.db'}",
        "SMTP_URL": None,
        "TRUSTED_PROXY_COUNT": "0",
        "PUBLIC_BASE_URL": "http://127.0.0.1:5000",
        "PASSWORD_HASH_PROFILE": "fast",
        "LOG_LEVEL": "INFO",
        # the store outlives each test's rows, so a periodic listing would see other tests' files as orphans;
        # the reconciliation tests call vault.reconcile_store themselves
        "BLOB_RECONCILE_MINUTES": "0",
        # configured as a deployment is (the webhook refuses everything, logging an error, without it)
        "STRIPE_WEBHOOK_SECRET": "whsec_tests_" + "0" * 24,  # tests/stripe_fixtures.py WEBHOOK_SECRET
    }


@pytest.fixture(scope="session")
def app(app_overrides: dict[str, Any]) -> Iterator[Flask]:
    from flask_migrate import upgrade

    from marketplace import create_app

    application = create_app(app_overrides, start_background=False)
    application.config["TESTING"] = True
    with application.app_context():
        upgrade()  # the suite runs on the migrated schema, never on create_all()
    yield application
    from marketplace.extensions import db

    with application.app_context():
        db.engine.dispose()


def _clean_database(app: Flask) -> None:
    from marketplace import audit
    from marketplace.extensions import db

    audit.clear_key_cache()  # the month keys it caches are about to be deleted
    with app.app_context():
        db.session.remove()
        engine = db.engine
        tables = [t.name for t in reversed(db.metadata.sorted_tables)]
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # replica role skips the audit table's append-only triggers (superuser only)
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
            else:
                # the append-only audit log and the immutable invoices refuse DELETE by trigger
                triggers = conn.execute(text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                    "AND tbl_name IN ('audit_events', 'invoices', 'invoice_lines')"
                )).all()
                for name, _ in triggers:
                    conn.execute(text(f'DROP TRIGGER "{name}"'))
                for table in tables:
                    conn.execute(text(f'DELETE FROM "{table}"'))  # noqa: S608 - table names from our metadata
                for _, sql in triggers:
                    conn.execute(text(sql))


def _reset_queues_and_limits(app: Flask) -> None:
    from marketplace import jobs
    from marketplace.extensions import limiter

    with app.app_context():
        limiter.reset()
        backend = app.extensions["jobs_backend"]
        if isinstance(backend, jobs.RqBackend):
            backend.connection.flushdb()


@pytest.fixture(autouse=True)
def _fresh_state(request: pytest.FixtureRequest) -> Iterator[None]:
    if "app" not in request.fixturenames:
        yield
        return
    flask_app: Flask = request.getfixturevalue("app")
    _reset_queues_and_limits(flask_app)
    yield
    _clean_database(flask_app)
    _reset_queues_and_limits(flask_app)


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture
def app_ctx(app: Flask) -> Iterator[None]:
    with app.app_context():
        yield


def drain_jobs(app: Flask) -> None:
    """Run every queued job now (a no-op when jobs already ran synchronously after commit)."""
    from marketplace import jobs

    with app.app_context():
        jobs.backend().drain()


def sweep_and_drain(app: Flask) -> None:
    """One sweeper tick at the current (test) clock: due work re-queued, the periodic tasks run, and the queue
    drained (what ``flask jobs sweeper`` and a worker do in production)."""
    from flask import has_app_context

    from marketplace import jobs
    from marketplace.extensions import db

    def tick() -> None:
        jobs.sweep()
        jobs.run_periodic()
        jobs.backend().drain()

    if not has_app_context():
        with app.app_context():
            tick()
        return
    db.session.rollback()  # the test's own read would keep an old snapshot (SQLite WAL) and miss the jobs' writes
    tick()
    db.session.rollback()


# ---- a real SMTP server on loopback --------------------------------------------------------------


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
        from email import message_from_bytes
        from email.policy import default

        with self.lock:
            self.messages.append(message_from_bytes(envelope.content, policy=default))
        return "250 OK"


@pytest.fixture
def smtp_server(app: Flask) -> Iterator[_Inbox]:
    """A real SMTP server (aiosmtpd) on a free loopback port; the app sends to it during the test."""
    import dataclasses

    from aiosmtpd.controller import Controller

    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    old = app.config["SETTINGS"]
    app.config["SETTINGS"] = dataclasses.replace(old, smtp_url=f"smtp://127.0.0.1:{port}")
    try:
        yield inbox
    finally:
        app.config["SETTINGS"] = old
        controller.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the app served over real HTTP, for the browser tests ----------------------------------------


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    from werkzeug.serving import make_server

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture
def gunicorn_server(app: Flask, app_overrides: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    """The app as ``make run`` serves it: gunicorn, gthread, 2 workers x 4 threads, on a free loopback port,
    against the test database, with in-process jobs. In its own process group, stopped after the test."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in app_overrides}
    env.update({k: str(v) for k, v in app_overrides.items() if v is not None})
    if env["JOBS_MODE"] == "sync":
        env["JOBS_MODE"] = "thread"  # the embedded default, as under `make run`
    log_path = tmp_path / "gunicorn.log"
    root = Path(__file__).resolve().parent.parent
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, loopback only
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
             "--workers", "2", "--threads", "4", "--log-level", "warning", "wsgi:app"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/api/v1/ping", timeout=2) as answer:  # noqa: S310 - loopback
                    if answer.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start:\n" + log_path.read_text()[-3000:]) from None
                time.sleep(0.2)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # our own process group only
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def chromium_path() -> Path | None:
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(candidate).exists():
            return Path(candidate)
    return None


# ---- concurrency tests need PostgreSQL (TESTING.md CC-06) ------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _postgres_url():
        return
    reason = "needs PostgreSQL (set TEST_DATABASE_URL): SQLite is no place to test races (TESTING.md F3, CC-06)"
    for item in items:
        if item.get_closest_marker("postgres_only"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and item.get_closest_marker("postgres_only")
        and os.environ.get("TEST_REQUIRE_POSTGRES")
    ):
        report.outcome = "failed"
        report.longrepr = "a PostgreSQL-only test was skipped in the PostgreSQL job (CC-06)"
