"""Booking states and the moves allowed between them."""

from __future__ import annotations

from enum import StrEnum

from marketplace.states import IllegalTransition as _IllegalTransition
from marketplace.states import check_transition


class BookingStatus(StrEnum):
    PENDING_PAYMENT = "pending_payment"
    CONFIRMED = "confirmed"
    IN_PROGRESS = "in_progress"  # handed over
    RETURNED = "returned"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # not paid in time
    NO_SHOW = "no_show"


B = BookingStatus
TRANSITIONS: dict[BookingStatus, frozenset[BookingStatus]] = {
    B.PENDING_PAYMENT: frozenset({B.CONFIRMED, B.CANCELLED, B.EXPIRED}),
    B.CONFIRMED: frozenset({B.IN_PROGRESS, B.CANCELLED, B.NO_SHOW}),
    B.IN_PROGRESS: frozenset({B.RETURNED}),
    B.RETURNED: frozenset({B.COMPLETED}),
    B.COMPLETED: frozenset(),
    B.CANCELLED: frozenset(),
    B.EXPIRED: frozenset(),
    B.NO_SHOW: frozenset(),
}
ACTIVE = frozenset({B.PENDING_PAYMENT, B.CONFIRMED, B.IN_PROGRESS})  # these hold the car
MODIFIABLE = frozenset({B.PENDING_PAYMENT, B.CONFIRMED})


class IllegalTransition(_IllegalTransition):
    message = "This booking cannot move to that state from its current one."


def check(current: str, target: BookingStatus) -> None:
    check_transition(TRANSITIONS, current, target, IllegalTransition)
