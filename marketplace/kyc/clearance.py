"""Clearance to drive (P-10): approved KYC, licence valid through the return, 21+, face consent."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from marketplace.extensions import db
from marketplace.kyc.cases import face_consent
from marketplace.kyc.errors import KycRequired
from marketplace.kyc.lookup import identity_of
from marketplace.kyc.models import KycCase
from marketplace.kyc.states import CaseStatus
from marketplace.users import service as users
from marketplace.users.service import age_on, business_today
from marketplace.users.states import ConsentKind

if TYPE_CHECKING:
    from marketplace.users.models import User


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
