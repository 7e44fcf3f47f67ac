"""KYC rules (P-05 to P-11): identity data, cases and uploads, the review workflow, image access, clearance.

The public surface of the kyc area. The rules live in the area's private modules (``rules``, ``identity``,
``cases``, ``review``, ``image_access``, ``clearance``, ``housekeeping``; the errors in ``errors``); this
module names what other areas and the front doors may call. A human reviewer compares the selfie with the
ID photo (P-09); nothing here matches faces. Every image view goes through ``grant_image_view`` (the one
policy function, P-11) and is audited. Services flush but never commit.
"""

from __future__ import annotations

from datetime import timedelta
from typing import IO, TYPE_CHECKING

from marketplace import audit, images
from marketplace.errors import PayloadTooLarge, RateLimited, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.kyc import states
from marketplace.kyc.cases import _owner, face_consent, request_rereview, start_reverification, submit
from marketplace.kyc.clearance import ensure_cleared_to_drive
from marketplace.kyc.errors import (
    CaseIncomplete,
    ConsentRequired,
    KycRequired,
    NotClaimant,
    ReverificationRequired,
    SelfReviewForbidden,
)
from marketplace.kyc.housekeeping import purge_unclaimed_uploads
from marketplace.kyc.identity import put_identity, validate_document_number
from marketplace.kyc.image_access import (
    ImagePurposeCheck,
    grant_image_view,
    image_purpose,
    open_granted_image,
    open_purpose_image,
    own_selfie_grant,
    review_image_grant,
    selfie_grant,
)
from marketplace.kyc.lookup import current_case, identity_of
from marketplace.kyc.review import (
    QueueEntry,
    claim,
    decide,
    decisions,
    get_case_for_review,
    pending_decision,
    queue,
    reassign,
    release,
    second_review,
)
from marketplace.kyc.rules import (
    APPROVE_REASONS,
    DOCUMENT_KINDS,
    EMIRATES,
    GRANT_TTL,
    ID_TYPES,
    REJECT_REASONS,
    RESUBMIT_REASONS,
    REVIEW_TARGET,
    SLOTS,
    UNCLAIMED_UPLOAD_TTL,
)
from marketplace.security import Actor
from marketplace.vault import service as vault

if TYPE_CHECKING:
    from marketplace.users.models import User
    from marketplace.vault.models import Blob


# ---- uploads (here, with their per-person limits, so an operator or a test tunes one place) -----------


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


__all__ = [
    "APPROVE_REASONS",
    "DOCUMENT_KINDS",
    "EMIRATES",
    "GRANT_TTL",
    "ID_TYPES",
    "REJECT_REASONS",
    "RESUBMIT_REASONS",
    "REVIEW_TARGET",
    "SLOTS",
    "STORED_BYTES_PER_USER",
    "UNCLAIMED_UPLOAD_TTL",
    "UPLOADS_PER_MINUTE",
    "CaseIncomplete",
    "ConsentRequired",
    "ImagePurposeCheck",
    "KycRequired",
    "NotClaimant",
    "QueueEntry",
    "ReverificationRequired",
    "SelfReviewForbidden",
    "claim",
    "current_case",
    "decide",
    "decisions",
    "ensure_cleared_to_drive",
    "face_consent",
    "get_case_for_review",
    "grant_image_view",
    "identity_of",
    "image_purpose",
    "open_granted_image",
    "open_purpose_image",
    "own_selfie_grant",
    "pending_decision",
    "purge_unclaimed_uploads",
    "put_identity",
    "queue",
    "reassign",
    "release",
    "request_rereview",
    "review_image_grant",
    "second_review",
    "selfie_grant",
    "start_reverification",
    "submit",
    "upload",
    "validate_document_number",
]
