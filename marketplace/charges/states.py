"""Post-rental charges (P-20, P-21): their kinds, where a charge stands and the moves between (one table)."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from marketplace.states import IllegalTransition as _IllegalTransition
from marketplace.states import check_transition

NOTICE_PERIOD = timedelta(hours=24)  # P-21: the customer has 24 hours to review a notice (not a setting)
CHARGE_WINDOW = timedelta(days=90)  # P-20, P-21: nothing raised or charged more than 90 days after the return
# a declined charge is tried again after these waits, then left unpaid (outstanding until the customer pays)
RETRY_SCHEDULE = (timedelta(days=1), timedelta(days=3), timedelta(days=7))
MAX_EVIDENCE = 5  # evidence files per charge (parts evidence, evidence_2 ...)
MAX_DISPUTE_FILES = 3
# a charge is AED 1 to AED 50,000 (above that it is a claim for the courts, not a card), in fils
MIN_CHARGE_FILS, MAX_CHARGE_FILS = 100, 5_000_000  # a dispute's files (parts file_1 ...)


class ChargeKind(StrEnum):
    TRAFFIC_FINE = "traffic_fine"
    TOLL = "toll"  # Salik (Dubai) or Darb (Abu Dhabi)
    DAMAGE = "damage"
    FUEL = "fuel"
    CLEANING = "cleaning"
    LATE_RETURN = "late_return"
    EXTRA_DISTANCE = "extra_distance"


# a fine or toll has a time of its own: outside the actual rental it goes to platform review first
TIMED = frozenset({ChargeKind.TRAFFIC_FINE, ChargeKind.TOLL})
# passed through at cost (a government fine or toll paid for the customer): no VAT, no tax invoice
PASS_THROUGH = frozenset({ChargeKind.TRAFFIC_FINE, ChargeKind.TOLL})


class ChargeStatus(StrEnum):
    PLATFORM_REVIEW = "platform_review"  # a fine or toll timed outside the rental: platform staff look first
    NOTICED = "noticed"  # the notice is out; collected at ``due_at`` (24 hours later) unless disputed
    DISPUTED = "disputed"  # waits for the disputes team (uphold, reduce or waive)
    DUE = "due"  # accepted by the customer or upheld/reduced: collected now
    COLLECTING = "collecting"  # an attempt is with the payment provider
    REQUIRES_ACTION = "requires_action"  # the bank wants the customer: they pay on-session
    RETRYING = "retrying"  # declined; tried again at ``next_attempt_at``
    UNPAID = "unpaid"  # declined on every try: outstanding until the customer pays
    PAID = "paid"
    WAIVED = "waived"  # the disputes team waived it
    WITHDRAWN = "withdrawn"  # the agency withdrew it, or platform review rejected it
    EXPIRED = "expired"  # not collected within 90 days of the return (``charge_window_closed``)


C = ChargeStatus
TRANSITIONS: dict[ChargeStatus, frozenset[ChargeStatus]] = {
    C.PLATFORM_REVIEW: frozenset({C.NOTICED, C.WITHDRAWN}),
    C.NOTICED: frozenset({C.DUE, C.DISPUTED, C.COLLECTING, C.WITHDRAWN, C.EXPIRED}),
    C.DISPUTED: frozenset({C.DUE, C.WAIVED, C.WITHDRAWN}),
    C.DUE: frozenset({C.COLLECTING, C.WITHDRAWN, C.EXPIRED}),
    C.COLLECTING: frozenset({C.PAID, C.REQUIRES_ACTION, C.RETRYING, C.UNPAID, C.EXPIRED}),
    C.REQUIRES_ACTION: frozenset({C.COLLECTING, C.PAID, C.RETRYING, C.UNPAID, C.WITHDRAWN, C.EXPIRED}),
    C.RETRYING: frozenset({C.COLLECTING, C.PAID, C.WITHDRAWN, C.EXPIRED}),
    C.UNPAID: frozenset({C.COLLECTING, C.PAID, C.WITHDRAWN, C.EXPIRED}),
    C.PAID: frozenset(),
    C.WAIVED: frozenset(),
    C.WITHDRAWN: frozenset(),
    C.EXPIRED: frozenset(),
}
# owed now and not paid: blocks new bookings (``outstanding_balance``)
OUTSTANDING = frozenset({C.REQUIRES_ACTION, C.RETRYING, C.UNPAID})
# not settled: the booking's deposit stays held for it
OPEN = frozenset({C.PLATFORM_REVIEW, C.NOTICED, C.DISPUTED, C.DUE, C.COLLECTING, C.REQUIRES_ACTION, C.RETRYING})
SETTLED = frozenset({C.PAID, C.WAIVED, C.WITHDRAWN, C.EXPIRED})
CUSTOMER_VISIBLE = frozenset(set(ChargeStatus) - {C.PLATFORM_REVIEW})
# the agency may withdraw a charge until an attempt is with the provider or it is settled
WITHDRAWABLE = frozenset({C.PLATFORM_REVIEW, C.NOTICED, C.DISPUTED, C.DUE, C.REQUIRES_ACTION, C.RETRYING, C.UNPAID})
PAYABLE = frozenset({C.REQUIRES_ACTION, C.RETRYING, C.UNPAID})  # the customer may pay it on-session


class Decision(StrEnum):
    UPHOLD = "uphold"
    REDUCE = "reduce"
    WAIVE = "waive"


class ReviewDecision(StrEnum):
    """Platform review of a fine or toll timed outside the rental."""

    APPROVE = "approve"  # the notice goes to the customer
    REJECT = "reject"  # withdrawn: the customer never sees it


class IllegalTransition(_IllegalTransition):
    message = "This step is not possible from where the charge stands."


def check(current: str, target: ChargeStatus) -> None:
    check_transition(TRANSITIONS, current, target, IllegalTransition)
