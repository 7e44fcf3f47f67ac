"""A car's taken time (P-16): one overlap rule in Python and in SQL, the turnaround buffer, the period rules and
the serialised write. Run on SQLite and on PostgreSQL (TEST_DATABASE_URL): the SQL rule is a different text on each.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from marketplace import transactions
from marketplace.availability import service as availability
from marketplace.availability.models import VehicleOccupancy
from marketplace.availability.service import BLOCK, RENTAL, Holder, PeriodRule, VehicleUnavailable
from marketplace.availability.states import HolderKind
from marketplace.errors import Unprocessable
from marketplace.extensions import db
from marketplace.fleet.models import Vehicle
from tests.factories import make_agency, make_block, make_vehicle, make_verified_customer
from tests.fleet.helpers import base_time, book

BASE = datetime(2031, 3, 1, 8, 0, tzinfo=UTC)


def _sql_free(vehicle_id: int, starts_at: datetime, ends_at: datetime) -> bool:
    """The search's question for one car: ``free_during`` as search binds it."""
    dialect = db.engine.dialect.name
    stmt = select(Vehicle.id).where(
        Vehicle.id == vehicle_id, availability.free_during(Vehicle.id, Vehicle.turnaround_minutes, dialect=dialect))
    params = availability.free_during_parameters(starts_at, ends_at, dialect=dialect)
    return db.session.execute(stmt, params).first() is not None


def _spec_free(holds: list[tuple[datetime, datetime]], starts_at: datetime, ends_at: datetime, buffer: int) -> bool:
    """The rule as written in docs/promises.md (P-16), on plain intervals: nothing overlaps [start, end + buffer)."""
    until = ends_at + timedelta(minutes=buffer)
    return all(not (s < until and e > starts_at) for s, e in holds)


# a layout of disjoint holds (gap before each, length); microseconds exercise SQLite's text arithmetic
_minutes = st.integers(min_value=0, max_value=60 * 24 * 40)
_fraction = st.sampled_from([0, 1, 500_000, 999_999])
_hold = st.tuples(_minutes, st.integers(min_value=1, max_value=60 * 24 * 91), _fraction)
_length = st.integers(min_value=1, max_value=60 * 24 * 30).map(lambda m: timedelta(minutes=m))
_nudge = st.sampled_from([timedelta(microseconds=-1), timedelta(0), timedelta(microseconds=1), timedelta(minutes=1)])


def _question(data: st.DataObject, holds: list[tuple[datetime, datetime]], buffer: int) -> tuple[datetime, datetime]:
    """A period anywhere, or one that touches a hold's edge (where an off-by-one in either rule shows)."""
    mode = data.draw(st.sampled_from(["anywhere", "after", "before"] if holds else ["anywhere"]))
    length = data.draw(_length)
    if mode == "anywhere":
        start = BASE + timedelta(minutes=data.draw(st.integers(min_value=0, max_value=60 * 24 * 140)),
                                 microseconds=data.draw(_fraction))
        return start, start + length
    hold_start, hold_end = data.draw(st.sampled_from(holds))
    if mode == "after":  # starts at (about) the hold's end
        start = hold_end + data.draw(_nudge)
        return start, start + length
    end = hold_start - timedelta(minutes=buffer) + data.draw(_nudge)  # its buffer ends at (about) the hold's start
    return end - length, end


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.lists(_hold, max_size=6), buffer=st.sampled_from([0, 1, 30, 120, 1439, 1440]), data=st.data())
def test_python_and_sql_state_one_rule(app: Flask, app_ctx: None, layout: list[Any], buffer: int,
                                       data: st.DataObject) -> None:  # enforces P-16 and P-14
    agency = make_agency()
    car = make_vehicle(agency, turnaround_minutes=buffer)
    try:
        holds: list[tuple[datetime, datetime]] = []
        cursor = BASE
        for gap, length, micro in layout:
            start = cursor + timedelta(minutes=gap, microseconds=micro)
            end = start + timedelta(minutes=length)
            block = make_block(car, starts_at=start, ends_at=end, commit=False)
            db.session.add(VehicleOccupancy(vehicle_id=car.id, starts_at=start, ends_at=end, block_id=block.id))
            holds.append((start, end))
            cursor = end
        db.session.flush()
        for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
            a, b = _question(data, holds, buffer)
            expected = _spec_free(holds, a, b, buffer)
            assert availability.is_free(car, a, b) == expected, (a, b)
            assert _sql_free(car.id, a, b) == expected, (a, b)  # search shows exactly what can be booked (P-14)
            assert (availability.conflicts(car, a, b) == []) == expected
    finally:
        db.session.rollback()
        db.session.execute(Vehicle.__table__.delete().where(Vehicle.id == car.id))
        db.session.commit()


