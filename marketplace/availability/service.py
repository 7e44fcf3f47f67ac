"""A car's taken time (P-16): the one home of the overlap rule, the turnaround buffer and the serialised write.

Every period a car is taken is one ``vehicle_occupancies`` row held by a booking (its period plus the car's
turnaround buffer) or by an availability block (exactly its period). A period ``[starts_at, ends_at)`` is free
for a holder when no row overlaps ``[starts_at, until)``, where ``until`` is ``ends_at`` plus the buffer the
holder's kind carries (``states.BUFFERED``). The rule is stated twice, once per language, and a property test
(tests/availability) keeps the two equal on both databases:

- in Python, ``is_free`` (quotes, bookings, date changes, blocks);
- in SQL, ``free_during`` (search: one ``NOT EXISTS`` per candidate car).

Writes go through ``hold``, ``move`` and ``release`` inside ``serialised``: on PostgreSQL the exclusion
constraint decides a race atomically, on SQLite the unit of work holds the write lock (BEGIN IMMEDIATE) and
``hold`` checks first. A lost race is 409 ``vehicle_unavailable``, never a 500. Nothing here commits.

The area is keyed by car id and holder id only: it imports no other area, so every area that takes a car's
time (bookings, fleet's blocks, next payments and handover) can call it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    ColumnElement,
    ColumnExpressionArgument,
    Interval,
    String,
    bindparam,
    cast,
    delete,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
)

from marketplace import transactions
from marketplace.availability.models import VehicleOccupancy
from marketplace.availability.states import BUFFERED, HolderKind
from marketplace.errors import Conflict, Unprocessable
from marketplace.extensions import UTCDateTime, db, utcnow
from marketplace.transactions import EXCLUSION_VIOLATION, UNIQUE_VIOLATION, Retry

T = TypeVar("T")

# ---- the bounds -------------------------------------------------------------------------------------

MAX_TURNAROUND_MINUTES = 24 * 60  # the longest buffer an agency or a car may set
MAX_RENTAL_DAYS = 30
MIN_LEAD = timedelta(hours=1)
BOOKING_HORIZON = timedelta(days=365)
MAX_BLOCK = timedelta(days=90)
# every occupancy is shorter than this, which bounds the availability probes (PERFORMANCE.md): bookings are
# at most 30 days plus a buffer of at most a day, blocks at most 90 days (PeriodRule checks both)
MAX_OCCUPANCY = timedelta(days=92)
_HALF_OPEN: ColumnElement[Any] = literal_column("'[)'")  # the bounds the exclusion constraint uses


class VehicleUnavailable(Conflict):
    code = "vehicle_unavailable"
    message = "The car is not available for this whole period."


class Car(Protocol):
    """What availability needs of a car: its id and its turnaround buffer (fleet's ``Vehicle`` is one)."""

    @property
    def id(self) -> int: ...

    @property
    def turnaround_minutes(self) -> int: ...


@dataclass(frozen=True)
class Holder:
    """Who takes the time: a booking or a block, by id."""

    kind: HolderKind
    id: int

    @classmethod
    def booking(cls, booking_id: int) -> Holder:
        return cls(HolderKind.BOOKING, booking_id)

    @classmethod
    def block(cls, block_id: int) -> Holder:
        return cls(HolderKind.BLOCK, block_id)


@dataclass(frozen=True)
class Hold:
    """One taken period of a car, as a row of ``vehicle_occupancies`` says (buffer included)."""

    holder: Holder
    starts_at: datetime
    ends_at: datetime


# ---- which periods may be asked for --------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodRule:
    """What a period must be before anyone asks whether it is free: one check for rentals and blocks, the
    words its answers use, and the bound the availability probes rely on."""

    longest: timedelta
    too_long: str
    backwards: str
    lead: timedelta | None = None  # must start at least this far from now
    horizon: timedelta | None = None  # must start at most this far from now
    over: str | None = None  # when set, a period that already ended is refused with these words
    buffered: bool = True

    def __post_init__(self) -> None:
        longest_buffer = timedelta(minutes=MAX_TURNAROUND_MINUTES) if self.buffered else timedelta(0)
        if self.longest + longest_buffer >= MAX_OCCUPANCY:
            raise ValueError("a period this long would escape the MAX_OCCUPANCY bound of the probes")


RENTAL = PeriodRule(longest=timedelta(days=MAX_RENTAL_DAYS), too_long=f"A rental lasts at most {MAX_RENTAL_DAYS} days.",
                    backwards="The return must be after the pick-up.", lead=MIN_LEAD, horizon=BOOKING_HORIZON)
BLOCK = PeriodRule(longest=MAX_BLOCK, too_long=f"A block lasts at most {MAX_BLOCK.days} days.",
                   backwards="The end must be after the start.", over="The block is already over.", buffered=False)


def check_period(starts_at: datetime, ends_at: datetime, rule: PeriodRule = RENTAL, *,
                 now: datetime | None = None) -> None:
    """422 unless the period has a time zone, ends after it starts and keeps the rule's lead time, horizon,
    length and (for blocks) is not over. The first failure is reported, in that order."""
    now = now or utcnow()
    errors: dict[str, list[str]] = {}
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        errors["starts_at"] = ["Times need a time zone (ISO 8601 with an offset or Z)."]
    elif ends_at <= starts_at:
        errors["ends_at"] = [rule.backwards]
    elif rule.lead is not None and starts_at < now + rule.lead:
        errors["starts_at"] = ["Pick-up must be at least one hour from now."]
    elif rule.horizon is not None and starts_at > now + rule.horizon:
        errors["starts_at"] = ["Bookings open up to a year ahead."]
    elif ends_at - starts_at > rule.longest:
        errors["ends_at"] = [rule.too_long]
    elif rule.over is not None and ends_at <= now:
        errors["ends_at"] = [rule.over]
    if errors:
        raise Unprocessable(details={"fields": errors})


# ---- the turnaround buffer ---------------------------------------------------------------------------


def buffer(car: Car) -> timedelta:
    """The time the car needs after a rental before the next one (cleaning, refuelling, handover)."""
    return timedelta(minutes=car.turnaround_minutes)


def occupied_until(car: Car, ends_at: datetime) -> datetime:
    """When a rental of ``car`` ending at ``ends_at`` frees it: the end plus the car's buffer."""
    return ends_at + buffer(car)


def _until(car: Car, ends_at: datetime, kind: HolderKind) -> datetime:
    return occupied_until(car, ends_at) if kind in BUFFERED else ends_at


# ---- the overlap rule in Python ---------------------------------------------------------------------------

# built once, run with parameters (a statement built per call costs more Python than the query, and every
# quote and booking asks): any row overlapping [:starts_at, :until), probed from :earliest on
_OVERLAP = select(VehicleOccupancy.id).where(
    VehicleOccupancy.vehicle_id == bindparam("vehicle_id"),
    VehicleOccupancy.starts_at < bindparam("until"),
    VehicleOccupancy.ends_at > bindparam("starts_at"),
    VehicleOccupancy.starts_at > bindparam("earliest"),
).limit(1)
_HOLDER_COLUMN = {HolderKind.BOOKING: VehicleOccupancy.booking_id, HolderKind.BLOCK: VehicleOccupancy.block_id}
_OVERLAP_OTHER = {kind: _OVERLAP.where(or_(column.is_(None), column != bindparam("ignore")))
                  for kind, column in _HOLDER_COLUMN.items()}


def _probe(vehicle_id: int, starts_at: datetime, until: datetime) -> dict[str, Any]:
    return {"vehicle_id": vehicle_id, "until": until, "starts_at": starts_at, "earliest": starts_at - MAX_OCCUPANCY}


def _free(vehicle_id: int, starts_at: datetime, until: datetime, ignore: Holder | None) -> bool:
    params = _probe(vehicle_id, starts_at, until)
    if ignore is None:
        return db.session.execute(_OVERLAP, params).first() is None
    return db.session.execute(_OVERLAP_OTHER[ignore.kind], {**params, "ignore": ignore.id}).first() is None


def is_free(car: Car, starts_at: datetime, ends_at: datetime, *, kind: HolderKind = HolderKind.BOOKING,
            ignore: Holder | None = None) -> bool:
    """No hold overlaps ``[starts_at, ends_at + the buffer kind carries)``; ``ignore``'s own hold aside (a
    booking moving its dates). The SQL twin is ``free_during``."""
    return _free(car.id, starts_at, _until(car, ends_at, kind), ignore)


def conflicts(car: Car, starts_at: datetime, ends_at: datetime, *, kind: HolderKind = HolderKind.BOOKING,
              ignore: Holder | None = None, limit: int = 20) -> list[Hold]:
    """The holds in the way of ``is_free``'s question (empty exactly when it is free), earliest first."""
    until = _until(car, ends_at, kind)
    stmt = select(VehicleOccupancy).where(
        VehicleOccupancy.vehicle_id == car.id, VehicleOccupancy.starts_at < until,
        VehicleOccupancy.ends_at > starts_at, VehicleOccupancy.starts_at > starts_at - MAX_OCCUPANCY)
    if ignore is not None:
        column = _HOLDER_COLUMN[ignore.kind]
        stmt = stmt.where(or_(column.is_(None), column != ignore.id))
    rows = db.session.execute(stmt.order_by(VehicleOccupancy.starts_at, VehicleOccupancy.id).limit(limit)).scalars()
    return [Hold(_holder_of(row), row.starts_at, row.ends_at) for row in rows]


def _holder_of(row: VehicleOccupancy) -> Holder:
    if row.booking_id is not None:
        return Holder.booking(row.booking_id)
    assert row.block_id is not None
    return Holder.block(row.block_id)


def holds_of(holder: Holder) -> list[Hold]:
    """The period(s) a booking or a block holds (none once released)."""
    rows = db.session.execute(select(VehicleOccupancy).where(_HOLDER_COLUMN[holder.kind] == holder.id)).scalars()
    return [Hold(holder, row.starts_at, row.ends_at) for row in rows]


# ---- the overlap rule in SQL (search) ------------------------------------------------------------------


def free_during(vehicle_id: ColumnExpressionArgument[int], turnaround_minutes: ColumnExpressionArgument[int], *,
                dialect: str) -> ColumnElement[bool]:
    """``is_free`` in SQL for a rental: ``NOT EXISTS`` a hold of car ``vehicle_id`` overlapping
    ``[:free_start, :free_end + turnaround_minutes)``. Bind ``free_during_parameters(...)`` with it.

    The ``starts_at > start - MAX_OCCUPANCY`` bound (every hold is shorter than that) and an upper bound from
    the longest possible buffer keep each probe to a few index entries. On PostgreSQL the overlap is written as
    the exclusion constraint's own ``tstzrange(starts_at, ends_at, '[)') && ...``, so the planner may probe its
    GiST index too. The expression holds no values: a statement built with it once is reused (search caches
    its statements by shape).
    """
    occ = VehicleOccupancy
    when = UTCDateTime()
    bounds = [occ.vehicle_id == vehicle_id, occ.starts_at > bindparam("free_low", type_=when),
              occ.starts_at < bindparam("free_high", type_=when), occ.ends_at > bindparam("free_start", type_=when)]
    overlap: ColumnElement[bool]
    if dialect == "postgresql":
        until = bindparam("free_end", type_=when) + type_coerce(
            func.make_interval(0, 0, 0, 0, 0, turnaround_minutes), Interval())
        overlap = func.tstzrange(occ.starts_at, occ.ends_at, _HALF_OPEN).op("&&")(
            func.tstzrange(bindparam("free_start", type_=when), until, _HALF_OPEN))
    else:
        # SQLite keeps UTC times as text ("YYYY-MM-DD HH:MM:SS.ffffff"): add the minutes with strftime and
        # put the fraction back, so the comparison stays exact (a back-to-back period is free)
        modifier = "+" + cast(turnaround_minutes, String) + " minutes"
        until_text = (func.strftime("%Y-%m-%d %H:%M:%S", bindparam("free_end_text", type_=String), modifier,
                                    type_=String) + bindparam("free_end_fraction", type_=String))
        overlap = occ.starts_at < until_text
    return ~select(occ.id).where(*bounds, overlap).exists()


def _sqlite_text(when: datetime) -> str:
    """A UTC time exactly as SQLAlchemy stores it in SQLite (text that sorts chronologically)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def free_during_parameters(starts_at: datetime, ends_at: datetime, *, dialect: str) -> dict[str, Any]:
    """The values ``free_during`` binds for the period ``[starts_at, ends_at)``."""
    start, end = starts_at.astimezone(UTC), ends_at.astimezone(UTC)
    params: dict[str, Any] = {"free_start": start, "free_end": end, "free_low": start - MAX_OCCUPANCY,
                              "free_high": end + timedelta(minutes=MAX_TURNAROUND_MINUTES)}
    if dialect != "postgresql":
        text_end = _sqlite_text(end)
        params.update(free_end_text=text_end[:19], free_end_fraction=text_end[19:])
    return params


# ---- the serialised write -----------------------------------------------------------------------------------

_IN_WRITE = "availability.serialised"


def _occupancy_conflict(state: str | None) -> None:
    """An overlap, or retries run out, is 409 ``vehicle_unavailable``; a unique clash is retried."""
    if state in (EXCLUSION_VIOLATION, None):
        raise VehicleUnavailable()
    if state == UNIQUE_VIOLATION:
        raise Retry()


def serialised(work: Callable[[], T], *, on_conflict: Callable[[str | None], T | None] | None = None) -> T:
    """Run ``work`` (which holds, moves or releases a car's time) as the serialised write of the caller's unit
    of work (``transactions.serialised``). When the database refuses the write (``sqlstate``), ``on_conflict``
    may answer first (a booking replays its idempotent twin); otherwise an overlap is 409
    ``vehicle_unavailable`` and a unique clash re-runs the unit. Contention that outlasts the retries is
    ``vehicle_unavailable`` too."""

    def guarded() -> T:
        info = db.session.info
        info[_IN_WRITE] = info.get(_IN_WRITE, 0) + 1
        try:
            return work()
        finally:
            info[_IN_WRITE] -= 1

    def conflict(state: str | None) -> T | None:
        if on_conflict is not None:
            outcome = on_conflict(state)
            if outcome is not None:
                return outcome
        _occupancy_conflict(state)
        return None

    return transactions.serialised(guarded, on_conflict=conflict, contended=VehicleUnavailable)


def _require_serialised() -> None:
    if not db.session.info.get(_IN_WRITE):
        raise RuntimeError("a car's time is written only inside availability.serialised")


def hold(car: Car, starts_at: datetime, ends_at: datetime, holder: Holder) -> Hold:
    """Take ``[starts_at, ends_at)`` (plus the buffer the holder's kind carries) for ``holder``, or raise 409
    ``vehicle_unavailable``. Inside ``serialised`` only; flushes, so the exclusion constraint speaks here."""
    _require_serialised()
    until = _until(car, ends_at, holder.kind)
    if until - starts_at >= MAX_OCCUPANCY:
        raise ValueError("a hold longer than MAX_OCCUPANCY escapes the probes (check_period first)")
    # SQLite has no exclusion constraint: the unit holds the write lock, so this check is the rule there.
    # On PostgreSQL the constraint decides (atomically, also against a concurrent writer).
    if db.engine.dialect.name != "postgresql" and not _free(car.id, starts_at, until, None):
        raise VehicleUnavailable()
    row = VehicleOccupancy(vehicle_id=car.id, starts_at=starts_at.astimezone(UTC), ends_at=until.astimezone(UTC),
                           booking_id=holder.id if holder.kind == HolderKind.BOOKING else None,
                           block_id=holder.id if holder.kind == HolderKind.BLOCK else None)
    db.session.add(row)
    db.session.flush()  # the exclusion constraint speaks here
    return Hold(holder, row.starts_at, row.ends_at)


def release(holder: Holder) -> int:
    """Give back every period ``holder`` takes (a cancelled or expired booking, a removed block); idempotent.
    Returns how many holds went."""
    result = db.session.execute(delete(VehicleOccupancy).where(_HOLDER_COLUMN[holder.kind] == holder.id))
    return int(getattr(result, "rowcount", 0) or 0)


def move(car: Car, holder: Holder, starts_at: datetime, ends_at: datetime) -> Hold:
    """Move ``holder``'s time to a new period: free apart from its own hold, or 409 ``vehicle_unavailable``
    with nothing changed. Inside ``serialised`` only."""
    _require_serialised()
    if not is_free(car, starts_at, ends_at, kind=holder.kind, ignore=holder):
        raise VehicleUnavailable()
    release(holder)
    db.session.flush()
    return hold(car, starts_at, ends_at, holder)
