"""Every agency route, walked as staff of another agency and as a customer: nothing comes back.

The walk is driven by ``app.url_map``, so a new agency route is covered the day it is added. Object
ids in paths are agency 1's real ids; the caller is agency 2's manager (MFA passed), a customer, or
nobody. Agency 1's rows must be unchanged afterwards, and no response may carry their identifiers.
Then agency 1's own responses are scanned for customer data the agency must never see (P-17).
"""

from __future__ import annotations

import io
import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from marketplace.bookings.models import Booking
from marketplace.charges.models import Charge
from marketplace.extensions import db
from marketplace.fleet.models import AvailabilityBlock, Vehicle, VehiclePhoto
from marketplace.permissions import Role
from marketplace.users.models import RoleAssignment
from tests.factories import (
    auth_headers,
    booking_body,
    csrf_from,
    make_agency,
    make_invoice,
    make_staff,
    make_vehicle,
    make_verified_customer,
    web_login,
)
from tests.kyc.helpers import photo

PARAM = re.compile(r"<(?:\w+:)?(\w+)>")


class World:
    """Agency 1 with a car, a photo, a block, a staff member and a customer's booking; agency 2 beside it."""

    def __init__(self, client: FlaskClient) -> None:
        self.ag1 = make_agency(name="First Rentals LLC")
        self.ag2 = make_agency(name="Second Rentals LLC")
        self.manager1 = make_staff(Role.AGENCY_MANAGER, agency=self.ag1)
        self.desk1 = make_staff(Role.AGENCY_STAFF, agency=self.ag1)
        self.manager2 = make_staff(Role.AGENCY_MANAGER, agency=self.ag2)
        self.vehicle1 = make_vehicle(self.ag1, make="Lexus", model="ES")
        self.vehicle2 = make_vehicle(self.ag2)
        self.customer = make_verified_customer(full_name="Noura Khalifa Al Mazrouei",
                                               emergency_contact_name="Hamad Al Mazrouei",
                                               emergency_contact_phone="+971509990001")
        h1 = auth_headers(client, self.manager1)
        added = client.post(f"/api/v1/agency/vehicles/{self.vehicle1.public_id}/photos", headers=h1,
                            data={"image": (io.BytesIO(photo(800, 600)), "car.jpg", "image/jpeg")},
                            content_type="multipart/form-data")
        assert added.status_code == 201, added.get_json()
        self.photo1 = db.session.execute(select(VehiclePhoto.public_id)).scalar_one()
        body = booking_body(self.vehicle1, start_in_hours=24 * 20, hours=48)
        block = client.post(f"/api/v1/agency/vehicles/{self.vehicle1.public_id}/blocks", headers=h1,
                            json={"starts_at": body["starts_at"], "ends_at": body["ends_at"], "reason": "service"})
        assert block.status_code == 201, block.get_json()
        self.block1 = db.session.execute(select(AvailabilityBlock.public_id)).scalar_one()
        booked = client.post("/api/v1/bookings", json=booking_body(self.vehicle1),
                             headers=auth_headers(client, self.customer))
        assert booked.status_code == 201, booked.get_json()
        self.reference = booked.get_json()["reference"]
        booking = db.session.execute(select(Booking).where(Booking.reference == self.reference)).scalar_one()
        # agency 1's tax invoice to the customer for the rental (P-23): its number is one of agency 1's ids
        self.invoice1 = make_invoice(self.ag1, self.customer.user(), nets=(30000,), booking=booking).number
        self.charge1, self.evidence1 = _charge(client, h1, booking)
        self.params = {"vehicle_id": self.vehicle1.public_id, "photo_id": self.photo1, "block_id": self.block1,
                       "reference": self.reference, "user_id": self.desk1.public_id, "number": self.invoice1,
                       "token": "img_not-a-real-grant",  # a handover photo link (its grant is checked too)
                       "charge_id": self.charge1, "evidence_id": self.evidence1,  # a post-rental charge (P-21)
                       "kind": "pickup"}  # an inspection (another agency's: 404 before its body is read)
        user = self.customer.user()
        self.customer_private = [v for v in (user.email, user.phone, user.address_line1) if v]

    def ag1_identifiers(self) -> list[str]:
        return [self.vehicle1.public_id, self.photo1, self.block1, self.reference, self.desk1.public_id,
                self.ag1.public_id, self.invoice1, self.charge1, self.evidence1, "First Rentals", "Lexus", "Noura"]

    def ag1_state(self) -> Any:
        db.session.expire_all()
        vehicle = db.session.get(Vehicle, self.vehicle1.id)
        assert vehicle is not None
        booking = db.session.execute(select(Booking).where(Booking.reference == self.reference)).scalar_one()
        return (
            (vehicle.status, vehicle.daily_price_fils, vehicle.deleted_at, vehicle.make),
            sorted(db.session.execute(select(AvailabilityBlock.public_id)).scalars()),
            sorted(db.session.execute(select(VehiclePhoto.public_id)).scalars()),
            (booking.status, booking.starts_at, booking.cancelled_at),
            sorted((c.public_id, c.status, c.amount_fils) for c in db.session.execute(select(Charge)).scalars()),
            sorted((r.user_id, r.role) for r in db.session.execute(
                select(RoleAssignment).where(RoleAssignment.agency_id == self.ag1.id)).scalars()),
        )


