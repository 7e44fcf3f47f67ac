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
