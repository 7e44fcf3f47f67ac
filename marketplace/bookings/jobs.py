"""Bookings' durable work: an unpaid booking expires on time (P-15), and a sweep catches any whose work row
was lost. The rules live in ``bookings.service``; these are the names the job runner knows them by."""

from __future__ import annotations

from marketplace import jobs
from marketplace.bookings import service


@jobs.handler("booking.expire")
def expire(ref: str) -> None:
    service.expire(ref)


@jobs.periodic
def expire_overdue() -> None:
    service.expire_overdue()
