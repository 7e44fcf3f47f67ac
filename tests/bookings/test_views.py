"""Quotes and bookings over HTTP: clearance, accepted texts, prices, changes, cancellation, expiry."""

from __future__ import annotations

from datetime import timedelta

import time_machine
from sqlalchemy import func, select

from marketplace.availability.models import VehicleOccupancy
from marketplace.bookings.models import Booking
from marketplace.extensions import db, utcnow
from marketplace.users.models import Consent
from tests.conftest import drain_jobs
from tests.factories import (
    auth_headers,
    booking_body,
    make_agency,
    make_customer,
    make_vehicle,
    make_verified_customer,
)
from tests.queries import statements


def _count(model) -> int:  # type: ignore[no-untyped-def]
    return int(db.session.execute(select(func.count()).select_from(model)).scalar_one())


def test_quote_breaks_down_the_price(app, client, app_ctx):  # enforces P-15
    vehicle = make_vehicle(make_agency(), daily_price_fils=20000)
    headers = auth_headers(client, make_customer())
    body = booking_body(vehicle, hours=49)  # 49 hours = 3 started days
    body = {k: body[k] for k in ("vehicle_id", "starts_at", "ends_at")}
    response = client.post("/api/v1/bookings/quote", json=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    price = response.get_json()["price"]
    assert price["days"] == 3
    assert price["rental"] == 60000
    assert price["platform_fee"] == 6000
    assert price["vat"] == 3300  # 5% of rental + fee
    assert price["total"] == 69300
    assert price["deposit"] == 100000
    assert response.get_json()["available"] is True


def test_booking_needs_kyc_clearance(app, client, app_ctx):  # enforces P-10
    vehicle = make_vehicle(make_agency())
    headers = auth_headers(client, make_customer())
    response = client.post("/api/v1/bookings", json=booking_body(vehicle), headers=headers)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "kyc_required"
    assert _count(Booking) == 0 and _count(VehicleOccupancy) == 0


def test_licence_must_cover_the_whole_rental(app, client, app_ctx):  # enforces P-10
    vehicle = make_vehicle(make_agency())
    headers = auth_headers(client, make_verified_customer(licence_valid_days=3))
    response = client.post("/api/v1/bookings", json=booking_body(vehicle, start_in_hours=48, hours=72),
                           headers=headers)
    assert response.status_code == 403
    assert "licence_not_valid_for_period" in response.get_json()["error"]["details"]["reasons"]


def test_book_records_terms_and_mandate_as_consents(app, client, app_ctx):  # enforces P-15, P-20
    vehicle = make_vehicle(make_agency())
    headers = auth_headers(client, make_verified_customer())
    response = client.post("/api/v1/bookings", json=booking_body(vehicle), headers=headers)
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    assert data["status"] == "pending_payment"
    assert data["reference"].startswith("CJ-")
    kinds = {c.kind: c for c in db.session.execute(select(Consent)).scalars()}
    assert kinds["rental_terms"].context == f"booking:{data['reference']}"
    assert kinds["mit_mandate"].context == f"booking:{data['reference']}"
    assert data["history"][0]["to_status"] == "pending_payment"


def test_outdated_terms_version_is_refused(app, client, app_ctx):
    vehicle = make_vehicle(make_agency())
    headers = auth_headers(client, make_verified_customer())
    response = client.post("/api/v1/bookings", json=booking_body(vehicle, accept_mit_mandate_version="2001-01-01"),
                           headers=headers)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "consent_version_outdated"
    assert _count(Booking) == 0


def test_overlap_is_refused_and_back_to_back_needs_the_buffer(app, client, app_ctx):  # enforces P-16, CC-02
    vehicle = make_vehicle(make_agency())  # turnaround 120 minutes
    a = auth_headers(client, make_verified_customer())
    b = auth_headers(client, make_verified_customer())
    first = booking_body(vehicle, start_in_hours=48, hours=24)
    assert client.post("/api/v1/bookings", json=first, headers=a).status_code == 201
    overlap = booking_body(vehicle, start_in_hours=60, hours=24)
    response = client.post("/api/v1/bookings", json=overlap, headers=b)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "vehicle_unavailable"
    inside_buffer = booking_body(vehicle, start_in_hours=73, hours=24)  # 1 h after return < 2 h buffer
    assert client.post("/api/v1/bookings", json=inside_buffer, headers=b).status_code == 409
    after_buffer = booking_body(vehicle, start_in_hours=74, hours=24)  # exactly at return + buffer
    assert client.post("/api/v1/bookings", json=after_buffer, headers=b).status_code == 201


def test_bad_periods_are_validation_errors(app, client, app_ctx):  # CC-02
    vehicle = make_vehicle(make_agency())
    headers = auth_headers(client, make_verified_customer())
    body = booking_body(vehicle)
    body["ends_at"] = body["starts_at"]
    response = client.post("/api/v1/bookings", json=body, headers=headers)
    assert response.status_code == 422
    naive = booking_body(vehicle)
    naive["starts_at"] = naive["starts_at"][:19]
    assert client.post("/api/v1/bookings", json=naive, headers=headers).status_code == 422
    too_long = booking_body(vehicle, hours=24 * 31)
    assert client.post("/api/v1/bookings", json=too_long, headers=headers).status_code == 422
    too_soon = booking_body(vehicle, start_in_hours=0.25)
    assert client.post("/api/v1/bookings", json=too_soon, headers=headers).status_code == 422
    assert _count(Booking) == 0


def test_mass_assignment_of_price_is_refused(app, client, app_ctx):  # AZ-08
    vehicle = make_vehicle(make_agency())
    headers = auth_headers(client, make_verified_customer())
    response = client.post("/api/v1/bookings", json=booking_body(vehicle, total=1, status="confirmed"),
                           headers=headers)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "unknown_field"
    assert _count(Booking) == 0


def test_idempotency_key_replays_and_detects_a_changed_body(app, client, app_ctx):  # CC-04
    vehicle = make_vehicle(make_agency())
    headers = {**auth_headers(client, make_verified_customer()), "Idempotency-Key": "booking-attempt-0001"}
    body = booking_body(vehicle)
    first = client.post("/api/v1/bookings", json=body, headers=headers)
    second = client.post("/api/v1/bookings", json=body, headers=headers)
    assert first.status_code == 201 and second.status_code == 200
    assert first.get_json()["reference"] == second.get_json()["reference"]
    changed = client.post("/api/v1/bookings", json=booking_body(vehicle, start_in_hours=200), headers=headers)
    assert changed.status_code == 409
    assert changed.get_json()["error"]["code"] == "idempotency_conflict"
    assert _count(Booking) == 1


def test_unpaid_booking_expires_and_frees_the_car(app, client, app_ctx):  # enforces P-15, CC-03
    from marketplace import jobs

    vehicle = make_vehicle(make_agency())
    a = auth_headers(client, make_verified_customer())
    body = booking_body(vehicle)
    reference = client.post("/api/v1/bookings", json=body, headers=a).get_json()["reference"]
    with time_machine.travel(utcnow() + timedelta(minutes=16), tick=False):
        jobs.sweep()
        drain_jobs(app)
        db.session.expire_all()
        booking = db.session.execute(select(Booking).where(Booking.reference == reference)).scalar_one()
        assert booking.status == "expired"
        assert _count(VehicleOccupancy) == 0
    b = auth_headers(client, make_verified_customer())
    assert client.post("/api/v1/bookings", json=body, headers=b).status_code == 201


def test_cancel_is_free_early_and_costs_a_day_late(app, client, app_ctx):  # enforces P-15
    from marketplace.bookings.states import BookingStatus

    vehicle = make_vehicle(make_agency(), daily_price_fils=10000)
    headers = auth_headers(client, make_verified_customer())
    early = client.post("/api/v1/bookings", json=booking_body(vehicle, start_in_hours=96), headers=headers).get_json()
    late = client.post("/api/v1/bookings", json=booking_body(vehicle, start_in_hours=24 * 10, hours=72),
                       headers=headers).get_json()
    # a confirmed booking (payment arrives in step 4) cancelled inside 48 hours pays one day
    row = db.session.execute(select(Booking).where(Booking.reference == late["reference"])).scalar_one()
    row.status = BookingStatus.CONFIRMED
    row.starts_at = utcnow() + timedelta(hours=30)
    row.ends_at = row.starts_at + timedelta(hours=72)
    db.session.commit()
    response = client.post(f"/api/v1/bookings/{early['reference']}/cancel", json={"reason": "plans changed"},
                           headers=headers)
    assert response.status_code == 200 and response.get_json()["cancellation_fee"] == 0
    response = client.post(f"/api/v1/bookings/{late['reference']}/cancel", json={"reason": "flight cancelled"},
                           headers=headers)
    assert response.status_code == 200
    assert response.get_json()["cancellation_fee"] == 10000 + 1000 + 550
    assert response.get_json()["cancel_reason"] == "flight cancelled"
    assert _count(VehicleOccupancy) == 0
    again = client.post(f"/api/v1/bookings/{late['reference']}/cancel", json={"reason": "x"}, headers=headers)
    assert again.status_code == 409


def test_change_dates_rechecks_and_reprices(app, client, app_ctx):  # enforces P-15
    vehicle = make_vehicle(make_agency(), daily_price_fils=10000)
    a = auth_headers(client, make_verified_customer())
    b = auth_headers(client, make_verified_customer())
    mine = client.post("/api/v1/bookings", json=booking_body(vehicle, start_in_hours=48, hours=24), headers=a)
    other = booking_body(vehicle, start_in_hours=120, hours=24)
    assert client.post("/api/v1/bookings", json=other, headers=b).status_code == 201
    reference = mine.get_json()["reference"]
    longer = booking_body(vehicle, start_in_hours=48, hours=48)
    response = client.patch(f"/api/v1/bookings/{reference}",
                            json={"starts_at": longer["starts_at"], "ends_at": longer["ends_at"]}, headers=a)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["price"]["days"] == 2
    clash = booking_body(vehicle, start_in_hours=110, hours=24)
    response = client.patch(f"/api/v1/bookings/{reference}",
                            json={"starts_at": clash["starts_at"], "ends_at": clash["ends_at"]}, headers=a)
    assert response.status_code == 409
    db.session.expire_all()
    booking = db.session.execute(select(Booking).where(Booking.reference == reference)).scalar_one()
    assert booking.days == 2  # nothing changed by the refused move
    assert _count(VehicleOccupancy) == 2


def test_another_customers_booking_is_not_found(app, client, app_ctx):  # AZ-03
    vehicle = make_vehicle(make_agency())
    a = auth_headers(client, make_verified_customer())
    b = auth_headers(client, make_verified_customer())
    reference = client.post("/api/v1/bookings", json=booking_body(vehicle), headers=a).get_json()["reference"]
    for method, path, body in (("get", f"/api/v1/bookings/{reference}", None),
                               ("post", f"/api/v1/bookings/{reference}/cancel", {"reason": "x"}),
                               ("get", "/api/v1/bookings/CJ-ZZZZ-ZZZZ", None)):
        response = getattr(client, method)(path, json=body, headers=b)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"
    listed = client.get("/api/v1/bookings", headers=b).get_json()
    assert listed["items"] == []


def test_suspended_agency_takes_no_bookings(app, client, app_ctx):  # enforces P-12
    from marketplace.agencies.models import AgencyStatus

    agency = make_agency()
    vehicle = make_vehicle(agency)
    agency.status = AgencyStatus.SUSPENDED
    db.session.commit()
    headers = auth_headers(client, make_verified_customer())
    response = client.post("/api/v1/bookings", json=booking_body(vehicle), headers=headers)
    assert response.status_code == 404


def test_booking_detail_reads_booking_car_and_history_once_each(app, client, app_ctx):
    # issue 7 item 17: the gate's role query and the whole car entity came on top of the page's own reads
    vehicle = make_vehicle(make_agency())
    headers = auth_headers(client, make_verified_customer())
    reference = client.post("/api/v1/bookings", json=booking_body(vehicle), headers=headers).get_json()["reference"]
    with statements() as sent:
        response = client.get(f"/api/v1/bookings/{reference}", headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["vehicle"]["id"] == vehicle.public_id and body["history"][0]["to_status"] == "pending_payment"
    assert len(sent) == 4, sent  # gate (session and user), booking, car, history
