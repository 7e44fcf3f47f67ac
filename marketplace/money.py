"""Money: amounts and currency, the platform fee, UAE VAT and rounding, in one place.

Every amount the platform handles is a whole number of fils (1 AED = 100 fils) in one currency, AED.
Quotes use this module now; the ledger, refunds, tax invoices and post-rental charges use it next, so
a rounding rule is written once and every total is the exact sum of its lines.

Why a small frozen ``Money`` value and not bare ``int`` fils: amounts are about to be added up across
bookings, deposits, refunds and ledger postings, and an ``int`` lets a day count, a percentage or a
float slip into a sum without a word from mypy. ``Money`` refuses floats, booleans and ``Decimal``,
only adds and subtracts ``Money`` of the same currency, multiplies only by whole numbers, and has no
division at all: every split goes through a function here that states its rounding. Tables keep plain
integer ``*_fils`` columns (``Money.fils`` at the edge), so nothing in the schema changes.

Rounding (documented once, used everywhere):

- A percentage of an amount is rounded half away from zero to the fil (half up for the positive amounts
  of a sale; a refund of the same amount rounds to exactly its negation). Rates are in basis points
  (1/100 of a percent) so a rate like 7.5 % needs no float.
- VAT is 5 % (UAE standard rate). It is worked out once per breakdown, on the sum of its net lines,
  rounded half up to the fil, and that VAT is then shared out over the lines in proportion to their net
  (largest remainder), so each line shows its share and the lines add up exactly to the totals. The Federal
  Tax Authority accepts tax computed on the invoice total; rounding each line on its own could add up to
  one fil per line, and would change the totals of bookings already quoted (they have always been
  computed this way).
- A VAT-inclusive amount is split as net = gross x 100/105 rounded half up, VAT = gross - net.

The platform fee (P-13) is fixed or formula-based and never personalised: ``FeeRule.fee`` sees only the
amount it is a fee on, never who is paying or which agency is paid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

CURRENCY = "AED"
CURRENCIES = frozenset({CURRENCY})  # the platform settles in dirhams only
FILS_PER_UNIT = 100
BASIS_POINTS = 10_000  # 100 %


class CurrencyMismatch(ValueError):
    """Amounts in two currencies were combined: a programming error, never a client's."""


@dataclass(frozen=True, slots=True)
class Money:
    """A whole number of minor units (fils) in one currency."""

    fils: int
    currency: str = CURRENCY

    def __post_init__(self) -> None:
        if type(self.fils) is not int:  # bool is an int subclass; float and Decimal have no place here
            raise TypeError(f"Money takes a whole number of fils, not {type(self.fils).__name__}")
        if self.currency not in CURRENCIES:
            raise ValueError(f"unsupported currency {self.currency!r}")

    @classmethod
    def zero(cls, currency: str = CURRENCY) -> Money:
        return cls(0, currency)

    def _same(self, other: Money) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} and {other.currency}")
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.fils + self._same(other).fils, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.fils - self._same(other).fils, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.fils, self.currency)

    def __mul__(self, times: int) -> Money:
        if type(times) is not int:
            raise TypeError("Money is multiplied only by a whole number; use percent_of or allocate")
        return Money(self.fils * times, self.currency)

    __rmul__ = __mul__

    def __lt__(self, other: Money) -> bool:
        return self.fils < self._same(other).fils

    def __le__(self, other: Money) -> bool:
        return self.fils <= self._same(other).fils

    def __gt__(self, other: Money) -> bool:
        return self.fils > self._same(other).fils

    def __ge__(self, other: Money) -> bool:
        return self.fils >= self._same(other).fils

    def __str__(self) -> str:
        sign = "-" if self.fils < 0 else ""
        units, fils = divmod(abs(self.fils), FILS_PER_UNIT)
        return f"{sign}{self.currency} {units:,}.{fils:02d}"


def total(amounts: Iterable[Money], currency: str = CURRENCY) -> Money:
    """The sum of ``amounts`` (zero for none); all in one currency."""
    result = Money.zero(currency)
    for amount in amounts:
        result += amount
    return result


def percent_of(amount: Money, basis_points: int) -> Money:
    """``amount`` x ``basis_points`` / 10,000, rounded half away from zero to the fil."""
    if type(basis_points) is not int or basis_points < 0:
        raise ValueError("a rate is a non-negative whole number of basis points")
    magnitude = (abs(amount.fils) * basis_points * 2 + BASIS_POINTS) // (2 * BASIS_POINTS)
    return Money(-magnitude if amount.fils < 0 else magnitude, amount.currency)


