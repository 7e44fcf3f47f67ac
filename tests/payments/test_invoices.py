"""Tax invoices and credit notes, the service (P-23): mandatory fields, VAT by money.py, numbering without gaps
or duplicates (threads on PostgreSQL; a rolled-back invoice burns no number), idempotency per source, credit
note limits, immutability in the database, and the PDF's text."""

from __future__ import annotations

import io
import threading
import time
from datetime import date
from typing import Any

import pypdf
import pytest
from flask import Flask
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from marketplace import money, transactions
from marketplace.agencies.models import Agency
from marketplace.extensions import db
from marketplace.money import Money
from marketplace.payments import invoices
from marketplace.payments.invoices import Invoice, LineIn
from marketplace.users.models import User
from tests.factories import make_agency, make_customer, make_invoice

SUPPLY = date(2026, 12, 1)


def _pdf_text(data: bytes) -> str:
    assert data.startswith(b"%PDF-")
    reader = pypdf.PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def _seqs(issuer_key: str, series: str = "INV") -> list[int]:
    return sorted(db.session.execute(
        select(Invoice.seq).where(Invoice.issuer_key == issuer_key, Invoice.series == series)).scalars())


# ---- contents ------------------------------------------------------------------------------------


def test_an_agency_invoice_carries_every_mandatory_field(app_ctx: None) -> None:  # enforces P-23
    agency = make_agency(name="Desert Wheels LLC")
    customer = make_customer(full_name="Amal Saeed Rahman")
    quote = money.rental_price(Money(15000), 3)
    invoice = invoices.issue_invoice(
        agency, customer.user(),
        [LineIn.from_line(quote.line("rental"), "Toyota Corolla rental, 3 days", quantity=3)],
        SUPPLY, source=("booking_payment", "pay-1"))
    doc = invoices.invoice_json(invoice)
    assert doc["title"] == "Tax Invoice" and doc["type"] == "tax_invoice"
    assert doc["number"] == invoice.number and doc["number"].endswith("-INV-000001")
    assert doc["supplier"] == {"name": "Desert Wheels LLC", "address": "Sheikh Zayed Road, Dubai, AE",
                               "trn": agency.trn}
    # an agency's invoice to a private customer names them, without the home address agencies never get (P-17)
    assert doc["recipient"] == {"name": "Amal Saeed Rahman", "address": None, "trn": None}
    assert doc["issue_date"] == invoice.issue_date and doc["supply_date"] == SUPPLY
    (line,) = doc["lines"]
    assert line["description"] == "Toyota Corolla rental, 3 days"
    assert (line["quantity"], line["unit_price"], line["net"]) == (3, 15000, 45000)
    assert line["vat_rate"] == "5%" and line["vat_rate_basis_points"] == 500
    assert line["vat"] == quote.line("rental").vat.fils and line["total"] == 45000 + line["vat"]
    assert (doc["net"], doc["vat"], doc["total"], doc["currency"]) == (45000, line["vat"], line["total"], "AED")


def test_a_platform_invoice_names_the_platform_and_the_customers_address(app: Flask, app_ctx: None) -> None:
    # enforces P-23
    customer = make_customer(full_name="Bilal Omar")
    invoice = make_invoice(invoices.PLATFORM, customer.user(), nets=(4500,))
    settings = app.config["SETTINGS"]
    assert invoice.number == "CJ-INV-000001"
    assert (invoice.supplier_name, invoice.supplier_trn) == (settings.platform_legal_name, settings.platform_trn)
    assert invoice.recipient_address == "1 Test Street, Dubai, AE"


