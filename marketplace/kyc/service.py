"""KYC rules: identity data, consented uploads, the review workflow, who may see an image, clearance.

A human reviewer compares the selfie with the ID photo (P-09); nothing here matches faces. Every
image view goes through ``grant_image_view`` (the one policy function, P-11) and is audited.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import select, update

from marketplace import audit, images
from marketplace.errors import Conflict, Forbidden, NotFound, PayloadTooLarge, RateLimited, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.kyc import states
from marketplace.kyc.models import ImageGrant, KycCase, KycDecision, KycIdentity, data_owner
from marketplace.kyc.states import CaseStatus, Decision, DecisionStatus
from marketplace.notifications import service as notifications
from marketplace.permissions import Permission, Role
from marketplace.security import Actor, require
from marketplace.users import service as users
from marketplace.users.service import age_on, business_today
from marketplace.users.states import ConsentKind
from marketplace.vault import service as vault

if TYPE_CHECKING:
    from marketplace.users.models import Consent, User
    from marketplace.vault.models import Blob

REVIEW_TARGET = timedelta(hours=24)
UNCLAIMED_UPLOAD_TTL = timedelta(hours=24)
GRANT_TTL = timedelta(seconds=60)

DOCUMENT_KINDS = ("id_front", "id_back", "licence_front", "licence_back")
SLOTS = {"selfie": "selfie_blob_id", "id_front": "id_front_blob_id", "id_back": "id_back_blob_id",
         "licence_front": "licence_front_blob_id", "licence_back": "licence_back_blob_id"}
ID_TYPES = ("passport", "emirates_id")
EMIRATES = ("AE-AZ", "AE-DU", "AE-SH", "AE-AJ", "AE-UQ", "AE-RK", "AE-FU")
REJECT_REASONS = states.REASONS[Decision.REJECT]
RESUBMIT_REASONS = states.REASONS[Decision.REQUEST_RESUBMISSION]
APPROVE_REASONS = states.REASONS[Decision.APPROVE]


class ConsentRequired(Forbidden):
    code = "consent_required"
    message = "Accept the current face-data consent before uploading a selfie."


class KycRequired(Forbidden):
    code = "kyc_required"
    message = "Identity verification is needed before booking."


class ReverificationRequired(Conflict):
    code = "reverification_required"
    message = "Your verification is already submitted or approved. Start a re-verification to replace images."


class CaseIncomplete(Unprocessable):
    code = "kyc_incomplete"
    message = "Some identity data or images are missing."


class NotClaimant(Forbidden):
    code = "not_claimant"
    message = "Only the reviewer who claimed this case can do this."


class SelfReviewForbidden(Forbidden):
    code = "self_review_forbidden"
    message = "You cannot review your own case or confirm your own decision."


# ---- identity data --------------------------------------------------------------------------------

_EMIRATES_ID = re.compile(r"^784-(\d{4})-(\d{7})-(\d)$")
_PASSPORT = re.compile(r"^[A-Z0-9]{6,9}$")
_LICENCE = re.compile(r"^[A-Z0-9-]{4,20}$")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def validate_document_number(kind: str, number: str, dob: date) -> str:
    value = number.strip().upper()
    if kind == "emirates_id":
        match = _EMIRATES_ID.match(value)
        if not match:
            raise Unprocessable(details={"fields": {"id_document_number": ["Use the format 784-YYYY-NNNNNNN-N."]}})
        if not _luhn_ok(value.replace("-", "")):
            raise Unprocessable(details={"fields": {"id_document_number": ["The check digit does not match."]}})
        if int(match.group(1)) != dob.year:
            message = "The year part must be the year of birth."
            raise Unprocessable(details={"fields": {"id_document_number": [message]}})
        return value
    if not _PASSPORT.match(value):
        raise Unprocessable(details={"fields": {"id_document_number": ["6 to 9 letters and digits."]}})
    return value


def put_identity(actor: Actor, data: dict[str, Any]) -> KycIdentity:
    user = actor.user
    case = current_case(user, create=True)
    if case.status not in states.EDITABLE:
        raise ReverificationRequired()
    today = business_today()
    errors: dict[str, list[str]] = {}
    if data["licence_expiry"] <= today:
        errors["licence_expiry"] = ["The driving licence has expired."]
    if data["id_document_expiry"] <= today:
        errors["id_document_expiry"] = ["The ID document has expired."]
    if data["id_document_type"] not in ID_TYPES:
        errors["id_document_type"] = [f"One of: {', '.join(ID_TYPES)}."]
    issuer = data["licence_issuer"].upper()
    if not (issuer in EMIRATES or re.fullmatch(r"[A-Z]{2}", issuer)):
        errors["licence_issuer"] = ["A two-letter country code or a UAE emirate (e.g. AE-DU)."]
    if age_on(data["date_of_birth"], today) < 21:
        errors["date_of_birth"] = ["Drivers must be at least 21."]
    if not _LICENCE.match(data["licence_number"].strip().upper()):
        errors["licence_number"] = ["4 to 20 letters, digits or dashes."]
    if errors:
        raise Unprocessable(details={"fields": errors})
    number = validate_document_number(data["id_document_type"], data["id_document_number"], data["date_of_birth"])
    identity = db.session.execute(select(KycIdentity).where(KycIdentity.user_id == user.id)).scalar_one_or_none()
    new = identity is None
    if identity is None:
        # added once complete: sealing the numbers may create the data key, and that flushes the session
        identity = KycIdentity(user_id=user.id)
    identity.legal_name = " ".join(data["legal_name"].split())
    identity.date_of_birth = data["date_of_birth"]
    identity.nationality = data["nationality"].upper()
    identity.id_document_type = data["id_document_type"]
    identity.id_document_number = number
    identity.id_document_expiry = data["id_document_expiry"]
    identity.licence_number = data["licence_number"].strip().upper()
    identity.licence_issuer = issuer
    identity.licence_expiry = data["licence_expiry"]
    identity.licence_category = data["licence_category"].strip().upper()
    if new:
        db.session.add(identity)
    db.session.flush()
    audit.record(actor, "kyc:identity_put", case)
    return identity


def identity_of(user: User) -> KycIdentity | None:
    return db.session.execute(select(KycIdentity).where(KycIdentity.user_id == user.id)).scalar_one_or_none()


# ---- cases and uploads ---------------------------------------------------------------------------


def current_case(user: User, *, create: bool = False) -> KycCase:
    case = db.session.execute(
        select(KycCase).where(KycCase.user_id == user.id, KycCase.status != CaseStatus.SUPERSEDED)
        .order_by(KycCase.id.desc()).limit(1)
    ).scalar_one_or_none()
    if case is None:
        if not create:
            raise NotFound()
        case = KycCase(user_id=user.id, status=CaseStatus.DRAFT)
        db.session.add(case)
        db.session.flush()
    return case


def _owner(user: User) -> str:
    return data_owner(user.public_id)


def face_consent(user: User) -> Consent | None:
    return users.active_consent(user, ConsentKind.FACE_DATA)


def upload(actor: Actor, kind: str, stream: IO[bytes], declared_type: str | None) -> Blob:
    """Run one image through the pipeline, encrypt it and put it in the case's slot."""
    if kind not in SLOTS:
        raise Unprocessable(details={"fields": {"kind": [f"One of: {', '.join(DOCUMENT_KINDS)}."]}})
    user = actor.user
    consent = face_consent(user) if kind == "selfie" else None
    if kind == "selfie" and consent is None:
        raise ConsentRequired()
    case = current_case(user, create=True)
    if case.status not in states.EDITABLE:
        raise ReverificationRequired()
    _check_upload_quota(user)
    policy = images.SELFIE_POLICY if kind == "selfie" else images.DOCUMENT_POLICY
    processed = images.process_image(stream, policy=policy, declared_type=declared_type)
    blob = vault.store(_owner(user), kind, processed.data, mime=processed.mime, width=processed.width,
                       height=processed.height, user_id=user.id)
    old_id = getattr(case, SLOTS[kind])
    setattr(case, SLOTS[kind], blob.id)
    if kind == "selfie" and consent is not None:
        case.face_consent_id = consent.id
        case.face_consent_version = consent.text_version
    if old_id is not None:
        old = vault.get_blob(old_id)
        if old is not None and old.attached_at is None:
            vault.delete(old)
    db.session.flush()
    audit.record(actor, "kyc:upload", case, kind=kind, blob=blob.public_id)
    return blob


