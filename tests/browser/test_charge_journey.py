"""The handover-to-dispute journey in the system's headless Chromium (P-18, P-21): in the agency app a staff
member reveals the renter's photo, records the match, the pick-up inspection with a photo and hands the car
over; records the return inspection with less fuel and the return, and raises a fuel charge with an evidence
file. The customer (who has no web pages) disputes it over the API with a reason and a file. In the console a
disputes agent opens the case, sees both sides' files side by side and reduces the charge with a reason; the
charge is then due for the reduced amount (and collected for it when its 24 hours end), and both the
customer and the agency got their e-mails.

The clock (time-machine, for the test and the live server's threads alike) is moved to 20 minutes before
pick-up, inside the photo's window (it opens 60 minutes before), and the car comes back at once (an early
return is allowed, never late); later, to the end of the notice's 24 hours for the collection. Payments
through localstripe on loopback. The browser and the page journal are shared with test_console_signin.py.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import select

from marketplace.clock import BUSINESS_TZ
from marketplace.extensions import db
from marketplace.notifications.models import OutboxMessage
from marketplace.permissions import Role
from tests.browser import test_console_signin as signin
from tests.browser.test_agency_fleet import _sign_in as agency_sign_in
from tests.browser.test_console_signin import BROWSER_JOURNEY, Journal
from tests.charges.helpers import SELFIE, at, booking_by_reference, charge_row, evidence_jpeg
from tests.conftest import sweep_and_drain
from tests.factories import (
    auth_headers,
    book,
    make_agency,
    make_staff,
    make_vehicle,
    make_verified_customer,
    pay,
    save_card,
)
from tests.kyc.helpers import photo

pytestmark = BROWSER_JOURNEY

browser = signin.browser
page = signin.page

IMAGES_LOADED = """(selector) => {
    const images = [...document.querySelectorAll(selector)];
    return images.length > 0 && images.every(img => img.complete && img.naturalWidth > 0);
}"""


def _jpeg(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "mimeType": "image/jpeg", "buffer": data}


def _mail(kind: str, to: str) -> list[OutboxMessage]:
    signin._fresh()
    return list(
        db.session.execute(
            select(OutboxMessage).where(OutboxMessage.kind == kind, OutboxMessage.to_address == to)
        ).scalars()
    )


def test_handover_return_fuel_charge_dispute_and_reduction(
    app: Flask, app_ctx: None, live_server: str, page: tuple[Any, Journal], stripe_gateway: Any
) -> None:
    # enforces P-18, P-21
    tab, journal = page
    client = app.test_client()
    agency = make_agency(name="Desert Wheels LLC")
    vehicle = make_vehicle(agency, daily_price_fils=20000, deposit_fils=100000)
    customer = make_verified_customer(selfie=SELFIE)
    headers = auth_headers(client, customer)
    card = save_card(client, headers, stripe_gateway)
    reference = book(client, headers, vehicle, start_in_hours=1.5, hours=24)
    assert pay(client, headers, reference, card).status_code == 200
    manager = make_staff(Role.AGENCY_MANAGER, agency=agency)
    signin._fresh()
    starts_at = booking_by_reference(reference).starts_at
    with at(starts_at - timedelta(minutes=20)):
        # ---- the agency app: the counter ----
        agency_sign_in(tab, live_server, manager)
        tab.click("nav a:has-text('Handovers')")
        tab.wait_for_url(f"{live_server}/agency/handovers")
        tab.click(f"a:has-text('{reference}')")
        tab.wait_for_url(f"{live_server}/agency/bookings/{reference}/handover")
        assert tab.locator("#selfie").count() == 0
        tab.click('button:has-text("Show the renter\'s photo")')
        tab.wait_for_function(IMAGES_LOADED, arg="#selfie")
        tab.check("input[name=outcome][value=match]")
        tab.click("button:has-text('Record the check')")
        tab.wait_for_url(f"{live_server}/agency/bookings/{reference}/handover")
        assert tab.locator("#stage").inner_text() == "matched"

        tab.fill("#inspection-mileage", "12000")
        tab.select_option("#inspection-fuel", "8")
        tab.click("#inspection-save")
        tab.wait_for_selector("#inspection-pickup")
        tab.set_input_files("#inspection-photo", files=[_jpeg("pickup.jpg", photo(800, 600, colour=(30, 90, 160)))])
        tab.click("#inspection-photo-upload")
        tab.wait_for_function(IMAGES_LOADED, arg="img.inspection-thumb")
        tab.click("button:has-text('Hand the car over')")
        tab.wait_for_url(f"{live_server}/agency/bookings/{reference}/handover")
        assert tab.locator("#stage").inner_text() == "handed over"

        # ---- the return, with less fuel ----
        tab.fill("#inspection-mileage", "12240")
        tab.select_option("#inspection-fuel", "2")
        tab.click("#inspection-save")
        tab.wait_for_selector("#inspection-return")
        assert "2/8" in tab.locator("#inspection-return").inner_text()
        tab.click("button:has-text('Record the return')")
        tab.wait_for_url(f"{live_server}/agency/bookings/{reference}/handover")
        assert tab.locator("#stage").inner_text() == "returned"
        signin._fresh()
        assert booking_by_reference(reference).status == "returned"

        # ---- a fuel charge with its evidence ----
        tab.click("#charge-link")
        tab.wait_for_url(f"{live_server}/agency/bookings/{reference}#charges")
        tab.select_option("#charge-kind", "fuel")
        tab.fill("#charge-amount", "157.50")
        tab.fill("#charge-description", "Returned with a quarter tank (pick-up: full)")
        incurred = datetime.now(BUSINESS_TZ) - timedelta(minutes=2)
        tab.fill("#charge-incurred-at", incurred.strftime("%Y-%m-%dT%H:%M"))
        tab.set_input_files("#charge-evidence", files=[_jpeg("fuel-gauge.jpg", evidence_jpeg())])
        tab.click("#charge-raise")
        tab.wait_for_url(f"{live_server}/agency/charges/*")
        assert tab.locator("#charge-status").inner_text() == "noticed"
        assert "AED 157.50" in tab.locator("#charge").inner_text()
        tab.wait_for_function(IMAGES_LOADED, arg="img.charge-thumb[data-side=agency]")
        charge_id = tab.url.split("/agency/charges/")[1].split("?")[0]
        assert charge_row(charge_id).amount_fils == 15750
        assert _mail("charge_notice", customer.email)

        # ---- the customer disputes it over the API ----
        disputed = client.post(
            f"/api/v1/charges/{charge_id}/dispute",
            headers=auth_headers(client, customer),
            content_type="multipart/form-data",
            data={
                "reason": "The tank was half full when I returned it, see my photo",
                "file_1": (io.BytesIO(evidence_jpeg((10, 200, 10))), "gauge.jpg", "image/jpeg"),
            },
        )
        assert disputed.status_code == 200, disputed.get_json()
        assert disputed.get_json()["status"] == "disputed"
        assert _mail("charge_disputed", agency.contact_email)

        # ---- the console: the disputes agent reduces it ----
        agent = make_staff(Role.DISPUTES_AGENT)
        tab.context.clear_cookies()  # another person at another desk: the agency session ends here
        signin._sign_in_with_password(tab, live_server, agent)
        signin._enter_code(tab, live_server, signin._code(agent))
        tab.click("nav a:has-text('Charges')")
        tab.wait_for_url(f"{live_server}/console/charges")
        tab.locator("tbody tr", has_text=reference).locator("a:has-text('Open')").click()
        tab.wait_for_url(f"{live_server}/console/charges/{charge_id}")
        assert reference in tab.locator("#charge-booking").inner_text()
        assert "inside the rental" in tab.locator("#rental-period").inner_text()
        assert "half full" in tab.locator("#dispute-reason").inner_text()
        assert "8/8" in tab.locator("#inspection-facts-pickup").inner_text()
        assert "2/8" in tab.locator("#inspection-facts-return").inner_text()
        assert "12240 km" in tab.locator("#inspection-facts-return").inner_text()
        tab.wait_for_function(IMAGES_LOADED, arg="#evidence img.evidence")
        ours = tab.locator("#evidence-agency img.evidence").bounding_box()
        theirs = tab.locator("#evidence-customer img.evidence").bounding_box()
        assert ours and theirs and abs(ours["y"] - theirs["y"]) < ours["height"] and ours["x"] < theirs["x"]
        tab.check("#decision-reduce")
        tab.fill("#decision-amount", "80.00")
        tab.fill("#decision-reason", "Half a tank per both photos: half the refuelling charge")
        tab.click("#decision-submit")
        tab.wait_for_url(f"{live_server}/console/charges/{charge_id}?decided=1")
        assert tab.locator("#charge-status").inner_text() == "due"
        assert "80.00 AED" in tab.locator("#charge-amount-due").inner_text()

    row = charge_row(charge_id)
    assert row.status == "due" and row.collect_fils == 8000 and row.amount_fils == 15750
    assert _mail("charge_decided", customer.email) and _mail("charge_decided_agency", agency.contact_email)
    assert row.due_at is not None
    with at(row.due_at + timedelta(minutes=5)):  # the notice's 24 hours are over: collected, the reduced amount
        sweep_and_drain(app)
    paid = charge_row(charge_id)
    assert paid.status == "paid" and paid.collect_fils == 8000
    assert _mail("charge_receipt", customer.email)
    assert journal.errors == []
