"""Tax invoices over the JSON API (P-23): JSON or a real PDF by Accept (406 otherwise), and who may read one:
the recipient customer, staff of the issuing agency, platform staff; anyone else gets the 404 of a number
that was never issued (AZ-04: existence is not revealed)."""

from __future__ import annotations

import io
from typing import Any

import pypdf
import pytest
from flask import Flask, current_app
from flask.testing import FlaskClient

from marketplace.extensions import db
from marketplace.payments import invoices
from marketplace.permissions import Role
from marketplace.users import sessions
from tests.factories import Person, bearer, make_agency, make_customer, make_invoice, make_staff


def _headers(person: Person, **extra: str) -> dict[str, str]:
    """A bearer header minted directly (staff with MFA done): API sign-in is rate-limited and waits for TOTP."""
    issued = sessions.start_session(person.user(), sessions.SessionChannel.API, current_app.config["SETTINGS"],
                                    mfa_done=True)
    db.session.commit()
    return {**bearer(issued.access_token), **extra}


@pytest.fixture
def world(app_ctx: None) -> dict[str, Any]:
    agency, other_agency = make_agency(name="Falcon Rentals LLC"), make_agency()
    customer, stranger = make_customer(full_name="Noor Haddad"), make_customer()
    invoice = make_invoice(agency, customer.user(), nets=(30000, 3000))
    return {"agency": agency, "other_agency": other_agency, "customer": customer, "stranger": stranger,
            "invoice": invoice, "number": invoice.number}


def test_the_recipient_reads_the_invoice_as_json(client: FlaskClient, world: dict[str, Any]) -> None:
    # enforces P-23
    response = client.get(f"/api/v1/invoices/{world['number']}", headers=_headers(world["customer"]))
    assert response.status_code == 200 and response.mimetype == "application/json"
    doc = response.get_json()
    assert doc["title"] == "Tax Invoice" and doc["number"] == world["number"]
    assert doc["supplier"]["name"] == "Falcon Rentals LLC" and doc["supplier"]["trn"] == world["agency"].trn
    assert doc["supplier"]["address"] and doc["recipient"]["name"] == "Noor Haddad"
    assert doc["issue_date"] and doc["supply_date"] and doc["currency"] == "AED"
    assert [(line["net"], line["vat"]) for line in doc["lines"]] == [(30000, 1500), (3000, 150)]
    assert (doc["net"], doc["vat"], doc["total"]) == (33000, 1650, 34650)
    # the number is case-insensitive on the way in
    again = client.get(f"/api/v1/invoices/{world['number'].lower()}", headers=_headers(world["customer"]))
    assert again.status_code == 200


@pytest.mark.parametrize("accept", ["application/pdf", "application/pdf, application/json;q=0.5"])
def test_accept_pdf_gives_a_real_pdf(client: FlaskClient, world: dict[str, Any], accept: str) -> None:
    # enforces P-23
    response = client.get(f"/api/v1/invoices/{world['number']}",
                          headers=_headers(world["customer"], Accept=accept))
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert response.headers["Vary"] == "Accept"
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(response.data)).pages)
    for expected in ("Tax Invoice", world["number"], f"TRN: {world['agency'].trn}", "Falcon Rentals LLC",
                     "Noor Haddad", "AED 346.50", "VAT at 5% AED 16.50"):
        assert expected in text, expected


@pytest.mark.parametrize(("accept", "status"), [
    ("*/*", 200), ("application/*", 200), ("application/json", 200), ("text/html", 406), ("image/png", 406),
])
def test_accept_negotiation(client: FlaskClient, world: dict[str, Any], accept: str, status: int) -> None:
    response = client.get(f"/api/v1/invoices/{world['number']}", headers=_headers(world["customer"], Accept=accept))
    assert response.status_code == status
    if status == 406:
        assert response.get_json()["error"]["code"] == "not_acceptable"
    else:
        assert response.mimetype == "application/json"


