"""Demo-like data for the HTTP benches: agencies, listed cars with photos, customers, bookings, sign-ins.

Rows go in through the real models (customers through ``tests/factories.py``, so a change to what a cleared
customer needs reaches the benches too); bookings are built like ``bookings.service.create_booking`` builds
them (two consents, the occupancy row, a history event) without its per-request checks. Everything runs in
an app context of the scratch app.
"""

from __future__ import annotations

import random
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from webload import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.factories

CITIES = ["Dubai", "Dubai", "Dubai", "Abu Dhabi", "Abu Dhabi", "Sharjah", "Al Ain", "Ajman", "Ras Al Khaimah"]
MAKES = [("Toyota", "Corolla"), ("Nissan", "Patrol"), ("Kia", "Sportage"), ("Hyundai", "Elantra"),
         ("Mercedes-Benz", "C 200"), ("Mitsubishi", "Pajero"), ("Lexus", "ES 350"), ("Ford", "Mustang")]
CATEGORIES = ["economy", "compact", "sedan", "suv", "luxury", "sports"]


@dataclass
class Fleet:
    vehicle_ids: list[int]
    public_ids: list[str]


def seed_fleet(app: Any, *, agencies: int, vehicles: int, photos: tuple[int, int] = (3, 8),
               rng: random.Random | None = None) -> Fleet:
    """``agencies`` active agencies and ``vehicles`` listed cars, each with ``photos`` (min, max) photo rows."""
    from marketplace.agencies.models import Agency, AgencyStatus
    from marketplace.extensions import db, utcnow
    from marketplace.fleet.models import Vehicle, VehiclePhoto, VehicleStatus

    rng = rng or random.Random(7)
    with app.app_context():
        now = utcnow()
        rows = [Agency(business_name=f"Demo Rentals {i} LLC", trade_licence_number=f"DED-{i:07d}",
                       trn=f"100{i:012d}", address_line1="Sheikh Zayed Road", address_city="Dubai",
                       address_country="AE", representative_name="Demo Rep", contact_email=f"ops{i}@agency.example",
                       contact_phone=f"+9714{i:07d}", status=AgencyStatus.ACTIVE, verified_at=now)
                for i in range(1, agencies + 1)]
        db.session.add_all(rows)
        db.session.flush()
        cars = []
        for n in range(vehicles):
            make, model = rng.choice(MAKES)
            cars.append(Vehicle(
                agency_id=rows[n % agencies].id, make=make, model=model, year=rng.randint(2019, 2025),
                category=rng.choice(CATEGORIES), plate=f"DXB {chr(65 + n % 26)} {n:05d}", seats=rng.choice([4, 5, 7]),
                transmission="automatic", city=rng.choice(CITIES),
                latitude=Decimal(f"{25.2 + rng.uniform(-0.2, 0.2):.6f}"),
                longitude=Decimal(f"{55.27 + rng.uniform(-0.2, 0.2):.6f}"), daily_price_fils=rng.randint(90, 900) * 100,
                deposit_fils=100000, mileage_limit_km_per_day=rng.choice([None, 250, 300]),
                extra_km_fils=rng.choice([None, 75, 100]), pickup_address="Dubai Marina Walk",
                status=VehicleStatus.LISTED))
        db.session.add_all(cars)
        db.session.flush()
        for car in cars:
            for position in range(rng.randint(*photos)):
                db.session.add(VehiclePhoto(vehicle_id=car.id, storage_key=f"bench/{uuid.uuid4().hex}",
                                            width=2000, height=1500, position=position, created_at=now))
        db.session.commit()
        return Fleet([c.id for c in cars], [c.public_id for c in cars])


def seed_customers(app: Any, count: int, *, verified: bool = False) -> list[int]:
    """Active customers (verified: cleared to drive, as ``make_verified_customer`` makes them)."""
    from tests import factories

    make = factories.make_verified_customer if verified else factories.make_customer
    with app.app_context():
        return [make().user_id for _ in range(count)]


