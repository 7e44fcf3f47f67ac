"""Money: amounts in fils, the platform fee (P-13), UAE VAT 5 % (P-23) and the rounding rules of ``money.py``."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketplace import money
from marketplace.bookings import service as bookings
from marketplace.money import Breakdown, FeeRule, Line, Money

fils = st.integers(min_value=0, max_value=10**12)
signed_fils = st.integers(min_value=-(10**12), max_value=10**12)
days = st.integers(min_value=0, max_value=400)


def _half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _old_price(rate: int, n: int) -> tuple[int, int, int, int]:
    """What bookings/service.py computed before the rules moved here (the reference for "unchanged")."""
    rental = rate * n
    fee = (rental * 10 + 50) // 100
    vat = ((rental + fee) * 5 + 50) // 100
    return rental, fee, vat, rental + fee + vat


# ---- the value ------------------------------------------------------------------------------------


def test_money_refuses_what_is_not_a_whole_number_of_fils() -> None:
    for bad in (1.5, True, Decimal("1"), "100"):
        with pytest.raises(TypeError):
            Money(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Money(100, "USD")
    with pytest.raises(TypeError):
        Money(100) * 1.5  # type: ignore[operator]
    with pytest.raises(TypeError):
        Money(100) + 5  # type: ignore[operator]


def test_money_adds_compares_and_prints() -> None:
    assert Money(150) + Money(250) == Money(400)
    assert Money(150) - Money(250) == Money(-100)
    assert -Money(5) == Money(-5) and 3 * Money(7) == Money(21) == Money(7) * 3
    assert Money(1) < Money(2) <= Money(2) and Money(3) > Money(2) >= Money(2)
    assert str(Money(123456789)) == "AED 1,234,567.89"
    assert str(Money(-5)) == "-AED 0.05"
    assert money.total([]) == Money.zero()
    assert money.total([Money(1), Money(2), Money(3)]) == Money(6)


# ---- rounding edges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("net", "vat"), [
    (0, 0), (1, 0), (9, 0), (10, 1),  # 0.45 -> 0, 0.5 -> 1: half rounds up
    (29, 1), (30, 2), (11000, 550), (99_999, 5000), (-10, -1), (-9, 0),  # a refund rounds to the exact negation
])
def test_vat_rounds_half_up_to_the_fil(net: int, vat: int) -> None:  # enforces P-23
    assert money.vat_on(Money(net)) == Money(vat)


@pytest.mark.parametrize(("rental", "fee"), [(0, 0), (4, 0), (5, 1), (15, 2), (25, 3), (60000, 6000), (12345, 1235)])
def test_platform_fee_is_ten_percent_rounded_half_up(rental: int, fee: int) -> None:  # enforces P-13
    assert money.PLATFORM_FEE.fee(Money(rental)) == Money(fee)


def test_a_fee_rule_can_be_a_formula_but_sees_only_the_amount() -> None:  # enforces P-13
    rule = FeeRule(basis_points=750, fixed_fils=200)  # 7.5 % + AED 2
    assert rule.fee(Money(10000)) == Money(750 + 200)
    assert rule.fee(Money(10)) == Money(1 + 200)  # 0.75 -> 1
    with pytest.raises(ValueError):
        money.percent_of(Money(1), -1)


@pytest.mark.parametrize(("gross", "net", "vat"), [
    (0, 0, 0), (1, 1, 0), (21, 20, 1), (105, 100, 5), (10500, 10000, 500), (11550, 11000, 550), (-105, -100, -5),
])
def test_split_inclusive(gross: int, net: int, vat: int) -> None:
    assert money.split_inclusive(Money(gross)) == (Money(net), Money(vat))


def test_rental_price_matches_the_quotes_already_given() -> None:  # P-15 quotes, unchanged
    price = money.rental_price(Money(20000), 3)
    assert (price.line("rental").net, price.line("platform_fee").net, price.vat, price.total) == (
        Money(60000), Money(6000), Money(3300), Money(69300))
    # VAT on the sum, not per line: per line would give 0 + 0 here, the quotes always gave 1
    price = money.rental_price(Money(9), 1)
    assert (price.line("rental").net, price.line("platform_fee").net, price.vat) == (Money(9), Money(1), Money(1))
    assert price.line("rental").vat + price.line("platform_fee").vat == Money(1)
    with pytest.raises(KeyError):
        price.line("deposit")


def test_allocate_gives_leftover_fils_to_the_largest_remainders() -> None:
    assert money.allocate(Money(100), [Money(1), Money(1), Money(1)]) == [Money(34), Money(33), Money(33)]
    assert money.allocate(Money(-100), [Money(1), Money(1), Money(1)]) == [Money(-34), Money(-33), Money(-33)]
    assert money.allocate(Money(10), [Money(1), Money(2), Money(7)]) == [Money(1), Money(2), Money(7)]
    assert money.allocate(Money(0), [Money(0), Money(0)]) == [Money(0), Money(0)]
    with pytest.raises(ValueError):
        money.allocate(Money(1), [Money(0)])
    with pytest.raises(ValueError):
        money.allocate(Money(1), [Money(-1), Money(2)])


def test_taxed_refuses_mixed_signs_and_a_breakdown_negates() -> None:
    with pytest.raises(ValueError):
        money.taxed([("rental", Money(100)), ("discount", Money(-10))])
    price = money.rental_price(Money(10000), 2)
    credit = price.negated()
    assert credit.total == -price.total and credit.vat == -price.vat
    assert credit.portion(Money(-1000)).total == Money(-1000)
    assert price.as_dict() == {"lines": [{"kind": "rental", "net": 20000, "vat": 1000},
                                         {"kind": "platform_fee", "net": 2000, "vat": 100}],
                               "net": 22000, "vat": 1100, "total": 23100, "currency": "AED"}


def test_portion_stays_inside_the_breakdown() -> None:
    price = money.rental_price(Money(10000), 1)
    assert price.portion(price.total) == price
    assert price.portion(Money(0)).total == Money(0)
    for outside in (price.total + Money(1), Money(-1)):
        with pytest.raises(ValueError):
            price.portion(outside)


# ---- properties ------------------------------------------------------------------------------------


@given(rate=st.integers(min_value=0, max_value=10**9), n=days)
def test_bookings_price_is_what_it_was(rate: int, n: int) -> None:  # behaviour unchanged by the move
    assert bookings.price(rate, n) == _old_price(rate, n)


@given(rate=st.integers(min_value=0, max_value=10**9), n=days)
def test_lines_sum_to_totals_and_vat_stays_within_five_percent(rate: int, n: int) -> None:  # P-23
    price = money.rental_price(Money(rate), n)
    assert price.total == money.total(line.gross for line in price.lines)
    assert price.net + price.vat == price.total
    assert price.vat == money.total(line.vat for line in price.lines)
    # never more than 5 % plus half a fil of rounding, overall; each line within one and a half fils of its 5 %
    assert 100 * price.vat.fils - 5 * price.net.fils <= 50
    assert 5 * price.net.fils - 100 * price.vat.fils <= 50
    for line in price.lines:
        assert abs(100 * line.vat.fils - 5 * line.net.fils) < 150


@given(net=signed_fils)
def test_vat_matches_decimal_half_up(net: int) -> None:
    exact = Decimal(net) * Decimal("0.05")
    expected = _half_up(abs(exact)) * (1 if net >= 0 else -1)
    assert money.vat_on(Money(net)) == Money(expected)


@given(gross=signed_fils)
def test_split_inclusive_adds_up_and_is_within_a_fil_of_vat_on_net(gross: int) -> None:
    net, vat = money.split_inclusive(Money(gross))
    assert net + vat == Money(gross)
    assert abs(vat.fils - money.vat_on(net).fils) <= 1


@given(amount=signed_fils, weights=st.lists(fils, min_size=1, max_size=8).filter(lambda w: sum(w) > 0))
def test_allocate_always_adds_up_and_each_part_is_within_a_fil(amount: int, weights: list[int]) -> None:
    parts = money.allocate(Money(amount), [Money(w) for w in weights])
    assert money.total(parts) == Money(amount)
    whole = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        assert abs(part.fils * whole - amount * weight) < whole  # less than one fil from the exact share


@given(rate=st.integers(min_value=1, max_value=10**7), n=st.integers(min_value=1, max_value=60), data=st.data())
def test_a_portion_adds_up_to_its_amount(rate: int, n: int, data: st.DataObject) -> None:  # refunds, next
    price = money.rental_price(Money(rate), n)
    amount = Money(data.draw(st.integers(min_value=0, max_value=price.total.fils)))
    part = price.portion(amount)
    assert part.total == amount
    assert [line.kind for line in part.lines] == [line.kind for line in price.lines]
    for piece, line in zip(part.lines, price.lines, strict=True):
        assert Money(0) <= piece.net <= line.net and Money(0) <= piece.vat <= line.vat


def test_breakdown_is_built_only_from_lines() -> None:
    custom = Breakdown((Line("fine", Money(50000), Money(0)), Line("admin_fee", Money(1000), Money(50))))
    assert custom.total == Money(51050) and custom.net == Money(51000)
