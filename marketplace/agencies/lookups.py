"""Lookups for other areas, the console and the operator commands (the rows stay in agencies)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ScalarSelect, Select, Subquery, select

from marketplace.agencies.models import Agency
from marketplace.agencies.states import AgencyStatus
from marketplace.errors import NotFound
from marketplace.extensions import db, utcnow


def list_all() -> list[Agency]:
    """Every agency by name (the console's invitation form)."""
    return list(db.session.execute(select(Agency).order_by(Agency.business_name)).scalars())


def agency_id_from_public(public_id: str | None) -> int | None:
    if not public_id:
        return None
    agency_id = db.session.execute(select(Agency.id).where(Agency.public_id == public_id)).scalar_one_or_none()
    if agency_id is None:
        raise NotFound(details={"fields": {"agency": ["Unknown agency."]}})
    return agency_id


def active_ids() -> Select[Any]:
    """The ids of verified, active agencies, as a subquery: ``Vehicle.agency_id.in_(active_ids())``."""
    return select(Agency.id).where(Agency.status == AgencyStatus.ACTIVE)


def get(agency_id: int) -> Agency | None:
    return db.session.get(Agency, agency_id)


# Other areas' SQL that must know about agencies gets it from here, as search gets the overlap rule from
# availability: the selectable of active agencies (a car is public only while its agency is active) and the
# id behind a public id. Built once: the statements that use them are built once too.
_ACTIVE_AGENCIES = (select(Agency.id.label("id"), Agency.business_name.label("name"))
                    .where(Agency.status == AgencyStatus.ACTIVE).subquery("active_agencies"))


def active_agencies() -> Subquery:
    """The active agencies as ``(id, name)`` rows, for another area's statement to join."""
    return _ACTIVE_AGENCIES


def agency_id_of(public_id: Any) -> ScalarSelect[int]:
    """The row id of the agency with this public id (a value or a bound parameter), as a SQL scalar."""
    return select(Agency.id).where(Agency.public_id == public_id).scalar_subquery()


def agency_by_id(agency_id: int) -> Agency:
    """An agency known by database id (another area holding a foreign key, e.g. a booking's supplier)."""
    agency = db.session.get(Agency, agency_id)
    if agency is None:
        raise NotFound()
    return agency


def create_verified(*, business_name: str, trade_licence_number: str, trn: str, address_line1: str,
                    address_city: str, address_country: str, representative_name: str, contact_email: str,
                    contact_phone: str) -> Agency:
    """An agency that is verified and active at once: the demo seed only (real ones sign up and are reviewed)."""
    agency = Agency(
        business_name=business_name, trade_licence_number=trade_licence_number, trn=trn,
        address_line1=address_line1, address_city=address_city, address_country=address_country,
        representative_name=representative_name, contact_email=contact_email, contact_phone=contact_phone,
        status=AgencyStatus.ACTIVE, verified_at=utcnow(),
    )
    db.session.add(agency)
    db.session.flush()
    return agency
