"""Collection under faults (issue #10 step 7; TESTING.md JB-02, JB-03, JB-04 for post-rental charges): kill the
worker mid-charge, flush Redis, cut PostgreSQL off, run the job early and twice. Each charge is collected
exactly once and none is lost.

A real ``flask jobs worker`` (rq's forking worker, in its own process group) runs the collection against this
session's PostgreSQL database and Redis (``TEST_DATABASE_URL``, ``TEST_REDIS_URL``); its Stripe is localstripe
behind a loopback relay of this test's (``_StripeRelay``) that can hold one request: before it reaches
localstripe (the worker is inside the Stripe call) or after localstripe acted (Stripe charged, the answer has
not reached us). The worker's clock is moved to the charge's due time by time-machine in a tiny wrapper (the
rental lies in the future, as in the other charges tests); the sweeper's tick runs in the test, at the same
moved clock. Stripe's own record is the judge: the succeeded PaymentIntents whose metadata names the charge.

PostgreSQL: every connection to this run's database is killed with ``pg_terminate_backend`` while the worker
waits on Stripe (what a restart does to the worker's connections); where the run owns the server
(``TEST_PG_RESTART_CLUSTER``, set by ``.ci/run``) the server itself is restarted (``pg_ctlcluster ... restart
-m fast``) at the same moment. Redis: ``FLUSHDB`` on the test database, not ``FLUSHALL``,
which would wipe the other sessions' databases on the same server.

Run them in one process (``-p no:xdist`` or ``-n 0``): rq's queue lives in the one Redis database, which two
xdist processes (each with a PostgreSQL database of its own) would share, and one's worker would take the
other's row ids.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from marketplace import jobs
from marketplace.charges.models import Charge
from marketplace.extensions import db
from marketplace.jobs import WorkItem, WorkStatus
from marketplace.payments import service as payments
from marketplace.payments.states import IntentState
from tests.charges.helpers import at, charge_row, raise_charge, returned_rental
from tests.conftest import drain_jobs
from tests.factories import auth_headers
from tests.live_gunicorn import ROOT, server_env
from tests.payments.helpers import raw_client
from tests.stripe_fixtures import SECRET_KEY, LocalStripe

pytestmark = [
    pytest.mark.postgres_only,
    pytest.mark.skipif(
        not os.environ.get("TEST_REDIS_URL"),
        reason="needs Redis (set TEST_REDIS_URL): the faults are a real worker's and a real queue's",
    ),
]

HANG_GUARD = 90.0  # seconds; a guard against a hung worker, never a timing assertion
AMOUNT = 15750


# ---- a relay in front of localstripe that can hold one request ------------------------------------------------


@dataclass
class Hold:
    method: str
    path: str  # a regular expression on the request's path
    when: str  # "before": localstripe never sees it; "after": localstripe acted, the answer is held
    deliver: bool = False  # after the release, hand the answer over (else the connection just closes)


class _StripeRelay:
    def __init__(self, stripe: LocalStripe) -> None:
        self.stripe = stripe
        self.upstream = stripe.base_url
        self.hold: Hold | None = None
        self.reached = threading.Event()
        self.release = threading.Event()
        self.seen: list[tuple[str, str]] = []
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                relay._relay(self)

            do_POST = do_GET  # noqa: N815
            do_DELETE = do_GET  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        path = handler.path.split("?")[0]
        self.seen.append((handler.command, path))
        hold = self.hold
        held = hold is not None and handler.command == hold.method and re.search(hold.path, path) is not None
        if held:
            self.hold = None  # the first matching request only
        if held and hold is not None and hold.when == "before":
            self._wait(handler)
            return
        headers = {
            k: v
            for k, v in handler.headers.items()
            if k.lower() not in ("host", "content-length", "connection", "accept-encoding")
        }
        request = urllib.request.Request(  # noqa: S310 - our loopback localstripe
            self.upstream + handler.path, data=body, method=handler.command, headers=headers
        )
        try:
            with self._opener.open(request, timeout=30) as answer:
                status, answer_headers, data = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as error:
            status, answer_headers, data = error.code, error.headers, error.read()
        if held and hold is not None:
            self._wait(handler)
            if not hold.deliver:
                return
        handler.send_response(status)
        for key, value in answer_headers.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _wait(self, handler: BaseHTTPRequestHandler) -> None:
        self.reached.set()
        self.release.wait(HANG_GUARD)
        handler.close_connection = True

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def relay(stripe_gateway: LocalStripe) -> Iterator[_StripeRelay]:
    proxy = _StripeRelay(stripe_gateway)
    try:
        yield proxy
    finally:
        proxy.close()


@dataclass
class Rig:
    client: Any
    relay: _StripeRelay
    start_worker: Any

    @property
    def stripe(self) -> LocalStripe:
        return self.relay.stripe


# ---- a real worker process with its clock moved -------------------------------------------------------------

# time-machine moves the worker's clock (its forked work-horse inherits it); then it is `flask jobs worker`
_WRAPPER = (
    "import sys, time_machine\n"
    "time_machine.travel(float(sys.argv.pop(1)), tick=True).start()\n"
    "from flask.cli import main\n"
    "sys.argv[0] = 'flask'\n"
    "main()\n"
)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the worker's process group (the rq worker and its work-horse): the group we started."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=HANG_GUARD)

    def finish(self) -> None:
        """A burst worker ends once the queue is empty."""
        try:
            self.process.wait(timeout=HANG_GUARD)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the burst worker did not finish:\n" + self.log.read_text()[-3000:]) from None
        assert self.process.returncode == 0, self.log.read_text()[-3000:]


@pytest.fixture
def rig(
    app_ctx: None, client: Any, app_overrides: dict[str, Any], relay: _StripeRelay, tmp_path: Path
) -> Iterator[Rig]:
    """The test's client, the Stripe relay and a way to start workers (all started ones killed at the end)."""
    if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
        pytest.fail("run the fault tests in one process (-p no:xdist): xdist processes share the Redis queue")
    started: list[Worker] = []
    env = server_env(
        app_overrides,
        {"STRIPE_API_BASE": relay.url, "STRIPE_SECRET_KEY": SECRET_KEY, "STRIPE_MAX_NETWORK_RETRIES": "0"},
    )

    def start(clock: datetime, *, burst: bool = True) -> Worker:
        log = tmp_path / f"worker-{len(started)}.log"
        args = [
            sys.executable,
            "-c",
            _WRAPPER,
            str(clock.timestamp()),
            "--app",
            "wsgi",
            "jobs",
            "worker",
            *(["--burst"] if burst else []),
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(  # noqa: S603 - fixed argv, loopback only
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        worker = Worker(process, log)
        started.append(worker)
        return worker

    try:
        yield Rig(client, relay, start)
    finally:
        for worker in started:
            if worker.process.poll() is None:
                worker.kill()


# ---- the world ----------------------------------------------------------------------------------------------


def _noticed(app: Any, client: Any, server: LocalStripe, *, deposit: int) -> Charge:
    rental = returned_rental(client, server, deposit=deposit)
    with at(rental.returned_at + timedelta(minutes=20)):
        raised = raise_charge(
            client,
            auth_headers(client, rental.manager),
            rental.reference,
            incurred_at=rental.returned_at,
            amount=AMOUNT,
        )
        assert raised.status_code == 201, raised.get_json()
    drain_jobs(app)  # the setup's own queued work (e-mails) runs here: the worker sees the collection only
    return charge_row(raised.get_json()["id"])


def _tick(clock: datetime, *, periodic: bool = True) -> None:
    """The sweeper's tick at ``clock``: due work re-queued on Redis (the relay too), nothing run here."""
    db.session.rollback()
    with at(clock):
        jobs.sweep()
        if periodic:
            jobs.run_periodic()
    db.session.rollback()


def _charge_intents(server: LocalStripe, charge: Charge) -> list[dict[str, Any]]:
    intents = raw_client(server).v1.payment_intents.list(params={"limit": 100}).data
    return [i.to_dict() for i in intents if (i.to_dict().get("metadata") or {}).get("charge") == charge.public_id]


def _succeeded(server: LocalStripe, charge: Charge) -> list[dict[str, Any]]:
    return [i for i in _charge_intents(server, charge) if i["status"] == "succeeded"]


def _collect_items(charge: Charge) -> list[WorkItem]:
    db.session.rollback()
    return list(
        db.session.execute(
            select(WorkItem).where(WorkItem.kind == "charges.collect", WorkItem.ref == str(charge.id))
        ).scalars()
    )


def _assert_paid_once(server: LocalStripe, charge: Charge, *, via: str) -> None:
    paid = charge_row(charge.public_id)
    attempts = payments.charge_payments_for(paid.id)
    assert paid.status == "paid" and paid.paid_via == via, (paid.status, paid.last_error)
    assert [(a.attempt, a.state, a.amount_fils) for a in attempts] == [(1, IntentState.SUCCEEDED, AMOUNT)]
    if via == "card":
        (intent,) = _succeeded(server, charge)  # Stripe's own record: one successful PaymentIntent
        assert intent["amount"] == AMOUNT and intent["id"] == attempts[0].stripe_intent_id
        assert len(_charge_intents(server, charge)) == 1  # and no second one created, even unconfirmed
    else:
        assert _charge_intents(server, charge) == []  # nothing charged to the card
        deposit = payments.current_deposit(paid.booking_id)
        assert deposit is not None and deposit.state == IntentState.CAPTURED and deposit.captured_fils == AMOUNT
        at_stripe = raw_client(server).v1.payment_intents.retrieve(deposit.stripe_intent_id).to_dict()
        assert at_stripe["status"] == "succeeded" and at_stripe["amount_received"] == AMOUNT
    report = payments.ledger_check()
    assert report.ok, report.problems
    assert all(item.status == WorkStatus.DONE for item in _collect_items(charge))


def _wait_reached(proxy: _StripeRelay, worker: Worker) -> None:
    if not proxy.reached.wait(HANG_GUARD):
        raise AssertionError("the worker never reached Stripe:\n" + worker.log.read_text()[-3000:])


# ---- JB-02: the worker killed mid-charge --------------------------------------------------------------------

_CREATE = r"^/v1/payment_intents$"
_CONFIRM = r"^/v1/payment_intents/[^/]+/confirm$"
_CAPTURE = r"^/v1/payment_intents/[^/]+/capture$"


@pytest.mark.parametrize(
    ("via", "hold"),
    [
        ("card", Hold("POST", _CREATE, "before")),  # inside the create: Stripe never saw it
        ("card", Hold("POST", _CREATE, "after")),  # the intent exists at Stripe, its id never reached our row
        ("card", Hold("POST", _CONFIRM, "before")),  # inside the confirm
        ("card", Hold("POST", _CONFIRM, "after")),  # Stripe charged the card; we never heard
        ("deposit", Hold("POST", _CAPTURE, "before")),  # inside the capture
        ("deposit", Hold("POST", _CAPTURE, "after")),  # Stripe captured the hold; we never heard
    ],
    ids=[
        "card-create-before",
        "card-create-after",
        "card-confirm-before",
        "card-confirm-after",
        "deposit-capture-before",
        "deposit-capture-after",
    ],
)
def test_a_worker_killed_mid_charge_is_resumed_by_the_sweeper_and_charges_once(app, rig, via, hold):  # JB-02
    # enforces P-21: collected once, for the noticed amount
    stripe_server = rig.stripe
    charge = _noticed(app, rig.client, stripe_server, deposit=100000 if via == "deposit" else 0)
    due = charge.due_at
    assert due is not None
    first = due + timedelta(minutes=1)
    _tick(first)  # the collection is queued on Redis
    rig.relay.hold = hold
    worker = rig.start_worker(first, burst=False)
    _wait_reached(rig.relay, worker)
    worker.kill()  # mid-charge: no outcome recorded, no lease given back

    row = charge_row(charge.public_id)
    assert row.status == "collecting" and row.attempts == 1
    (attempt,) = payments.charge_payments_for(row.id)
    assert attempt.state == IntentState.PENDING and attempt.idempotency_key == f"charge:{row.id}:attempt:1"
    (item,) = _collect_items(charge)
    assert item.status == WorkStatus.RUNNING  # the work row still says the job is owed

    _tick(first + timedelta(minutes=1))  # inside both leases: nobody takes it over yet
    assert _collect_items(charge)[0].status == WorkStatus.RUNNING
    later = first + jobs.LEASE + timedelta(minutes=1)  # after the lease the sweeper re-queues the row
    _tick(later)
    rig.start_worker(later).finish()
    _tick(later + timedelta(minutes=2))  # and later sweeps find nothing more to do
    rig.start_worker(later + timedelta(minutes=2)).finish()
    _assert_paid_once(stripe_server, charge, via=via)


# ---- JB-03: Redis flushed between queueing and the worker ----------------------------------------------------


def test_a_flushed_queue_is_rebuilt_from_the_rows_and_the_charge_is_collected_once(app, rig):  # JB-03
    stripe_server = rig.stripe
    charge = _noticed(app, rig.client, stripe_server, deposit=0)
    assert charge.due_at is not None
    first = charge.due_at + timedelta(minutes=1)
    _tick(first)
    backend = jobs.backend()
    assert isinstance(backend, jobs.RqBackend)
    assert len(backend.queue) >= 1  # queued ...
    backend.connection.flushdb()  # ... and lost: this run's Redis database only (the server is shared)
    assert len(backend.queue) == 0
    rig.start_worker(first).finish()  # a worker finds nothing to do
    assert charge_row(charge.public_id).status == "noticed" and _charge_intents(stripe_server, charge) == []
    (item,) = _collect_items(charge)
    assert item.status == WorkStatus.PENDING  # nothing lost: the row still says what is owed

    _tick(first + timedelta(minutes=2))  # the sweeper re-queues it from PostgreSQL
    rig.start_worker(first + timedelta(minutes=2)).finish()
    _assert_paid_once(stripe_server, charge, via="card")


# ---- JB-04: PostgreSQL cut off while the worker waits on Stripe -----------------------------------------------


def _kill_connections() -> int:
    """Terminate every other connection to this run's database (what a PostgreSQL restart does to them)."""
    db.session.rollback()
    with db.engine.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    db.engine.dispose()  # this process's own pool: its connections were terminated too
    return int(killed)


RESTART_CLUSTER = os.environ.get("TEST_PG_RESTART_CLUSTER")  # e.g. "15 main": CI owns the server, so it may


def _restart_postgresql() -> int:
    """Restart the server itself (``pg_ctlcluster VERSION NAME restart -m fast``), wait until it answers."""
    assert RESTART_CLUSTER is not None
    db.session.rollback()
    version, name = RESTART_CLUSTER.split()
    subprocess.run(["/usr/bin/pg_ctlcluster", "--skip-systemctl-redirect", version, name,  # noqa: S603 - ours
                    "restart", "-m", "fast"], check=True, capture_output=True, timeout=60)
    for _ in range(60):
        ready = subprocess.run(["/usr/bin/pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"],
                               check=False, timeout=10)
        if ready.returncode == 0:
            break
        threading.Event().wait(0.5)
    db.engine.dispose()  # this process's pool held connections to the old server
    return 1


@pytest.mark.parametrize("cut", ["connections killed", "server restarted"])
@pytest.mark.parametrize("via", ["card", "deposit"])
def test_postgresql_connections_killed_mid_charge_lose_nothing_and_charge_once(app, rig, via, cut):  # JB-04
    if cut == "server restarted" and RESTART_CLUSTER is None:
        pytest.skip("set TEST_PG_RESTART_CLUSTER (e.g. '15 main') where this run owns the PostgreSQL server "
                    "(.ci/run does); a shared server is not restarted")
    stripe_server = rig.stripe
    charge = _noticed(app, rig.client, stripe_server, deposit=100000 if via == "deposit" else 0)
    assert charge.due_at is not None
    first = charge.due_at + timedelta(minutes=1)
    _tick(first)
    rig.relay.hold = Hold("POST", _CONFIRM if via == "card" else _CAPTURE, "after", deliver=True)
    worker = rig.start_worker(first)
    _wait_reached(rig.relay, worker)
    assert (_kill_connections() if cut == "connections killed" else _restart_postgresql()) >= 1
    rig.relay.release.set()  # Stripe's answer arrives: recording it meets a dead connection
    worker.finish()

    later = first + timedelta(minutes=3)  # past the charge's lease and the work row's back-off
    _tick(later)
    rig.start_worker(later).finish()
    _tick(later + jobs.LEASE + timedelta(minutes=1))
    rig.start_worker(later + jobs.LEASE + timedelta(minutes=1)).finish()
    _assert_paid_once(stripe_server, charge, via=via)


# ---- early and twice, at the job level, with real workers -------------------------------------------------------


def test_many_sweeps_and_duplicate_enqueues_before_and_after_due_make_one_attempt(app, rig):
    # enforces P-21: never before the 24 hours, once after
    stripe_server = rig.stripe
    charge = _noticed(app, rig.client, stripe_server, deposit=0)
    assert charge.due_at is not None
    backend = jobs.backend()
    assert isinstance(backend, jobs.RqBackend)
    (item,) = _collect_items(charge)

    early = charge.due_at - timedelta(minutes=1)
    with at(early):
        jobs.schedule("charges.collect", charge.id)  # a stray row due now: its job runs, and must not charge
        db.session.commit()
    for _ in range(5):
        _tick(early)
        backend.enqueue(jobs.run_work_item, item.id)  # the notice's own row, queued again and again
    early_workers = [rig.start_worker(early), rig.start_worker(early)]
    for worker in early_workers:
        worker.finish()
    assert charge_row(charge.public_id).status == "noticed"
    assert payments.charge_payments_for(charge.id) == [] and _charge_intents(stripe_server, charge) == []
    assert next(i for i in _collect_items(charge) if i.id == item.id).status == WorkStatus.PENDING

    due = charge.due_at + timedelta(minutes=1)
    for _ in range(5):
        _tick(due)
        backend.enqueue(jobs.run_work_item, item.id)
    with at(due):
        jobs.schedule("charges.collect", charge.id)  # and a duplicate row, as a second relay would write
        db.session.commit()
    workers = [rig.start_worker(due), rig.start_worker(due)]  # two workers race for the same work
    for worker in workers:
        worker.finish()
    for _ in range(3):
        _tick(due + timedelta(minutes=10))
        backend.enqueue(jobs.run_work_item, item.id)
    rig.start_worker(due + timedelta(minutes=10)).finish()
    _assert_paid_once(stripe_server, charge, via="card")