def test_who_may_read_an_invoice(app: Flask, client: FlaskClient, world: dict[str, Any]) -> None:
    # enforces P-23; AZ-04: another customer or agency sees the 404 of a number never issued
    number = world["number"]
    readers = {
        "agency owner": make_staff(Role.AGENCY_OWNER, agency=world["agency"]),
        "agency manager": make_staff(Role.AGENCY_MANAGER, agency=world["agency"]),
        "admin": make_staff(Role.ADMIN),
        "disputes": make_staff(Role.DISPUTES_AGENT),
    }
    for who, person in readers.items():
        response = client.get(f"/api/v1/invoices/{number}", headers=_headers(person))
        assert response.status_code == 200, who
    refused = {
        "another customer": world["stranger"],
        "another agency's owner": make_staff(Role.AGENCY_OWNER, agency=world["other_agency"]),
        "front-desk staff": make_staff(Role.AGENCY_STAFF, agency=world["agency"]),
        "kyc reviewer": make_staff(Role.KYC_REVIEWER),
    }
    missing = client.get("/api/v1/invoices/CJ-INV-999999", headers=_headers(world["customer"]))
    assert missing.status_code == 404
    for who, person in refused.items():
        for accept in ("application/json", "application/pdf"):
            response = client.get(f"/api/v1/invoices/{number}", headers=_headers(person, Accept=accept))
            assert response.status_code == 404, who
            assert response.get_json()["error"] == {**missing.get_json()["error"],
                                                    "request_id": response.get_json()["error"]["request_id"]}
    assert client.get(f"/api/v1/invoices/{number}").status_code == 401


def test_customers_list_their_own_invoices(client: FlaskClient, world: dict[str, Any]) -> None:  # enforces P-23
    customer = world["customer"]
    platform = make_invoice(invoices.PLATFORM, customer.user(), nets=(3000,))
    note = invoices.issue_credit_note(world["invoice"], invoices.Money(5000), "Refund", source=("refund", 1))
    db.session.commit()
    make_invoice(invoices.PLATFORM, world["stranger"].user())
    for path in ("/api/v1/me/invoices", "/api/v1/invoices"):
        first = client.get(f"{path}?limit=2", headers=_headers(customer))
        assert first.status_code == 200
        page = first.get_json()
        assert [i["number"] for i in page["items"]] == [note.number, platform.number]
        nxt = client.get(f"{path}?limit=2&cursor={page['page']['next_cursor']}", headers=_headers(customer))
        assert [i["number"] for i in nxt.get_json()["items"]] == [world["number"]]
        assert nxt.get_json()["page"]["next_cursor"] is None
    assert client.get("/api/v1/me/invoices", headers=_headers(world["stranger"])).get_json()["items"][0][
        "recipient"]["name"] != "Noor Haddad"


def test_the_agency_lists_its_own_invoices(client: FlaskClient, world: dict[str, Any]) -> None:  # enforces P-23
    make_invoice(world["other_agency"], world["customer"].user())
    owner = make_staff(Role.AGENCY_OWNER, agency=world["agency"])
    response = client.get("/api/v1/agency/invoices", headers=_headers(owner))
    assert response.status_code == 200
    assert [i["number"] for i in response.get_json()["items"]] == [world["number"]]
    front_desk = make_staff(Role.AGENCY_STAFF, agency=world["agency"])
    assert client.get("/api/v1/agency/invoices", headers=_headers(front_desk)).status_code == 403
    assert client.get("/api/v1/agency/invoices", headers=_headers(world["customer"])).status_code == 403


def test_there_is_no_way_to_change_an_invoice(client: FlaskClient, world: dict[str, Any]) -> None:
    # enforces P-23: no update or delete route
    headers = _headers(world["customer"])
    for method in ("put", "patch", "delete", "post"):
        response = getattr(client, method)(f"/api/v1/invoices/{world['number']}", json={}, headers=headers)
        assert response.status_code == 405
