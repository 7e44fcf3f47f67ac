"""What every area's state machine shares: the one ``IllegalTransition`` error and the table check.

Each area keeps its statuses and its table of allowed moves in its own ``states.py``; the check and the
error (code ``illegal_state_transition``) are the same everywhere. An area may subclass the error to word
its message for its own objects; callers catch the base.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from enum import StrEnum
from typing import TypeVar

from marketplace.errors import Conflict

E = TypeVar("E", bound=StrEnum)


class IllegalTransition(Conflict):
    code = "illegal_state_transition"
    message = "This cannot move to that state from its current one."


def check_transition(table: Mapping[E, Set[E]], current: str, target: E,
                     error: type[IllegalTransition] = IllegalTransition) -> None:
    """Refuse a move the table does not allow (``error`` names the area's wording of the refusal)."""
    if target not in table[type(target)(current)]:
        raise error(details={"from": current, "to": str(target)})
