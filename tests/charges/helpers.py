"""A returned rental to raise charges on: booked, paid (deposit held), handed over and returned through the
API, with the clock moved by time-machine; and the requests the agency and the customer send."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import time_machine
from PIL import Image
from sqlalchemy import select

from marketplace.bookings.models import Booking
from marketplace.charges.models import Charge
from marketplace.extensions import db
from marketplace.permissions import Role
from tests.factories import (
    Person,
    auth_headers,
    book,
    make_agency,
    make_staff,
    make_vehicle,
    make_verified_customer,
    pay,
    save_card,
)
from tests.kyc.helpers import photo

SELFIE = photo(600, 800, colour=(200, 200, 200))


@dataclass
class Rental:
    agency: Any
    customer: Person
    customer_headers: dict[str, str]
    card: str
    manager: Person
    reference: str
    booking_id: int
    handed_over_at: datetime
    returned_at: datetime


def at(when: datetime) -> Any:
    return time_machine.travel(when, tick=True)


def evidence_jpeg(colour: tuple[int, int, int] = (180, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "JPEG")
    return out.getvalue()


def returned_rental(client: Any, server: Any, *, deposit: int = 100000, hours: int = 48,
                    late_minutes: int = 0, card_number: str = "4242424242424242") -> Rental:
    """Booked three hours ahead and paid (deposit held), handed over at pick-up, returned at the end (plus
    ``late_minutes``). The clock is back at the real now afterwards; the rental lies in the future."""
    agency = make_agency()
    vehicle = make_vehicle(agency, daily_price_fils=20000, deposit_fils=deposit)
    customer = make_verified_customer(selfie=SELFIE)
    headers = auth_headers(client, customer)
    card = save_card(client, headers, server, card_number)
    reference = book(client, headers, vehicle, start_in_hours=3, hours=hours)
    paid = pay(client, headers, reference, card)
    assert paid.status_code == 200, paid.get_json()
    booking = booking_by_reference(reference)
    manager = make_staff(Role.AGENCY_MANAGER, agency=agency)
    base = f"/api/v1/agency/bookings/{reference}"
    with at(booking.starts_at):
        staff = auth_headers(client, manager)
        assert client.post(f"{base}/handover/reveal", headers=staff).status_code == 200
        assert client.post(f"{base}/handover/check", headers=staff, json={"outcome": "match"}).status_code == 200
        handed = client.post(f"{base}/handover", headers=staff)
        assert handed.status_code == 200, handed.get_json()
    with at(booking.ends_at + timedelta(minutes=late_minutes)):
        staff = auth_headers(client, manager)
        returned = client.post(f"{base}/return", headers=staff)
        assert returned.status_code == 200, returned.get_json()
    body = returned.get_json()
    return Rental(agency, customer, headers, card, manager, reference, booking.id,
                  datetime.fromisoformat(handed.get_json()["handed_over_at"]),
                  datetime.fromisoformat(body["returned_at"]))


def booking_by_reference(reference: str) -> Booking:
    db.session.expire_all()
    return db.session.execute(select(Booking).where(Booking.reference == reference)).scalar_one()


def charge_row(public_id: str) -> Charge:
    db.session.rollback()  # a fresh read: jobs wrote in their own sessions
    return db.session.execute(select(Charge).where(Charge.public_id == public_id)).scalar_one()


def raise_charge(client: Any, headers: dict[str, str], reference: str, *, kind: str = "fuel", amount: int = 15750,
                 incurred_at: datetime, description: str = "Returned with a quarter tank (pick-up: full)",
                 files: int = 1) -> Any:
    data: dict[str, Any] = {"kind": kind, "amount": str(amount), "description": description,
                            "incurred_at": incurred_at.isoformat()}
    names = ["evidence", *(f"evidence_{n}" for n in range(2, files + 1))][:files]
    for n, name in enumerate(names):
        data[name] = (io.BytesIO(evidence_jpeg((40 * n % 255, 90, 120))), f"evidence{n}.jpg", "image/jpeg")
    return client.post(f"/api/v1/agency/bookings/{reference}/charges", headers=headers, data=data,
                       content_type="multipart/form-data")
