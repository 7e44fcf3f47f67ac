"""Who can take a car's time: the kinds of holder an occupancy row belongs to."""

from __future__ import annotations

from enum import StrEnum


class HolderKind(StrEnum):
    BOOKING = "booking"  # an active booking: its period plus the car's turnaround buffer
    BLOCK = "block"  # an agency's availability block: exactly its period


# holds of these kinds carry the car's turnaround buffer after their end (cleaning, refuelling, handover)
BUFFERED = frozenset({HolderKind.BOOKING})
