"""Public search (P-14): only cars free for the whole period, from active agencies, filtered, sorted and paged.

The availability rule is ``availability.service.is_free``: a period ``[start, end)`` needs ``[start, end + the car's
turnaround)`` clear of every occupancy (bookings hold their own buffer, blocks do not).
"""

from __future__ import annotations

import logging
import random
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from marketplace.agencies.models import AgencyStatus
from marketplace.audit import AuditEvent
from marketplace.availability import service as availability
from marketplace.bookings import service as bookings
from marketplace.extensions import db, utcnow
from marketplace.fleet.models import Vehicle, VehiclePhoto, VehicleStatus
from marketplace.fleet.schemas import SearchPageOut, VehiclePublicOut
from marketplace.schemas import encode_cursor
from tests.factories import make_agency, make_vehicle, make_verified_customer
from tests.fleet.helpers import base_time, book, iso, occupy, vehicle_at
from tests.queries import statements
from tests.staff_web import db_snapshot


def search(client: FlaskClient, **params: Any) -> Any:
    return client.get("/api/v1/vehicles?" + urlencode({k: v for k, v in params.items() if v is not None}))


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    # the page is built without marshmallow's dump (the hot path): it must still be exactly SearchPageOut
    assert SearchPageOut().validate(body) == {}
    return [item["id"] for item in body["items"]]


def period(start: Any, end: Any) -> dict[str, str]:
    return {"starts_at": iso(start), "ends_at": iso(end)}


# ---- availability ---------------------------------------------------------------------------------------


