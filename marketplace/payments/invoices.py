"""Tax invoices and credit notes (P-23): UAE VAT 5 %, numbered per issuer with no gaps, immutable once issued.

Who issues what: the platform issues its own invoices (its fee and services), and each agency issues the
invoices for the rentals it supplies. A credit note (for a refund) is issued by the issuer of the invoice it
corrects, refers to that invoice, and never credits more than is left of it, line by line.

**Numbers.** Each issuer has two series, ``INV`` (tax invoices) and ``CN`` (credit notes), each counted
1, 2, 3 ... without a gap: a number is taken from the issuer's row in ``invoice_sequences`` inside the same
transaction as the invoice itself. The row is locked first (``SELECT ... FOR UPDATE`` on PostgreSQL; on
SQLite a writing unit of work already holds the database's write lock, see ``marketplace.transactions``),
so two invoices of one issuer are numbered one after the other, and a transaction that rolls back takes its
increment with it: a number exists only if its invoice does. The idempotency check (one invoice per issuer
and source, e.g. a payment) runs after the lock, so a retry or a concurrent duplicate finds the first
invoice instead of taking a second number. The number shown is ``<issuer prefix>-<series>-<nnnnnn>``
(``CJ`` for the platform, ``A`` and eight hex digits of the agency's public id for an agency), unique across
the platform so that ``GET /api/v1/invoices/{number}`` needs nothing else.

**Contents** (Federal Decree-Law No. 8 of 2017 art. 65, Executive Regulation art. 59 and 60): the words
"Tax Invoice" (or "Tax Credit Note"), the supplier's name, address and TRN, the recipient, the number, the
dates of issue and of supply, per line the description, quantity, unit price, amount without VAT, VAT rate
and VAT amount, and the totals in AED; a credit note also names the invoice it corrects, its date and the
reason. Names and addresses are copied onto the invoice when it is issued (a later change of an agency's
address does not rewrite an issued invoice). The recipient's address is required only where the recipient
is a VAT registrant (art. 59(1)(e)); an agency's invoice to a private customer therefore carries the
customer's name and not their home address, which agencies never receive (P-17). The platform's own invoices
to a customer do carry it.

**Amounts** come from ``marketplace.money``: VAT worked out on the invoice's net sum and shared out over the
lines (or the line VAT the caller already quoted, e.g. a booking's breakdown, each within a fil of 5 %), so
lines add up to the totals exactly. Credit notes store positive amounts (the amount credited).

**Immutability**: no function here changes an issued row, there is no update route, and the migration adds
database triggers that refuse UPDATE and DELETE on ``invoices`` and ``invoice_lines``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from flask import current_app
from sqlalchemy import (
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column, relationship

from marketplace import audit, money
from marketplace.errors import AppError, Conflict, NotFound
from marketplace.extensions import Model, db, utcnow
from marketplace.money import CURRENCY, VAT_BASIS_POINTS, Breakdown, Line, Money
from marketplace.payments import invoice_pdf
from marketplace.permissions import Permission, permissions_for

if TYPE_CHECKING:
    from marketplace.agencies.models import Agency
    from marketplace.bookings.models import Booking
    from marketplace.security import Actor, SystemActor
    from marketplace.users.models import User

BUSINESS_TZ = ZoneInfo("Asia/Dubai")  # the date of issue is the date in the UAE
PLATFORM: Literal["platform"] = "platform"
PLATFORM_PREFIX = "CJ"


class DocumentType(StrEnum):
    INVOICE = "tax_invoice"
    CREDIT_NOTE = "credit_note"


SERIES = {DocumentType.INVOICE: "INV", DocumentType.CREDIT_NOTE: "CN"}
TITLES = {DocumentType.INVOICE: "Tax Invoice", DocumentType.CREDIT_NOTE: "Tax Credit Note"}


# ---- errors ----------------------------------------------------------------------------------------


class CreditExceedsInvoice(Conflict):
    code = "credit_exceeds_invoice"
    message = "A credit note cannot credit more than is left of the invoice."


class InvoiceSourceConflict(Conflict):
    """The same source was invoiced before with other amounts or another recipient: a bug, never re-issue."""

    code = "invoice_source_conflict"
    message = "This source was already invoiced with different details."


class NotAcceptable(AppError):
    status = 406
    code = "not_acceptable"
    message = "This resource is available as application/json or application/pdf."


# ---- models ----------------------------------------------------------------------------------------


class InvoiceSequence(Model):
    """The last number of one issuer's series; its row is the lock that numbers the series."""

    __tablename__ = "invoice_sequences"

    issuer_key: Mapped[str] = mapped_column(String(48), primary_key=True)  # "platform" or "agency:<id>"
    series: Mapped[str] = mapped_column(String(8), primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer, default=0)


