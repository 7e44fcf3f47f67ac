"""The review workflow in the console (P-09): queue, claim, release, reassign, decide, four eyes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from marketplace import audit
from marketplace.errors import Conflict, NotFound, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.kyc import states
from marketplace.kyc.errors import NotClaimant, SelfReviewForbidden
from marketplace.kyc.models import KycCase, KycDecision
from marketplace.kyc.rules import REVIEW_TARGET, SLOTS
from marketplace.kyc.states import CaseStatus, Decision, DecisionStatus
from marketplace.notifications import service as notifications
from marketplace.permissions import Permission, Role
from marketplace.security import Actor, require
from marketplace.users import service as users

if TYPE_CHECKING:
    from marketplace.users.models import User


@dataclass(frozen=True)
class QueueEntry:
    case: KycCase
    customer: User
    waited: timedelta
    time_left: timedelta
    claimed_by: User | None


def queue(actor: Actor, *, limit: int = 100) -> list[QueueEntry]:
    require(actor, Permission.KYC_CASE_READ)
    now = utcnow()
    rows = db.session.execute(
        select(KycCase).where(KycCase.status.in_(list(states.IN_QUEUE))).order_by(KycCase.submitted_at).limit(limit)
    ).scalars().all()
    entries = []
    for case in rows:
        waited = now - (case.submitted_at or now)
        customer = users.get_user(case.user_id)
        assert customer is not None
        claimant = users.get_user(case.claimed_by_id) if case.claimed_by_id else None
        entries.append(QueueEntry(case, customer, waited, REVIEW_TARGET - waited, claimant))
    return entries


def get_case_for_review(actor: Actor, public_id: str) -> KycCase:
    require(actor, Permission.KYC_CASE_READ)
    case = db.session.execute(select(KycCase).where(KycCase.public_id == public_id)).scalar_one_or_none()
    if case is None or case.status in (CaseStatus.DRAFT, CaseStatus.SUPERSEDED):
        raise NotFound()
    return case


def _not_own(actor: Actor, case: KycCase) -> None:
    if case.user_id == actor.user.id:
        raise SelfReviewForbidden()


def claim(actor: Actor, case: KycCase) -> KycCase:
    require(actor, Permission.KYC_CASE_DECIDE)
    _not_own(actor, case)
    now = utcnow()
    # compare-and-set: two reviewers clicking "claim" together cannot both win
    result = db.session.execute(
        update(KycCase).where(KycCase.id == case.id, KycCase.status == CaseStatus.SUBMITTED)
        .values(status=CaseStatus.IN_REVIEW, claimed_by_id=actor.user.id, claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise Conflict("Someone else claimed this case, or it is not waiting.", details={"status": case.status})
    db.session.refresh(case)
    audit.record(actor, "kyc:claim", case)
    return case


def _require_claimant(actor: Actor, case: KycCase) -> None:
    if case.status != CaseStatus.IN_REVIEW or case.claimed_by_id != actor.user.id:
        raise NotClaimant()


def release(actor: Actor, case: KycCase) -> KycCase:
    require(actor, Permission.KYC_CASE_DECIDE)
    _require_claimant(actor, case)
    states.check(case.status, CaseStatus.SUBMITTED)
    case.status = CaseStatus.SUBMITTED
    case.claimed_by_id = None
    case.claimed_at = None
    db.session.flush()
    audit.record(actor, "kyc:release", case)
    return case


def reassign(actor: Actor, case: KycCase, reviewer_public_id: str) -> KycCase:
    require(actor, Permission.KYC_CASE_DECIDE)
    _require_claimant(actor, case)
    target = users.find_by_public_id(reviewer_public_id)
    if target is None or Role.KYC_REVIEWER not in target.role_set() or target.id == case.user_id:
        raise Unprocessable(details={"fields": {"reviewer": ["Not a KYC reviewer."]}})
    case.claimed_by_id = target.id
    case.claimed_at = utcnow()
    db.session.flush()
    audit.record(actor, "kyc:reassign", case, to=target.public_id)
    return case


def decide(actor: Actor, case: KycCase, *, decision: str, reason_code: str, note: str | None,
           items: list[str] | None = None) -> KycDecision:
    """Approve, reject (waits for a second reviewer) or ask for specific new uploads."""
    require(actor, Permission.KYC_CASE_DECIDE)
    _not_own(actor, case)
    if decision not in set(Decision):
        raise Unprocessable(details={"fields": {"decision": [f"One of: {', '.join(Decision)}."]}})
    chosen = Decision(decision)
    if reason_code not in states.REASONS[chosen]:
        raise Unprocessable(details={"fields": {"reason_code": [f"One of: {', '.join(states.REASONS[chosen])}."]}})
    override = case.status == CaseStatus.APPROVED
    if override:
        # overriding another reviewer's approval needs four eyes, like a rejection
        if chosen == Decision.APPROVE:
            raise Conflict("The case is already approved.")
    else:
        _require_claimant(actor, case)
    now = utcnow()
    record = KycDecision(case_id=case.id, reviewer_id=actor.user.id, decision=chosen, reason_code=reason_code,
                         note=(note or None), created_at=now, status=DecisionStatus.FINAL)
    customer = users.get_user(case.user_id)
    assert customer is not None
    if chosen == Decision.APPROVE:
        states.check(case.status, CaseStatus.APPROVED)
        case.status = CaseStatus.APPROVED
        case.decided_at = now
        notifications.notify(customer, kind="kyc_approved", context={"user": customer}, essential=True)
    elif chosen == Decision.REQUEST_RESUBMISSION:
        wanted = [i for i in (items or []) if i in SLOTS or i == "identity"]
        if not wanted:
            raise Unprocessable(details={"fields": {"items": ["Name what the customer must send again."]}})
        states.check(case.status, CaseStatus.RESUBMISSION_REQUESTED)
        case.status = CaseStatus.RESUBMISSION_REQUESTED
        case.decided_at = now
        case.resubmit_items = ",".join(wanted)
        case.customer_reason = reason_code
        record.items = case.resubmit_items
        for item in wanted:  # the named slots must be filled again
            if item in SLOTS:
                setattr(case, SLOTS[item], None)
        notifications.notify(customer, kind="kyc_resubmission", essential=True,
                             context={"user": customer, "items": wanted, "reason": reason_code})
    else:  # reject, or override an approval: pending until a second reviewer confirms
        states.check(case.status, CaseStatus.AWAITING_SECOND_REVIEW)
        case.status = CaseStatus.AWAITING_SECOND_REVIEW
        record.status = DecisionStatus.PENDING
    db.session.add(record)
    db.session.flush()
    audit.record(actor, f"kyc:decide:{chosen}", case, reason=reason_code,
                 four_eyes=record.status == DecisionStatus.PENDING,
                 override=override)
    return record


def pending_decision(case: KycCase) -> KycDecision | None:
    return db.session.execute(
        select(KycDecision).where(KycDecision.case_id == case.id, KycDecision.status == DecisionStatus.PENDING)
        .order_by(KycDecision.id.desc()).limit(1)
    ).scalar_one_or_none()


def second_review(actor: Actor, case: KycCase, *, confirm: bool, note: str | None) -> KycDecision:
    """Four eyes: a different reviewer confirms or overturns a pending rejection."""
    require(actor, Permission.KYC_CASE_DECIDE)
    _not_own(actor, case)
    pending = pending_decision(case)
    if case.status != CaseStatus.AWAITING_SECOND_REVIEW or pending is None:
        raise Conflict("Nothing is waiting for a second review.")
    if pending.reviewer_id == actor.user.id:
        raise SelfReviewForbidden()
    now = utcnow()
    pending.second_reviewer_id = actor.user.id
    pending.second_decided_at = now
    customer = users.get_user(case.user_id)
    assert customer is not None
    if confirm:
        pending.status = DecisionStatus.CONFIRMED
        states.check(case.status, CaseStatus.REJECTED)
        case.status = CaseStatus.REJECTED
        case.decided_at = now
        case.customer_reason = pending.reason_code
        notifications.notify(customer, kind="kyc_rejected", essential=True,
                             context={"user": customer, "reason": pending.reason_code})
    else:
        pending.status = DecisionStatus.OVERTURNED
        states.check(case.status, CaseStatus.IN_REVIEW)
        case.status = CaseStatus.IN_REVIEW
        case.claimed_by_id = actor.user.id
        case.claimed_at = now
    db.session.flush()
    audit.record(actor, "kyc:second_review", case, confirmed=confirm, decision=pending.public_id, note=bool(note))
    return pending


def decisions(case: KycCase) -> list[KycDecision]:
    return list(db.session.execute(
        select(KycDecision).where(KycDecision.case_id == case.id).order_by(KycDecision.id)
    ).scalars())
