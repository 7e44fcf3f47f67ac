"""A tax invoice or credit note as a PDF (fpdf2), drawn from the same document the JSON API returns.

It takes the dictionary ``invoices.invoice_json`` builds (so the PDF and the JSON can never disagree) and
prints every mandatory field of P-23. Text uses DejaVu Sans where the system has it (names in any script
the font covers; Arabic letters are printed unshaped, a known limit), else the PDF core font Helvetica,
where characters outside Latin-1 become "?".
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

_FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))


def _font_files() -> tuple[Path, Path] | None:
    for folder in _FONT_DIRS:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    return None


def aed(fils: int) -> str:
    """1234550 -> "12,345.50" (amounts on the invoice are in AED, two decimals)."""
    sign = "-" if fils < 0 else ""
    units, rest = divmod(abs(fils), 100)
    return f"{sign}{units:,}.{rest:02d}"


def _day(value: date | datetime | str) -> str:
    if isinstance(value, datetime):
        value = value.date()
    return value.isoformat() if isinstance(value, date) else str(value)


class _Document(FPDF):
    def __init__(self) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        files = _font_files()
        if files is not None:
            self.add_font("DejaVu", "", str(files[0]))
            self.add_font("DejaVu", "B", str(files[1]))
            self.face = "DejaVu"
        else:
            self.face = "Helvetica"
        self.unicode_text = files is not None
        self.set_auto_page_break(auto=True, margin=15)
        self.set_margins(15, 15, 15)

    def text_of(self, value: Any) -> str:
        text = "" if value is None else str(value)
        return text if self.unicode_text else text.encode("latin-1", "replace").decode("latin-1")

    def line_of(self, text: Any, *, size: float = 10, bold: bool = False, height: float = 5.5) -> None:
        self.set_font(self.face, "B" if bold else "", size)
        self.multi_cell(0, height, self.text_of(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def render(doc: dict[str, Any]) -> bytes:
    pdf = _Document()
    pdf.set_title(pdf.text_of(f"{doc['title']} {doc['number']}"))
    pdf.set_author(pdf.text_of(doc["supplier"]["name"]))
    pdf.set_creator("CareJar marketplace")
    issued = doc.get("issued_at")
    if isinstance(issued, datetime):
        pdf.set_creation_date(issued)
    pdf.add_page()

    pdf.line_of(doc["title"], size=20, bold=True, height=10)
    pdf.line_of(f"Number: {doc['number']}", bold=True)
    pdf.line_of(f"Date of issue: {_day(doc['issue_date'])}")
    pdf.line_of(f"Date of supply: {_day(doc['supply_date'])}")
    if doc.get("booking_reference"):
        pdf.line_of(f"Booking: {doc['booking_reference']}")
    original = doc.get("original")
    if original:
        pdf.line_of(f"Credit note for tax invoice {original['number']} of {_day(original['issue_date'])} "
                    f"(total AED {aed(original['total'])})")
    if doc.get("reason"):
        pdf.line_of(f"Reason: {doc['reason']}")
    pdf.ln(3)

    supplier, recipient = doc["supplier"], doc["recipient"]
    pdf.line_of("Supplier", bold=True)
    pdf.line_of(supplier["name"])
    pdf.line_of(supplier["address"])
    pdf.line_of(f"TRN: {supplier['trn']}")
    pdf.ln(2)
    pdf.line_of("Recipient", bold=True)
    pdf.line_of(recipient["name"])
    if recipient.get("address"):
        pdf.line_of(recipient["address"])
    if recipient.get("trn"):
        pdf.line_of(f"TRN: {recipient['trn']}")
    pdf.ln(4)

    pdf.set_font(pdf.face, "", 8.5)
    headings = ("#", "Description", "Qty", "Unit price (AED)", "Amount excl. VAT (AED)", "VAT rate",
                "VAT (AED)", "Amount incl. VAT (AED)")
    widths = (6, 58, 10, 20, 22, 14, 20, 30)
    with pdf.table(col_widths=widths, text_align=("LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT",
                                                  "RIGHT"), line_height=5) as table:
        row = table.row()
        for heading in headings:
            row.cell(heading)
        for line in doc["lines"]:
            row = table.row()
            for value in (line["line_no"], line["description"], line["quantity"], aed(line["unit_price"]),
                          aed(line["net"]), line["vat_rate"], aed(line["vat"]), aed(line["total"])):
                row.cell(pdf.text_of(value))
    pdf.ln(4)

    currency = doc["currency"]
    for label, fils, bold in (("Total excluding VAT", doc["net"], False), ("VAT at 5%", doc["vat"], False),
                              (f"Total including VAT ({currency})", doc["total"], True)):
        pdf.set_font(pdf.face, "B" if bold else "", 10)
        pdf.cell(130, 6, pdf.text_of(label), align="R")
        pdf.cell(0, 6, f"{currency} {aed(fils)}", align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(6)
    pdf.line_of("All amounts in UAE dirhams (AED). VAT at the UAE standard rate of 5%.", size=8)
    return bytes(pdf.output())