def test_car_booked_for_part_of_the_period_is_not_shown(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # enforces P-14: only cars free for the whole period
    agency = make_agency()
    booked, free = make_vehicle(agency), make_vehicle(agency)
    t0 = base_time()
    book(make_verified_customer(), booked, t0 + timedelta(days=1), t0 + timedelta(days=2))

    assert set(ids(search(client, city="Dubai", **period(t0, t0 + timedelta(days=3))))) == {free.public_id}
    # a period that ends before the booking starts (with the car's own 2-hour buffer) shows it again
    shown = ids(search(client, city="Dubai", **period(t0, t0 + timedelta(hours=22))))
    assert set(shown) == {booked.public_id, free.public_id}
    # without dates every listed car is shown
    assert set(ids(search(client, city="Dubai"))) == {booked.public_id, free.public_id}


def test_blocked_car_is_not_shown(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # enforces P-14 (availability blocks count like bookings)
    agency = make_agency()
    blocked, free = make_vehicle(agency), make_vehicle(agency)
    t0 = base_time()
    occupy(blocked, t0 + timedelta(days=2), t0 + timedelta(days=4))
    shown = ids(search(client, city="Dubai", **period(t0 + timedelta(days=3), t0 + timedelta(days=5))))
    assert shown == [free.public_id]
    # blocks carry no buffer: the car is free again the moment the block ends
    after = ids(search(client, city="Dubai", **period(t0 + timedelta(days=4), t0 + timedelta(days=5))))
    assert blocked.public_id in after


def test_back_to_back_and_the_turnaround_buffer(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # enforces P-14, P-16; CC-02 adjacent periods
    agency = make_agency()
    car = make_vehicle(agency, turnaround_minutes=120)
    t0 = base_time()
    start, end = t0 + timedelta(days=2), t0 + timedelta(days=3)
    book(make_verified_customer(), car, start, end)  # holds [start, end + 2 h)

    def shown(a: Any, b: Any) -> bool:
        return car.public_id in ids(search(client, city="Dubai", **period(a, b)))

    # after: free exactly when the booking's buffer ends, not a minute earlier
    assert shown(end + timedelta(hours=2), end + timedelta(days=1))
    assert not shown(end + timedelta(hours=1, minutes=59), end + timedelta(days=1))
    # before: our own return plus our 2-hour buffer must end by the next pick-up
    assert shown(t0, start - timedelta(hours=2))
    assert not shown(t0, start - timedelta(hours=1))  # the next booking starts inside end + buffer
    # and search agrees with the booking service on every one of these
    for a, b in [(end + timedelta(hours=2), end + timedelta(days=1)), (t0, start - timedelta(hours=1))]:
        assert shown(a, b) == availability.is_free(car, a, b)


def test_a_car_with_no_buffer_can_be_rented_back_to_back(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # CC-02: [10:00, 12:00) followed by [12:00, 14:00)
    car = make_vehicle(make_agency(), turnaround_minutes=0)
    t0 = base_time().replace(hour=10)
    book(make_verified_customer(), car, t0, t0 + timedelta(hours=2))
    later = period(t0 + timedelta(hours=2), t0 + timedelta(hours=4))
    assert car.public_id in ids(search(client, city="Dubai", **later))
    assert car.public_id in ids(search(client, city="Dubai", **period(t0 - timedelta(hours=2), t0)))
    assert car.public_id not in ids(search(client, city="Dubai",
                                           **period(t0 + timedelta(hours=1), t0 + timedelta(hours=3))))


def test_search_equals_the_booking_services_is_free(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # enforces P-14: one availability rule, whatever the buffer, block or booking layout
    rng = random.Random(20261122)
    agency = make_agency()
    t0 = base_time()
    cars = []
    for n, buffer in enumerate([0, 30, 120, 1440, 45]):
        car = make_vehicle(agency, turnaround_minutes=buffer, daily_price_fils=10000 + n)
        cursor = t0 + timedelta(hours=rng.randint(0, 30))
        for _ in range(4):
            length = timedelta(hours=rng.randint(2, 60))
            occupy(car, cursor, cursor + length)
            cursor += length + timedelta(hours=rng.randint(0, 40))
        cars.append(car)
    checked = 0
    for _ in range(40):
        a = t0 + timedelta(minutes=30 * rng.randint(0, 300))
        b = a + timedelta(minutes=30 * rng.randint(1, 200))
        expected = {c.public_id for c in cars if availability.is_free(c, a, b)}
        assert set(ids(search(client, city="Dubai", limit=50, **period(a, b)))) == expected, (a, b)
        checked += 1
    assert checked == 40


def test_cancelled_booking_frees_the_car(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    car = make_vehicle(make_agency())
    t0 = base_time()
    customer = make_verified_customer()
    booking = book(customer, car, t0 + timedelta(days=1), t0 + timedelta(days=2))
    query = period(t0, t0 + timedelta(days=3))
    assert ids(search(client, city="Dubai", **query)) == []
    from tests.factories import actor_for

    bookings.cancel(actor_for(customer), db.session.get(type(booking), booking.id), reason="plans changed")
    db.session.commit()
    assert ids(search(client, city="Dubai", **query)) == [car.public_id]


# ---- who and what is shown ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [AgencyStatus.SUSPENDED, AgencyStatus.PENDING, AgencyStatus.TERMINATED,
                                    AgencyStatus.REJECTED])
def test_cars_of_agencies_that_are_not_active_are_hidden(app: Flask, client: FlaskClient, app_ctx: None,
                                                         status: str) -> None:
    # enforces P-12 (a suspended agency cannot take bookings), P-14
    shown = make_vehicle(make_agency())
    hidden = make_vehicle(make_agency(status=status))
    assert ids(search(client, city="Dubai")) == [shown.public_id]
    assert client.get(f"/api/v1/vehicles/{hidden.public_id}").status_code == 404


def test_unlisted_maintenance_and_deleted_cars_are_hidden(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    agency = make_agency()
    shown = make_vehicle(agency)
    unlisted = make_vehicle(agency, status=VehicleStatus.UNLISTED)
    maintenance = make_vehicle(agency, status=VehicleStatus.MAINTENANCE)
    deleted = make_vehicle(agency, deleted_at=utcnow())
    t0 = base_time()
    for query in ({}, period(t0, t0 + timedelta(days=1))):
        assert ids(search(client, city="Dubai", **query)) == [shown.public_id]
    for car in (unlisted, maintenance, deleted):
        assert client.get(f"/api/v1/vehicles/{car.public_id}").status_code == 404


def test_category_price_and_city_filters(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    agency = make_agency()
    cheap = make_vehicle(agency, category="economy", daily_price_fils=9000)
    mid = make_vehicle(agency, category="suv", daily_price_fils=20000)
    dear = make_vehicle(agency, category="suv", daily_price_fils=50000)
    sharjah = make_vehicle(agency, category="suv", daily_price_fils=20000, city="Sharjah")
    assert ids(search(client, city="Dubai")) == [cheap.public_id, mid.public_id, dear.public_id]
    assert ids(search(client, city="Dubai", category="suv")) == [mid.public_id, dear.public_id]
    assert ids(search(client, city="Dubai", min_price=9001)) == [mid.public_id, dear.public_id]
    assert ids(search(client, city="Dubai", max_price=20000)) == [cheap.public_id, mid.public_id]
    assert ids(search(client, city="Dubai", min_price=20000, max_price=20000)) == [mid.public_id]
    assert ids(search(client, city="Sharjah")) == [sharjah.public_id]
    assert ids(search(client, city="Dubai", category="van")) == []


def _at(agency: Any, lat: str, lng: str, price: int = 15000) -> Vehicle:
    return vehicle_at(agency, lat, lng, daily_price_fils=price)


def test_radius_and_sort_by_distance(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    agency = make_agency()
    marina = _at(agency, "25.080000", "55.140000", price=30000)     # about 0 km from the search point
    downtown = _at(agency, "25.197000", "55.274000", price=10000)   # about 19 km
    airport = _at(agency, "25.252000", "55.364000", price=20000)    # about 30 km
    al_ain = _at(agency, "24.207500", "55.744700", price=5000)      # about 115 km
    point = {"lat": "25.080000", "lng": "55.140000"}

    body = search(client, sort="distance", radius_km="50", **point).get_json()
    assert [i["id"] for i in body["items"]] == [marina.public_id, downtown.public_id, airport.public_id]
    distances = [i["distance_km"] for i in body["items"]]
    assert distances[0] == 0.0 and distances == sorted(distances)
    assert 18.0 <= distances[1] <= 19.5 and 28.5 <= distances[2] <= 30.5
    assert all(d == round(d, 1) for d in distances)
    # by price within the radius, with distances still given
    assert ids(search(client, radius_km="50", **point)) == [downtown.public_id, airport.public_id, marina.public_id]
    # the radius narrows (default 25 km), 100 km is the most that may be asked
    assert ids(search(client, sort="distance", **point)) == [marina.public_id, downtown.public_id]
    assert ids(search(client, sort="distance", radius_km="5", **point)) == [marina.public_id]
    assert al_ain.public_id not in ids(search(client, sort="distance", radius_km="100", **point))
    assert ids(search(client, sort="distance", radius_km="100", lat="24.3", lng="55.6"))[0] == al_ain.public_id
    assert search(client, radius_km="100.5", **point).status_code == 422
    # city and position together narrow both ways
    assert search(client, city="Sharjah", **point).get_json()["items"] == []


def test_sort_by_price_breaks_ties_by_a_stable_order(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    agency = make_agency()
    cars = [make_vehicle(agency, daily_price_fils=p) for p in (30000, 10000, 20000, 10000, 20000)]
    expected = [c.public_id for c in sorted(cars, key=lambda c: (c.daily_price_fils, c.id))]
    assert ids(search(client, city="Dubai")) == expected
    body = search(client, city="Dubai").get_json()
    assert body["items"][0]["distance_km"] is None and body["items"][0]["agency"]["name"] == agency.business_name


@pytest.mark.parametrize("sort", ["price", "distance"])
def test_cursor_pages_to_the_end_without_duplicates_or_gaps(app: Flask, client: FlaskClient, app_ctx: None,
                                                            sort: str) -> None:
    agency = make_agency()
    rng = random.Random(7)
    cars = [_at(agency, f"25.{rng.randint(0, 99999):05d}0", f"55.{rng.randint(0, 99999):05d}0",
                price=rng.choice([10000, 15000, 20000])) for _ in range(23)]
    occupied = cars[:3]
    t0 = base_time()
    for car in occupied:
        occupy(car, t0, t0 + timedelta(days=1))
    query: dict[str, Any] = {"lat": "25.5", "lng": "55.5", "radius_km": "100", "sort": sort, "limit": 5,
                             **period(t0, t0 + timedelta(hours=6))}
    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        body = search(client, cursor=cursor, **query).get_json()
        seen += [i["id"] for i in body["items"]]
        pages += 1
        cursor = body["page"]["next_cursor"]
        if cursor is None:
            break
        assert len(body["items"]) == 5
    assert pages == 4  # 20 free cars, 5 a page
    assert len(seen) == len(set(seen)) == 20
    assert set(seen) == {c.public_id for c in cars[3:]}
    one_page = ids(search(client, **{**query, "limit": 50}))
    assert seen == one_page  # the same order as a single big page


def test_forged_or_foreign_cursors_are_refused(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # IN-01: a forged cursor is a 422
    agency = make_agency()
    for _ in range(3):
        make_vehicle(agency)
    first = search(client, city="Dubai", limit=1).get_json()
    cursor = first["page"]["next_cursor"]
    assert cursor
    assert search(client, city="Dubai", limit=1, cursor=cursor).status_code == 200
    body, _, signature = cursor.partition(".")
    forged = [
        "garbage", cursor + "x", body + ".0000", body[:-2] + "AA." + signature, "." + signature,
        encode_cursor("agency-vehicles", 1),  # signed, but for another list
    ]
    for bad in forged:
        response = search(client, city="Dubai", limit=1, cursor=bad)
        assert response.status_code == 422, bad
        assert response.get_json()["error"]["details"]["fields"] == {"cursor": ["Invalid cursor."]}
    # a cursor from another search (other filters) is refused too
    response = search(client, city="Dubai", category="suv", limit=1, cursor=cursor)
    assert response.status_code == 422


# ---- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, field", [
    ({"limit": "0"}, "limit"), ({"limit": "51"}, "limit"), ({"limit": str(10**9)}, "limit"),
    ({"limit": "-1"}, "limit"), ({"limit": "ten"}, "limit"), ({"limit": "5.0"}, "limit"),
    ({"category": "spaceship"}, "category"), ({"city": "Atlantis"}, "city"),
    ({"min_price": "true"}, "min_price"), ({"min_price": "500", "max_price": "100"}, "max_price"),
    ({"sort": "distance"}, "sort"), ({"sort": "rating"}, "sort"),
    ({"lat": "25.1"}, "lng"), ({"radius_km": "10"}, "radius_km"),
    ({"lat": "91", "lng": "55", "city": None}, "lat"), ({"lat": "nan", "lng": "55", "city": None}, "lat"),
    ({"lat": "1e1", "lng": "55", "city": None}, "lat"), ({"city": None}, "city"),
    ({"unknown": "1"}, "unknown"),
])
def test_bad_queries_are_422(app: Flask, client: FlaskClient, params: dict[str, Any], field: str) -> None:
    query = {"city": "Dubai", **params}
    response = search(client, **query)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["error"]["details"]["fields"]


def test_period_boundaries(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # CC-02: end <= start is a 422; both ends or neither; times need an offset; searchable = bookable
    make_vehicle(make_agency())
    t0 = base_time()
    cases = [
        (period(t0, t0), "ends_at"), (period(t0, t0 - timedelta(hours=1)), "ends_at"),
        ({"starts_at": iso(t0)}, "ends_at"), ({"ends_at": iso(t0)}, "starts_at"),
        ({"starts_at": "2030-01-01T10:00:00", "ends_at": "2030-01-02T10:00:00"}, "starts_at"),
        (period(utcnow() - timedelta(days=1), utcnow() + timedelta(days=1)), "starts_at"),
        (period(t0, t0 + timedelta(days=31)), "ends_at"),
    ]
    for query, field in cases:
        response = search(client, city="Dubai", **query)
        assert response.status_code == 422, query
        body = response.get_json()["error"]
        assert body["code"] == "validation_error" and field in body["details"]["fields"], (query, body)
    # a time zone offset is honoured (Asia/Dubai is UTC+4)
    local = (t0 + timedelta(hours=4)).replace(tzinfo=None).isoformat() + "+04:00"
    end = (t0 + timedelta(days=1, hours=4)).replace(tzinfo=None).isoformat() + "+04:00"
    assert len(ids(search(client, city="Dubai", starts_at=local, ends_at=end))) == 1


# ---- coordinates are never kept (P-14) -----------------------------------------------------------------------


def test_search_coordinates_are_never_stored_or_logged(app: Flask, client: FlaskClient, app_ctx: None,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # enforces P-14: real-time GPS is used only for the request, never stored
    caplog.set_level(logging.DEBUG, logger="marketplace")
    agency = make_agency()
    vehicle_at(agency, "25.200000", "55.270000")
    audits = db.session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    before = db_snapshot(app)
    lat, lng = "25.1836917", "55.2639471"
    t0 = base_time()
    for sort in ("distance", "price"):
        response = search(client, lat=lat, lng=lng, radius_km="30", sort=sort, **period(t0, t0 + timedelta(days=1)))
        assert response.status_code == 200 and len(response.get_json()["items"]) == 1
    # a refused search and a failing one leave nothing behind either
    assert search(client, lat=lat, lng=lng, radius_km="300").status_code == 422
    assert search(client, lat=lat, lng=lng, cursor="forged").status_code == 422

    after = db_snapshot(app)
    assert after == before  # no row written, changed or removed anywhere
    assert db.session.execute(select(func.count()).select_from(AuditEvent)).scalar_one() == audits
    needles = [re.escape(n) for n in (lat, lng, lat[:7], lng[:7], "25.18369", "55.26394")]
    everything = "\n".join(row for rows in after.values() for row in rows)
    assert not any(re.search(n, everything) for n in needles)

    def logged() -> str:
        return "\n".join(f"{r.name} {r.getMessage()} {getattr(r, 'event', '')} {r.args}" for r in caplog.records
                         if r.name.startswith("marketplace"))

    assert not any(re.search(n, logged()) for n in needles), logged()
    # negative control: the same scan sees coordinates once something does log them
    logging.getLogger("marketplace.fleet").info("search", extra={"event": {"at": f"{lat},{lng}"}})
    assert any(re.search(n, logged()) for n in needles)


# ---- public detail and photos ------------------------------------------------------------------------------


def test_public_detail(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    agency = make_agency(name="Desert Wheels LLC")
    car = make_vehicle(agency, mileage_limit_km_per_day=250, extra_km_fils=75, fuel_policy="same_to_same",
                       pickup_address="Dubai Marina Walk")
    response = client.get(f"/api/v1/vehicles/{car.public_id}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["agency"] == {"name": "Desert Wheels LLC"}
    assert body["rules"] == {"mileage_limit_km_per_day": 250, "extra_km_fils": 75, "fuel_policy": "same_to_same"}
    assert body["location"]["pickup_address"] == "Dubai Marina Walk" and body["photos"] == []
    assert "plate" not in body and "agency_id" not in body  # nothing the public does not need
    assert client.get("/api/v1/vehicles/not-a-car").status_code == 404


def test_public_detail_is_one_query_with_photos_in_order(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # issue 7 item 17: the page ran three queries (car, agency, photos); it is the busiest page after search
    car = make_vehicle(make_agency())
    for position, width in ((2, 1200), (0, 2000), (1, 1600)):
        db.session.add(VehiclePhoto(vehicle_id=car.id, storage_key=f"k{position}", width=width, height=900,
                                    position=position, created_at=utcnow()))
    db.session.commit()
    url = f"/api/v1/vehicles/{car.public_id}"
    with statements() as sent:
        response = client.get(url)
    assert response.status_code == 200
    body = response.get_json()
    assert VehiclePublicOut().validate(body) == {}  # built without marshmallow's dump: still exactly the schema
    assert [p["width"] for p in body["photos"]] == [2000, 1600, 1200]
    assert body["photos"][0]["url"] == f"{url}/photos/{body['photos'][0]['id']}"
    assert len(sent) == 1, sent
