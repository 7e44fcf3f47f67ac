"""KYC case states and the moves allowed between them (everything else is refused)."""

from __future__ import annotations

from enum import StrEnum

from marketplace.states import IllegalTransition as _IllegalTransition
from marketplace.states import check_transition


class CaseStatus(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    IN_REVIEW = "in_review"  # claimed by one reviewer
    AWAITING_SECOND_REVIEW = "awaiting_second_review"  # a rejection or override waits for four eyes
    APPROVED = "approved"
    REJECTED = "rejected"
    RESUBMISSION_REQUESTED = "resubmission_requested"
    SUPERSEDED = "superseded"  # replaced by a re-verification case


class Decision(StrEnum):
    """What a reviewer decides on a case (stored in ``kyc_decisions.decision``)."""

    APPROVE = "approve"
    REJECT = "reject"  # waits for a second reviewer (four eyes)
    REQUEST_RESUBMISSION = "request_resubmission"


class DecisionStatus(StrEnum):
    """Where a decision stands (``kyc_decisions.status``): rejections and overrides wait for four eyes."""

    FINAL = "final"
    PENDING = "pending"
    CONFIRMED = "confirmed"  # the second reviewer agreed
    OVERTURNED = "overturned"  # the second reviewer disagreed: the case goes back to review


class ApproveReason(StrEnum):
    DOCUMENTS_MATCH = "documents_match"


class RejectReason(StrEnum):
    FACE_MISMATCH = "face_mismatch"
    DOCUMENT_NOT_GENUINE = "document_not_genuine"
    DOCUMENT_EXPIRED = "document_expired"
    DATA_MISMATCH = "data_mismatch"
    UNDERAGE = "underage"
    DUPLICATE_IDENTITY = "duplicate_identity"
    OTHER = "other"


class ResubmitReason(StrEnum):
    BLURRY_IMAGE = "blurry_image"
    GLARE_OR_CROPPED = "glare_or_cropped"
    WRONG_DOCUMENT = "wrong_document"
    DOCUMENT_EXPIRED = "document_expired"
    SELFIE_NOT_LIVE = "selfie_not_live"
    DATA_MISMATCH = "data_mismatch"
    OTHER = "other"


# the reason codes each decision accepts, in the order the console lists them
REASONS: dict[Decision, tuple[str, ...]] = {
    Decision.APPROVE: tuple(ApproveReason),
    Decision.REJECT: tuple(RejectReason),
    Decision.REQUEST_RESUBMISSION: tuple(ResubmitReason),
}

S = CaseStatus
TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    S.DRAFT: frozenset({S.SUBMITTED}),
    S.SUBMITTED: frozenset({S.IN_REVIEW}),
    S.IN_REVIEW: frozenset({S.SUBMITTED, S.APPROVED, S.AWAITING_SECOND_REVIEW, S.RESUBMISSION_REQUESTED}),
    S.AWAITING_SECOND_REVIEW: frozenset({S.REJECTED, S.APPROVED, S.IN_REVIEW}),
    S.RESUBMISSION_REQUESTED: frozenset({S.SUBMITTED}),
    S.APPROVED: frozenset({S.AWAITING_SECOND_REVIEW, S.SUPERSEDED}),
    S.REJECTED: frozenset({S.SUPERSEDED}),
    S.SUPERSEDED: frozenset(),
}

EDITABLE = frozenset({S.DRAFT, S.RESUBMISSION_REQUESTED})
IN_QUEUE = frozenset({S.SUBMITTED, S.IN_REVIEW, S.AWAITING_SECOND_REVIEW})


class IllegalTransition(_IllegalTransition):
    message = "This case cannot move to that state from its current one."


def check(current: str, target: CaseStatus) -> None:
    check_transition(TRANSITIONS, current, target, IllegalTransition)