UPLOADS_PER_MINUTE = 20
STORED_BYTES_PER_USER = 200 * 1024 * 1024


def _check_upload_quota(user: User) -> None:
    """Per person, whatever the session (UP-07): a rate of uploads and a cap on what is kept."""
    recent = vault.uploads_since(user.id, utcnow() - timedelta(minutes=1))
    if recent >= UPLOADS_PER_MINUTE:
        raise RateLimited(headers={"Retry-After": "60"}, details={"limit": f"{UPLOADS_PER_MINUTE} per minute"})
    stored = vault.stored_bytes(user.id)
    if stored >= STORED_BYTES_PER_USER:
        raise PayloadTooLarge("You have stored as much as an account may; replace an image instead.",
                              details={"quota_bytes": STORED_BYTES_PER_USER})


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


# ---- the review workflow (console) --------------------------------------------------------------


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


# ---- who may see an image (P-11) -----------------------------------------------------------------


def _case_blob(case: KycCase, kind: str) -> Blob:
    blob_id = getattr(case, SLOTS[kind]) if kind in SLOTS else None
    blob = vault.get_blob(blob_id) if blob_id else None
    if blob is None or blob.deleted_at is not None:
        raise NotFound()
    return blob


ImagePurposeCheck = Callable[[Actor, "Blob", str], bool]
_PURPOSES: dict[str, ImagePurposeCheck] = {}


