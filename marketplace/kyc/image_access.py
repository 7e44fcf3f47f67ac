"""Who may see an image (P-11): the one policy decision, single-use grants, audited views."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from marketplace import audit
from marketplace.errors import NotFound
from marketplace.extensions import db, utcnow
from marketplace.kyc.models import ImageGrant, KycCase
from marketplace.kyc.rules import GRANT_TTL, SLOTS
from marketplace.kyc.states import CaseStatus
from marketplace.permissions import Permission
from marketplace.security import Actor
from marketplace.users import service as users
from marketplace.vault import service as vault

if TYPE_CHECKING:
    from marketplace.users.models import User
    from marketplace.vault.models import Blob


def _case_blob(case: KycCase, kind: str) -> Blob:
    blob_id = getattr(case, SLOTS[kind]) if kind in SLOTS else None
    blob = vault.get_blob(blob_id) if blob_id else None
    if blob is None or blob.deleted_at is not None:
        raise NotFound()
    return blob


ImagePurposeCheck = Callable[[Actor, "Blob", str], bool]


_PURPOSES: dict[str, ImagePurposeCheck] = {}
# purposes whose images are served only by their owner's door (the handover selfie carries a watermark):
# the generic image links refuse their grants
_OWN_DOOR: set[str] = set()


def image_purpose(name: str, *, own_door: bool = False) -> Callable[[ImagePurposeCheck], ImagePurposeCheck]:
    """Register the check for an image purpose another area owns (it decides on its own rows; the grant,
    its audit row and the refusal stay here, in the one policy decision). With ``own_door`` a grant for
    this purpose is spent only through ``open_purpose_image`` with the same purpose."""
    def register(check: ImagePurposeCheck) -> ImagePurposeCheck:
        _PURPOSES[name] = check
        if own_door:
            _OWN_DOOR.add(name)
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
    data, blob, _context = _spend(actor, token, None)
    return data, blob


def open_purpose_image(actor: Actor, token: str, purpose: str) -> tuple[bytes, Blob, str]:
    """Spend a grant of one purpose (its owner's door): the image, its blob and the grant's context."""
    return _spend(actor, token, purpose)


def _spend(actor: Actor, token: str, purpose: str | None) -> tuple[bytes, Blob, str]:
    grant = db.session.execute(
        select(ImageGrant).where(ImageGrant.token_hash == users.token_hash(token or "")).with_for_update()
    ).scalar_one_or_none()
    now = utcnow()
    if grant is None or grant.viewer_id != actor.user.id or grant.used_at is not None or grant.expires_at <= now:
        raise NotFound()
    if (grant.purpose != purpose) if purpose is not None else grant.purpose in _OWN_DOOR:
        raise NotFound()  # a purpose served by its own door (watermarked) is spent there and nowhere else
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
    return data, blob, grant.context or ""


def own_selfie_grant(actor: Actor) -> tuple[str, datetime]:
    case = _latest_with_selfie(actor.user)
    token = grant_image_view(actor, _case_blob(case, "selfie"), purpose="own_profile", context=case.public_id,
                             reason="customer viewing own profile photo")
    return token, utcnow() + GRANT_TTL


def selfie_grant(actor: Actor, user: User, *, purpose: str, context: str, reason: str) -> tuple[str, datetime]:
    """A single-use link to ``user``'s selfie on their approved case, for a registered purpose (its check
    decides; a refusal is audited). No approved case with a selfie is a 404."""
    case = db.session.execute(
        select(KycCase).where(KycCase.user_id == user.id, KycCase.status == CaseStatus.APPROVED,
                              KycCase.selfie_blob_id.is_not(None)).order_by(KycCase.id.desc()).limit(1)
    ).scalar_one_or_none()
    if case is None:
        raise NotFound()
    token = grant_image_view(actor, _case_blob(case, "selfie"), purpose=purpose, context=context, reason=reason)
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
