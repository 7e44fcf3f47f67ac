"""Agency app pages: the dashboard (today's pick-ups and returns, Asia/Dubai), bookings with minimised customer
data (P-17), and fleet and availability editing (P-13), each only for the staff member's own agency (AZ-04)."""

from __future__ import annotations

import io
from datetime import date, datetime, time, timedelta
from typing import Any

import time_machine
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select, update

from marketplace.bookings.models import Booking
from marketplace.bookings.service import BUSINESS_TZ
from marketplace.extensions import db
from marketplace.fleet.models import AvailabilityBlock, Vehicle, VehiclePhoto
from marketplace.permissions import Role
from tests.factories import make_agency, make_staff, make_vehicle, make_verified_customer, web_login
from tests.fleet.helpers import base_time, book
from tests.staff_web import db_snapshot, error_code, location, page_csrf


def _dubai(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=BUSINESS_TZ)


def _confirm(booking: Any) -> None:
    db.session.execute(update(Booking).where(Booking.id == booking.id).values(status="confirmed"))
    db.session.commit()


def _text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def test_dashboard_lists_todays_pickups_and_returns(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # the dashboard works on the Asia/Dubai day; only the staff member's own agency shows
    ag1, ag2 = make_agency(name="Ag One LLC"), make_agency(name="Ag Two LLC")
    car1, car2, other = make_vehicle(ag1, model="Corolla"), make_vehicle(ag1, model="Patrol"), make_vehicle(ag2)
    renter_a = make_verified_customer(full_name="Amal Saeed Rahman")
    renter_b = make_verified_customer(full_name="Bilal Yousef Omar")
    stranger = make_verified_customer(full_name="Zaid Other Person")
    day = (datetime.now(BUSINESS_TZ) + timedelta(days=20)).date()
    with time_machine.travel(_dubai(day, 9) - timedelta(days=3), tick=False):
        returning = book(renter_a, car1, _dubai(day, 9) - timedelta(days=2), _dubai(day, 17))
    with time_machine.travel(_dubai(day, 8), tick=True):
        picking_up = book(renter_b, car2, _dubai(day, 12), _dubai(day, 12) + timedelta(days=2))
        elsewhere = book(stranger, other, _dubai(day, 13), _dubai(day, 15))
        tomorrow = book(renter_b, car1, _dubai(day, 20) + timedelta(days=1), _dubai(day, 20) + timedelta(days=2))
        for b in (returning, picking_up):
            _confirm(b)
        staff = make_staff(Role.AGENCY_STAFF, agency=ag1)
        web_login(client, staff, door="agency")
        page = client.get("/agency/")
    assert page.status_code == 200
    html = _text(page)
    pickups = html[html.index('id="pickups"'):html.index('id="returns"')]
    returns = html[html.index('id="returns"'):html.index("Fleet</h2>")]
    assert picking_up.reference in pickups and returning.reference not in pickups
    assert returning.reference in returns and picking_up.reference not in returns
    assert "Bilal Omar" in pickups and "12:00" in pickups  # Dubai wall-clock time
    assert "Amal Rahman" in returns and "17:00" in returns
    assert elsewhere.reference not in html and "Zaid" not in html  # another agency's booking
    assert tomorrow.reference not in html
    for person in (renter_a, renter_b):
        user = person.user()
        assert user.email not in html and user.phone not in html and user.address_line1 not in html
    assert "listed: 2" in html  # the fleet summary


def test_bookings_list_and_detail_show_only_what_the_agency_needs(app: Flask, client: FlaskClient,
                                                                  app_ctx: None) -> None:
    # enforces P-17
    agency = make_agency()
    car = make_vehicle(agency)
    renter = make_verified_customer(full_name="Noor Khalifa Hassan", emergency_contact_name="Reem Hassan",
                                    emergency_contact_phone="+971509998877")
    t0 = base_time(days=5)
    booking = book(renter, car, t0, t0 + timedelta(days=2))
    staff = make_staff(Role.AGENCY_STAFF, agency=agency)
    web_login(client, staff, door="agency")

    listing = client.get("/agency/bookings")
    assert listing.status_code == 200 and booking.reference in _text(listing)
    on_day = client.get(f"/agency/bookings?day={t0.astimezone(BUSINESS_TZ).date().isoformat()}&status=pending_payment")
    assert booking.reference in _text(on_day)
    assert booking.reference not in _text(client.get("/agency/bookings?status=completed"))
    other_day = (t0 + timedelta(days=9)).astimezone(BUSINESS_TZ).date().isoformat()
    assert booking.reference not in _text(client.get(f"/agency/bookings?day={other_day}"))
    assert client.get("/agency/bookings?day=yesterday").status_code == 422
    assert client.get("/agency/bookings?cursor=forged").status_code == 422

    detail = client.get(f"/agency/bookings/{booking.reference}")
    assert detail.status_code == 200
    html = _text(detail)
    assert "Noor Hassan" in html and "DXB-778899" in html and "Reem Hassan" in html and "+971509998877" in html
    assert car.plate in html and booking.pickup_place in html
    user = renter.user()
    for secret in (user.email, user.phone, user.address_line1, "Khalifa", str(booking.total_fils // 100)):
        assert secret not in html, secret


def test_another_agencys_pages_are_not_found(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # AZ-04: another agency's booking or car is a 404, never a 403 (existence is not revealed)
    ag1, ag2 = make_agency(), make_agency()
    car = make_vehicle(ag1)
    t0 = base_time()
    booking = book(make_verified_customer(), car, t0, t0 + timedelta(days=1))
    manager2 = make_staff(Role.AGENCY_MANAGER, agency=ag2)
    web_login(client, manager2, door="agency")
    token = page_csrf(client, "/agency/fleet")
    before = db_snapshot(app)
    answers = [
        client.get(f"/agency/bookings/{booking.reference}"), client.get(f"/agency/fleet/{car.public_id}"),
        client.post(f"/agency/fleet/{car.public_id}", data={"csrf_token": token, "daily_price": "1.00"}),
        client.post(f"/agency/fleet/{car.public_id}/delete", data={"csrf_token": token}),
        client.post(f"/agency/fleet/{car.public_id}/blocks",
                    data={"csrf_token": token, "first_day": "2031-01-01", "last_day": "2031-01-02"}),
    ]
    for answer in answers:
        assert answer.status_code == 404
        assert error_code(answer) == "not_found"
    assert db_snapshot(app) == before
    assert car.plate not in _text(client.get("/agency/fleet"))
    assert booking.reference not in _text(client.get("/agency/bookings"))
    assert booking.reference not in _text(client.get("/agency/"))


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 40, 40)).save(out, "JPEG")
    return out.getvalue()


def test_manager_adds_edits_blocks_and_photographs_a_car(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # enforces P-13 through the agency app
    agency = make_agency()
    manager = make_staff(Role.AGENCY_MANAGER, agency=agency)
    web_login(client, manager, door="agency")
    token = page_csrf(client, "/agency/fleet")
    form = {"csrf_token": token, "make": "Kia", "model": "Picanto", "year": "2024", "category": "mini",
            "plate": "DXB C 34567", "seats": "4", "transmission": "automatic", "fuel_type": "petrol", "city": "Dubai",
            "latitude": "25.1412", "longitude": "55.2230", "pickup_address": "Al Quoz", "daily_price": "99.00",
            "deposit": "500", "mileage_limit_km_per_day": "250", "extra_km_price": "0.50",
            "fuel_policy": "full_to_full", "turnaround_minutes": "", "status": "listed"}
    bad = client.post("/agency/fleet", data={**form, "year": "1950"})
    assert bad.status_code == 422 and "year" in _text(bad) and 'value="Picanto"' in _text(bad)  # form kept
    added = client.post("/agency/fleet", data=form)
    assert added.status_code == 302
    car = db.session.execute(select(Vehicle)).scalar_one()
    assert (car.daily_price_fils, car.deposit_fils, car.extra_km_fils) == (9900, 50000, 50)
    assert car.turnaround_minutes == agency.turnaround_minutes and car.status == "listed"
    page = client.get(location(added))
    assert page.status_code == 200 and "The car was added" in _text(page)

    url = f"/agency/fleet/{car.public_id}"
    saved = client.post(url, data={**form, "daily_price": "120.50", "turnaround_minutes": "60"})
    assert saved.status_code == 302
    db.session.expire_all()
    assert car.daily_price_fils == 12050 and car.turnaround_minutes == 60

    first = (datetime.now(BUSINESS_TZ) + timedelta(days=10)).date()
    block = {"csrf_token": token, "first_day": first.isoformat(), "last_day": (first + timedelta(days=1)).isoformat()}
    assert client.post(f"{url}/blocks", data=block).status_code == 302
    row = db.session.execute(select(AvailabilityBlock)).scalar_one()
    assert row.starts_at == _dubai(first, 0) and row.ends_at == _dubai(first + timedelta(days=2), 0)
    again = client.post(f"{url}/blocks", data={**block, "first_day": (first + timedelta(days=1)).isoformat(),
                                               "last_day": (first + timedelta(days=3)).isoformat()})
    assert again.status_code == 409
    assert 'data-code="vehicle_unavailable"' in _text(again) and "not available" in _text(again)
    backwards = client.post(f"{url}/blocks", data={**block, "last_day": (first - timedelta(days=1)).isoformat()})
    assert backwards.status_code == 422 and 'data-code="validation_error"' in _text(backwards)
    assert client.post(f"{url}/blocks/{row.public_id}/delete", data={"csrf_token": token}).status_code == 302
    assert db.session.execute(select(AvailabilityBlock)).first() is None

    uploaded = client.post(f"{url}/photos", content_type="multipart/form-data",
                           data={"csrf_token": token, "image": (io.BytesIO(_jpeg()), "car.jpg", "image/jpeg")})
    assert uploaded.status_code == 302
    photo = db.session.execute(select(VehiclePhoto)).scalar_one()
    shown = client.get(f"{url}/photos/{photo.public_id}")
    assert shown.status_code == 200 and shown.mimetype == "image/jpeg"
    assert f"/photos/{photo.public_id}" in _text(client.get(url))
    assert client.post(f"{url}/photos/{photo.public_id}/delete", data={"csrf_token": token}).status_code == 302

    removed = client.post(f"{url}/delete", data={"csrf_token": token})
    assert removed.status_code == 302 and location(removed).endswith("/agency/fleet?removed=1")
    assert client.get(url).status_code == 404


def test_desk_staff_see_no_write_forms_and_cannot_post(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    agency = make_agency()
    car = make_vehicle(agency)
    clerk = make_staff(Role.AGENCY_STAFF, agency=agency)
    web_login(client, clerk, door="agency")
    fleet_page = _text(client.get("/agency/fleet"))
    assert car.plate in fleet_page and 'id="add-car"' not in fleet_page
    car_page = _text(client.get(f"/agency/fleet/{car.public_id}"))
    for form_id in ('id="add-block"', 'id="edit-car"', 'enctype="multipart/form-data"'):
        assert form_id not in car_page
    token = page_csrf(client, "/agency/fleet")
    before = db_snapshot(app)
    answers = [client.post("/agency/fleet", data={"csrf_token": token, "make": "X"}),
               client.post(f"/agency/fleet/{car.public_id}/blocks",
                           data={"csrf_token": token, "first_day": "2031-01-01", "last_day": "2031-01-02"})]
    assert [a.status_code for a in answers] == [403, 403]
    assert db_snapshot(app) == before


def test_forms_need_the_csrf_token(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # AN-07: a form POST without the token, or from a foreign origin, changes nothing
    agency = make_agency()
    car = make_vehicle(agency)
    web_login(client, make_staff(Role.AGENCY_MANAGER, agency=agency), door="agency")
    token = page_csrf(client, "/agency/fleet")
    before = db_snapshot(app)
    data = {"first_day": "2031-01-01", "last_day": "2031-01-02"}
    assert client.post(f"/agency/fleet/{car.public_id}/blocks", data=data).status_code == 403
    foreign = client.post(f"/agency/fleet/{car.public_id}/blocks", data={**data, "csrf_token": token},
                          headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert db_snapshot(app) == before


def test_pages_need_an_agency_sign_in(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    for path in ("/agency/", "/agency/bookings", "/agency/fleet"):
        response = client.get(path)
        assert response.status_code == 302 and location(response).endswith("/agency/login")
    # platform staff signed in to the console hold no agency role
    web_login(client, make_staff(Role.KYC_REVIEWER), door="console")
    for path in ("/agency/", "/agency/bookings", "/agency/fleet"):
        answer = client.get(path)
        assert answer.status_code == 403 and error_code(answer) == "forbidden"
