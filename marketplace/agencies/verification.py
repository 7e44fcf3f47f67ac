"""Verification by platform staff (console): approve, reject, suspend, reinstate; document views."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, or_, select

from marketplace import audit
from marketplace.agencies import states
from marketplace.agencies.documents import document_blob, documents_of
from marketplace.agencies.errors import DocumentsMissing, SelfVerificationForbidden
from marketplace.agencies.models import Agency, AgencyDocument
from marketplace.agencies.profile import missing_documents
from marketplace.agencies.rules import _invalid, vault_owner
from marketplace.agencies.staff import StaffMember, _members
from marketplace.agencies.states import AgencyStatus
from marketplace.errors import NotFound
from marketplace.extensions import db, utcnow
from marketplace.kyc import service as kyc
from marketplace.notifications import service as notifications
from marketplace.permissions import Permission
from marketplace.security import Actor, require

if TYPE_CHECKING:
    from marketplace.vault.models import Blob


def require_verifier(actor: Actor, agency: Agency | None = None) -> None:
    """Platform staff who verify agencies, never for an agency they work for themselves."""
    _verifier(actor, agency)


def _verifier(actor: Actor, agency: Agency | None = None) -> None:
    require(actor, Permission.AGENCY_VERIFY)
    if agency is not None and agency.id in actor.agency_ids:
        raise SelfVerificationForbidden()


def list_for_console(actor: Actor, *, status: str | None = None, limit: int = 500) -> list[Agency]:
    """Every agency, those waiting for a decision first (oldest first within each status)."""
    _verifier(actor)
    rank = case({str(s): i for i, s in enumerate(states.LIST_ORDER)}, value=Agency.status, else_=len(states.LIST_ORDER))
    stmt = select(Agency).order_by(rank, Agency.created_at, Agency.id).limit(limit)
    if status:
        stmt = stmt.where(Agency.status == status)
    return list(db.session.execute(stmt).scalars())


def get_for_console(actor: Actor, public_id: str) -> Agency:
    _verifier(actor)
    agency = db.session.execute(select(Agency).where(Agency.public_id == public_id)).scalar_one_or_none()
    if agency is None:
        raise NotFound()
    return agency


def staff_of(actor: Actor, agency: Agency) -> list[StaffMember]:
    _verifier(actor)
    return _members(agency)


def lookalikes(actor: Actor, agency: Agency) -> list[Agency]:
    """Other agencies with the same TRN or trade licence number: a reviewer should know before approving."""
    _verifier(actor)
    return list(db.session.execute(
        select(Agency).where(Agency.id != agency.id, or_(Agency.trn == agency.trn,
                                                         Agency.trade_licence_number == agency.trade_licence_number))
        .order_by(Agency.id)
    ).scalars())


def document_image_grants(actor: Actor, agency: Agency) -> dict[str, str]:
    """A single-use image link per uploaded document, each through the one image policy (audited)."""
    _verifier(actor, agency)
    return {
        document.kind: kyc.grant_image_view(actor, document_blob(document), purpose="agency_verification",
                                        context=agency.public_id, reason="Agency verification: check the document")
        for document in documents_of(agency)
    }


def _notify(agency: Agency, kind: str, **context: Any) -> None:
    notifications.send_email(to=agency.contact_email, kind=kind, context={"agency": agency, **context})


def _reason(reason: str | None) -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise _invalid("reason", "Give a reason: the agency is told.")
    if len(text) > 300:
        raise _invalid("reason", "At most 300 characters.")
    return text


def _move(agency: Agency, source: AgencyStatus, target: AgencyStatus) -> None:
    """Each verb starts from one status: approving and reinstating both end ``active``, but reinstating a
    pending agency would skip verification, and approving a suspended one would skip the review."""
    if agency.status != source:
        raise states.IllegalTransition(details={"from": agency.status, "to": str(target)})
    states.check(agency.status, target)


def approve(actor: Actor, public_id: str) -> Agency:
    """Verified: the four documents match the business. The agency can list cars and take bookings."""
    agency = get_for_console(actor, public_id)
    _verifier(actor, agency)
    _move(agency, AgencyStatus.PENDING, AgencyStatus.ACTIVE)
    missing = missing_documents(agency)
    if missing:
        raise DocumentsMissing(details={"missing": missing})
    now = utcnow()
    agency.status = AgencyStatus.ACTIVE
    agency.verified_at = now
    agency.verified_by_id = actor.user.id
    agency.status_reason = None
    db.session.flush()
    _notify(agency, "agency_approved")
    audit.record(actor, "agency:approve", agency)
    return agency


def reject(actor: Actor, public_id: str, reason: str | None) -> Agency:
    agency = get_for_console(actor, public_id)
    _verifier(actor, agency)
    text = _reason(reason)
    _move(agency, AgencyStatus.PENDING, AgencyStatus.REJECTED)
    agency.status = AgencyStatus.REJECTED
    agency.status_reason = text
    db.session.flush()
    _notify(agency, "agency_rejected", reason=text)
    audit.record(actor, "agency:reject", agency, reason=text)
    return agency


SuspensionListener = Callable[[Agency, str], int]


_ON_SUSPENDED: list[SuspensionListener] = []


def on_suspended(listener: SuspensionListener) -> SuspensionListener:
    """Register what a higher area does when an agency is suspended (bookings flags its live bookings).

    The listener gets the agency and a reason code and returns how many of its rows it flagged; the
    suspension's audit row carries the sum. Agencies sits below bookings, so bookings registers itself here
    instead of agencies calling up into it.
    """
    if listener not in _ON_SUSPENDED:
        _ON_SUSPENDED.append(listener)
    return listener


def suspend(actor: Actor, public_id: str, reason: str | None) -> int:
    """Suspended: its cars leave search and cannot be booked; its live bookings are flagged to staff.

    Returns how many bookings were flagged.
    """
    agency = get_for_console(actor, public_id)
    _verifier(actor, agency)
    text = _reason(reason)
    _move(agency, AgencyStatus.ACTIVE, AgencyStatus.SUSPENDED)
    agency.status = AgencyStatus.SUSPENDED
    agency.suspended_at = utcnow()
    agency.status_reason = text
    db.session.flush()
    flagged = sum(listener(agency, "agency_suspended") for listener in _ON_SUSPENDED)
    _notify(agency, "agency_suspended", reason=text)
    audit.record(actor, "agency:suspend", agency, reason=text, flagged_bookings=flagged)
    return flagged


def reinstate(actor: Actor, public_id: str, note: str | None = None) -> Agency:
    agency = get_for_console(actor, public_id)
    _verifier(actor, agency)
    _move(agency, AgencyStatus.SUSPENDED, AgencyStatus.ACTIVE)  # never a way round verification
    agency.status = AgencyStatus.ACTIVE
    agency.suspended_at = None
    agency.status_reason = None
    db.session.flush()
    _notify(agency, "agency_reinstated")
    audit.record(actor, "agency:reinstate", agency, note=" ".join((note or "").split())[:300] or None)
    return agency


@kyc.image_purpose("agency_verification")
def _may_view_document(actor: Actor, blob: Blob, context: str) -> bool:
    """Platform staff verifying an agency (P-12): one of that agency's current documents, never their own."""
    agency = db.session.execute(select(Agency).where(Agency.public_id == context)).scalar_one_or_none()
    return (
        agency is not None
        and actor.can(Permission.AGENCY_VERIFY)
        and agency.id not in actor.agency_ids
        and blob.owner == vault_owner(agency)
        and blob.id in set(db.session.execute(
            select(AgencyDocument.blob_id).where(AgencyDocument.agency_id == agency.id)).scalars())
    )