def _charge(client: FlaskClient, headers: dict[str, str], booking: Booking) -> tuple[str, str]:
    """A post-rental charge of agency 1 on the booking, as if the car had been handed over and returned."""

    from marketplace.extensions import utcnow
    from marketplace.handover.models import Handover

    db.session.add(Handover(booking_id=booking.id, agency_id=booking.agency_id, stage="returned", reveals=1,
                            handed_over_at=utcnow() - timedelta(hours=3), returned_at=utcnow() - timedelta(hours=1)))
    db.session.commit()
    raised = client.post(f"/api/v1/agency/bookings/{booking.reference}/charges", headers=headers,
                         content_type="multipart/form-data", data=_charge_form())
    assert raised.status_code == 201, raised.get_json()
    body = raised.get_json()
    return body["id"], body["evidence"][0]["id"]


def _charge_form() -> dict[str, Any]:
    from marketplace.extensions import utcnow

    return {"kind": "fuel", "amount": "15750", "description": "A quarter tank",
            "incurred_at": (utcnow().replace(microsecond=0)).isoformat(),
            "evidence": (io.BytesIO(photo(64, 48)), "fuel.jpg", "image/jpeg")}


def _routes(app: Flask, prefix: str) -> list[tuple[str, str]]:
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(prefix):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, rule.rule))
    return sorted(found)


def _fill(rule: str, params: dict[str, str]) -> str:
    return PARAM.sub(lambda m: params[m.group(1)], rule)


def _api_call(client: FlaskClient, method: str, path: str, headers: dict[str, str]) -> Any:
    if method in ("POST", "PATCH", "PUT") and ("/photos" in path or "/documents" in path):
        # a valid body for each upload route (a photo takes no ``kind``: that would be an unknown field)
        form: dict[str, Any] = {"kind": "trade_licence"} if "/documents" in path else {}
        return client.open(path, method=method, headers=headers, content_type="multipart/form-data",
                           data={**form, "image": (io.BytesIO(photo(64, 48)), "x.jpg", "image/jpeg")})
    if method == "POST" and path.endswith("/charges"):  # a valid charge: only the scope check can stop it
        return client.open(path, method=method, headers=headers, content_type="multipart/form-data",
                           data=_charge_form())
    if path.endswith(("/cancel", "/withdraw")):
        body: dict[str, Any] = {"reason": "walk"}
    elif path.endswith("/handover/check"):
        body = {"outcome": "match"}  # a valid outcome: only the scope check can stop it
    elif path.endswith("/blocks"):
        body = {"starts_at": "2031-01-01T10:00:00+04:00", "ends_at": "2031-01-03T10:00:00+04:00"}
    elif "/vehicles/" in path:
        body = {"daily_price_fils": 100}  # a valid change: only the scope check can stop it
    else:
        body = {}
    if method in ("POST", "PATCH", "PUT"):
        return client.open(path, method=method, headers=headers, json=body)
    return client.open(path, method=method, headers=headers)


def test_agency_api_as_another_agency_leaks_and_changes_nothing(app, client, app_ctx):  # AZ-01, AZ-04
    world = World(client)
    before = world.ag1_state()
    headers = auth_headers(client, world.manager2)
    walked = 0
    for method, rule in _routes(app, "/api/v1/agency"):
        has_params = bool(PARAM.search(rule))
        if not has_params and method != "GET":
            continue  # creating things in one's own agency is allowed; it touches no other agency
        response = _api_call(client, method, _fill(rule, world.params), headers)
        walked += 1
        text = response.get_data(as_text=True)
        if has_params:
            assert response.status_code in (403, 404), (method, rule, response.status_code, text[:300])
        else:
            assert response.status_code == 200, (method, rule, text[:300])
        leaked = [i for i in world.ag1_identifiers() if i in text]
        assert not leaked, (method, rule, leaked)
    assert walked >= 15
    assert world.ag1_state() == before


