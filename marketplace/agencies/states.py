"""Agency statuses and the moves allowed between them (everything else is refused).

pending_verification -> active (platform staff approve: all four documents checked) | rejected (with a reason)
rejected -> pending_verification (the agency corrects its data or documents: back in the queue)
active -> suspended (its cars leave search, no new bookings, live bookings flagged) -> active (reinstated)

``terminated`` exists in the model for P-29 (end of the relationship); no action leads there yet.
"""

from __future__ import annotations

from enum import StrEnum

from marketplace.states import IllegalTransition as _IllegalTransition
from marketplace.states import check_transition


class AgencyStatus(StrEnum):
    PENDING = "pending_verification"
    ACTIVE = "active"
    REJECTED = "rejected"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"


class AgencyDocumentKind(StrEnum):
    TRADE_LICENCE = "trade_licence"
    VAT_CERTIFICATE = "vat_certificate"
    REPRESENTATIVE_ID = "representative_id"
    AUTHORISATION_LETTER = "authorisation_letter"


S = AgencyStatus
TRANSITIONS: dict[AgencyStatus, frozenset[AgencyStatus]] = {
    S.PENDING: frozenset({S.ACTIVE, S.REJECTED}),
    S.REJECTED: frozenset({S.PENDING}),
    S.ACTIVE: frozenset({S.SUSPENDED}),
    S.SUSPENDED: frozenset({S.ACTIVE}),
    S.TERMINATED: frozenset(),
}

# not yet verified: the business identity and the documents can still change
UNVERIFIED = frozenset({S.PENDING, S.REJECTED})
# the console's list shows what needs a decision first
LIST_ORDER = (S.PENDING, S.SUSPENDED, S.REJECTED, S.ACTIVE, S.TERMINATED)


class IllegalTransition(_IllegalTransition):
    message = "The agency cannot move to that status from its current one."


def check(current: str, target: AgencyStatus) -> None:
    check_transition(TRANSITIONS, current, target, IllegalTransition)