def issue_tokens(app: Any, user_ids: list[int]) -> list[str]:
    """One API access token per user, as a sign-in would issue (without argon2: nobody types these)."""
    from marketplace.extensions import db
    from marketplace.users import sessions
    from marketplace.users.models import SessionChannel, User

    with app.app_context():
        settings = app.config["SETTINGS"]
        tokens = []
        for uid in user_ids:
            user = db.session.get(User, uid)
            assert user is not None
            tokens.append(sessions.start_session(user, SessionChannel.API, settings).access_token)
        db.session.commit()
        return tokens


def seed_bookings(app: Any, customers: list[int], fleet: Fleet, *, per_customer: int,
                  rng: random.Random | None = None) -> dict[int, list[str]]:
    """``per_customer`` bookings for each customer (cars taken in turn, periods never overlapping on a car):
    two consents, the occupancy row and one to three history events each. Returns references by customer."""
    from marketplace.availability.models import VehicleOccupancy
    from marketplace.bookings.models import Booking, BookingEvent
    from marketplace.bookings.service import new_reference, price
    from marketplace.bookings.states import BookingStatus
    from marketplace.extensions import db, utcnow
    from marketplace.fleet.models import Vehicle
    from marketplace.users.consent_texts import CURRENT
    from marketplace.users.models import Consent, ConsentKind

    rng = rng or random.Random(11)
    out: dict[int, list[str]] = {uid: [] for uid in customers}
    with app.app_context():
        now = utcnow().replace(minute=0, second=0, microsecond=0)
        cars = {v.id: v for v in db.session.query(Vehicle).filter(Vehicle.id.in_(fleet.vehicle_ids))}
        texts = {k: CURRENT[k] for k in (ConsentKind.RENTAL_TERMS, ConsentKind.MIT_MANDATE)}
        n = 0
        for uid in customers:
            for _ in range(per_customer):
                car = cars[fleet.vehicle_ids[n % len(fleet.vehicle_ids)]]
                lap = n // len(fleet.vehicle_ids)
                starts = now + timedelta(days=3 + 10 * lap, hours=rng.randint(0, 48))
                ends = starts + timedelta(days=rng.randint(1, 6))
                n += 1
                reference = new_reference()
                consents = [Consent(user_id=uid, kind=kind, text_version=t.version, text_sha256=t.sha256,
                                    granted_at=now, context=f"booking:{reference}") for kind, t in texts.items()]
                db.session.add_all(consents)
                db.session.flush()
                days = max(1, (ends - starts).days)
                rental, fee, vat, total = price(car.daily_price_fils, days)
                status = rng.choice([BookingStatus.CONFIRMED, BookingStatus.CONFIRMED, BookingStatus.PENDING_PAYMENT])
                booking = Booking(
                    reference=reference, customer_id=uid, vehicle_id=car.id, agency_id=car.agency_id, status=status,
                    starts_at=starts, ends_at=ends, pickup_place="Dubai Marina Walk, Dubai",
                    dropoff_place="Dubai Marina Walk, Dubai", days=days, daily_rate_fils=car.daily_price_fils,
                    rental_fils=rental, platform_fee_fils=fee, vat_fils=vat, total_fils=total,
                    deposit_fils=car.deposit_fils, currency="AED",
                    terms_version=texts[ConsentKind.RENTAL_TERMS].version, terms_consent_id=consents[0].id,
                    mandate_version=texts[ConsentKind.MIT_MANDATE].version,
                    mandate_consent_id=consents[1].id, pay_by=now + timedelta(days=365))
                db.session.add(booking)
                db.session.flush()
                db.session.add(VehicleOccupancy(vehicle_id=car.id, starts_at=starts,
                                                ends_at=ends + timedelta(minutes=car.turnaround_minutes),
                                                booking_id=booking.id))
                db.session.add(BookingEvent(booking_id=booking.id, at=now, actor_id=uid, kind="created",
                                            to_status=BookingStatus.PENDING_PAYMENT, data="{}"))
                if status == BookingStatus.CONFIRMED:
                    db.session.add(BookingEvent(booking_id=booking.id, at=now, actor_id=None, kind="status",
                                                from_status=BookingStatus.PENDING_PAYMENT, to_status=status,
                                                data="{}"))
                out[uid].append(reference)
        db.session.commit()
    return out


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
