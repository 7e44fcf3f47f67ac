"""An agency owner in the system's headless Chromium opens the Invoices page of the agency app and downloads an
invoice's PDF through its link; the PDF is rendered to a PNG (PDFium) and its text is extracted and checked
(issue 9, enforces P-23). Console and page errors fail the journey (test_console_signin.py's journal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pypdfium2
from flask import Flask
from PIL import Image

from marketplace.extensions import db
from marketplace.money import Money
from marketplace.payments import invoices
from marketplace.permissions import Role
from tests.browser import test_agency_fleet as fleet
from tests.browser import test_console_signin as signin
from tests.browser.test_console_signin import BROWSER_JOURNEY, Journal
from tests.factories import make_agency, make_customer, make_invoice, make_staff

pytestmark = BROWSER_JOURNEY

browser = signin.browser
page = signin.page


def test_the_agency_downloads_an_invoice_pdf(app: Flask, app_ctx: None, live_server: str,
                                             page: tuple[Any, Journal], tmp_path: Path) -> None:
    tab, journal = page
    agency = make_agency(name="Sand Dune Rentals LLC")
    customer = make_customer(full_name="Layla Mansour")
    invoice = make_invoice(agency, customer.user(), nets=(60000, 6000))
    invoices.issue_credit_note(invoice, Money(6300), "Late cancellation: partial refund", source=("refund", 1))
    db.session.commit()
    number, trn = invoice.number, agency.trn
    owner = make_staff(Role.AGENCY_OWNER, agency=agency)

    fleet._sign_in(tab, live_server, owner)
    tab.click("nav a:has-text('Invoices')")
    tab.wait_for_url(f"{live_server}/agency/invoices")
    row = tab.locator("#invoices tr", has_text=number)
    assert "Tax Invoice" in row.inner_text() and "AED 693.00" in row.inner_text()
    with tab.expect_download() as download_info:
        row.locator("a", has_text="PDF").click()
    download = download_info.value
    assert download.suggested_filename == f"{number}.pdf"
    pdf_path = tmp_path / "invoice.pdf"
    download.save_as(pdf_path)
    assert pdf_path.read_bytes().startswith(b"%PDF-")

    document = pypdfium2.PdfDocument(str(pdf_path))
    try:
        first = document[0]
        png = tmp_path / "invoice.png"
        first.render(scale=2).to_pil().save(png)
        textpage = first.get_textpage()
        text = textpage.get_text_range()
        textpage.close()
        first.close()
    finally:
        document.close()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 1000 and image.height > 1400
        grey = image.convert("L")
        # the title band at the top is printed: dark pixels on the white page
        band = grey.crop((0, 0, grey.width, grey.height // 10))
        assert band.getextrema()[0] < 80 and grey.getextrema()[1] > 240
    for expected in ("Tax Invoice", number, "Sand Dune Rentals LLC", f"TRN: {trn}", "Layla Mansour",
                     "Date of issue", "Date of supply", "VAT at 5% AED 33.00", "AED 693.00"):
        assert expected in text, expected
    assert journal.errors == []
