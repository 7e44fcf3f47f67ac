"""Agency app: the agency's tax invoices and credit notes, each downloadable as a PDF (P-23), only for the
agency's own owners and managers; another agency's invoice is a 404 (AZ-04)."""

from __future__ import annotations

import io

import pypdf
from flask import Flask
from flask.testing import FlaskClient

from marketplace.extensions import db
from marketplace.money import Money
from marketplace.payments import invoices
from marketplace.permissions import Role
from tests.factories import make_agency, make_customer, make_invoice, make_staff, web_login


def test_the_agency_lists_and_downloads_its_invoices(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    # enforces P-23
    agency, other = make_agency(name="Palm Drive LLC"), make_agency(name="Other Cars LLC")
    customer = make_customer(full_name="Rania Aziz")
    mine = make_invoice(agency, customer.user(), nets=(20000,))
    note = invoices.issue_credit_note(mine, Money(10500), "Cancelled: partial refund", source=("refund", 1))
    db.session.commit()
    theirs = make_invoice(other, customer.user())
    owner = make_staff(Role.AGENCY_OWNER, agency=agency)
    web_login(client, owner, door="agency")

    home = client.get("/agency/").get_data(as_text=True)
    assert 'href="/agency/invoices"' in home
    page = client.get("/agency/invoices")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    table = html[html.index('id="invoices"'):]
    assert mine.number in table and note.number in table and theirs.number not in table
    assert "Tax Invoice" in table and "Tax Credit Note" in table and "AED 210.00" in table

    pdf = client.get(f"/agency/invoices/{mine.number}.pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    assert "attachment" in pdf.headers["Content-Disposition"]
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf.data)).pages)
    for expected in ("Tax Invoice", mine.number, "Palm Drive LLC", f"TRN: {agency.trn}", "Rania Aziz",
                     "AED 210.00"):
        assert expected in text, expected
    credit = client.get(f"/agency/invoices/{note.number}.pdf")
    credit_text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(credit.data)).pages)
    assert "Tax Credit Note" in credit_text and mine.number in credit_text and "partial refund" in credit_text
    # another agency's invoice, or one never issued: the same 404
    assert client.get(f"/agency/invoices/{theirs.number}.pdf").status_code == 404
    assert client.get("/agency/invoices/CJ-INV-999999.pdf").status_code == 404


def test_front_desk_staff_do_not_see_invoices(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    agency = make_agency()
    invoice = make_invoice(agency, make_customer().user())
    staff = make_staff(Role.AGENCY_STAFF, agency=agency)
    web_login(client, staff, door="agency")
    assert 'href="/agency/invoices"' not in client.get("/agency/").get_data(as_text=True)
    assert client.get("/agency/invoices").status_code == 403
    assert client.get(f"/agency/invoices/{invoice.number}.pdf").status_code == 403