class Invoice(Model):
    """An issued tax invoice or credit note, with every mandatory field copied in at issue (P-23)."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("issuer_key", "series", "seq"),
        UniqueConstraint("issuer_key", "doc_type", "source_kind", "source_ref"),
        Index("ix_invoices_recipient_user", "recipient_user_id", "id"),
        Index("ix_invoices_issuer_agency", "issuer_agency_id", "id"),
        Index("ix_invoices_recipient_agency", "recipient_agency_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(40), unique=True)
    doc_type: Mapped[str] = mapped_column(String(16))
    issuer_key: Mapped[str] = mapped_column(String(48))
    series: Mapped[str] = mapped_column(String(8))
    seq: Mapped[int] = mapped_column(Integer)
    issuer_agency_id: Mapped[int | None] = mapped_column(ForeignKey("agencies.id"))
    supplier_name: Mapped[str] = mapped_column(String(200))
    supplier_address: Mapped[str] = mapped_column(String(400))
    supplier_trn: Mapped[str] = mapped_column(String(15))
    recipient_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    recipient_agency_id: Mapped[int | None] = mapped_column(ForeignKey("agencies.id"))
    recipient_name: Mapped[str] = mapped_column(String(200))
    recipient_address: Mapped[str | None] = mapped_column(String(400))
    recipient_trn: Mapped[str | None] = mapped_column(String(15))
    issued_at: Mapped[datetime]
    issue_date: Mapped[date] = mapped_column(Date)
    supply_date: Mapped[date] = mapped_column(Date)
    currency: Mapped[str] = mapped_column(String(3), default=CURRENCY)
    net_fils: Mapped[int] = mapped_column(Integer)
    vat_fils: Mapped[int] = mapped_column(Integer)
    total_fils: Mapped[int] = mapped_column(Integer)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    booking_reference: Mapped[str | None] = mapped_column(String(16))
    original_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"), index=True)
    reason: Mapped[str | None] = mapped_column(String(300))
    source_kind: Mapped[str] = mapped_column(String(32))
    source_ref: Mapped[str] = mapped_column(String(64))

    lines: Mapped[list[InvoiceLine]] = relationship(order_by="InvoiceLine.line_no", lazy="selectin")

    @property
    def title(self) -> str:
        return TITLES[DocumentType(self.doc_type)]

    @property
    def total(self) -> Money:
        return Money(self.total_fils, self.currency)


class InvoiceLine(Model):
    __tablename__ = "invoice_lines"
    __table_args__ = (UniqueConstraint("invoice_id", "line_no"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"))
    line_no: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_net_fils: Mapped[int] = mapped_column(Integer)
    net_fils: Mapped[int] = mapped_column(Integer)
    vat_rate_bp: Mapped[int] = mapped_column(Integer)
    vat_fils: Mapped[int] = mapped_column(Integer)
    original_line_no: Mapped[int | None] = mapped_column(Integer)  # a credit note's line: the line it credits


# ---- who is on the invoice -------------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """A supplier or recipient as printed on the invoice (a copy, taken when it is issued)."""

    name: str
    address: str | None = None
    trn: str | None = None
    user_id: int | None = None
    agency_id: int | None = None


def _join(*parts: str | None) -> str:
    return ", ".join(p.strip() for p in parts if p and p.strip())


def platform_party() -> Party:
    settings = current_app.config["SETTINGS"]
    return Party(settings.platform_legal_name, settings.platform_address, settings.platform_trn)


def agency_party(agency: Agency) -> Party:
    return Party(agency.business_name, _join(agency.address_line1, agency.address_city, agency.address_country),
                 agency.trn, agency_id=agency.id)


def customer_party(user: User) -> Party:
    address = _join(user.address_line1, user.address_line2, user.address_city, user.address_region,
                    user.address_postal_code, user.address_country)
    return Party(user.full_name, address or None, user_id=user.id)


def _as_party(recipient: Party | User | Agency) -> Party:
    if isinstance(recipient, Party):
        return recipient
    table = getattr(recipient, "__tablename__", None)
    if table == "agencies":
        return agency_party(recipient)  # type: ignore[arg-type]
    if table == "users":
        return customer_party(recipient)  # type: ignore[arg-type]
    raise TypeError(f"an invoice recipient is a customer, an agency or a Party, not {type(recipient).__name__}")


Issuer = Literal["platform"] | Any  # the platform, or an ``Agency`` row


def _issuer(issuer: Issuer) -> tuple[str, str, Party]:
    """(issuer key, number prefix, supplier) of the platform or an agency."""
    if issuer == PLATFORM:
        return PLATFORM, PLATFORM_PREFIX, platform_party()
    if getattr(issuer, "__tablename__", None) != "agencies":
        raise TypeError("an invoice is issued by the platform or by an agency")
    prefix = "A" + issuer.public_id.replace("-", "")[:8].upper()
    supplier = agency_party(issuer)
    if not supplier.trn or not supplier.address:
        raise ValueError("an agency issues tax invoices only with its TRN and address on file")
    return f"agency:{issuer.id}", prefix, supplier


# ---- lines -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineIn:
    """One line to invoice: its net amount (quantity x unit price) and, optionally, the VAT already quoted."""

    description: str
    net: Money
    quantity: int = 1
    kind: str = "service"
    vat: Money | None = None  # None: worked out by ``money.taxed`` over all the invoice's lines

    @classmethod
    def from_line(cls, line: Line, description: str, *, quantity: int = 1) -> LineIn:
        """A line of a ``money.Breakdown`` (e.g. a booking's quote), with the VAT it was quoted with."""
        return cls(description, line.net, quantity=quantity, kind=line.kind, vat=line.vat)


def _priced(lines: Sequence[LineIn]) -> Breakdown:
    if not lines:
        raise ValueError("an invoice has at least one line")
    for line in lines:
        if not line.description.strip() or len(line.description) > 300:
            raise ValueError("every line has a description of at most 300 characters")
        if type(line.quantity) is not int or line.quantity < 1 or line.net.fils % line.quantity:
            raise ValueError("quantity is a positive whole number that divides the line's net amount")
        if line.net.fils < 0:
            raise ValueError("invoice lines are not negative; a refund is a credit note")
    given = [line.vat is not None for line in lines]
    if not any(given):
        breakdown = money.taxed([(line.kind, line.net) for line in lines])
    elif all(given):
        for line in lines:
            assert line.vat is not None
            # a line's share of VAT on the sum lies within one fil of 5 % of its own net
            if abs(line.vat.fils - money.vat_on(line.net).fils) > 1:
                raise ValueError(f"line VAT {line.vat} is not 5 % of {line.net}")
        breakdown = Breakdown(tuple(Line(line.kind, line.net, line.vat) for line in lines if line.vat is not None))
    else:
        raise ValueError("give the VAT of every line or of none")
    if breakdown.total.fils <= 0:
        raise ValueError("an invoice's total is positive")
    return breakdown


# ---- numbering -------------------------------------------------------------------------------------


def _lock_series(issuer_key: str, series: str) -> int:
    """Hold the issuer's series until the transaction ends and return its last number."""
    dialect = db.session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    # the first invoice of an issuer creates its row; a concurrent first one waits here, then finds it
    db.session.execute(insert(InvoiceSequence).values(issuer_key=issuer_key, series=series, last_number=0)
                       .on_conflict_do_nothing(index_elements=["issuer_key", "series"]))
    last = db.session.execute(
        select(InvoiceSequence.last_number)
        .where(InvoiceSequence.issuer_key == issuer_key, InvoiceSequence.series == series)
        .with_for_update()
    ).scalar_one()
    return int(last)


def _take_number(issuer_key: str, series: str, last: int) -> int:
    number = last + 1
    db.session.execute(
        update(InvoiceSequence)
        .where(InvoiceSequence.issuer_key == issuer_key, InvoiceSequence.series == series)
        .values(last_number=number)
        .execution_options(synchronize_session=False)
    )
    return number


def _existing(issuer_key: str, doc_type: DocumentType, source: tuple[str, str]) -> Invoice | None:
    return db.session.execute(
        select(Invoice).where(Invoice.issuer_key == issuer_key, Invoice.doc_type == doc_type,
                              Invoice.source_kind == source[0], Invoice.source_ref == source[1])
    ).scalar_one_or_none()


def _source(source: tuple[str, str | int]) -> tuple[str, str]:
    kind, ref = source
    ref = str(ref)
    if not kind or len(kind) > 32 or not ref or len(ref) > 64:
        raise ValueError("a source is (kind of at most 32 characters, id of at most 64)")
    return kind, ref


def _today() -> date:
    return utcnow().astimezone(BUSINESS_TZ).date()


# ---- issuing ---------------------------------------------------------------------------------------


def issue_invoice(
    issuer: Issuer,
    recipient: Party | User | Agency,
    lines: Sequence[LineIn],
    supply_date: date,
    *,
    source: tuple[str, str | int],
    booking: Booking | None = None,
    actor: Actor | SystemActor | None = None,
) -> Invoice:
    """Issue a tax invoice, or return the one already issued by this issuer for ``source`` (idempotent).

    ``source`` names what is invoiced (``("booking_payment", payment_id)``); a second call with the same
    source returns the first invoice, and refuses (``invoice_source_conflict``) if its amounts or recipient
    differ. Flushes, never commits: the number is taken in the caller's transaction.
    """
    breakdown = _priced(lines)
    issuer_key, prefix, supplier = _issuer(issuer)
    party = _as_party(recipient)
    if issuer_key != PLATFORM and party.user_id is not None and party.trn is None:
        party = Party(party.name, None, None, user_id=party.user_id)  # no home address for agencies (P-17)
    key = _source(source)
    series = SERIES[DocumentType.INVOICE]
    last = _lock_series(issuer_key, series)
    found = _existing(issuer_key, DocumentType.INVOICE, key)
    if found is not None:
        if (found.total_fils != breakdown.total.fils or found.recipient_user_id != party.user_id
                or found.recipient_agency_id != party.agency_id):
            raise InvoiceSourceConflict(details={"number": found.number})
        return found
    seq = _take_number(issuer_key, series, last)
    invoice = Invoice(
        number=f"{prefix}-{series}-{seq:06d}", doc_type=DocumentType.INVOICE, issuer_key=issuer_key, series=series,
        seq=seq, issuer_agency_id=supplier.agency_id,
        supplier_name=supplier.name, supplier_address=supplier.address or "", supplier_trn=supplier.trn or "",
        recipient_user_id=party.user_id, recipient_agency_id=party.agency_id, recipient_name=party.name,
        recipient_address=party.address, recipient_trn=party.trn, issued_at=utcnow(), issue_date=_today(),
        supply_date=supply_date, currency=CURRENCY, net_fils=breakdown.net.fils, vat_fils=breakdown.vat.fils,
        total_fils=breakdown.total.fils, booking_id=booking.id if booking is not None else None,
        booking_reference=booking.reference if booking is not None else None,
        source_kind=key[0], source_ref=key[1],
    )
    invoice.lines = [
        InvoiceLine(line_no=n, kind=priced.kind, description=given.description.strip(), quantity=given.quantity,
                    unit_net_fils=priced.net.fils // given.quantity, net_fils=priced.net.fils,
                    vat_rate_bp=VAT_BASIS_POINTS, vat_fils=priced.vat.fils)
        for n, (given, priced) in enumerate(zip(lines, breakdown.lines, strict=True), start=1)
    ]
    db.session.add(invoice)
    db.session.flush()
    audit.record(actor, "invoice:issue", ("invoice", invoice.number), total=invoice.total_fils,
                 source=f"{key[0]}:{key[1]}")
    return invoice


def _credited(original: Invoice) -> dict[int, tuple[int, int]]:
    """(net, VAT) already credited on each line of ``original``."""
    rows = db.session.execute(
        select(InvoiceLine.original_line_no, func.sum(InvoiceLine.net_fils), func.sum(InvoiceLine.vat_fils))
        .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
        .where(Invoice.original_id == original.id)
        .group_by(InvoiceLine.original_line_no)
    ).all()
    return {int(no): (int(net), int(vat)) for no, net, vat in rows if no is not None}


def remaining(original: Invoice) -> Breakdown:
    """What is left to credit of ``original``, line by line (the original less its credit notes)."""
    credited = _credited(original)
    return Breakdown(tuple(
        Line(line.kind, Money(line.net_fils - credited.get(line.line_no, (0, 0))[0]),
             Money(line.vat_fils - credited.get(line.line_no, (0, 0))[1]))
        for line in original.lines
    ))


def issue_credit_note(
    original: Invoice,
    lines_or_amount: Money | Sequence[tuple[int, Money]],
    reason: str,
    *,
    source: tuple[str, str | int],
    actor: Actor | SystemActor | None = None,
) -> Invoice:
    """Issue a credit note against ``original`` (a refund), or return the one already issued for ``source``.

    ``lines_or_amount`` is either the VAT-inclusive amount to credit, shared over what is left of the
    original's lines by their gross (``Breakdown.portion``), or ``(line number, VAT-inclusive amount)``
    pairs. Either way no line, and so not the total, is ever credited beyond what is left of it
    (``credit_exceeds_invoice``). The credit note has its own series and the original's supplier and
    recipient. Flushes, never commits.
    """
    if original.doc_type != DocumentType.INVOICE:
        raise ValueError("a credit note corrects a tax invoice")
    reason = reason.strip()
    if not reason or len(reason) > 300:
        raise ValueError("a credit note states its reason (at most 300 characters)")
    key = _source(source)
    series = SERIES[DocumentType.CREDIT_NOTE]
    # every credit note of this original is in the issuer's CN series: its lock serialises them, so what is
    # "left" below cannot change until this transaction ends
    last = _lock_series(original.issuer_key, series)
    found = _existing(original.issuer_key, DocumentType.CREDIT_NOTE, key)
    if found is not None:
        if found.original_id != original.id or (isinstance(lines_or_amount, Money)
                                                and found.total_fils != lines_or_amount.fils):
            raise InvoiceSourceConflict(details={"number": found.number})
        return found
    left = remaining(original)
    credit = _credit_lines(left, lines_or_amount)
    if credit.total.fils <= 0:
        raise ValueError("a credit note credits a positive amount")
    seq = _take_number(original.issuer_key, series, last)
    prefix = original.number.split("-", 1)[0]
    note = Invoice(
        number=f"{prefix}-{series}-{seq:06d}", doc_type=DocumentType.CREDIT_NOTE, issuer_key=original.issuer_key,
        series=series, seq=seq, issuer_agency_id=original.issuer_agency_id, supplier_name=original.supplier_name,
        supplier_address=original.supplier_address, supplier_trn=original.supplier_trn,
        recipient_user_id=original.recipient_user_id, recipient_agency_id=original.recipient_agency_id,
        recipient_name=original.recipient_name, recipient_address=original.recipient_address,
        recipient_trn=original.recipient_trn, issued_at=utcnow(), issue_date=_today(),
        supply_date=original.supply_date, currency=original.currency, net_fils=credit.net.fils,
        vat_fils=credit.vat.fils, total_fils=credit.total.fils, booking_id=original.booking_id,
        booking_reference=original.booking_reference, original_id=original.id, reason=reason,
        source_kind=key[0], source_ref=key[1],
    )
    note.lines = [
        InvoiceLine(line_no=n, kind=source_line.kind, description=source_line.description, quantity=1,
                    unit_net_fils=part.net.fils, net_fils=part.net.fils, vat_rate_bp=source_line.vat_rate_bp,
                    vat_fils=part.vat.fils, original_line_no=source_line.line_no)
        for n, (source_line, part) in enumerate(
            ((o, p) for o, p in zip(original.lines, credit.lines, strict=True) if p.gross.fils), start=1)
    ]
    db.session.add(note)
    db.session.flush()
    audit.record(actor, "invoice:credit", ("invoice", note.number), total=note.total_fils,
                 original=original.number, source=f"{key[0]}:{key[1]}")
    return note


def _credit_lines(left: Breakdown, lines_or_amount: Money | Sequence[tuple[int, Money]]) -> Breakdown:
    """The credit, one entry per line of the original (zero where a line is not credited)."""
    if isinstance(lines_or_amount, Money):
        if lines_or_amount.fils <= 0:
            raise ValueError("a credit note credits a positive amount")
        if lines_or_amount > left.total:
            raise CreditExceedsInvoice(details={"remaining": left.total.fils})
        return left.portion(lines_or_amount)
    wanted: dict[int, Money] = {}
    for line_no, amount in lines_or_amount:
        if not 1 <= line_no <= len(left.lines) or line_no in wanted:
            raise ValueError(f"no line {line_no} to credit, or named twice")
        if amount.fils <= 0:
            raise ValueError("a credit note credits a positive amount")
        wanted[line_no] = amount
    parts = []
    for n, line in enumerate(left.lines, start=1):
        amount = wanted.get(n, Money.zero())
        if amount > line.gross:
            raise CreditExceedsInvoice(details={"line": n, "remaining": line.gross.fils})
        if line.gross.fils == 0:
            parts.append(Line(line.kind, Money.zero(), Money.zero()))
            continue
        net, vat = money.allocate(amount, [line.net, line.vat])
        parts.append(Line(line.kind, net, vat))
    return Breakdown(tuple(parts))


# ---- reading ---------------------------------------------------------------------------------------


def invoices_for_booking(booking: Booking) -> list[Invoice]:
    """Every invoice and credit note about a booking, in the order they were issued."""
    return list(db.session.execute(
        select(Invoice).where(Invoice.booking_id == booking.id).order_by(Invoice.id)
    ).scalars())


def credit_notes_of(original: Invoice) -> list[Invoice]:
    return list(db.session.execute(
        select(Invoice).where(Invoice.original_id == original.id).order_by(Invoice.id)
    ).scalars())


def _agency_reads(actor: Actor, agency_id: int | None) -> bool:
    return agency_id is not None and Permission.AGENCY_INVOICE_READ in permissions_for(actor.agency_roles(agency_id))


def can_read(actor: Actor, invoice: Invoice) -> bool:
    """The recipient customer, staff of the issuing (or receiving) agency who may read invoices, and
    platform staff with ``console:invoice:read``."""
    if invoice.recipient_user_id is not None and invoice.recipient_user_id == actor.user.id:
        return True
    if _agency_reads(actor, invoice.issuer_agency_id) or _agency_reads(actor, invoice.recipient_agency_id):
        return True
    return actor.is_staff and actor.can(Permission.INVOICE_READ)


def get_for_reader(actor: Actor, number: str) -> Invoice:
    """One invoice by its number; anyone who may not read it gets the same 404 as for a number never issued."""
    invoice = db.session.execute(
        select(Invoice).where(Invoice.number == number.strip().upper()[:40])
    ).scalar_one_or_none()
    if invoice is None or not can_read(actor, invoice):
        raise NotFound()
    return invoice


def get_for_agency_staff(actor: Actor, number: str) -> Invoice:
    """One of the caller's agencies' invoices (the agency app): only through the caller's agency roles."""
    invoice = db.session.execute(
        select(Invoice).where(Invoice.number == number.strip().upper()[:40])
    ).scalar_one_or_none()
    if invoice is None or not (_agency_reads(actor, invoice.issuer_agency_id)
                               or _agency_reads(actor, invoice.recipient_agency_id)):
        raise NotFound()
    return invoice


def list_for_customer(actor: Actor, *, before_id: int | None = None, limit: int = 20) -> list[Invoice]:
    """The caller's own invoices and credit notes, newest first."""
    query = select(Invoice).where(Invoice.recipient_user_id == actor.user.id)
    if before_id is not None:
        query = query.where(Invoice.id < before_id)
    return list(db.session.execute(query.order_by(Invoice.id.desc()).limit(limit)).scalars())


def list_for_agency(actor: Actor, agency: Agency, *, before_id: int | None = None, limit: int = 20) -> list[Invoice]:
    """An agency's invoices (those it issued and those addressed to it), newest first; needs
    ``agency:invoice:read`` through the caller's roles in that agency."""
    if not _agency_reads(actor, agency.id):
        raise NotFound()
    query = select(Invoice).where(or_(Invoice.issuer_agency_id == agency.id, Invoice.recipient_agency_id == agency.id))
    if before_id is not None:
        query = query.where(Invoice.id < before_id)
    return list(db.session.execute(query.order_by(Invoice.id.desc()).limit(limit)).scalars())


# ---- rendering -------------------------------------------------------------------------------------


def invoice_json(invoice: Invoice) -> dict[str, Any]:
    """The invoice as the API returns it and the PDF prints it: every mandatory field, amounts in fils."""
    original = db.session.get(Invoice, invoice.original_id) if invoice.original_id is not None else None
    return {
        "number": invoice.number,
        "type": invoice.doc_type,
        "title": invoice.title,
        "issue_date": invoice.issue_date,
        "issued_at": invoice.issued_at,
        "supply_date": invoice.supply_date,
        "supplier": {"name": invoice.supplier_name, "address": invoice.supplier_address,
                     "trn": invoice.supplier_trn},
        "recipient": {"name": invoice.recipient_name, "address": invoice.recipient_address,
                      "trn": invoice.recipient_trn},
        "booking_reference": invoice.booking_reference,
        "lines": [{
            "line_no": line.line_no, "description": line.description, "quantity": line.quantity,
            "unit_price": line.unit_net_fils, "net": line.net_fils,
            "vat_rate": f"{line.vat_rate_bp / 100:g}%", "vat_rate_basis_points": line.vat_rate_bp,
            "vat": line.vat_fils, "total": line.net_fils + line.vat_fils,
            "credits_line": line.original_line_no,
        } for line in invoice.lines],
        "net": invoice.net_fils,
        "vat": invoice.vat_fils,
        "total": invoice.total_fils,
        "currency": invoice.currency,
        "original": ({"number": original.number, "issue_date": original.issue_date, "total": original.total_fils}
                     if original is not None else None),
        "reason": invoice.reason,
        "credit_notes": ([note.number for note in credit_notes_of(invoice)]
                         if invoice.doc_type == DocumentType.INVOICE else []),
    }


def render_pdf(invoice: Invoice) -> bytes:
    """The invoice as a PDF (fpdf2), with the same fields as ``invoice_json``."""
    return invoice_pdf.render(invoice_json(invoice))


# ---- the payment flows' documents ---------------------------------------------------------------------------

BOOKING_PAYMENT = "booking_payment"
BOOKING_REFUND = "booking_refund"


def _booking_breakdown(booking: Booking) -> Breakdown:
    """The booking's quote as lines (rental, platform fee), with the VAT split it was quoted with."""
    return money.taxed([("rental", Money(booking.rental_fils)), ("platform_fee", Money(booking.platform_fee_fils))])


def issue_for_booking_payment(payment_row_id: int, booking: Booking, recipient: User, agency: Agency) -> list[Invoice]:
    """P-23: a captured booking payment gets two tax invoices for exactly what was quoted: the agency's for
    the rental (the agency supplies the car) and the platform's for its booking fee. Idempotent per payment
    (a webhook after the API answer finds them issued). An agency without a TRN and address on file cannot
    issue a tax invoice: the platform's is still issued and the booking is left for people to look at
    (the caller flags it). Flushes, never commits."""
    breakdown = _booking_breakdown(booking)
    if breakdown.vat.fils != booking.vat_fils or breakdown.total.fils != booking.total_fils:
        raise ValueError(f"booking {booking.reference}: its stored VAT or total disagrees with its quote")
    starts = booking.starts_at if booking.starts_at.tzinfo else booking.starts_at.replace(tzinfo=UTC)  # stored in UTC
    supply = starts.astimezone(BUSINESS_TZ).date()  # the rental's first day in the UAE
    source = (BOOKING_PAYMENT, payment_row_id)
    issued: list[Invoice] = []
    rental = breakdown.line("rental")
    if rental.net.fils > 0 and can_issue(agency):
        days = (booking.rental_fils // booking.daily_rate_fils
                if booking.daily_rate_fils and booking.rental_fils % booking.daily_rate_fils == 0 else 1)
        issued.append(issue_invoice(agency, recipient,
                                    [LineIn.from_line(rental, f"Car rental, booking {booking.reference}",
                                                      quantity=max(days, 1))],
                                    supply, source=source, booking=booking))
    fee = breakdown.line("platform_fee")
    if fee.net.fils > 0:
        issued.append(issue_invoice(PLATFORM, recipient,
                                    [LineIn.from_line(fee, f"Booking service fee, booking {booking.reference}")],
                                    supply, source=source, booking=booking))
    return issued


def can_issue(agency: Agency) -> bool:
    """Whether an agency has what a tax invoice needs from its supplier (TRN and address)."""
    supplier = agency_party(agency)
    return bool(supplier.trn and supplier.address)


def credit_for_booking_refund(refund_row_id: int, payment_row_id: int, amount: Money, reason: str) -> list[Invoice]:
    """A settled refund of a booking payment: credit notes against that payment's invoices, the amount shared
    over rental and fee in the booking's proportions (as the ledger recognises it), each capped at what is
    left of its invoice. Idempotent per refund. Flushes, never commits."""
    originals = db.session.execute(
        select(Invoice).where(Invoice.source_kind == BOOKING_PAYMENT, Invoice.source_ref == str(payment_row_id),
                              Invoice.doc_type == DocumentType.INVOICE).order_by(Invoice.id)
    ).scalars().all()
    if not originals:
        return []
    whole = Money(sum(inv.total_fils for inv in originals))
    part = amount if amount <= whole else whole
    shares = Breakdown(tuple(Line(inv.issuer_key, Money(inv.net_fils), Money(inv.vat_fils)) for inv in originals))
    split = shares.portion(part)
    notes: list[Invoice] = []
    for inv, line in zip(originals, split.lines, strict=True):
        left = remaining(inv).total
        credit = line.gross if line.gross <= left else left
        if credit.fils > 0:
            notes.append(issue_credit_note(inv, credit, reason, source=(BOOKING_REFUND, refund_row_id)))
    return notes
