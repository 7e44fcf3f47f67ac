"""Pick-up and return inspections (P-18): mileage, fuel, damage marks and photos recorded at the counter, the
customer's acknowledgement freezing them, the order rules, the agency scope and the customer's own view.

Payments run against localstripe on loopback; a clock moved with time_machine puts the test at the counter."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

from PIL import ExifTags, Image
from sqlalchemy import select

from marketplace.extensions import db
from marketplace.handover import service
from marketplace.handover.models import Inspection, InspectionPhoto
from marketplace.images import metadata_blocks
from marketplace.permissions import Role
from marketplace.vault import service as vault
from marketplace.vault.models import Blob
from marketplace.vault.service import blob_store
from tests.factories import auth_headers, make_agency, make_staff, make_verified_customer
from tests.handover.test_service import Counter, _at, _audit, _booking, _check, _counter, _reveal
from tests.kyc.helpers import photo

DAY = timedelta(days=1)
PICKUP = {
    "mileage_km": 12000,
    "fuel_eighths": 8,
    "damage": [{"area": "front", "severity": "scratch", "note": "small scratch, left of the plate"}],
    "note": "clean inside",
}


def _base(c: Counter) -> str:
    return f"/api/v1/agency/bookings/{c.reference}/inspections"


def _gps_jpeg() -> bytes:
    image = Image.new("RGB", (800, 600), (20, 90, 160))
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Acme"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (25.0, 11.0, 51.3)
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, comment=b"staff phone +971500000000")
    return out.getvalue()


def _upload(client: Any, headers: dict[str, str], c: Counter, kind: str, data: bytes) -> Any:
    return client.post(
        f"{_base(c)}/{kind}/photos",
        headers=headers,
        content_type="multipart/form-data",
        data={"image": (io.BytesIO(data), "IMG_0001.jpg", "image/jpeg")},
    )


def _matched(client: Any, c: Counter) -> dict[str, str]:
    """At the counter: the photo revealed and the identity a match (call inside a time_machine block)."""
    headers = auth_headers(client, c.staff)
    assert _reveal(client, headers, c.reference).status_code == 200
    assert _check(client, headers, c.reference, "match").status_code == 200
    return headers


def _error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]["code"] == code, response.get_json()


def test_pickup_and_return_inspections_with_photos_acknowledgement_and_facts(app, client, app_ctx, stripe_gateway):
    # enforces P-18 (inspections) and P-08 (photos re-encoded without metadata, stored encrypted)
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=15)):
        headers = auth_headers(client, c.staff)
        # no pick-up inspection before the identity is a match
        _error(client.put(f"{_base(c)}/pickup", headers=headers, json=PICKUP), 409, "inspection_not_open")
        headers = _matched(client, c)
        _error(client.put(f"{_base(c)}/return", headers=headers, json=PICKUP), 409, "inspection_not_open")
        _error(_upload(client, headers, c, "pickup", _gps_jpeg()), 409, "inspection_not_recorded")
        recorded = client.put(f"{_base(c)}/pickup", headers=headers, json=PICKUP)
        assert recorded.status_code == 200, recorded.get_json()
        pickup = recorded.get_json()["pickup"]
        assert (pickup["mileage_km"], pickup["fuel_eighths"], pickup["acknowledged_at"]) == (12000, 8, None)
        assert pickup["damage"] == PICKUP["damage"] and recorded.get_json()["return"] is None

        original = _gps_jpeg()
        assert {"EXIF", "GPS", "COM"} <= metadata_blocks(original)
        quota = (vault.stored_bytes(c.customer.user_id), vault.uploads_since(c.customer.user_id, c.starts_at - DAY))
        added = _upload(client, headers, c, "pickup", original)
        assert added.status_code == 201, added.get_json()
        url = added.get_json()["url"]
        served = client.get(url, headers=headers)
        assert served.status_code == 200 and served.mimetype == "image/jpeg"
        assert "no-store" in served.headers["Cache-Control"]
        assert metadata_blocks(served.data) == set() and b"+971500000000" not in served.data
        row = db.session.execute(select(InspectionPhoto)).scalar_one()
        blob = db.session.get(Blob, row.blob_id)
        assert blob is not None and blob.kind == "inspection_photo"
        assert blob.owner == f"agency:{c.agency.public_id}" and blob.user_id == c.customer.user_id
        stored = blob_store().get(blob.storage_key)  # the blob store only holds ciphertext
        assert b"\xff\xd8\xff" not in stored[:64] and served.data[100:164] not in stored
        db.session.expire_all()  # the agency's photo names the customer but is not their upload (KYC quota)
        assert (
            vault.stored_bytes(c.customer.user_id),
            vault.uploads_since(c.customer.user_id, c.starts_at - DAY),
        ) == quota

        acked = client.post(f"{_base(c)}/pickup/acknowledge", headers=headers, json={"name": "  Noura   Test "})
        assert acked.status_code == 200, acked.get_json()
        assert acked.get_json()["pickup"]["acknowledged_name"] == "Noura Test"
        # frozen once acknowledged
        _error(client.put(f"{_base(c)}/pickup", headers=headers, json=PICKUP), 409, "inspection_acknowledged")
        _error(_upload(client, headers, c, "pickup", photo(64, 48)), 409, "inspection_acknowledged")
        _error(
            client.post(f"{_base(c)}/pickup/acknowledge", headers=headers, json={"name": "x"}),
            409,
            "inspection_acknowledged",
        )
        assert client.post(f"/api/v1/agency/bookings/{c.reference}/handover", headers=headers).status_code == 200
        # after the handover the pick-up inspection is closed, the return one open
        _error(client.put(f"{_base(c)}/pickup", headers=headers, json=PICKUP), 409, "inspection_not_open")
    with _at(c.ends_at + timedelta(minutes=45)):
        headers = auth_headers(client, c.staff)
        back = {"mileage_km": 11999, "fuel_eighths": 5, "damage": []}
        _error(client.put(f"{_base(c)}/return", headers=headers, json=back), 422, "mileage_below_pickup")
        back["mileage_km"] = 12640
        assert client.put(f"{_base(c)}/return", headers=headers, json=back).status_code == 200
        assert client.post(f"/api/v1/agency/bookings/{c.reference}/return", headers=headers).status_code == 200
        # at the return: still open until the customer acknowledges it
        back["damage"] = [{"area": "wheels", "severity": "dent"}]
        corrected = client.put(f"{_base(c)}/return", headers=headers, json=back)
        assert corrected.status_code == 200, corrected.get_json()
        assert _upload(client, headers, c, "return", photo(640, 480)).status_code == 201
        assert client.post(f"{_base(c)}/return/acknowledge", headers=headers, json={"name": "N T"}).status_code == 200
        view = client.get(_base(c), headers=headers)
        assert view.status_code == 200
        body = view.get_json()
        assert body["return"]["damage"] == [{"area": "wheels", "severity": "dent", "note": None}]
        assert 45 <= body["late_by_minutes"] <= 47 and body["returned_at"] and body["handed_over_at"]
        assert [len(body[k]["photos"]) for k in ("pickup", "return")] == [1, 1]

    booking = _booking(c.reference)
    facts = service.inspection_facts(booking.id)
    assert facts is not None
    assert (facts["pickup"]["mileage_km"], facts["return"]["mileage_km"], facts["return"]["fuel_eighths"]) == (
        12000,
        12640,
        5,
    )
    assert facts["pickup"]["photo_ids"] == [added.get_json()["id"]]
    assert facts["late_by_minutes"] == body["late_by_minutes"]
    assert service.inspection_photo_bytes(facts["pickup"]["photo_ids"][0]) == served.data
    assert service.rental_period(booking.id) == (facts["handed_over_at"], facts["returned_at"])
    assert service.inspection_facts(booking.id + 999) is None
    # every record, photo, acknowledgement and view is audited
    assert [(r["kind"], r["_subject"]) for r in _audit("inspection:record")] == [
        ("pickup", booking.public_id),
        ("return", booking.public_id),
        ("return", booking.public_id),
    ]
    assert [r["kind"] for r in _audit("inspection:photo")] == ["pickup", "return"]
    assert [r["kind"] for r in _audit("inspection:acknowledge")] == ["pickup", "return"]
    assert len(_audit("inspection:photo_view")) == 1 and len(_audit("inspection:view")) == 1


def test_photo_limit_and_schema_limits(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=10)):
        headers = _matched(client, c)
        for bad in (
            {**PICKUP, "fuel_eighths": 9},
            {**PICKUP, "mileage_km": -1},
            {**PICKUP, "odometer": 1},
            {**PICKUP, "damage": [{"area": "bonnet", "severity": "dent"}]},
            {**PICKUP, "damage": [{"area": "roof", "severity": "dent", "note": "x" * 501}]},
            {**PICKUP, "mileage_km": "12000"},
        ):
            response = client.put(f"{_base(c)}/pickup", headers=headers, json=bad)
            assert response.status_code == 422, (bad, response.get_json())
        assert client.put(f"{_base(c)}/pickup", headers=headers, json=PICKUP).status_code == 200
        for _ in range(12):
            assert _upload(client, headers, c, "pickup", photo(64, 48)).status_code == 201
        _error(_upload(client, headers, c, "pickup", photo(64, 48)), 422, "inspection_photo_limit")
        _error(
            client.post(f"{_base(c)}/pickup/acknowledge", headers=headers, json={"name": "   "}),
            422,
            "validation_error",
        )
        assert client.put(f"{_base(c)}/damage", headers=headers, json=PICKUP).status_code == 404
    assert db.session.execute(select(InspectionPhoto)).scalars().all().__len__() == 12


def test_another_agencys_booking_is_a_404_before_any_input_check(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=10)):
        headers = _matched(client, c)
        assert client.put(f"{_base(c)}/pickup", headers=headers, json=PICKUP).status_code == 200
        photo_id = _upload(client, headers, c, "pickup", photo(64, 48)).get_json()["id"]
        stranger = auth_headers(client, make_staff(Role.AGENCY_MANAGER, agency=make_agency()))
        assert client.put(f"{_base(c)}/pickup", headers=stranger, json={"junk": 1}).status_code == 404
        assert client.put(f"{_base(c)}/pickup", headers=stranger, json=PICKUP).status_code == 404
        assert _upload(client, stranger, c, "pickup", photo(64, 48)).status_code == 404
        assert client.post(f"{_base(c)}/pickup/acknowledge", headers=stranger, json={}).status_code == 404
        assert client.get(_base(c), headers=stranger).status_code == 404
        assert client.get(f"/api/v1/agency/inspection-photos/{photo_id}", headers=stranger).status_code == 404
    assert len(db.session.execute(select(Inspection)).scalars().all()) == 1
    assert _audit("inspection:photo_view") == []


def test_the_customer_sees_the_inspections_of_their_own_booking_only(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=10)):
        headers = _matched(client, c)
        assert client.put(f"{_base(c)}/pickup", headers=headers, json=PICKUP).status_code == 200
        staff_photo = _upload(client, headers, c, "pickup", photo(320, 240)).get_json()
        customer = auth_headers(client, c.customer)
        mine = client.get(f"/api/v1/bookings/{c.reference}/inspections", headers=customer)
        assert mine.status_code == 200, mine.get_json()
        link = mine.get_json()["pickup"]["photos"][0]["url"]
        assert link == f"/api/v1/bookings/{c.reference}/inspection-photos/{staff_photo['id']}"
        served = client.get(link, headers=customer)
        assert served.status_code == 200 and "no-store" in served.headers["Cache-Control"]
        other = auth_headers(client, make_verified_customer())
        assert client.get(f"/api/v1/bookings/{c.reference}/inspections", headers=other).status_code == 404
        assert client.get(link, headers=other).status_code == 404
        # the staff door is not the customer's
        assert client.get(staff_photo["url"], headers=customer).status_code == 403
    assert [r.get("by") for r in _audit("inspection:view")] == ["customer"]
    assert [r.get("by") for r in _audit("inspection:photo_view")] == ["customer"]
