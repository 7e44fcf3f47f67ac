"""The customer's case: face-data consent first (P-06), uploads through the one pipeline (P-07), submit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from marketplace import audit
from marketplace.errors import Conflict
from marketplace.extensions import db, utcnow
from marketplace.kyc import states
from marketplace.kyc.errors import CaseIncomplete, ConsentRequired
from marketplace.kyc.lookup import current_case, identity_of
from marketplace.kyc.models import KycCase, data_owner
from marketplace.kyc.rules import SLOTS
from marketplace.kyc.states import CaseStatus
from marketplace.security import Actor, SystemActor
from marketplace.users import service as users
from marketplace.users.states import ConsentKind
from marketplace.vault import service as vault

if TYPE_CHECKING:
    from marketplace.users.models import Consent, User


def _owner(user: User) -> str:
    return data_owner(user.public_id)


def face_consent(user: User) -> Consent | None:
    return users.active_consent(user, ConsentKind.FACE_DATA)


def submit(actor: Actor) -> KycCase:
    user = actor.user
    case = current_case(user)
    # in_review -> submitted is the reviewer's "release"; the customer may only submit a case they can edit
    if case.status not in states.EDITABLE:
        raise states.IllegalTransition(details={"from": case.status, "to": str(CaseStatus.SUBMITTED)})
    states.check(case.status, CaseStatus.SUBMITTED)
    identity = identity_of(user)
    missing = [] if identity is not None else ["identity"]
    needed = ["selfie", "id_front", "licence_front", "licence_back"]
    if identity is not None and identity.id_document_type == "emirates_id":
        needed.append("id_back")
    missing += [slot for slot in needed if getattr(case, SLOTS[slot]) is None]
    if face_consent(user) is None:
        raise ConsentRequired()
    if missing:
        raise CaseIncomplete(details={"missing": missing})
    now = utcnow()
    case.status = CaseStatus.SUBMITTED
    case.submitted_at = now
    case.resubmit_items = None
    case.customer_reason = None
    for slot in SLOTS.values():
        blob_id = getattr(case, slot)
        if blob_id is not None:
            vault.mark_attached(blob_id, now)
    db.session.flush()
    audit.record(actor, "kyc:submit", case)
    return case


def start_reverification(actor: Actor) -> KycCase:
    """A new selfie needs a new review: the approved (or rejected) case is superseded by a draft."""
    user = actor.user
    case = current_case(user)
    if case.status not in (CaseStatus.APPROVED, CaseStatus.REJECTED):
        raise Conflict("A verification is already in progress.", details={"status": case.status})
    states.check(case.status, CaseStatus.SUPERSEDED)
    case.status = CaseStatus.SUPERSEDED
    fresh = KycCase(user_id=user.id, status=CaseStatus.DRAFT)
    db.session.add(fresh)
    db.session.flush()
    audit.record(actor, "kyc:reverify", fresh, previous=case.public_id)
    return fresh


def request_rereview(actor: Actor | SystemActor, user: User, *, reason: str, context: str) -> KycCase | None:
    """Send an approved customer back to the review queue (a mismatch at handover, P-18): the approved case
    is superseded by a submitted copy with the same images, so the customer is no longer cleared to drive
    until a reviewer decides again. None when nothing is approved (already in review or never verified)."""
    case = db.session.execute(
        select(KycCase).where(KycCase.user_id == user.id, KycCase.status != CaseStatus.SUPERSEDED)
        .order_by(KycCase.id.desc()).limit(1)
    ).scalar_one_or_none()
    if case is None or case.status != CaseStatus.APPROVED:
        return None
    states.check(case.status, CaseStatus.SUPERSEDED)
    case.status = CaseStatus.SUPERSEDED
    fresh = KycCase(user_id=user.id, status=CaseStatus.SUBMITTED, submitted_at=utcnow(),
                    face_consent_id=case.face_consent_id, face_consent_version=case.face_consent_version,
                    customer_reason=reason[:64],
                    **{slot: getattr(case, slot) for slot in SLOTS.values()})
    db.session.add(fresh)
    db.session.flush()
    audit.record(actor, "kyc:rereview", fresh, previous=case.public_id, reason=reason, context=context)
    return fresh