def test_agency_api_as_a_customer_and_as_nobody(app, client, app_ctx):  # AZ-01, AZ-07
    world = World(client)
    before = world.ag1_state()
    customer = auth_headers(client, world.customer)
    for method, rule in _routes(app, "/api/v1/agency"):
        path = _fill(rule, world.params)
        as_customer = _api_call(client, method, path, customer)
        assert as_customer.status_code == 403, (method, rule, as_customer.status_code)
        assert as_customer.get_json()["error"]["code"] == "forbidden"
        as_nobody = _api_call(client, method, path, {})
        assert as_nobody.status_code == 401, (method, rule, as_nobody.status_code)
    assert world.ag1_state() == before


def test_agency_pages_as_another_agency(app, client, app_ctx):  # AZ-04: the web front door is scoped too
    world = World(client)
    before = world.ag1_state()
    web_login(client, world.manager2, "agency")
    home = client.get("/agency/")
    assert home.status_code == 200
    csrf = csrf_from(home.get_data(as_text=True))
    public = {"/agency/login", "/agency/logout", "/agency/mfa", "/agency/invitations/accept"}
    for method, rule in _routes(app, "/agency"):
        if rule in public:
            continue
        path = _fill(rule, world.params)
        response = client.get(path) if method == "GET" else client.post(path, data={"csrf_token": csrf})
        text = response.get_data(as_text=True)
        if PARAM.search(rule):
            assert response.status_code in (403, 404), (method, rule, response.status_code)
        else:
            assert response.status_code in (200, 302, 303, 400, 403, 422), (method, rule, response.status_code)
        leaked = [i for i in world.ag1_identifiers() if i in text]
        assert not leaked, (method, rule, leaked)
    assert world.ag1_state() == before


@pytest.mark.parametrize("door", ["api", "web"])
def test_agency_sees_no_customer_contact_address_or_payment_data(app, client, app_ctx, door):  # enforces P-17
    world = World(client)
    forbidden_keys = re.compile(r'"(email|phone|address\w*|payment\w*|card\w*|stripe\w*|date_of_birth)"')
    if door == "api":
        headers = auth_headers(client, world.manager1)
        for method, rule in _routes(app, "/api/v1/agency"):
            counter_photos = ("/handover-photos/<string:token>", "/inspection-photos/<string:photo_id>")
            if method != "GET" or rule.endswith(counter_photos):
                continue  # handover and inspection photos exist only at the counter (tests/handover walks them)
            if rule.endswith("/evidence/<string:evidence_id>"):
                continue  # a charge's evidence image (tests/charges and tests/agency_app fetch it)
            response = client.get(_fill(rule, world.params), headers=headers)
            assert response.status_code == 200, (rule, response.get_data()[:300])
            if response.mimetype.startswith("image/"):
                continue  # an evidence image: pixels, no keys
            text = response.get_data(as_text=True)
            assert not [v for v in world.customer_private if v in text], rule
            if "/bookings" in rule:  # booking views name the renter; they carry no contact or payment keys
                without_emergency = re.sub(r'"emergency_contact":\{[^}]*\}', "", text)
                assert not forbidden_keys.search(without_emergency), (rule, forbidden_keys.search(without_emergency))
        detail = client.get(f"/api/v1/agency/bookings/{world.reference}", headers=headers).get_json()
        assert detail["renter"] == {"first_name": "Noura", "last_name": "Mazrouei"}
        assert detail["emergency_contact"]["phone"] == "+971509990001"
        assert detail["licence"]["number"] == "DXB-778899"
    else:
        web_login(client, world.manager1, "agency")
        for path in ("/agency/", "/agency/bookings", f"/agency/bookings/{world.reference}", "/agency/invoices",
                     "/agency/charges", f"/agency/charges/{world.charge1}"):
            page = client.get(path)
            assert page.status_code == 200, path
            text = page.get_data(as_text=True)
            assert not [v for v in world.customer_private if v in text], path