def allocate(amount: Money, weights: Sequence[Money]) -> list[Money]:
    """Share ``amount`` out in proportion to ``weights``; the parts always add up to ``amount`` exactly.

    Each part is the exact proportional share rounded down, and the fils left over go one each to the
    parts with the largest remainders (ties: the earlier part). A part therefore differs from its exact
    share by less than one fil. Weights must not be negative; with all weights zero only zero can be shared.
    """
    if any(w.fils < 0 for w in weights):
        raise ValueError("weights must not be negative")
    for weight in weights:
        amount._same(weight)
    whole = sum(w.fils for w in weights)
    if whole == 0:
        if amount.fils != 0:
            raise ValueError("cannot share a non-zero amount over zero weights")
        return [Money.zero(amount.currency) for _ in weights]
    magnitude = abs(amount.fils)
    shares = [magnitude * w.fils // whole for w in weights]
    remainders = [magnitude * w.fils % whole for w in weights]
    left = magnitude - sum(shares)
    for index in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
        shares[index] += 1
    sign = -1 if amount.fils < 0 else 1
    return [Money(sign * share, amount.currency) for share in shares]


# ---- the platform fee (P-13) ---------------------------------------------------------------------


@dataclass(frozen=True)
class FeeRule:
    """The platform's fee on an agency's price: a rate plus an optional fixed part, the same for everyone."""

    basis_points: int
    fixed_fils: int = 0

    def fee(self, amount: Money) -> Money:
        return percent_of(amount, self.basis_points) + Money(self.fixed_fils, amount.currency)


PLATFORM_FEE = FeeRule(basis_points=1_000)  # 10 % of the rental (README: quotes and bookings)


# ---- VAT (P-23) ------------------------------------------------------------------------------------

VAT_BASIS_POINTS = 500  # UAE standard rate, 5 %


def vat_on(net: Money) -> Money:
    """VAT on a net amount, rounded half up to the fil (half away from zero for a negative amount)."""
    return percent_of(net, VAT_BASIS_POINTS)


def split_inclusive(gross: Money) -> tuple[Money, Money]:
    """(net, VAT) of a VAT-inclusive amount: net = gross x 100/105 rounded half up; VAT is the rest.

    ``net + VAT == gross`` always; VAT differs from ``vat_on(net)`` by at most one fil (some gross amounts
    cannot be reached from any net one).
    """
    scale = BASIS_POINTS + VAT_BASIS_POINTS
    magnitude = (abs(gross.fils) * BASIS_POINTS * 2 + scale) // (2 * scale)
    net = Money(-magnitude if gross.fils < 0 else magnitude, gross.currency)
    return net, gross - net


# ---- breakdowns: quotes now; the ledger, refunds, invoices and charges next ----------------------


@dataclass(frozen=True)
class Line:
    """One priced item: what it is, its net amount and its share of the VAT."""

    kind: str  # "rental", "platform_fee"; later "fine", "toll", "damage", ...
    net: Money
    vat: Money

    @property
    def gross(self) -> Money:
        return self.net + self.vat


@dataclass(frozen=True)
class Breakdown:
    """Priced lines whose totals are, by construction, the exact sums of the lines."""

    lines: tuple[Line, ...]
    currency: str = CURRENCY

    @property
    def net(self) -> Money:
        return total((line.net for line in self.lines), self.currency)

    @property
    def vat(self) -> Money:
        return total((line.vat for line in self.lines), self.currency)

    @property
    def total(self) -> Money:
        return self.net + self.vat

    def line(self, kind: str) -> Line:
        for line in self.lines:
            if line.kind == kind:
                return line
        raise KeyError(kind)

    def negated(self) -> Breakdown:
        """The same lines with opposite sign: a full refund or credit note."""
        return Breakdown(tuple(Line(line.kind, -line.net, -line.vat) for line in self.lines), self.currency)

    def portion(self, amount: Money) -> Breakdown:
        """The part of this breakdown that ``amount`` (gross, same sign as the total) stands for.

        A partial refund or charge is shared over the lines by their gross, and each line's part over its
        net and VAT, so the portion's lines and totals add up to ``amount`` exactly.
        """
        if abs(amount.fils) > abs(self.total.fils) or (amount.fils and (amount.fils > 0) != (self.total.fils > 0)):
            raise ValueError("a portion lies between zero and the breakdown's total")
        sign = -1 if self.total.fils < 0 else 1
        parts = allocate(amount * sign, [line.gross * sign for line in self.lines])
        lines = []
        for line, part in zip(self.lines, parts, strict=True):
            net, vat = allocate(part, [line.net * sign, line.vat * sign])
            lines.append(Line(line.kind, net * sign, vat * sign))
        return Breakdown(tuple(lines), self.currency)

    def as_dict(self) -> dict[str, Any]:
        return {"lines": [{"kind": line.kind, "net": line.net.fils, "vat": line.vat.fils} for line in self.lines],
                "net": self.net.fils, "vat": self.vat.fils, "total": self.total.fils, "currency": self.currency}


def taxed(lines: Sequence[tuple[str, Money]], currency: str = CURRENCY) -> Breakdown:
    """A breakdown of net lines with VAT: computed on their sum, shared out by net (see the module's rule)."""
    nets = [net for _, net in lines]
    if any(net.fils < 0 for net in nets) and any(net.fils > 0 for net in nets):
        raise ValueError("lines of one breakdown share one sign; a refund is a negated breakdown")
    sum_net = total(nets, currency)
    sign = -1 if sum_net.fils < 0 else 1
    shares = allocate(vat_on(sum_net) * sign, [net * sign for net in nets])
    return Breakdown(tuple(Line(kind, net, share * sign) for (kind, net), share in zip(lines, shares, strict=True)),
                     currency)


def rental_price(daily_rate: Money, days: int, fee_rule: FeeRule = PLATFORM_FEE) -> Breakdown:
    """A rental's price: the agency's daily rate x days, the platform fee on it, VAT on both."""
    if type(days) is not int or days < 0:
        raise ValueError("days is a non-negative whole number")
    rental = daily_rate * days
    return taxed([("rental", rental), ("platform_fee", fee_rule.fee(rental))], daily_rate.currency)
