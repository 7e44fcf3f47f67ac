"""Vehicle statuses: only a listed car of an active agency appears in search and can be booked."""

from __future__ import annotations

from enum import StrEnum


class VehicleStatus(StrEnum):
    LISTED = "listed"
    UNLISTED = "unlisted"
    MAINTENANCE = "maintenance"
