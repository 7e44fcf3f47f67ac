"""Tax invoices and credit notes over the JSON API (P-23): one by number, as JSON or PDF by ``Accept``; lists.

Only the recipient customer, staff of the issuing agency (``agency:invoice:read``) and platform staff with
``console:invoice:read`` read an invoice; for anyone else it does not exist (404, as for a number never
issued). There is no route that changes an invoice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, request
from marshmallow import fields

from marketplace.agencies import service as agencies
from marketplace.api import ApiBlueprint
from marketplace.payments import invoices
from marketplace.permissions import Permission
from marketplace.schemas import OutSchema, PageArgsSchema, PageInfoSchema, decode_id_cursor, paginate
from marketplace.security import current_actor, requires

invoices_bp = ApiBlueprint("invoices", __name__, url_prefix="/api/v1",
                           description="Tax invoices and credit notes (UAE VAT), as JSON or PDF")
agency_invoices_bp = ApiBlueprint("agency_invoices", __name__, url_prefix="/api/v1/agency/invoices",
                                  description="The agency's tax invoices and credit notes")

JSON, PDF = "application/json", "application/pdf"
_FILS = {"description": "fils (1 AED = 100 fils)"}


class PartyOut(OutSchema):
    name = fields.String(required=True)
    address = fields.String(required=True, allow_none=True,
                            metadata={"description": "A private customer's address is not printed on an "
                                                     "agency's invoice (P-17)"})
    trn = fields.String(required=True, allow_none=True, metadata={"description": "VAT registration number"})


class InvoiceLineOut(OutSchema):
    line_no = fields.Integer(required=True)
    description = fields.String(required=True)
    quantity = fields.Integer(required=True)
    unit_price = fields.Integer(required=True, metadata={"description": "fils, excluding VAT"})
    net = fields.Integer(required=True, metadata={"description": "fils; the amount excluding VAT"})
    vat_rate = fields.String(required=True, metadata={"example": "5%"})
    vat_rate_basis_points = fields.Integer(required=True)
    vat = fields.Integer(required=True, metadata=_FILS)
    total = fields.Integer(required=True, metadata={"description": "fils; net + VAT"})
    credits_line = fields.Integer(required=True, allow_none=True,
                                  metadata={"description": "A credit note's line: the line of the invoice it credits"})


class OriginalOut(OutSchema):
    number = fields.String(required=True)
    issue_date = fields.Date(required=True)
    total = fields.Integer(required=True, metadata=_FILS)


class InvoiceOut(OutSchema):
    number = fields.String(required=True, metadata={"description": "Sequential per issuer and series, no gaps"})
    type = fields.String(required=True, metadata={"enum": [t.value for t in invoices.DocumentType]})
    title = fields.String(required=True, metadata={"enum": list(invoices.TITLES.values())})
    issue_date = fields.Date(required=True, metadata={"description": "In the UAE (Asia/Dubai)"})
    issued_at = fields.DateTime(required=True)
    supply_date = fields.Date(required=True)
    supplier = fields.Nested(PartyOut, required=True)
    recipient = fields.Nested(PartyOut, required=True)
    booking_reference = fields.String(required=True, allow_none=True)
    lines = fields.List(fields.Nested(InvoiceLineOut), required=True)
    net = fields.Integer(required=True, metadata={"description": "fils; total excluding VAT"})
    vat = fields.Integer(required=True, metadata=_FILS)
    total = fields.Integer(required=True, metadata={"description": "fils; total including VAT"})
    currency = fields.String(required=True, metadata={"enum": ["AED"]})
    original = fields.Nested(OriginalOut, required=True, allow_none=True,
                             metadata={"description": "A credit note: the invoice it corrects"})
    reason = fields.String(required=True, allow_none=True)
    credit_notes = fields.List(fields.String(), required=True,
                               metadata={"description": "An invoice: the numbers of its credit notes"})


class InvoicePageOut(OutSchema):
    items = fields.List(fields.Nested(InvoiceOut), required=True)
    page = fields.Nested(PageInfoSchema, required=True)


class AgencyInvoiceArgs(PageArgsSchema):
    agency = fields.UUID(load_default=None, metadata={"description": "Needed only if you work for several"})


_PDF_DOC = {"responses": {200: {"content": {PDF: {"schema": {"type": "string", "format": "binary"}}}}}}


def _page(scope: str, limit: int, fetch: Callable[[int], list[invoices.Invoice]]) -> dict[str, Any]:
    page = paginate(scope, limit, fetch)
    return {"items": [invoices.invoice_json(i) for i in page.items], "page": {"next_cursor": page.next_cursor}}


def _wanted() -> str:
    """JSON unless the client prefers PDF; an ``Accept`` that allows neither is a 406."""
    if not request.headers.get("Accept", "").strip():
        return JSON
    best = request.accept_mimetypes.best_match([JSON, PDF])
    if best is None:
        raise invoices.NotAcceptable(details={"available": [JSON, PDF]})
    return best


@invoices_bp.route("/invoices/<string:number>")
@invoices_bp.response(200, InvoiceOut, description="The invoice as JSON, or as a PDF with Accept: application/pdf")
@invoices_bp.doc(**_PDF_DOC)
def invoice_detail(number: str) -> Any:
    """One tax invoice or credit note: JSON, or a PDF with `Accept: application/pdf` (406 for anything else)."""
    wanted = _wanted()
    invoice = invoices.get_for_reader(current_actor(), number)
    if wanted == PDF:
        response = Response(invoices.render_pdf(invoice), mimetype=PDF)
        response.headers["Content-Disposition"] = f'inline; filename="{invoice.number}.pdf"'
        response.headers["Vary"] = "Accept"
        return response
    return invoices.invoice_json(invoice)


@invoices_bp.route("/invoices")
@invoices_bp.arguments(PageArgsSchema, location="query")
@invoices_bp.response(200, InvoicePageOut)
def invoice_list(args: dict[str, Any]) -> dict[str, Any]:
    """Your tax invoices and credit notes, newest first."""
    actor, before = current_actor(), decode_id_cursor("invoices", args["cursor"])
    return _page("invoices", args["limit"], lambda n: invoices.list_for_customer(actor, before_id=before, limit=n))


@invoices_bp.route("/me/invoices")
@invoices_bp.arguments(PageArgsSchema, location="query")
@invoices_bp.response(200, InvoicePageOut)
def my_invoices(args: dict[str, Any]) -> dict[str, Any]:
    """Your tax invoices and credit notes, newest first (the same list as `GET /api/v1/invoices`)."""
    actor, before = current_actor(), decode_id_cursor("invoices", args["cursor"])
    return _page("invoices", args["limit"], lambda n: invoices.list_for_customer(actor, before_id=before, limit=n))


@agency_invoices_bp.route("")
@agency_invoices_bp.arguments(AgencyInvoiceArgs, location="query")
@agency_invoices_bp.response(200, InvoicePageOut)
@requires(Permission.AGENCY_INVOICE_READ)
def agency_invoice_list(args: dict[str, Any]) -> dict[str, Any]:
    """Your agency's invoices and credit notes (issued by it or addressed to it), newest first."""
    actor = current_actor()
    agency = agencies.own_agency(actor, str(args["agency"]) if args["agency"] else None)
    before = decode_id_cursor("agency-invoices", args["cursor"])
    return _page("agency-invoices", args["limit"],
                 lambda n: invoices.list_for_agency(actor, agency, before_id=before, limit=n))
