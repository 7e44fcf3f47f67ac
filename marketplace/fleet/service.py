"""Fleet rules. Agency-side loaders are scoped to the actor's own agencies."""

from __future__ import annotations

from sqlalchemy import select

from marketplace.agencies.models import Agency
from marketplace.extensions import db
from marketplace.fleet.models import Vehicle
from marketplace.security import Actor


def agencies_of(actor: Actor) -> list[Agency]:
    ids = actor.agency_ids
    if not ids:
        return []
    return list(db.session.execute(select(Agency).where(Agency.id.in_(ids)).order_by(Agency.business_name)).scalars())


def vehicles_for_staff(actor: Actor) -> list[Vehicle]:
    ids = actor.agency_ids
    if not ids:
        return []
    return list(db.session.execute(
        select(Vehicle).where(Vehicle.agency_id.in_(ids)).order_by(Vehicle.make, Vehicle.model, Vehicle.id)
    ).scalars())