def test_the_sql_rule_touches_the_edges_exactly(app: Flask, app_ctx: None) -> None:  # CC-02: back to back is free
    car = make_vehicle(make_agency(), turnaround_minutes=120)
    start = BASE + timedelta(microseconds=250_000)
    block = make_block(car, starts_at=start, ends_at=start + timedelta(hours=5), commit=False)
    db.session.add(VehicleOccupancy(vehicle_id=car.id, starts_at=start, ends_at=start + timedelta(hours=5),
                                    block_id=block.id))
    db.session.commit()
    # a rental ending 2 h (the buffer) before the hold starts is free; one microsecond later it is not
    edge = start - timedelta(hours=2)
    for end, free in ((edge, True), (edge + timedelta(microseconds=1), False)):
        a = end - timedelta(days=1)
        assert availability.is_free(car, a, end) is free
        assert _sql_free(car.id, a, end) is free
    # a rental starting when the hold ends is free
    assert availability.is_free(car, start + timedelta(hours=5), start + timedelta(hours=6))
    assert _sql_free(car.id, start + timedelta(hours=5), start + timedelta(hours=6))


# ---- the turnaround buffer ---------------------------------------------------------------------------------


def test_a_booking_holds_its_buffer_and_a_block_does_not(app: Flask, app_ctx: None) -> None:  # enforces P-16
    car = make_vehicle(make_agency(), turnaround_minutes=90)
    t0 = base_time()
    booking = book(make_verified_customer(), car, t0, t0 + timedelta(days=1))
    [held] = availability.holds_of(Holder.booking(booking.id))
    assert (held.starts_at, held.ends_at) == (t0, t0 + timedelta(days=1, minutes=90))
    assert availability.occupied_until(car, t0) == t0 + timedelta(minutes=90)
    assert availability.buffer(car) == timedelta(minutes=90)

    block = make_block(car)
    later = t0 + timedelta(days=5)
    availability.serialised(lambda: availability.hold(car, later, later + timedelta(hours=3), Holder.block(block.id)))
    [blocked] = availability.holds_of(Holder.block(block.id))
    assert blocked.ends_at == later + timedelta(hours=3)  # no buffer after a block
    # a block may start right at the booking's buffer end, a booking must leave its own buffer before the block
    assert availability.is_free(car, t0 + timedelta(days=1, minutes=90), later, kind=HolderKind.BLOCK)
    assert not availability.is_free(car, t0 + timedelta(days=1, minutes=90), later)
    assert availability.is_free(car, t0 + timedelta(days=1, minutes=90), later - timedelta(minutes=90))
    [in_the_way] = availability.conflicts(car, t0 + timedelta(days=1, minutes=90), later)
    assert in_the_way.holder == Holder.block(block.id)


def test_the_buffer_bound_is_one_copy() -> None:  # issue 8 item 7: one MAX_TURNAROUND_MINUTES
    assert availability.MAX_TURNAROUND_MINUTES == 24 * 60
    package = Path(availability.__file__).resolve().parents[1]
    defined = [str(path.relative_to(package.parent)) for path in package.rglob("*.py")
               if re.search(r"^MAX_TURNAROUND_MINUTES\s*=", path.read_text(), flags=re.M)]
    assert defined == ["marketplace/availability/service.py"]


# ---- which periods may be asked for ----------------------------------------------------------------------


def _refusal(starts_at: datetime, ends_at: datetime, rule: PeriodRule, now: datetime) -> dict[str, list[str]]:
    with pytest.raises(Unprocessable) as caught:
        availability.check_period(starts_at, ends_at, rule, now=now)
    fields: dict[str, list[str]] = caught.value.details["fields"]
    return fields


def test_a_rental_keeps_the_lead_time_horizon_and_length() -> None:  # enforces P-15
    now = BASE
    ok = now + timedelta(hours=1)
    availability.check_period(ok, ok + timedelta(days=30), RENTAL, now=now)
    assert _refusal(ok.replace(tzinfo=None), ok + timedelta(days=1), RENTAL, now) == {
        "starts_at": ["Times need a time zone (ISO 8601 with an offset or Z)."]}
    assert _refusal(ok, ok, RENTAL, now) == {"ends_at": ["The return must be after the pick-up."]}
    assert _refusal(ok - timedelta(seconds=1), ok + timedelta(days=1), RENTAL, now) == {
        "starts_at": ["Pick-up must be at least one hour from now."]}
    far = now + timedelta(days=365, seconds=1)
    assert _refusal(far, far + timedelta(days=1), RENTAL, now) == {"starts_at": ["Bookings open up to a year ahead."]}
    assert _refusal(ok, ok + timedelta(days=30, seconds=1), RENTAL, now) == {
        "ends_at": ["A rental lasts at most 30 days."]}


def test_a_block_may_start_now_but_not_be_over_or_too_long() -> None:
    now = BASE
    availability.check_period(now - timedelta(days=1), now + timedelta(seconds=1), BLOCK, now=now)
    assert _refusal(now, now - timedelta(hours=1), BLOCK, now) == {"ends_at": ["The end must be after the start."]}
    assert _refusal(now, now + timedelta(days=90, seconds=1), BLOCK, now) == {
        "ends_at": ["A block lasts at most 90 days."]}
    assert _refusal(now - timedelta(days=2), now, BLOCK, now) == {"ends_at": ["The block is already over."]}


