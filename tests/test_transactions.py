"""One unit of work per request and per job, committed at the edge (issue 8 item 4, issue 7 item 1).

The edge's rules are checked on a small blueprint registered the way every real one is
(``register_gated``) on a second app over the test database; the keep-alive and the concurrent
writes go through the real routes, the latter through gunicorn as ``make run`` serves it.
"""

from __future__ import annotations

import ast
import http.client
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Blueprint, Flask, current_app
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import OperationalError

from marketplace import audit, jobs, transactions
from marketplace.audit import AuditEvent, verify_chain
from marketplace.bookings.service import VehicleUnavailable
from marketplace.errors import Forbidden
from marketplace.extensions import db, utcnow
from marketplace.security import Gate, GateKind, register_gated
from marketplace.users import sessions
from marketplace.users.consent_texts import CURRENT
from marketplace.users.models import AuthSession, Consent, ConsentKind
from tests import factories
from tests.conftest import is_postgres

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "marketplace", ROOT / "agency_app"]


# ---- the reach: only the unit of work commits --------------------------------------------------------------


def commit_calls(source: str) -> list[tuple[int, str]]:
    """(line, dotted callee) of every ``.commit(...)`` call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "commit":
            found.append((node.lineno, ast.unparse(node.func)))
    return sorted(found)


def test_only_the_unit_of_work_commits() -> None:  # issue 8 item 4
    offenders = []
    for base in SOURCES:
        for path in sorted(base.rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative != "marketplace/transactions.py":
                offenders += [f"{relative}:{line} {callee}()" for line, callee in commit_calls(path.read_text())]
    assert offenders == [], "only the unit of work commits (marketplace/transactions.py)"
    edge = commit_calls((ROOT / "marketplace" / "transactions.py").read_text())
    assert [callee for _, callee in edge].count("db.session.commit") == 1


def test_the_commit_guard_sees_a_planted_commit() -> None:  # negative control for the guard above
    planted = "def view():\n    service.do()\n    db.session.commit()\n"
    assert commit_calls(planted) == [(3, "db.session.commit")]


def test_every_gated_view_is_a_unit_of_work(app: Flask) -> None:  # issue 8 item 4
    gates: dict[str, str] = app.extensions["route_gates"]
    for endpoint, view in app.view_functions.items():
        blueprint = endpoint.rpartition(".")[0]
        if blueprint in gates and blueprint not in ("api-docs", "docs"):
            assert getattr(view, "_unit_of_work", False), endpoint


# ---- the edge, on a blueprint registered like every real one -------------------------------------------------


class _DbError(Exception):
    def __init__(self, state: str) -> None:
        super().__init__(f"injected {state}")
        self.sqlstate = state


def injected(state: str) -> OperationalError:
    """What psycopg raises for a deadlock (40P01) or a serialisation failure (40001), without the database."""
    return OperationalError("UPDATE things SET n = n + 1", {}, _DbError(state))


class Probe:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.after_commit: list[str] = []
        self.fail_times = 0
        self.state = "40P01"
        self.immediate: list[bool] = []


probe = Probe()
edge_bp = Blueprint("edge_probe", __name__, url_prefix="/edge-probe")


def _work(name: str) -> None:
    audit.record(None, "test:work", ("things", name))
    jobs.run_after_commit(probe.after_commit.append, name)


@edge_bp.post("/ok")
def ok() -> Any:
    _work("ok")
    return {"status": "done"}, 201


@edge_bp.post("/app-error")
def app_error() -> Any:
    _work("app-error")
    raise Forbidden()


@edge_bp.post("/error-response")
def error_response() -> Any:
    _work("error-response")
    return {"status": "refused"}, 422


@edge_bp.post("/refusal")
def refusal() -> Any:
    _work("refusal")
    audit.record_now(None, "test:refusal", ("things", "r"))
    raise Forbidden()


@edge_bp.post("/refusal-then-success")
def refusal_then_success() -> Any:
    audit.record_now(None, "test:refusal", ("things", "r"))
    _work("after-refusal")
    return {"status": "done"}


@edge_bp.post("/duplicate-at-commit")
def duplicate_at_commit() -> Any:
    _work("duplicate")
    existing = db.session.execute(select(AuditEvent).limit(1)).scalar_one()
    db.session.add(AuditEvent(occurred_at=utcnow(), actor_type="system", action="test:duplicate",
                              outcome="success", data="{}", prev_hash=existing.hash, hash=existing.hash))
    return {"status": "done"}, 201  # the unique hash clashes only when the edge flushes for its commit


@edge_bp.post("/flaky")
def flaky() -> Any:
    probe.calls["flaky"] += 1
    _work(f"flaky-{probe.calls['flaky']}")
    if probe.calls["flaky"] <= probe.fail_times:
        raise injected(probe.state)
    return {"attempts": probe.calls["flaky"]}


@edge_bp.post("/flaky-car")
def flaky_car() -> Any:
    transactions.on_contention(VehicleUnavailable)
    probe.calls["flaky-car"] += 1
    raise injected("40P01")


@edge_bp.route("/mode", methods=["GET", "POST"])
def mode() -> Any:
    unit = transactions.current()
    assert unit is not None
    probe.immediate.append(unit.immediate)
    return {"immediate": unit.immediate}


@edge_bp.get("/writing-get")
@transactions.writes
def writing_get() -> Any:
    unit = transactions.current()
    assert unit is not None
    probe.immediate.append(unit.immediate)
    return {"immediate": unit.immediate}


@edge_bp.post("/outside")
def outside_call() -> Any:
    _work("before-call")

    def call() -> str:  # an outside system's request (Stripe): its key's row is already durable
        probe.calls["in-transaction"] += int(db.session().in_transaction())
        probe.calls["seen-by-others"] += _actions(edge_app_ref[0])["test:work"]
        return "answered"

    answer = transactions.outside(call)
    _work("after-call")
    if probe.fail_times:
        raise Forbidden()
    return {"answer": answer}


edge_app_ref: list[Flask] = []


@pytest.fixture(scope="module")
def edge_app(app: Flask, app_overrides: dict[str, Any]) -> Iterator[Flask]:
    from marketplace import create_app

    second = create_app(app_overrides, start_background=False)
    second.config["TESTING"] = True
    register_gated(second, edge_bp, Gate(GateKind.PUBLIC))
    edge_app_ref[:] = [app]
    yield second
    with second.app_context():
        db.engine.dispose()


@pytest.fixture
def edge(edge_app: Flask) -> Iterator[Any]:
    global probe  # noqa: PLW0603 - the views above read the module's probe
    probe = Probe()
    yield edge_app.test_client()


def _actions(app: Flask) -> Counter[str]:
    with app.app_context():
        return Counter(db.session.execute(select(AuditEvent.action)).scalars())


def test_outside_commits_the_rows_first_and_calls_with_no_transaction_open(app: Flask, edge: Any) -> None:
    # STRIPE.md §1.5: the row carrying an idempotency key is committed before the call that uses the key
    assert edge.post("/edge-probe/outside").get_json() == {"answer": "answered"}
    assert probe.calls["in-transaction"] == 0 and probe.calls["seen-by-others"] == 1
    assert _actions(app) == {"test:work": 2}


def test_a_failure_after_outside_rolls_back_only_what_came_after(app: Flask, edge: Any) -> None:
    probe.fail_times = 1
    assert edge.post("/edge-probe/outside").status_code == 403
    assert _actions(app) == {"test:work": 1}  # the row before the call stays: its key must outlive a crash


def test_a_view_that_answers_is_committed_once(app: Flask, edge: Any) -> None:
    response = edge.post("/edge-probe/ok")
    assert response.status_code == 201
    assert _actions(app) == {"test:work": 1}
    assert probe.after_commit == ["ok"]  # after-commit work ran, after the one commit


def test_an_app_error_rolls_everything_back(app: Flask, edge: Any) -> None:
    response = edge.post("/edge-probe/app-error")
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    assert _actions(app) == {}
    assert probe.after_commit == []  # dropped with the rollback


def test_an_error_response_rolls_back_too(app: Flask, edge: Any) -> None:
    assert edge.post("/edge-probe/error-response").status_code == 422
    assert _actions(app) == {}
    assert probe.after_commit == []


def test_a_refusal_is_recorded_although_its_request_fails(app: Flask, edge: Any) -> None:  # PV-02
    response = edge.post("/edge-probe/refusal")
    assert response.status_code == 403
    assert _actions(app) == {"test:refusal": 1}  # the request's own work is gone, its refusal stands
    assert probe.after_commit == []
    with app.app_context():
        event = db.session.execute(select(AuditEvent).where(AuditEvent.action == "test:refusal")).scalar_one()
        assert event.request_id == response.headers["X-Request-ID"]
        assert verify_chain(db.session).ok


def test_a_refusal_in_a_request_that_succeeds_rides_in_its_commit(app: Flask, edge: Any) -> None:
    assert edge.post("/edge-probe/refusal-then-success").status_code == 200
    assert _actions(app) == {"test:refusal": 1, "test:work": 1}
    with app.app_context():
        assert verify_chain(db.session).ok


def test_a_unique_clash_found_by_the_commit_is_a_409_not_a_success(app: Flask, edge: Any) -> None:
    with app.app_context():
        audit.record(None, "test:seed")
        db.session.commit()
    response = edge.post("/edge-probe/duplicate-at-commit")
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "conflict"
    assert _actions(app) == {"test:seed": 1}
    assert probe.after_commit == []


def test_a_database_lost_at_commit_is_a_503_not_a_success(
    app: Flask, edge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lost() -> None:
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"),
                               connection_invalidated=True)

    monkeypatch.setattr(transactions, "_commit", lost)
    response = edge.post("/edge-probe/ok")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "service_unavailable"
    monkeypatch.undo()
    assert _actions(app) == {}
    assert probe.after_commit == []


@pytest.mark.parametrize("state", ["40P01", "40001"])
def test_a_deadlock_reruns_the_whole_unit(app: Flask, edge: Any, state: str) -> None:  # F2
    probe.fail_times, probe.state = 2, state
    response = edge.post("/edge-probe/flaky")
    assert response.status_code == 200 and response.get_json() == {"attempts": 3}
    assert _actions(app) == {"test:work": 1}  # the failed attempts' work was rolled back
    assert probe.after_commit == ["flaky-3"]  # and their after-commit hooks dropped


def test_when_retries_run_out_the_answer_is_a_stable_409(app: Flask, edge: Any) -> None:  # F2
    probe.fail_times = 99
    response = edge.post("/edge-probe/flaky")
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "contended"
    assert probe.calls["flaky"] == transactions.ATTEMPTS
    assert _actions(app) == {} and probe.after_commit == []
    car = edge.post("/edge-probe/flaky-car")
    assert car.status_code == 409 and car.get_json()["error"]["code"] == "vehicle_unavailable"


def test_on_sqlite_only_requests_that_may_write_take_the_write_lock(app: Flask, edge: Any) -> None:  # F3
    if is_postgres(app):
        pytest.skip("BEGIN IMMEDIATE is SQLite's")
    assert edge.get("/edge-probe/mode").get_json() == {"immediate": False}
    assert edge.post("/edge-probe/mode").get_json() == {"immediate": True}
    assert edge.get("/edge-probe/writing-get").get_json() == {"immediate": True}


def test_a_job_is_one_unit_of_work(app: Flask) -> None:
    ran: list[str] = []

    @jobs.handler("test.uow")
    def handler(ref: str) -> None:
        audit.record(None, "test:job", ("things", ref))
        jobs.run_after_commit(ran.append, ref)
        if ref == "fail":
            audit.record_now(None, "test:job_refusal", ("things", ref))
            raise RuntimeError("boom")

    with app.app_context():
        ok = jobs.schedule("test.uow", "ok", due_at=utcnow() + timedelta(hours=1)).id
        bad = jobs.schedule("test.uow", "fail", due_at=utcnow() + timedelta(hours=1)).id
        db.session.execute(update(jobs.WorkItem).values(due_at=utcnow()))
        db.session.commit()
        assert jobs.run_work_item(ok) == "done"
        assert jobs.run_work_item(bad) == "failed"
        assert db.session.get(jobs.WorkItem, bad).status == jobs.WorkStatus.PENDING  # type: ignore[union-attr]
    assert ran == ["ok"]
    assert _actions(app) == {"test:job": 1, "test:job_refusal": 1}


# ---- the session keep-alive rides in the request's commit ----------------------------------------------------


def _stale_session(app: Flask, minutes: int = 5) -> tuple[str, int]:
    with app.app_context():
        person = factories.make_customer()
        issued = sessions.start_session(person.user(), sessions.SessionChannel.API, current_app.config["SETTINGS"])
        issued.session.last_seen_at = utcnow() - timedelta(minutes=minutes)
        db.session.commit()
        return issued.access_token, issued.session.id


def _last_seen(app: Flask, session_id: int) -> Any:
    with app.app_context():
        return db.session.get(AuthSession, session_id).last_seen_at  # type: ignore[union-attr]


def test_a_get_commits_the_keep_alive(app: Flask, client: Any) -> None:
    token, session_id = _stale_session(app)
    before = _last_seen(app, session_id)
    assert client.get("/api/v1/me", headers=factories.bearer(token)).status_code == 200
    assert _last_seen(app, session_id) > before + timedelta(minutes=4)


def test_a_failed_request_still_keeps_the_session_alive(app: Flask, client: Any) -> None:
    token, session_id = _stale_session(app)
    before = _last_seen(app, session_id)
    response = client.get("/api/v1/bookings/NO-SUCH-BOOKING", headers=factories.bearer(token))
    assert response.status_code == 404
    assert _last_seen(app, session_id) > before + timedelta(minutes=4)


def test_a_plain_get_does_not_wait_for_the_write_lock(app: Flask, client: Any, database_url: str) -> None:  # F3
    if is_postgres(app):
        pytest.skip("SQLite's write lock")
    token, _ = _stale_session(app, minutes=0)  # seen just now: nothing to keep alive
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock for the whole request
        response = client.get("/api/v1/me", headers=factories.bearer(token))
        assert response.status_code == 200  # a GET that took the lock would wait out the busy timeout, then 503
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# ---- concurrent writes on the embedded default, through the real server (issue 7 item 1) ------------------


CLIENTS = 8
PER_CLIENT = 16  # alternating give / withdraw: 128 requests in all


@pytest.fixture
def customers(app: Flask) -> list[tuple[factories.Person, str]]:
    """Customers with access tokens, seeded before the server starts (minted directly: logins are limited)."""
    with app.app_context():
        people = [factories.make_customer() for _ in range(CLIENTS)]
        tokens = [sessions.start_session(p.user(), sessions.SessionChannel.API,
                                         current_app.config["SETTINGS"]).access_token for p in people]
        db.session.commit()
    return list(zip(people, tokens, strict=True))


def test_concurrent_writes_queue_instead_of_failing(  # issue 7 item 1
    app: Flask, customers: list[tuple[factories.Person, str]], gunicorn_server: str
) -> None:
    people = [person for person, _ in customers]
    tokens = [token for _, token in customers]
    parts = urlsplit(gunicorn_server)
    version = CURRENT[ConsentKind.MARKETING].version
    barrier = threading.Barrier(CLIENTS)
    statuses: list[list[int]] = [[] for _ in range(CLIENTS)]

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        headers = {"Authorization": f"Bearer {tokens[n]}", "Content-Type": "application/json"}
        barrier.wait()
        try:
            for i in range(PER_CLIENT):
                if i % 2 == 0:
                    conn.request("POST", "/api/v1/me/consents", headers=headers,
                                 body=json.dumps({"kind": "marketing", "text_version": version}))
                else:
                    conn.request("DELETE", "/api/v1/me/consents/marketing", headers=headers)
                response = conn.getresponse()
                response.read()
                statuses[n].append(response.status)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    tally = Counter(s for per_client in statuses for s in per_client)
    assert sum(tally.values()) == CLIENTS * PER_CLIENT
    assert not [s for s in tally if s >= 500], tally
    assert all(per_client == [201, 204] * (PER_CLIENT // 2) for per_client in statuses), tally

    with app.app_context():
        for person in people:  # every answer's write is there: one row per give, each withdrawn once
            rows = db.session.execute(select(Consent).where(
                Consent.user_id == person.user_id, Consent.kind == ConsentKind.MARKETING)).scalars().all()
            assert len(rows) == PER_CLIENT // 2
            assert all(r.withdrawn_at is not None for r in rows)
        grants = db.session.execute(select(func.count()).select_from(AuditEvent)
                                    .where(AuditEvent.action.in_(("consent:grant", "consent:withdraw")))).scalar_one()
        assert grants == CLIENTS * PER_CLIENT
        assert verify_chain(db.session).ok


def test_a_released_savepoint_does_not_fire_after_commit_hooks(app_ctx):
    """SQLAlchemy sends ``after_commit`` for a savepoint too; hooks must wait for the real commit."""
    from marketplace.extensions import db

    fired: list[str] = []
    with transactions.unit_of_work():
        jobs.run_after_commit(fired.append, "done")
        with db.session.begin_nested():
            db.session.execute(text("SELECT 1"))
        assert fired == []
    assert fired == ["done"]