def test_vat_per_line_and_totals_follow_money(app_ctx: None) -> None:  # enforces P-23
    customer = make_customer()
    nets = (33333, 1667, 10001)
    invoice = make_invoice(invoices.PLATFORM, customer.user(), nets=nets)
    expected = money.taxed([(f"item{n}", Money(net)) for n, net in enumerate(nets, start=1)])
    assert [(line.net_fils, line.vat_fils) for line in invoice.lines] == [(x.net.fils, x.vat.fils)
                                                                           for x in expected.lines]
    assert invoice.vat_fils == money.vat_on(Money(sum(nets))).fils == expected.vat.fils
    assert invoice.total_fils == sum(line.net_fils + line.vat_fils for line in invoice.lines)
    # a booking's quoted breakdown keeps the VAT it was quoted with, so the invoices add up to what was paid
    quote = money.rental_price(Money(12345), 7)
    agency = make_agency()
    rental = invoices.issue_invoice(agency, customer.user(), [LineIn.from_line(quote.line("rental"), "Rental")],
                                    SUPPLY, source=("booking_payment", "q"))
    fee = invoices.issue_invoice(invoices.PLATFORM, customer.user(),
                                 [LineIn.from_line(quote.line("platform_fee"), "Booking fee")], SUPPLY,
                                 source=("booking_payment", "q"))
    assert rental.total_fils + fee.total_fils == quote.total.fils


def test_line_vat_that_is_not_five_percent_is_refused(app_ctx: None) -> None:
    customer = make_customer()
    with pytest.raises(ValueError, match="not 5 %"):
        invoices.issue_invoice(invoices.PLATFORM, customer.user(), [LineIn("Fee", Money(10000), vat=Money(900))],
                               SUPPLY, source=("test", "x"))


def test_the_pdf_shows_every_mandatory_field(app_ctx: None) -> None:  # enforces P-23
    agency = make_agency(name="Oasis Cars LLC")
    customer = make_customer(full_name="Huda Karim")
    invoice = make_invoice(agency, customer.user(), nets=(45000, 4500))
    body = _pdf_text(invoices.render_pdf(invoice))
    for expected in ("Tax Invoice", invoice.number, "Oasis Cars LLC", "Sheikh Zayed Road, Dubai, AE",
                     f"TRN: {agency.trn}", "Huda Karim", f"Date of issue: {invoice.issue_date.isoformat()}",
                     "Date of supply:", "Item 1", "Item 2", "450.00", "45.00", "5%",
                     "Total excluding VAT AED 495.00", "VAT at 5% AED 24.75", "AED 519.75"):
        assert expected in body, expected
    assert "1 Test Street" not in body  # P-17: not on an agency's invoice


# ---- numbering -----------------------------------------------------------------------------------


def test_each_issuer_and_series_counts_from_one_without_gaps(app_ctx: None) -> None:  # enforces P-23
    one, two = make_agency(), make_agency()
    customer = make_customer().user()
    made = [make_invoice(issuer, customer) for issuer in (one, invoices.PLATFORM, one, two, one, invoices.PLATFORM)]
    assert _seqs(f"agency:{one.id}") == [1, 2, 3]
    assert _seqs(f"agency:{two.id}") == [1]
    assert _seqs("platform") == [1, 2]
    assert len({i.number for i in made}) == len(made)
    note = invoices.issue_credit_note(made[0], Money(1000), "Goodwill", source=("refund", 1))
    assert note.series == "CN" and note.seq == 1 and note.number.endswith("-CN-000001")
    assert note.number.split("-")[0] == made[0].number.split("-")[0]


def test_a_rolled_back_invoice_burns_no_number(app: Flask, app_ctx: None) -> None:  # enforces P-23
    customer = make_customer().user()
    first = make_invoice(invoices.PLATFORM, customer)

    def fails() -> None:
        invoices.issue_invoice(invoices.PLATFORM, customer, [LineIn("Fee", Money(100))], SUPPLY,
                               source=("test", "doomed"))
        raise RuntimeError("the payment failed after the invoice was written")

    db.session.rollback()
    with pytest.raises(RuntimeError):
        transactions.run(fails)  # one unit of work, rolled back as a failed request or job is
    after = make_invoice(invoices.PLATFORM, customer)
    assert (first.seq, after.seq) == (1, 2)
    assert _seqs("platform") == [1, 2]