def image_purpose(name: str) -> Callable[[ImagePurposeCheck], ImagePurposeCheck]:
    """Register the check for an image purpose another area owns (it decides on its own rows; the grant,
    its audit row and the refusal stay here, in the one policy decision)."""
    def register(check: ImagePurposeCheck) -> ImagePurposeCheck:
        _PURPOSES[name] = check
        return check
    return register


def grant_image_view(actor: Actor, blob: Blob, *, purpose: str, context: str, reason: str) -> str:
    """The one policy decision for every image view; returns a single-use token valid ~1 minute.

    A refusal is audited, ends the caller's transaction and raises ``NotFound``.
    """
    allowed = False
    if purpose == "own_profile":
        allowed = blob.user_id == actor.user.id and not actor.is_staff
    elif purpose == "kyc_review":
        case = db.session.execute(select(KycCase).where(KycCase.public_id == context)).scalar_one_or_none()
        allowed = (
            case is not None
            and actor.can(Permission.KYC_IMAGE_VIEW)
            and actor.can(Permission.KYC_CASE_READ)
            and case.user_id == blob.user_id
            and case.user_id != actor.user.id
            and blob.id in {getattr(case, slot) for slot in SLOTS.values()}
            and (case.claimed_by_id == actor.user.id or case.status == CaseStatus.AWAITING_SECOND_REVIEW)
        )
    elif purpose in _PURPOSES:
        # a purpose another area owns (agency documents: agencies registers its check)
        allowed = _PURPOSES[purpose](actor, blob, context)
    if not allowed:
        # the refusal is kept: written although the request fails (after its rollback)
        audit.record_now(actor, "image:view_denied", ("blobs", blob.public_id), purpose=purpose, context=context)
        raise NotFound()
    token, digest = users.new_token("img_")
    now = utcnow()
    db.session.add(ImageGrant(token_hash=digest, blob_id=blob.id, viewer_id=actor.user.id, purpose=purpose,
                              context=context, expires_at=now + GRANT_TTL, created_at=now))
    db.session.flush()
    audit.record(actor, "image:grant", ("blobs", blob.public_id), purpose=purpose, context=context, reason=reason,
                 kind=blob.kind)
    return token


