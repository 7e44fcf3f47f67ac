"""The caller's own agency: resolved among their agencies only (AZ-03), permissions in that agency."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from marketplace import audit
from marketplace.agencies import states
from marketplace.agencies.errors import AgencyNotActive, IdentityLocked
from marketplace.agencies.models import Agency, AgencyDocument
from marketplace.agencies.rules import (
    DOCUMENT_KINDS,
    IDENTITY_FIELDS,
    _email,
    _invalid,
    _name,
    normalise_trade_licence,
    normalise_trn,
)
from marketplace.agencies.states import UNVERIFIED, AgencyStatus
from marketplace.availability.service import MAX_TURNAROUND_MINUTES
from marketplace.errors import NotFound
from marketplace.extensions import db
from marketplace.permissions import Permission
from marketplace.security import Actor, require, require_in_agency
from marketplace.users import service as users


def agencies_of(actor: Actor) -> list[Agency]:
    ids = actor.agency_ids
    if not ids:
        return []
    return list(db.session.execute(
        select(Agency).where(Agency.id.in_(ids)).order_by(Agency.business_name, Agency.id)
    ).scalars())


def own_agency(actor: Actor, public_id: str | None = None) -> Agency:
    """The caller's agency: the one named (among their own), or their only one. Others are not found."""
    require(actor, Permission.AGENCY_ACCESS)
    ids = actor.agency_ids
    if public_id:
        agency = db.session.execute(
            select(Agency).where(Agency.public_id == public_id, Agency.id.in_(ids))
        ).scalar_one_or_none() if ids else None
        if agency is None:
            raise NotFound()
        return agency
    if not ids:
        raise NotFound()
    if len(ids) > 1:
        raise _invalid("agency", "You work for several agencies: name one with ?agency=<id>.")
    agency = db.session.get(Agency, next(iter(ids)))
    if agency is None:
        raise NotFound()
    return agency


def require_in(actor: Actor, agency: Agency, permission: Permission) -> None:
    """Permission through the caller's roles in *this* agency (``security.require_in_agency``)."""
    require_in_agency(actor, agency.id, permission)


def require_active(agency: Agency) -> None:
    """Only a verified, active agency lists cars and takes bookings."""
    if agency.status != AgencyStatus.ACTIVE:
        raise AgencyNotActive(details={"status": agency.status})


def missing_documents(agency: Agency) -> list[str]:
    have = set(db.session.execute(
        select(AgencyDocument.kind).where(AgencyDocument.agency_id == agency.id)
    ).scalars())
    return [kind for kind in DOCUMENT_KINDS if kind not in have]


def _resubmit(actor: Actor, agency: Agency) -> None:
    """A rejected agency that corrects its data or documents goes back to the verification queue."""
    if agency.status == AgencyStatus.REJECTED:
        states.check(agency.status, AgencyStatus.PENDING)
        agency.status = AgencyStatus.PENDING
        agency.status_reason = None
        audit.record(actor, "agency:resubmit", agency)


def update_profile(  # noqa: PLR0912 - one branch per field
    actor: Actor, agency_ref: str | None, changes: dict[str, Any]
) -> Agency:
    """Contact details, address and turnaround at any time; the business identity only before verification."""
    agency = own_agency(actor, agency_ref)
    require_in(actor, agency, Permission.AGENCY_PROFILE_WRITE)
    identity = sorted(IDENTITY_FIELDS & changes.keys())
    if identity and agency.status not in UNVERIFIED:
        raise IdentityLocked(details={"fields": identity})
    changed: list[str] = []
    if "business_name" in changes:
        agency.business_name = _name(changes["business_name"], "business_name")
    if "representative_name" in changes:
        agency.representative_name = _name(changes["representative_name"], "representative_name")
    if "trn" in changes:
        agency.trn = normalise_trn(changes["trn"])
    if "trade_licence_number" in changes:
        agency.trade_licence_number = normalise_trade_licence(changes["trade_licence_number"])
    changed += identity
    if "contact_email" in changes:
        agency.contact_email = _email(changes["contact_email"], "contact_email")
        changed.append("contact_email")
    if "contact_phone" in changes:
        agency.contact_phone = users.normalise_phone(changes["contact_phone"], "contact_phone")
        changed.append("contact_phone")
    if "address" in changes:
        address = changes["address"]
        if "line1" in address:
            agency.address_line1 = _name(address["line1"], "address.line1")
        if "city" in address:
            agency.address_city = _name(address["city"], "address.city")
        if "country" in address:
            agency.address_country = address["country"].upper()
        changed.append("address")
    if "turnaround_minutes" in changes:
        minutes = changes["turnaround_minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 0 <= minutes <= MAX_TURNAROUND_MINUTES:
            raise _invalid("turnaround_minutes", f"Whole minutes from 0 to {MAX_TURNAROUND_MINUTES}.")
        agency.turnaround_minutes = minutes
        changed.append("turnaround_minutes")
    if identity:
        _resubmit(actor, agency)
    db.session.flush()
    audit.record(actor, "agency:update", agency, fields=sorted(changed))
    return agency