def test_the_same_source_is_invoiced_once(app_ctx: None) -> None:  # enforces P-23
    customer = make_customer().user()
    first = make_invoice(invoices.PLATFORM, customer, nets=(1000,), source="pay-7")
    again = make_invoice(invoices.PLATFORM, customer, nets=(1000,), source="pay-7")
    assert again.id == first.id and _seqs("platform") == [1]
    with pytest.raises(invoices.InvoiceSourceConflict):
        make_invoice(invoices.PLATFORM, customer, nets=(2000,), source="pay-7")


def _race(app: Flask, work: list[Any]) -> list[BaseException]:
    barrier = threading.Barrier(len(work))
    errors: list[BaseException] = []

    def one(job: Any) -> None:
        with app.app_context():
            barrier.wait()
            try:
                transactions.run(job)
            except BaseException as exc:  # collected and asserted on below
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=one, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


@pytest.mark.postgres_only
def test_concurrent_invoices_get_consecutive_numbers(app: Flask, app_ctx: None) -> None:  # enforces P-23, CC-06
    agency_id = make_agency().id
    user_id = make_customer().user_id
    count = 16

    def issue(n: int, fail: bool = False) -> Any:
        def work() -> None:
            agency, user = db.session.get(Agency, agency_id), db.session.get(User, user_id)
            invoices.issue_invoice(agency, user, [LineIn(f"Rental {n}", Money(10000 + n))], SUPPLY,
                                   source=("race", n))
            if fail:
                raise RuntimeError("rolled back after taking a number")
        return work

    # every fourth one rolls back after taking its number: the others still number 1..12 with no gap
    errors = _race(app, [issue(n, fail=n % 4 == 0) for n in range(count)])
    assert len(errors) == count // 4 and all(isinstance(e, RuntimeError) for e in errors)
    db.session.rollback()
    assert _seqs(f"agency:{agency_id}") == list(range(1, count - count // 4 + 1))
    # the same source raced from many threads is one invoice with one number
    errors = _race(app, [issue(99) for _ in range(8)])
    assert errors == []
    db.session.rollback()
    numbers = db.session.execute(select(Invoice.seq).where(Invoice.source_ref == "99")).scalars().all()
    assert numbers == [count - count // 4 + 1]


@pytest.mark.postgres_only
def test_without_the_row_lock_the_race_is_lost(app: Flask, app_ctx: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # CC-06 negative control: the same race with the series read but not locked takes one number twice
    user_id = make_customer().user_id
    real_take = invoices._take_number

    def unlocked(issuer_key: str, series: str) -> int:
        last = db.session.execute(select(invoices.InvoiceSequence.last_number).where(
            invoices.InvoiceSequence.issuer_key == issuer_key, invoices.InvoiceSequence.series == series)
        ).scalar_one_or_none()
        return int(last or 0)

    def slow_take(issuer_key: str, series: str, last: int) -> int:
        time.sleep(0.3)  # every racer has read the same last number by now
        return real_take(issuer_key, series, last)

    make_invoice(invoices.PLATFORM, make_customer().user())  # the series row exists
    monkeypatch.setattr(invoices, "_lock_series", unlocked)
    monkeypatch.setattr(invoices, "_take_number", slow_take)

    def issue(n: int) -> Any:
        def work() -> None:
            invoices.issue_invoice(invoices.PLATFORM, db.session.get(User, user_id), [LineIn("Fee", Money(100))],
                                   SUPPLY, source=("control", n))
        return work

    errors = _race(app, [issue(n) for n in range(4)])
    assert errors, "without the lock every racer still got its own number: the test proves nothing"


# ---- credit notes --------------------------------------------------------------------------------


def test_credit_notes_never_exceed_what_is_left(app_ctx: None) -> None:  # enforces P-23
    agency = make_agency()
    customer = make_customer().user()
    original = make_invoice(agency, customer, nets=(45000, 4500))  # total 519.75
    assert original.total_fils == 51975
    first = invoices.issue_credit_note(original, Money(20000), "Partial refund: cancelled late",
                                       source=("refund", "r1"))
    doc = invoices.invoice_json(first)
    assert doc["title"] == "Tax Credit Note" and doc["original"]["number"] == original.number
    assert doc["reason"] == "Partial refund: cancelled late" and doc["total"] == 20000
    assert doc["net"] + doc["vat"] == 20000 and all(line["credits_line"] for line in doc["lines"])
    assert invoices.remaining(original).total.fils == 31975
    with pytest.raises(invoices.CreditExceedsInvoice):
        invoices.issue_credit_note(original, Money(31976), "Too much", source=("refund", "r2"))
    rest = invoices.issue_credit_note(original, Money(31975), "The rest", source=("refund", "r3"))
    left = invoices.remaining(original)
    assert left.total.fils == 0 and all(line.net.fils == 0 and line.vat.fils == 0 for line in left.lines)
    # together the credit notes give back exactly the original's net and VAT
    assert first.net_fils + rest.net_fils == original.net_fils
    assert first.vat_fils + rest.vat_fils == original.vat_fils
    with pytest.raises(invoices.CreditExceedsInvoice):
        invoices.issue_credit_note(original, Money(1), "Nothing left", source=("refund", "r4"))
    assert invoices.invoice_json(original)["credit_notes"] == [first.number, rest.number]
    # a retry of the same refund is the same credit note
    assert invoices.issue_credit_note(original, Money(20000), "x", source=("refund", "r1")).id == first.id


def test_a_credit_note_by_line_is_limited_per_line(app_ctx: None) -> None:  # enforces P-23
    customer = make_customer().user()
    original = make_invoice(invoices.PLATFORM, customer, nets=(10000, 2000))
    fee_gross = original.lines[1].net_fils + original.lines[1].vat_fils
    with pytest.raises(invoices.CreditExceedsInvoice):
        invoices.issue_credit_note(original, [(2, Money(fee_gross + 1))], "Fee refund", source=("refund", 1))
    note = invoices.issue_credit_note(original, [(2, Money(fee_gross))], "Fee refund", source=("refund", 2))
    assert [(line.original_line_no, line.net_fils, line.vat_fils) for line in note.lines] == [
        (2, original.lines[1].net_fils, original.lines[1].vat_fils)]
    assert invoices.remaining(original).total.fils == original.lines[0].net_fils + original.lines[0].vat_fils


def test_the_platform_invoices_an_agency_with_its_trn(app_ctx: None) -> None:  # enforces P-23
    agency = make_agency(name="Gulf Fleet LLC")
    invoice = make_invoice(invoices.PLATFORM, agency, nets=(5000,))
    doc = invoices.invoice_json(invoice)
    assert doc["recipient"] == {"name": "Gulf Fleet LLC", "address": "Sheikh Zayed Road, Dubai, AE",
                                "trn": agency.trn}
    assert f"TRN: {agency.trn}" in _pdf_text(invoices.render_pdf(invoice))
    assert invoices.list_for_agency(_owner(agency), agency) == [invoice]


def _owner(agency: Agency) -> Any:
    from marketplace.permissions import Role
    from tests.factories import actor_for, make_staff

    return actor_for(make_staff(Role.AGENCY_OWNER, agency=agency))


# ---- immutable -----------------------------------------------------------------------------------


@pytest.mark.parametrize("statement", [
    "UPDATE invoices SET total_fils = 1",
    "UPDATE invoice_lines SET description = 'changed'",
    "DELETE FROM invoice_lines",
    "DELETE FROM invoices",
])
def test_issued_invoices_cannot_change_in_the_database(app_ctx: None, statement: str) -> None:  # enforces P-23
    invoice = make_invoice(invoices.PLATFORM, make_customer().user())
    with pytest.raises(DBAPIError, match="immutable"):
        db.session.execute(text(statement))
    db.session.rollback()
    assert db.session.get(Invoice, invoice.id) is not None
    assert db.session.execute(text("SELECT total_fils FROM invoices")).scalar_one() == invoice.total_fils
