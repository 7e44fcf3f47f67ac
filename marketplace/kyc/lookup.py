"""Loading a customer's identity data and current case (every other kyc module starts from these)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from marketplace.errors import NotFound
from marketplace.extensions import db
from marketplace.kyc.models import KycCase, KycIdentity
from marketplace.kyc.states import CaseStatus

if TYPE_CHECKING:
    from marketplace.users.models import User


def identity_of(user: User) -> KycIdentity | None:
    return db.session.execute(select(KycIdentity).where(KycIdentity.user_id == user.id)).scalar_one_or_none()


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
