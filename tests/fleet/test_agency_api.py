"""The agency's fleet over the JSON API (P-13): cars, photos, availability blocks, and the agency boundary (AZ-04).

Agency staff reach only their own agencies' objects: another agency's car or booking is a 404, lists and
filters never show it, and paging to the end stays inside the agency.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import ExifTags, Image
from sqlalchemy import select

from marketplace.agencies.models import AgencyStatus
from marketplace.audit import AuditEvent
from marketplace.availability.models import VehicleOccupancy
from marketplace.bookings.models import Booking
from marketplace.extensions import db, utcnow
from marketplace.fleet.models import AvailabilityBlock, Vehicle, VehiclePhoto
from marketplace.fleet.schemas import SearchPageOut
from marketplace.images import metadata_blocks
from marketplace.permissions import Role
from marketplace.vault.service import blob_store
from tests.conftest import is_postgres
from tests.factories import (
    auth_headers,
    make_agency,
    make_customer,
    make_staff,
    make_vehicle,
    make_verified_customer,
)
from tests.fleet.helpers import base_time, book, iso
from tests.staff_web import db_snapshot

API = "/api/v1/agency/vehicles"


def car_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "make": "Nissan", "model": "Patrol", "year": 2024, "category": "suv", "plate": "dxb  b 23456",
        "seats": 7, "transmission": "automatic", "city": "Dubai", "latitude": 25.1412, "longitude": 55.223,
        "pickup_address": "Al Quoz 1, Sheikh Zayed Road", "daily_price_fils": 54900, "deposit_fils": 300000,
        "mileage_limit_km_per_day": 250, "extra_km_fils": 50, "fuel_policy": "full_to_full",
    }
    body.update(overrides)
    return body


@pytest.fixture
def world(app: Flask, client: FlaskClient, app_ctx: None) -> dict[str, Any]:
    """Two agencies, a manager and a desk clerk in the first, a manager in the second."""
    ag1, ag2 = make_agency(name="Ag One LLC"), make_agency(name="Ag Two LLC")
    manager1 = make_staff(Role.AGENCY_MANAGER, agency=ag1)
    clerk1 = make_staff(Role.AGENCY_STAFF, agency=ag1)
    manager2 = make_staff(Role.AGENCY_MANAGER, agency=ag2)
    return {"ag1": ag1, "ag2": ag2, "m1": auth_headers(client, manager1), "clerk1": auth_headers(client, clerk1),
            "m2": auth_headers(client, manager2)}


def _create(client: FlaskClient, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = client.post(API, headers=headers, json=car_body(**overrides))
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


# ---- cars -------------------------------------------------------------------------------------------------


def test_manager_adds_lists_edits_and_removes_a_car(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    # enforces P-13
    h = world["m1"]
    car = _create(client, h)
    assert car["plate"] == "DXB B 23456" and car["status"] == "unlisted" and car["agency"] == world["ag1"].public_id
    assert car["turnaround_minutes"] == world["ag1"].turnaround_minutes  # the agency's default
    assert car["rules"] == {"mileage_limit_km_per_day": 250, "extra_km_fils": 50, "fuel_policy": "full_to_full"}
    assert car["daily_price_fils"] == 54900 and car["currency"] == "AED" and car["photos"] == []
    assert client.get(f"/api/v1/vehicles/{car['id']}").status_code == 404  # unlisted: not public yet

    response = client.patch(f"{API}/{car['id']}", headers=h,
                            json={"status": "listed", "daily_price_fils": 49900, "turnaround_minutes": 60})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "listed" and response.get_json()["turnaround_minutes"] == 60
    public = client.get(f"/api/v1/vehicles/{car['id']}").get_json()
    assert public["daily_price_fils"] == 49900

    assert client.get(f"{API}/{car['id']}", headers=h).get_json()["daily_price_fils"] == 49900
    assert [i["id"] for i in client.get(API, headers=h).get_json()["items"]] == [car["id"]]

    assert client.delete(f"{API}/{car['id']}", headers=h).status_code == 204
    assert client.get(f"{API}/{car['id']}", headers=h).status_code == 404
    assert client.get(f"/api/v1/vehicles/{car['id']}").status_code == 404
    assert client.get(API, headers=h).get_json()["items"] == []
    row = db.session.execute(select(Vehicle).where(Vehicle.public_id == car["id"])).scalar_one()
    assert row.deleted_at is not None  # soft delete: bookings and invoices still point at it
    actions = db.session.execute(select(AuditEvent.action).where(AuditEvent.subject_id == car["id"])).scalars().all()
    assert actions == ["vehicle:create", "vehicle:update", "vehicle:delete"]


def test_desk_staff_can_read_but_not_write(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    car = _create(client, world["m1"])
    h = world["clerk1"]
    assert client.get(f"{API}/{car['id']}", headers=h).status_code == 200
    before = db_snapshot(app)
    refused = [
        client.post(API, headers=h, json=car_body(plate="DXB C 1")),
        client.patch(f"{API}/{car['id']}", headers=h, json={"daily_price_fils": 1}),
        client.delete(f"{API}/{car['id']}", headers=h),
        client.post(f"{API}/{car['id']}/blocks", headers=h,
                    json={"starts_at": iso(base_time()), "ends_at": iso(base_time() + timedelta(days=1))}),
    ]
    assert [r.status_code for r in refused] == [403] * 4
    assert {r.get_json()["error"]["code"] for r in refused} == {"forbidden"}
    assert db_snapshot(app) == before


def test_customers_and_strangers_cannot_reach_the_fleet(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    customer = auth_headers(client, make_customer())
    assert client.get(API, headers=customer).status_code == 403
    assert client.get(API).status_code == 401


def test_only_an_active_agency_can_list_a_car(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # enforces P-12, P-13
    pending = make_agency(status=AgencyStatus.PENDING)
    h = auth_headers(client, make_staff(Role.AGENCY_OWNER, agency=pending))
    response = client.post(API, headers=h, json=car_body(status="listed"))
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "agency_not_active"
    car = _create(client, h)  # it may prepare its fleet, unlisted
    response = client.patch(f"{API}/{car['id']}", headers=h, json={"status": "listed"})
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "agency_not_active"
    assert client.patch(f"{API}/{car['id']}", headers=h, json={"status": "maintenance"}).status_code == 200


@pytest.mark.parametrize("overrides, field", [
    ({"year": 1989}, "year"), ({"year": utcnow().year + 2}, "year"), ({"year": True}, "year"),
    ({"year": 2024.0}, "year"), ({"year": "2024"}, "year"),
    ({"seats": 0}, "seats"), ({"seats": 61}, "seats"),
    ({"category": "hovercraft"}, "category"), ({"transmission": "cvt"}, "transmission"),
    ({"daily_price_fils": 0}, "daily_price_fils"), ({"daily_price_fils": -100}, "daily_price_fils"),
    ({"daily_price_fils": True}, "daily_price_fils"), ({"daily_price_fils": 149.5}, "daily_price_fils"),
    ({"daily_price_fils": "14900"}, "daily_price_fils"), ({"daily_price_fils": None}, "daily_price_fils"),
    ({"deposit_fils": False}, "deposit_fils"), ({"deposit_fils": -1}, "deposit_fils"),
    ({"latitude": 91}, "latitude"), ({"longitude": -180.5}, "longitude"), ({"latitude": "25.1"}, "latitude"),
    ({"latitude": True}, "latitude"),
    ({"plate": "<script>"}, "plate"), ({"plate": "ABCDEFG"}, "plate"), ({"plate": "X" * 21}, "plate"),
    ({"fuel_policy": "empty_to_empty"}, "fuel_policy"), ({"mileage_limit_km_per_day": 0}, "mileage_limit_km_per_day"),
    ({"turnaround_minutes": 1441}, "turnaround_minutes"), ({"turnaround_minutes": -1}, "turnaround_minutes"),
    ({"city": "Gotham"}, "city"), ({"status": "sold"}, "status"), ({"make": ""}, "make"),
    ({"make": "Toyota\x00"}, "make"),
])
def test_invalid_cars_are_refused(app: Flask, client: FlaskClient, world: dict[str, Any],
                                  overrides: dict[str, Any], field: str) -> None:
    # IN-02: strict types; a boolean is never read as 0 or 1
    response = client.post(API, headers=world["m1"], json=car_body(**overrides))
    assert response.status_code == 422, (overrides, response.get_json())
    assert field in response.get_json()["error"]["details"]["fields"]
    assert db.session.execute(select(Vehicle)).first() is None


@pytest.mark.parametrize("field", ["agency_id", "price", "currency", "deleted_at", "id", "owner_id"])
def test_unknown_fields_are_refused(app: Flask, client: FlaskClient, world: dict[str, Any], field: str) -> None:
    # AZ-08: nobody sets what the schema does not name
    response = client.post(API, headers=world["m1"], json=car_body(**{field: 1}))
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "unknown_field"
    car = _create(client, world["m1"])
    response = client.patch(f"{API}/{car['id']}", headers=world["m1"], json={field: 1})
    assert response.get_json()["error"]["code"] == "unknown_field"
    response = client.patch(f"{API}/{car['id']}", headers=world["m1"], json={"agency": world["ag2"].public_id})
    assert response.get_json()["error"]["code"] == "unknown_field"  # a car never moves between agencies


def test_plates_are_unique_on_the_platform(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    _create(client, world["m1"], plate="SHJ 3 1234")
    response = client.post(API, headers=world["m2"], json=car_body(plate="shj-3-1234"))
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "duplicate_plate"


def test_empty_or_null_patches_are_refused(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    car = _create(client, world["m1"])
    assert client.patch(f"{API}/{car['id']}", headers=world["m1"], json={}).status_code == 422
    response = client.patch(f"{API}/{car['id']}", headers=world["m1"], json={"make": None})
    assert response.status_code == 422
    response = client.patch(f"{API}/{car['id']}", headers=world["m1"], json={"mileage_limit_km_per_day": None})
    assert response.status_code == 200 and response.get_json()["rules"]["mileage_limit_km_per_day"] is None


def test_a_car_with_live_bookings_cannot_be_removed(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    vehicle = make_vehicle(world["ag1"])
    t0 = base_time()
    booking = book(make_verified_customer(), vehicle, t0, t0 + timedelta(days=1))
    response = client.delete(f"{API}/{vehicle.public_id}", headers=world["m1"])
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "vehicle_has_bookings"
    db.session.execute(Booking.__table__.update().where(Booking.id == booking.id).values(status="completed"))
    db.session.commit()
    assert client.delete(f"{API}/{vehicle.public_id}", headers=world["m1"]).status_code == 204


def test_list_pages_with_a_cursor(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    made = [make_vehicle(world["ag1"]).public_id for _ in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        url = f"{API}?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url, headers=world["m1"]).get_json()
        seen += [i["id"] for i in body["items"]]
        cursor = body["page"]["next_cursor"]
        if not cursor:
            break
    assert seen == made
    assert client.get(f"{API}?cursor=forged", headers=world["m1"]).status_code == 422
    assert client.get(f"{API}?limit=51", headers=world["m1"]).status_code == 422
    assert client.get(f"{API}?status=listed&city=Sharjah", headers=world["m1"]).get_json()["items"] == []


# ---- AZ-04: the agency boundary -------------------------------------------------------------------------------


def test_other_agencies_cars_and_bookings_are_invisible(app: Flask, client: FlaskClient,
                                                        world: dict[str, Any]) -> None:
    # AZ-04, AZ-03 for agencies; enforces P-29 (agencies see only their own bookings)
    ag1_cars = [make_vehicle(world["ag1"]) for _ in range(4)]
    ag2_cars = [make_vehicle(world["ag2"]) for _ in range(3)]
    t0 = base_time()
    customer = make_verified_customer(full_name="Layla Haddad")
    ag1_booking = book(customer, ag1_cars[0], t0, t0 + timedelta(days=1))
    ag2_booking = book(make_verified_customer(), ag2_cars[0], t0, t0 + timedelta(days=1))
    block = client.post(f"{API}/{ag1_cars[1].public_id}/blocks", headers=world["m1"],
                        json={"starts_at": iso(t0), "ends_at": iso(t0 + timedelta(days=1))}).get_json()
    h = world["m2"]
    ag1_ids = {c.public_id for c in ag1_cars}

    # lists, paged to the end, with and without filters naming agency 1
    seen: list[str] = []
    for query in ("", "?status=listed", f"?agency={world['ag1'].public_id}", "?city=Dubai"):
        cursor, first = None, True
        while first or cursor:
            first = False
            sep = "&" if "?" in query else "?"
            url = API + query + (f"{sep}limit=2&cursor={cursor}" if cursor else f"{sep}limit=2")
            body = client.get(url, headers=h).get_json()
            seen += [i["id"] for i in body["items"]]
            cursor = body["page"]["next_cursor"]
    assert not ag1_ids & set(seen)
    assert set(seen) == {c.public_id for c in ag2_cars}
    assert client.get(f"{API}?agency={world['ag1'].public_id}", headers=h).get_json()["items"] == []

    # by id, every verb: 404, the same answer as for an id that never existed
    missing = client.get(f"{API}/00000000-0000-4000-8000-000000000000", headers=h).get_json()
    before = db_snapshot(app)
    for car in ag1_cars[:2]:
        base = f"{API}/{car.public_id}"
        answers = [
            client.get(base, headers=h), client.patch(base, headers=h, json={"daily_price_fils": 1}),
            client.delete(base, headers=h), client.get(f"{base}/blocks", headers=h),
            client.post(f"{base}/blocks", headers=h,
                        json={"starts_at": iso(t0 + timedelta(days=5)), "ends_at": iso(t0 + timedelta(days=6))}),
            client.delete(f"{base}/blocks/{block['id']}", headers=h),
            client.post(f"{base}/photos", headers=h, content_type="multipart/form-data",
                        data={"image": (io.BytesIO(_jpeg()), "car.jpg", "image/jpeg")}),
        ]
        for answer in answers:
            assert answer.status_code == 404, answer.get_json()
            assert answer.get_json()["error"]["code"] == missing["error"]["code"] == "not_found"
    assert db_snapshot(app) == before

    # bookings: list (with a day filter and paging), detail by reference, and the customer's name
    refs: list[str] = []
    for query in ("", f"?day={(t0 + timedelta(hours=4)).date().isoformat()}", "?status=pending_payment", "?limit=1"):
        body = client.get(f"/api/v1/agency/bookings{query}", headers=h).get_json()
        refs += [b["reference"] for b in body["items"]]
        assert "Layla" not in json.dumps(body)
    assert ag1_booking.reference not in refs and ag2_booking.reference in refs
    response = client.get(f"/api/v1/agency/bookings/{ag1_booking.reference}", headers=h)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/v1/agency/bookings/{ag2_booking.reference}", headers=h).status_code == 200


def test_agency_booking_answers_hold_only_what_the_agency_needs(app: Flask, client: FlaskClient,
                                                               world: dict[str, Any]) -> None:
    # enforces P-17 (AZ-09): name, reference, car and dates, pick-up place, licence, emergency contact; never the
    # customer's e-mail, phone, home address or payment details
    vehicle = make_vehicle(world["ag1"])
    customer = make_verified_customer(full_name="Mariam Khalid Al Suwaidi", emergency_contact_name="Huda Khalid",
                                      emergency_contact_phone="+971501112233")
    user = customer.user()
    t0 = base_time()
    booking = book(customer, vehicle, t0, t0 + timedelta(days=2))
    forbidden_values = [user.email, user.phone, user.address_line1, str(booking.total_fils),
                        booking.terms_version, user.public_id]
    forbidden_keys = {"email", "address", "address_line1", "date_of_birth", "nationality", "payment", "price",
                      "total", "card", "stripe", "customer_id", "selfie", "id_document_number"}
    answers = [client.get("/api/v1/agency/bookings", headers=world["m1"]).get_json()["items"][0],
               client.get(f"/api/v1/agency/bookings/{booking.reference}", headers=world["m1"]).get_json()]
    for body in answers:
        text = json.dumps(body)
        assert body["renter"] == {"first_name": "Mariam", "last_name": "Suwaidi"}
        assert body["emergency_contact"] == {"name": "Huda Khalid", "phone": "+971501112233"}
        assert body["licence"]["number"] == "DXB-778899"
        assert body["reference"] == booking.reference and body["pickup_place"]
        for value in forbidden_values:
            assert value not in text, value
        assert not forbidden_keys & set(_keys(body)), forbidden_keys & set(_keys(body))
        assert set(body) == {"reference", "status", "vehicle", "starts_at", "ends_at", "pickup_place",
                             "dropoff_place", "renter", "licence", "emergency_contact", "flagged", "flag_reason"}


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for key, inner in value.items() for k in [key, *_keys(inner)]]
    if isinstance(value, list):
        return [k for inner in value for k in _keys(inner)]
    return []


# ---- photos ----------------------------------------------------------------------------------------------


def _jpeg(width: int = 800, height: int = 600, gps: bool = False) -> bytes:
    image = Image.new("RGB", (width, height), (20, 90, 160))
    out = io.BytesIO()
    if gps:
        exif = Image.Exif()
        exif[ExifTags.Base.Make] = "Acme"
        info = exif.get_ifd(ExifTags.IFD.GPSInfo)
        info[ExifTags.GPS.GPSLatitudeRef] = "N"
        info[ExifTags.GPS.GPSLatitude] = (25.0, 11.0, 51.3)
        image.save(out, "JPEG", exif=exif, comment=b"owner phone +971500000000")
    else:
        image.save(out, "JPEG")
    return out.getvalue()


def _upload(client: FlaskClient, headers: dict[str, str], car_id: str, data: bytes,
            content_type: str = "image/jpeg") -> Any:
    return client.post(f"{API}/{car_id}/photos", headers=headers, content_type="multipart/form-data",
                       data={"image": (io.BytesIO(data), "IMG_0001.jpg", content_type)})


def test_photos_are_stripped_public_and_removable(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    # enforces P-13 (photos), P-08 style metadata stripping (UP-04) for listing pictures
    car = _create(client, world["m1"], status="listed")
    original = _jpeg(gps=True)
    assert {"EXIF", "GPS", "COM"} <= metadata_blocks(original)
    response = _upload(client, world["m1"], car["id"], original)
    assert response.status_code == 201, response.get_json()
    photo = response.get_json()
    assert (photo["width"], photo["height"]) == (800, 600)

    public = client.get(photo["url"])
    assert public.status_code == 200 and public.mimetype == "image/jpeg"
    assert metadata_blocks(public.data) == set()
    assert b"+971500000000" not in public.data
    assert public.headers["Cache-Control"] == "public, max-age=86400"
    assert public.headers["X-Content-Type-Options"] == "nosniff"
    detail = client.get(f"/api/v1/vehicles/{car['id']}").get_json()
    assert [p["url"] for p in detail["photos"]] == [photo["url"]]
    page = client.get("/api/v1/vehicles?city=Dubai").get_json()
    assert SearchPageOut().validate(page) == {}
    assert page["items"][0]["photo_url"] == photo["url"]

    key = db.session.execute(select(VehiclePhoto.storage_key)).scalar_one()
    stored = blob_store().get(key)  # P-08: the blob store only ever holds ciphertext, listing photos included
    assert b"\xff\xd8\xff" not in stored[:64] and public.data[100:164] not in stored
    response = client.delete(f"{API}/{car['id']}/photos/{photo['id']}", headers=world["m1"])
    assert response.status_code == 204
    assert client.get(photo["url"]).status_code == 404
    assert not blob_store().exists(key)  # the file goes once the removal is committed


def test_photos_of_unlisted_cars_are_not_public(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    car = _create(client, world["m1"])
    photo = _upload(client, world["m1"], car["id"], _jpeg()).get_json()
    assert client.get(photo["url"]).status_code == 404
    other = make_vehicle(world["ag1"])
    wrong_car = f"/api/v1/vehicles/{other.public_id}/photos/{photo['id']}"
    assert client.get(wrong_car).status_code == 404


@pytest.mark.parametrize("case", [
    (b"GIF89a" + b"\x00" * 64, "image/gif", 415),
    (b"not an image at all", "image/jpeg", 422),
    (b"", "image/jpeg", 422),
])
def test_bad_uploads_are_refused(app: Flask, client: FlaskClient, world: dict[str, Any],
                                 case: tuple[bytes, str, int]) -> None:
    # UP-02, UP-05
    data, content_type, status = case
    car = _create(client, world["m1"])
    before = db_snapshot(app)
    response = _upload(client, world["m1"], car["id"], data, content_type)
    assert response.status_code == status, response.get_json()
    assert db_snapshot(app) == before
    json_body = client.post(f"{API}/{car['id']}/photos", headers=world["m1"], json={"image": "x"})
    assert json_body.status_code == 415


# ---- availability blocks ---------------------------------------------------------------------------------


def test_blocks_take_a_car_off_the_market(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    vehicle = make_vehicle(world["ag1"])
    h = world["m1"]
    t0 = base_time()
    url = f"{API}/{vehicle.public_id}/blocks"
    response = client.post(url, headers=h, json={"starts_at": iso(t0 + timedelta(days=1)),
                                                 "ends_at": iso(t0 + timedelta(days=3)), "reason": "service"})
    assert response.status_code == 201, response.get_json()
    block = response.get_json()
    assert block["reason"] == "service"
    search = f"/api/v1/vehicles?city=Dubai&starts_at={iso(t0)}&ends_at={iso(t0 + timedelta(days=2))}"
    assert client.get(search).get_json()["items"] == []
    assert [b["id"] for b in client.get(url, headers=h).get_json()["items"]] == [block["id"]]

    # overlapping another block: 409; adjacent: fine
    overlapping = client.post(url, headers=h, json={"starts_at": iso(t0 + timedelta(days=2)),
                                                    "ends_at": iso(t0 + timedelta(days=4))})
    assert overlapping.status_code == 409 and overlapping.get_json()["error"]["code"] == "vehicle_unavailable"
    adjacent = client.post(url, headers=h, json={"starts_at": iso(t0 + timedelta(days=3)),
                                                 "ends_at": iso(t0 + timedelta(days=4))})
    assert adjacent.status_code == 201

    assert client.delete(f"{url}/{block['id']}", headers=h).status_code == 204
    assert client.delete(f"{url}/{block['id']}", headers=h).status_code == 404
    assert [i["id"] for i in client.get(search).get_json()["items"]] == [vehicle.public_id]
    assert db.session.execute(select(AvailabilityBlock)).scalars().all()[0].public_id == adjacent.get_json()["id"]
    assert len(db.session.execute(select(VehicleOccupancy)).all()) == 1


def test_a_block_over_a_booking_is_refused(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    # enforces P-16: blocks and bookings share one calendar
    vehicle = make_vehicle(world["ag1"], turnaround_minutes=120)
    t0 = base_time()
    book(make_verified_customer(), vehicle, t0, t0 + timedelta(days=1))
    url = f"{API}/{vehicle.public_id}/blocks"
    inside_buffer = client.post(url, headers=world["m1"], json={"starts_at": iso(t0 + timedelta(days=1, hours=1)),
                                                                "ends_at": iso(t0 + timedelta(days=2))})
    assert inside_buffer.status_code == 409 and inside_buffer.get_json()["error"]["code"] == "vehicle_unavailable"
    after_buffer = client.post(url, headers=world["m1"], json={"starts_at": iso(t0 + timedelta(days=1, hours=2)),
                                                               "ends_at": iso(t0 + timedelta(days=2))})
    assert after_buffer.status_code == 201


@pytest.mark.parametrize("offsets, field", [
    ((timedelta(days=2), timedelta(days=1)), "ends_at"),
    ((timedelta(days=1), timedelta(days=1)), "ends_at"),
    ((timedelta(days=1), timedelta(days=92)), "ends_at"),
    ((timedelta(days=-9), timedelta(days=-8)), "ends_at"),
])
def test_bad_block_periods_are_422(app: Flask, client: FlaskClient, world: dict[str, Any],
                                   offsets: tuple[timedelta, timedelta], field: str) -> None:
    # CC-02: end <= start is a 422; at most 90 days; not in the past
    vehicle = make_vehicle(world["ag1"])
    t0 = base_time()
    response = client.post(f"{API}/{vehicle.public_id}/blocks", headers=world["m1"],
                           json={"starts_at": iso(t0 + offsets[0]), "ends_at": iso(t0 + offsets[1])})
    assert response.status_code == 422
    assert field in response.get_json()["error"]["details"]["fields"]
    naive = client.post(f"{API}/{vehicle.public_id}/blocks", headers=world["m1"],
                        json={"starts_at": "2030-01-01T10:00:00", "ends_at": "2030-01-02T10:00:00"})
    assert naive.status_code == 422


def test_exactly_ninety_days_is_allowed(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    vehicle = make_vehicle(world["ag1"])
    t0 = base_time()
    response = client.post(f"{API}/{vehicle.public_id}/blocks", headers=world["m1"],
                           json={"starts_at": iso(t0), "ends_at": iso(t0 + timedelta(days=90))})
    assert response.status_code == 201


@pytest.mark.postgres_only
def test_a_block_racing_a_booking_one_wins(app: Flask, world: dict[str, Any]) -> None:
    # enforces P-16 (CC-01 for blocks): the database decides; the loser gets 409, never a 500
    if not is_postgres(app):
        pytest.skip("concurrency runs on PostgreSQL only (TESTING.md CC-06): SQLite cannot show the race")
    vehicle = make_vehicle(world["ag1"])
    manager = make_staff(Role.AGENCY_MANAGER, agency=world["ag1"])
    customers = [make_verified_customer() for _ in range(10)]
    db.session.commit()
    t0 = base_time()
    rounds = 10
    block_headers = auth_headers(app.test_client(), manager)  # once: each staff sign-in spends a TOTP step
    outcomes: list[list[tuple[str, int]]] = []
    for n in range(rounds):
        start = t0 + timedelta(days=3 * n)
        barrier = threading.Barrier(2)
        results: list[tuple[str, int]] = []

        def run(kind: str, body: dict[str, Any], headers: dict[str, str], path: str, *,
                barrier: threading.Barrier = barrier, results: list[tuple[str, int]] = results) -> None:
            with app.test_client() as c:
                barrier.wait()
                results.append((kind, c.post(path, headers=headers, json=body).status_code))

        book_headers = auth_headers(app.test_client(), customers[n])
        from tests.factories import booking_body

        booking = booking_body(vehicle, start_in_hours=0)
        booking.update(starts_at=iso(start), ends_at=iso(start + timedelta(days=1)))
        threads = [
            threading.Thread(target=run, args=("block", {"starts_at": iso(start + timedelta(hours=6)),
                                                         "ends_at": iso(start + timedelta(days=2))},
                                               block_headers, f"{API}/{vehicle.public_id}/blocks")),
            threading.Thread(target=run, args=("booking", booking, book_headers, "/api/v1/bookings")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        outcomes.append(sorted(results))
    for result in outcomes:
        codes = sorted(code for _, code in result)
        assert codes == [201, 409], outcomes
    db.session.expire_all()
    rows = db.session.execute(select(VehicleOccupancy).where(VehicleOccupancy.vehicle_id == vehicle.id)).scalars().all()
    assert len(rows) == rounds
    spans = sorted((r.starts_at, r.ends_at) for r in rows)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # no overlap anywhere