def open_granted_image(actor: Actor, token: str) -> tuple[bytes, Blob]:
    """Spend a grant: the same viewer, once, before it expires. Every view leaves an audit row."""
    grant = db.session.execute(
        select(ImageGrant).where(ImageGrant.token_hash == users.token_hash(token or "")).with_for_update()
    ).scalar_one_or_none()
    now = utcnow()
    if grant is None or grant.viewer_id != actor.user.id or grant.used_at is not None or grant.expires_at <= now:
        raise NotFound()
    claimed = db.session.execute(
        update(ImageGrant).where(ImageGrant.id == grant.id, ImageGrant.used_at.is_(None)).values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        raise NotFound()
    blob = vault.get_blob(grant.blob_id)
    if blob is None:
        raise NotFound()
    data = vault.read(blob)
    audit.record(actor, "image:view", ("blobs", blob.public_id), purpose=grant.purpose, context=grant.context,
                 kind=blob.kind)
    return data, blob


def own_selfie_grant(actor: Actor) -> tuple[str, datetime]:
    case = _latest_with_selfie(actor.user)
    token = grant_image_view(actor, _case_blob(case, "selfie"), purpose="own_profile", context=case.public_id,
                             reason="customer viewing own profile photo")
    return token, utcnow() + GRANT_TTL


def _latest_with_selfie(user: User) -> KycCase:
    case = db.session.execute(
        select(KycCase).where(KycCase.user_id == user.id, KycCase.selfie_blob_id.is_not(None))
        .order_by(KycCase.id.desc()).limit(1)
    ).scalar_one_or_none()
    if case is None:
        raise NotFound()
    return case


def review_image_grant(actor: Actor, case: KycCase, kind: str) -> str:
    return grant_image_view(actor, _case_blob(case, kind), purpose="kyc_review", context=case.public_id,
                            reason="KYC review: compare selfie with ID photo")


# ---- clearance (P-10) ---------------------------------------------------------------------------


def ensure_cleared_to_drive(user: User, until: datetime | date) -> None:
    """Approved KYC, licence valid through ``until``, 21 or older, face-data consent given and not withdrawn.

    Refusals name every reason: ``kyc_not_approved``, ``licence_not_valid_for_period``, ``underage``,
    ``face_data_consent_missing`` (never given) or ``face_data_consent_withdrawn``.
    """
    last_day = until.date() if isinstance(until, datetime) else until
    reasons: list[str] = []
    case = db.session.execute(
        select(KycCase).where(KycCase.user_id == user.id, KycCase.status != CaseStatus.SUPERSEDED)
        .order_by(KycCase.id.desc()).limit(1)
    ).scalar_one_or_none()
    if case is None or case.status != CaseStatus.APPROVED:
        reasons.append("kyc_not_approved")
    identity = identity_of(user)
    if identity is None or identity.licence_expiry < last_day:
        reasons.append("licence_not_valid_for_period")
    dob = identity.date_of_birth if identity is not None else user.date_of_birth
    if dob is None or age_on(dob, business_today()) < 21:
        reasons.append("underage")
    if face_consent(user) is None:
        # never given and withdrawn are different facts, and the customer's next step differs too
        reasons.append("face_data_consent_withdrawn" if _ever_gave_face_consent(user) else "face_data_consent_missing")
    if reasons:
        raise KycRequired(details={"reasons": reasons})


def _ever_gave_face_consent(user: User) -> bool:
    return users.ever_consented(user, ConsentKind.FACE_DATA)


# ---- housekeeping ----------------------------------------------------------------------------------


def purge_unclaimed_uploads(now: datetime | None = None) -> int:
    """Delete uploads no submitted case claimed within 24 hours (and empty their draft slots)."""
    cutoff = (now or utcnow()) - UNCLAIMED_UPLOAD_TTL
    stale = vault.unattached_before(cutoff, owner_prefix="user:")
    for blob in stale:
        for slot in SLOTS.values():
            db.session.execute(update(KycCase).where(getattr(KycCase, slot) == blob.id).values({slot: None}))
        vault.delete(blob)
        audit.record(None, "kyc:purge_upload", blob, kind=blob.kind)
    db.session.flush()
    return len(stale)