def test_no_rule_may_outgrow_the_probes_bound() -> None:
    # the probes look back MAX_OCCUPANCY only: a longer hold would be missed, so such a rule cannot be made
    with pytest.raises(ValueError, match="MAX_OCCUPANCY"):
        PeriodRule(longest=timedelta(days=91), too_long="", backwards="")
    PeriodRule(longest=timedelta(days=91), too_long="", backwards="", buffered=False)


# ---- the serialised write ---------------------------------------------------------------------------------


def test_a_hold_is_written_only_inside_the_serialised_write(app: Flask, app_ctx: None) -> None:
    car = make_vehicle(make_agency())
    block = make_block(car)
    with pytest.raises(RuntimeError, match="serialised"):
        availability.hold(car, BASE, BASE + timedelta(hours=1), Holder.block(block.id))


def test_an_overlapping_hold_is_refused_on_either_database(app: Flask, app_ctx: None) -> None:  # enforces P-16
    car = make_vehicle(make_agency())
    first, second = make_block(car), make_block(car)
    availability.serialised(lambda: availability.hold(car, BASE, BASE + timedelta(hours=4), Holder.block(first.id)))
    with pytest.raises(VehicleUnavailable):  # SQLite: hold's own check; PostgreSQL: the exclusion constraint
        availability.serialised(lambda: availability.hold(car, BASE + timedelta(hours=3), BASE + timedelta(hours=5),
                                                          Holder.block(second.id)))
    assert db.session.execute(select(func.count()).select_from(VehicleOccupancy)).scalar_one() == 1


def test_move_keeps_its_own_time_aside_and_release_is_idempotent(app: Flask, app_ctx: None) -> None:
    car = make_vehicle(make_agency(), turnaround_minutes=0)
    mine, other = make_block(car), make_block(car)
    availability.serialised(lambda: availability.hold(car, BASE, BASE + timedelta(hours=4), Holder.block(mine.id)))
    availability.serialised(lambda: availability.hold(car, BASE + timedelta(hours=6), BASE + timedelta(hours=8),
                                                      Holder.block(other.id)))
    # overlapping only itself: allowed
    availability.serialised(lambda: availability.move(car, Holder.block(mine.id), BASE + timedelta(hours=1),
                                                      BASE + timedelta(hours=5)))
    [moved] = availability.holds_of(Holder.block(mine.id))
    assert (moved.starts_at, moved.ends_at) == (BASE + timedelta(hours=1), BASE + timedelta(hours=5))
    # into another's time: refused, nothing changed
    with pytest.raises(VehicleUnavailable):
        availability.serialised(lambda: availability.move(car, Holder.block(mine.id), BASE + timedelta(hours=5),
                                                          BASE + timedelta(hours=7)))
    assert availability.holds_of(Holder.block(mine.id)) == [moved]
    assert availability.serialised(lambda: availability.release(Holder.block(mine.id))) == 1
    assert availability.serialised(lambda: availability.release(Holder.block(mine.id))) == 0
    assert availability.is_free(car, BASE, BASE + timedelta(hours=6))


def _contend(app: Flask, car_id: int, block_id: int, starts_at: datetime, *, barrier: threading.Barrier,
             outcomes: list[str]) -> None:
    """One writer of a race: hold six hours from ``starts_at`` for ``block_id`` as a unit of work of its own."""
    with app.app_context():
        attempts: list[int] = []

        def work() -> availability.Hold:
            current = db.session.get(Vehicle, car_id)
            assert current is not None
            if not attempts:  # a unit re-run after a deadlock (40P01) must not wait for a partner that has gone on
                barrier.wait()  # both inside their unit of work, then both write at once
            attempts.append(1)
            return availability.hold(current, starts_at, starts_at + timedelta(hours=6), Holder.block(block_id))

        try:
            transactions.run(lambda: availability.serialised(work))
            outcomes.append("won")
        except VehicleUnavailable:
            outcomes.append("unavailable")


@pytest.mark.postgres_only
def test_two_concurrent_holds_exactly_one_wins(app: Flask, app_ctx: None) -> None:  # enforces P-16 (CC-06)
    car = make_vehicle(make_agency())
    car_id = car.id
    rounds = 8
    for n in range(rounds):
        first, second = make_block(car).id, make_block(car).id
        start = BASE + timedelta(days=2 * n)
        barrier = threading.Barrier(2, timeout=30)
        outcomes: list[str] = []  # list.append is atomic
        race = {"barrier": barrier, "outcomes": outcomes}
        later = start + timedelta(hours=3)
        threads = [threading.Thread(target=_contend, args=(app, car_id, first, start), kwargs=race),
                   threading.Thread(target=_contend, args=(app, car_id, second, later), kwargs=race)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(outcomes) == ["unavailable", "won"], (n, outcomes)
    db.session.rollback()
    count = db.session.execute(select(func.count()).select_from(VehicleOccupancy)
                               .where(VehicleOccupancy.vehicle_id == car_id)).scalar_one()
    assert count == rounds
