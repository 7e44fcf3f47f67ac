"""The agency side's scope: which agencies and cars an actor works with, and the per-agency permission check.

Agency-side loaders are scoped to the actor's own agencies (AZ-04): another agency's car is simply not found.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select

from marketplace.agencies import service as agencies_area
from marketplace.errors import Forbidden, NotFound, Unprocessable
from marketplace.extensions import db
from marketplace.fleet.models import Vehicle, VehicleStatus
from marketplace.permissions import Permission, permissions_for
from marketplace.security import Actor, require

if TYPE_CHECKING:
    from marketplace.agencies.models import Agency


def agencies_of(actor: Actor) -> list[Agency]:
    """The agencies the actor holds an agency role in."""
    return agencies_area.agencies_of(actor)


def vehicles_for_staff(actor: Actor) -> list[Vehicle]:
    """Every (not deleted) car of the actor's agencies, for the agency app's pages."""
    ids = actor.agency_ids
    if not ids:
        return []
    return list(db.session.execute(
        select(Vehicle).where(Vehicle.agency_id.in_(ids), Vehicle.deleted_at.is_(None))
        .order_by(Vehicle.make, Vehicle.model, Vehicle.id)
    ).scalars())


def can_in_agency(actor: Actor, agency_id: int, permission: Permission) -> bool:
    """Permissions come from the roles held *in that agency* (a manager in one agency may be desk staff in
    another)."""
    return agency_id in actor.agency_ids and permission in permissions_for(actor.agency_roles(agency_id))


def require_in_agency(actor: Actor, agency_id: int, permission: Permission) -> None:
    require(actor, permission)
    if not can_in_agency(actor, agency_id, permission):
        raise Forbidden(details={"missing": [str(permission)]})


def fleet_summary(actor: Actor) -> dict[str, int]:
    """Cars per status across the actor's agencies (the dashboard's fleet box)."""
    require(actor, Permission.AGENCY_VEHICLE_READ)
    rows = db.session.execute(
        select(Vehicle.status, func.count()).where(Vehicle.agency_id.in_(actor.agency_ids or {-1}),
                                                   Vehicle.deleted_at.is_(None)).group_by(Vehicle.status)
    ).all()
    summary = {str(s): 0 for s in VehicleStatus}
    summary.update({str(status): int(count) for status, count in rows})
    return summary


def list_for_agency(actor: Actor, *, after_id: int | None, limit: int, status: str | None = None,
                    agency_public_id: str | None = None, city: str | None = None) -> list[Vehicle]:
    """The actor's agencies' cars, oldest first. Filters only ever narrow the actor's own scope (AZ-04)."""
    require(actor, Permission.AGENCY_VEHICLE_READ)
    stmt = select(Vehicle).where(Vehicle.agency_id.in_(actor.agency_ids or {-1}), Vehicle.deleted_at.is_(None))
    if agency_public_id is not None:
        stmt = stmt.where(Vehicle.agency_id == agencies_area.agency_id_of(agency_public_id))
    if status is not None:
        stmt = stmt.where(Vehicle.status == status)
    if city is not None:
        stmt = stmt.where(Vehicle.city == city)
    if after_id is not None:
        stmt = stmt.where(Vehicle.id > after_id)
    return list(db.session.execute(stmt.order_by(Vehicle.id).limit(limit)).scalars())


def get_for_agency(actor: Actor, public_id: str) -> Vehicle:
    """One of the actor's agencies' cars; another agency's car (or a deleted one) is simply not found."""
    require(actor, Permission.AGENCY_VEHICLE_READ)
    vehicle = db.session.execute(
        select(Vehicle).where(Vehicle.public_id == public_id, Vehicle.agency_id.in_(actor.agency_ids or {-1}),
                              Vehicle.deleted_at.is_(None))
    ).scalar_one_or_none()
    if vehicle is None:
        raise NotFound()
    return vehicle


def target_agency(actor: Actor, agency_public_id: str | None) -> Agency:
    """The agency a new car goes to: the one named, or the actor's only one."""
    agencies = agencies_of(actor)
    if agency_public_id is None:
        if len(agencies) != 1:
            raise Unprocessable(details={"fields": {"agency": ["You work for several agencies: name one."]}})
        return agencies[0]
    for agency in agencies:
        if agency.public_id == agency_public_id:
            return agency
    raise NotFound()
