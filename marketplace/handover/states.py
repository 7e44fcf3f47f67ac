"""Where a handover stands, and the outcomes staff record at the identity check (P-18)."""

from __future__ import annotations

from enum import StrEnum

from marketplace.states import IllegalTransition as _IllegalTransition
from marketplace.states import check_transition


class Outcome(StrEnum):
    MATCH = "match"
    MISMATCH = "mismatch"
    LICENCE_MISSING = "licence_missing"  # the customer may come back with it: the check can be done again


class Stage(StrEnum):
    AWAITING_CHECK = "awaiting_check"
    MATCHED = "matched"  # identity confirmed: the car may be handed over
    STOPPED = "stopped"  # a mismatch: the booking is cancelled and the account re-reviewed
    HANDED_OVER = "handed_over"  # no more reveals from here on
    RETURNED = "returned"


S = Stage
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    S.AWAITING_CHECK: frozenset({S.AWAITING_CHECK, S.MATCHED, S.STOPPED}),
    S.MATCHED: frozenset({S.HANDED_OVER}),
    S.STOPPED: frozenset(),
    S.HANDED_OVER: frozenset({S.RETURNED}),
    S.RETURNED: frozenset(),
}
REVEALABLE = frozenset({S.AWAITING_CHECK, S.MATCHED})


class IllegalTransition(_IllegalTransition):
    message = "This handover step is not possible from where the handover stands."


def check(current: str, target: Stage) -> None:
    check_transition(TRANSITIONS, current, target, IllegalTransition)


class InspectionKind(StrEnum):
    PICKUP = "pickup"  # recorded after the identity match, before the car goes
    RETURN = "return"  # recorded after the handover, up to and at the return


class DamageArea(StrEnum):
    FRONT = "front"
    REAR = "rear"
    LEFT = "left"
    RIGHT = "right"
    ROOF = "roof"
    INTERIOR = "interior"
    WINDSCREEN = "windscreen"
    WHEELS = "wheels"


class DamageSeverity(StrEnum):
    SCRATCH = "scratch"
    DENT = "dent"
    CRACK = "crack"
    MISSING = "missing"
    OTHER = "other"


# The stages in which each inspection may be recorded, photographed and acknowledged.
INSPECTION_OPEN: dict[InspectionKind, frozenset[Stage]] = {
    InspectionKind.PICKUP: frozenset({S.MATCHED}),
    InspectionKind.RETURN: frozenset({S.HANDED_OVER, S.RETURNED}),
}
