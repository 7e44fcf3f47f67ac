"""Agency app pages for the agency's tax invoices and credit notes (P-23): the list and each one as a PDF.

An agency sees the invoices it issued (its rentals) and those addressed to it; another agency's invoice is a
404, like a number never issued. Reading them needs ``agency:invoice:read`` in that agency (owners, managers).
"""

from __future__ import annotations

from typing import Any

from flask import Response, request

from agency_app.profile_views import _agency_ref
from agency_app.views import _render, agency_bp
from marketplace.agencies import service as agencies
from marketplace.errors import Unprocessable
from marketplace.payments import service as invoices
from marketplace.permissions import Permission
from marketplace.schemas import decode_cursor, paginate
from marketplace.security import current_actor, requires

PAGE = 25
_CURSOR = "agency-app-invoices"


@agency_bp.get("/invoices")
@requires(Permission.AGENCY_INVOICE_READ)
def invoices_list() -> Any:
    """The agency's invoices and credit notes, newest first, each with its PDF."""
    actor = current_actor()
    agency = agencies.own_agency(actor, _agency_ref(actor))
    before = decode_cursor(_CURSOR, request.args.get("cursor", "")[:200] or None)
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
        raise Unprocessable(details={"fields": {"cursor": ["Invalid cursor."]}})
    page = paginate(_CURSOR, PAGE, lambda n: invoices.list_for_agency(actor, agency, before_id=before, limit=n))
    return _render("agency/invoices.html", agency=agency, mine=agencies.agencies_of(actor), invoices=page.items,
                   older=page.next_cursor)


@agency_bp.get("/invoices/<string:number>.pdf")
@requires(Permission.AGENCY_INVOICE_READ)
def invoice_pdf(number: str) -> Any:
    """One of the agency's invoices as a PDF download."""
    invoice = invoices.get_for_agency_staff(current_actor(), number[:40])
    response = Response(invoices.render_pdf(invoice), mimetype="application/pdf")
    response.headers["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
    return response
