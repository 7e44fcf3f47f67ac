"""Payment states and the monotonic moves between them (a late event never undoes a later state)."""

from __future__ import annotations

from enum import StrEnum


class IntentKind(StrEnum):
    BOOKING = "booking"  # the rental, captured at once
    DEPOSIT = "deposit"  # a manual-capture hold


class IntentState(StrEnum):
    PENDING = "pending"  # row committed, Stripe not (yet) asked, or the answer is unknown (retry, same key)
    REQUIRES_ACTION = "requires_action"  # the customer's SDK must complete 3-D Secure
    SUCCEEDED = "succeeded"  # booking payment captured
    HELD = "held"  # deposit authorised (requires_capture)
    CAPTURED = "captured"  # deposit captured (partly or wholly; the rest released)
    RELEASED = "released"  # deposit cancelled
    LAPSED = "lapsed"  # deposit authorisation expired (charge.expired)
    FAILED = "failed"  # declined or refused: a new attempt may start


S = IntentState
OPEN = frozenset({S.PENDING, S.REQUIRES_ACTION})
TERMINAL = frozenset({S.SUCCEEDED, S.CAPTURED, S.RELEASED, S.LAPSED, S.FAILED})
# where each state may go; anything else is ignored (an out-of-order webhook), never applied
MOVES: dict[IntentState, frozenset[IntentState]] = {
    S.PENDING: frozenset({S.REQUIRES_ACTION, S.SUCCEEDED, S.HELD, S.FAILED, S.RELEASED}),
    S.REQUIRES_ACTION: frozenset({S.SUCCEEDED, S.HELD, S.FAILED, S.RELEASED}),
    S.HELD: frozenset({S.CAPTURED, S.RELEASED, S.LAPSED}),
    S.SUCCEEDED: frozenset(),
    S.CAPTURED: frozenset(),
    S.RELEASED: frozenset(),
    S.LAPSED: frozenset(),
    # Stripe's word that money moved wins over our record of a failure (a decline seen on a request whose
    # twin succeeded): the money is recorded, and refunded if the booking was already paid
    S.FAILED: frozenset({S.SUCCEEDED}),
}


def may_move(current: str, target: IntentState) -> bool:
    return target in MOVES[IntentState(current)]


class RefundState(StrEnum):
    PENDING = "pending"  # row committed; Stripe not asked or the outcome unknown
    PROCESSING = "processing"  # Stripe accepted it, funds not yet returned
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Account(StrEnum):
    """Ledger accounts (double entry: every entry's lines add up to zero)."""

    CASH = "stripe_balance"  # money at Stripe on the platform's account
    CUSTOMER_FUNDS = "customer_funds"  # booking money held in escrow until completion (P-22)
    PLATFORM_FEE = "platform_fee"
    VAT_PAYABLE = "vat_payable"
    AGENCY_PAYABLE = "agency_payable"
    REFUNDS = "refunds_in_flight"  # refunds Stripe accepted but not yet settled
    DEPOSITS_HELD = "deposits_held"  # authorisations on customers' cards (memorandum pair)
    DEPOSIT_AUTHORISATIONS = "deposit_authorisations"
    DEPOSITS_CAPTURED = "deposits_captured"
    PAYOUTS = "payouts"
    DISPUTED = "disputed_funds"  # what Stripe withdrew for an open chargeback (P-24)
    DISPUTE_LOSSES = "dispute_losses"  # chargebacks lost: the money went back to the cardholder


class DisputeStatus(StrEnum):
    """Stripe's dispute statuses ("Disputes": the ``status`` field)."""

    WARNING_NEEDS_RESPONSE = "warning_needs_response"  # an inquiry: no funds withdrawn yet
    WARNING_UNDER_REVIEW = "warning_under_review"
    WARNING_CLOSED = "warning_closed"
    NEEDS_RESPONSE = "needs_response"
    UNDER_REVIEW = "under_review"
    WON = "won"
    LOST = "lost"
    PREVENTED = "prevented"


D = DisputeStatus
AWAITING_EVIDENCE = frozenset({D.NEEDS_RESPONSE, D.WARNING_NEEDS_RESPONSE})
DISPUTE_CLOSED = frozenset({D.WARNING_CLOSED, D.WON, D.LOST, D.PREVENTED})
# a dispute only goes forward: awaiting evidence -> under review -> closed; an inquiry may become a chargeback
_DISPUTE_RANK = {D.WARNING_NEEDS_RESPONSE: 0, D.NEEDS_RESPONSE: 1, D.WARNING_UNDER_REVIEW: 2, D.UNDER_REVIEW: 2,
                 D.WARNING_CLOSED: 3, D.WON: 3, D.LOST: 3, D.PREVENTED: 3}


def dispute_may_move(current: str, target: str) -> bool:
    """A late ``charge.dispute.updated`` never reopens a closed case or takes one back to awaiting evidence."""
    try:
        now, then = DisputeStatus(current), DisputeStatus(target)
    except ValueError:
        return False
    if now in DISPUTE_CLOSED:
        return False
    return _DISPUTE_RANK[then] > _DISPUTE_RANK[now]
