"""Races for one car, over real HTTP and separate connections (PostgreSQL only, TESTING.md §6 rule 1)."""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import current_app
from sqlalchemy import func, select, text

from marketplace.availability.models import VehicleOccupancy
from marketplace.bookings.models import Booking
from marketplace.extensions import db, utcnow
from marketplace.fleet.models import Vehicle
from marketplace.users import sessions
from tests.factories import booking_body, make_agency, make_vehicle, make_verified_customer

pytestmark = pytest.mark.postgres_only

CLIENTS = 50
ROUNDS = 20


def _tokens(count: int) -> list[str]:
    """Access tokens for ``count`` KYC-approved customers (minted directly: logins are rate-limited)."""
    tokens = []
    for _ in range(count):
        person = make_verified_customer()
        issued = sessions.start_session(person.user(), sessions.SessionChannel.API, current_app.config["SETTINGS"])
        tokens.append(issued.access_token)
    db.session.commit()
    return tokens


def _race(base_url: str, tokens: list[str], body: dict[str, Any], *, key: str | None = None) -> list[tuple[int, Any]]:
    parts = urlsplit(base_url)
    barrier = threading.Barrier(len(tokens))
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def one(token: str) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        payload = json.dumps(body)
        barrier.wait()
        try:
            conn.request("POST", "/api/v1/bookings", body=payload, headers=headers)
            response = conn.getresponse()
            data = json.loads(response.read() or b"null")
            with lock:
                results.append((response.status, data))
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def _no_overlaps() -> None:
    overlapping = db.session.execute(text(
        "SELECT count(*) FROM vehicle_occupancies a JOIN vehicle_occupancies b "
        "ON a.vehicle_id = b.vehicle_id AND a.id < b.id "
        "AND tstzrange(a.starts_at, a.ends_at) && tstzrange(b.starts_at, b.ends_at)"
    )).scalar_one()
    assert overlapping == 0


def test_fifty_clients_twenty_rounds_one_winner_each(app, app_ctx, live_server):  # CC-01, enforces P-16
    vehicle = make_vehicle(make_agency())
    tokens = _tokens(CLIENTS)
    tally: Counter[int] = Counter()
    for round_no in range(ROUNDS):
        body = booking_body(vehicle, start_in_hours=48 + round_no * 24 * 4, hours=30)
        results = _race(live_server, tokens, body)
        statuses = Counter(status for status, _ in results)
        tally.update(statuses)
        assert len(results) == CLIENTS
        assert statuses[201] == 1, (round_no, statuses)
        assert statuses[409] == CLIENTS - 1, (round_no, statuses)
        assert all(data["error"]["code"] == "vehicle_unavailable" for status, data in results if status == 409)
    assert not [s for s in tally if s >= 500]
    db.session.expire_all()
    assert db.session.execute(select(func.count()).select_from(Booking)).scalar_one() == ROUNDS
    _no_overlaps()
    print(f"\nCC-01: {ROUNDS} rounds x {CLIENTS} clients: {dict(tally)}")


def test_same_idempotency_key_sent_concurrently_books_once(app, app_ctx, live_server):  # CC-04
    vehicle = make_vehicle(make_agency())
    token = _tokens(1)[0]
    body = booking_body(vehicle)
    results = _race(live_server, [token] * 10, body, key="double-submit-000001")
    statuses = Counter(status for status, _ in results)
    assert statuses[500] == 0
    assert statuses[201] == 1 and statuses[200] == 9, statuses
    assert len({data["reference"] for _, data in results}) == 1
    assert db.session.execute(select(func.count()).select_from(Booking)).scalar_one() == 1


def test_cancel_then_two_rebook_one_wins(app, app_ctx, live_server, client):  # CC-03
    vehicle = make_vehicle(make_agency())
    first, *others = _tokens(3)
    body = booking_body(vehicle)
    created = _race(live_server, [first], body)
    reference = created[0][1]["reference"]
    cancelled = client.post(f"/api/v1/bookings/{reference}/cancel", json={"reason": "changed plans"},
                            headers={"Authorization": f"Bearer {first}"})
    assert cancelled.status_code == 200
    statuses = Counter(status for status, _ in _race(live_server, others, body))
    assert statuses == Counter({201: 1, 409: 1})
    _no_overlaps()


def test_control_check_then_insert_alone_double_books(app, app_ctx, live_server):  # CC-01 negative control
    """Without the exclusion constraint the application's own check lets a race through (F1)."""
    vehicle = make_vehicle(make_agency())
    tokens = _tokens(CLIENTS)
    db.session.execute(text("ALTER TABLE vehicle_occupancies DROP CONSTRAINT ex_vehicle_occupancies_no_overlap"))
    db.session.commit()
    try:
        worst = 0
        for round_no in range(5):
            body = booking_body(vehicle, start_in_hours=48 + round_no * 24 * 4, hours=30)
            statuses = Counter(status for status, _ in _race(live_server, tokens, body))
            worst = max(worst, statuses[201])
        assert worst > 1, "the harness could not see a double booking without the constraint"
    finally:
        db.session.rollback()
        db.session.execute(text("DELETE FROM vehicle_occupancies"))
        db.session.execute(text(
            "ALTER TABLE vehicle_occupancies ADD CONSTRAINT ex_vehicle_occupancies_no_overlap "
            "EXCLUDE USING gist (vehicle_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)"
        ))
        db.session.commit()


def test_block_racing_bookings(app, app_ctx, live_server):  # enforces P-16: blocks share the constraint
    vehicle = make_vehicle(make_agency())
    db.session.add(VehicleOccupancy(vehicle_id=vehicle.id, starts_at=utcnow() + timedelta(days=2),
                                    ends_at=utcnow() + timedelta(days=4)))
    db.session.commit()
    tokens = _tokens(5)
    statuses = Counter(status for status, _ in _race(live_server, tokens, booking_body(vehicle, start_in_hours=60)))
    assert statuses == Counter({409: 5})
    assert db.session.get(Vehicle, vehicle.id) is not None
