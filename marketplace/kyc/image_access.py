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
