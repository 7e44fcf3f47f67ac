"""The one clock: what time it is now, in UTC and in the business's own time zone.

Services ask ``clock.now()`` (an aware UTC datetime) and ``clock.business_today()`` (the calendar day in
Dubai, where the product operates: ages, rental days and the agency app's day view use it). Both read the
system clock through ``datetime.now``, so a test controls them with ``time_machine.travel``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

BUSINESS_TZ = ZoneInfo("Asia/Dubai")


def now() -> datetime:
    return datetime.now(UTC)


def business_now() -> datetime:
    return datetime.now(BUSINESS_TZ)


def business_today() -> date:
    return business_now().date()
