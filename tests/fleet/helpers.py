"""Helpers for the fleet, search and agency-app tests: bookings and blocks put straight on a car's calendar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from marketplace.availability.models import VehicleOccupancy
from marketplace.extensions import db, utcnow
from marketplace.fleet.models import AvailabilityBlock, Vehicle
from marketplace.users.consent_texts import CURRENT
from marketplace.users.models import ConsentKind
from tests.factories import Person, actor_for


def base_time(days: int = 3) -> datetime:
    """A whole hour a few days ahead: far enough for the one-hour lead time, inside the one-year horizon."""
    return (utcnow() + timedelta(days=days)).replace(minute=0, second=0, microsecond=0)


def book(customer: Person, vehicle: Vehicle, starts_at: datetime, ends_at: datetime) -> Any:
    """A real booking through the booking service (it holds the car with its turnaround buffer)."""
    from marketplace.bookings import service as bookings

    booking, created = bookings.create_booking(
        actor_for(customer), vehicle_id=vehicle.public_id, starts_at=starts_at, ends_at=ends_at,
        rental_terms_version=CURRENT[ConsentKind.RENTAL_TERMS].version,
        mit_mandate_version=CURRENT[ConsentKind.MIT_MANDATE].version)
    assert created
    return booking


def occupy(vehicle: Vehicle, starts_at: datetime, ends_at: datetime) -> VehicleOccupancy:
    """An occupancy row as a block would leave it (no booking needed)."""
    block = AvailabilityBlock(vehicle_id=vehicle.id, starts_at=starts_at.astimezone(UTC),
                              ends_at=ends_at.astimezone(UTC), created_at=utcnow())
    db.session.add(block)
    db.session.flush()
    row = VehicleOccupancy(vehicle_id=vehicle.id, starts_at=block.starts_at, ends_at=block.ends_at, block_id=block.id)
    db.session.add(row)
    db.session.commit()
    return row


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def vehicle_at(agency: Any, lat: str, lng: str, **fields: Any) -> Vehicle:
    """``factories.make_vehicle`` with the car's pick-up point moved to ``lat``/``lng``."""
    from decimal import Decimal

    from tests.factories import make_vehicle

    vehicle = make_vehicle(agency, **fields)
    vehicle.latitude, vehicle.longitude = Decimal(lat), Decimal(lng)
    db.session.commit()
    return vehicle
