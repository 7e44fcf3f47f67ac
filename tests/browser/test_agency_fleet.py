"""An agency manager's journey in the system's headless Chromium: sign in with password and TOTP, add a car
through the fleet page, block two days on it with the date pickers; a customer then books the car over the API
and the booking shows on the dashboard (today's pick-ups, Asia/Dubai) or in the bookings list. Enforces P-13.

The browser and the page journal (console and page errors fail the journey) are shared with
test_console_signin.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import select

from marketplace.bookings.service import BUSINESS_TZ
from marketplace.extensions import db, utcnow
from marketplace.fleet.models import AvailabilityBlock, Vehicle
from marketplace.permissions import Role
from marketplace.users.consent_texts import CURRENT
from marketplace.users.models import ConsentKind
from tests.browser import test_console_signin as signin
from tests.browser.test_console_signin import BROWSER_JOURNEY, Journal
from tests.factories import Person, auth_headers, make_agency, make_customer, make_staff
from tests.fleet.helpers import iso
from tests.kyc.helpers import approve_case, submitted_case

pytestmark = BROWSER_JOURNEY

# the shared fixtures: one headless Chromium per module, a fresh page (with its error journal) per test
browser = signin.browser
page = signin.page


def _sign_in(tab: Any, live_server: str, person: Person) -> None:
    tab.goto(f"{live_server}/agency/login")
    tab.fill("#email", person.email)
    tab.fill("#password", person.password)
    tab.click("button[type=submit]")
    tab.wait_for_url(f"{live_server}/agency/mfa")
    tab.fill("#code", signin._code(person))
    tab.click("form button[type=submit]:has-text('Verify')")
    tab.wait_for_url(f"{live_server}/agency/")


def _cleared_customer(app: Flask) -> dict[str, str]:
    """A customer with an approved KYC case (reviewed by a person, P-09), signed in over the API."""
    client = app.test_client()
    customer = make_customer(full_name="Layla Haddad")
    headers = auth_headers(client, customer)
    submitted_case(client, headers)
    approve_case(customer.user_id)
    return headers


def test_manager_adds_a_car_blocks_days_and_sees_the_booking(app: Flask, app_ctx: None, live_server: str,
                                                             page: tuple[Any, Journal]) -> None:
    tab, journal = page
    agency = make_agency(name="Desert Wheels LLC")
    manager = make_staff(Role.AGENCY_MANAGER, agency=agency)
    _sign_in(tab, live_server, manager)
    assert "Desert Wheels LLC" in tab.locator("h1").inner_text()

    # add a car through the fleet page
    tab.click("nav a:has-text('Fleet')")
    tab.wait_for_url(f"{live_server}/agency/fleet")
    for field, value in {"#make": "Toyota", "#model": "Yaris", "#year": "2024", "#plate": "DXB K 24680",
                         "#seats": "5", "#latitude": "25.1972", "#longitude": "55.2744",
                         "#pickup_address": "Downtown Dubai", "#daily_price": "120", "#deposit": "1000",
                         "#mileage_limit_km_per_day": "250"}.items():
        tab.fill(field, value)
    tab.select_option("#category", "compact")
    tab.select_option("#city", "Dubai")
    tab.select_option("#status", "listed")
    tab.click("#add-car button[type=submit]")
    tab.wait_for_url(f"{live_server}/agency/fleet/*")
    assert "The car was added" in tab.locator("p.notice").inner_text()
    assert tab.locator("#vehicle-status").inner_text() == "listed"
    signin._fresh()
    car = db.session.execute(select(Vehicle).where(Vehicle.plate == "DXB K 24680")).scalar_one()
    assert car.daily_price_fils == 12000 and car.agency_id == agency.id

    # block two days, well after the rental booked below
    first = (datetime.now(BUSINESS_TZ) + timedelta(days=5)).date()
    tab.fill("#first_day", first.isoformat())
    tab.fill("#last_day", (first + timedelta(days=1)).isoformat())
    tab.fill("#reason", "service")
    tab.click("#add-block button[type=submit]")
    tab.wait_for_url(f"{live_server}/agency/fleet/{car.public_id}?blocked=1#blocks")
    assert tab.locator("#blocks tbody tr").count() == 1 and "service" in tab.locator("#blocks tbody").inner_text()
    signin._fresh()
    block = db.session.execute(select(AvailabilityBlock)).scalar_one()
    assert block.ends_at - block.starts_at == timedelta(days=2)

    # the same days again: the page says why it refused
    tab.fill("#first_day", (first + timedelta(days=1)).isoformat())
    tab.fill("#last_day", (first + timedelta(days=2)).isoformat())
    with tab.expect_response(f"{live_server}/agency/fleet/{car.public_id}/blocks") as answer:
        tab.click("#add-block button[type=submit]")
    assert answer.value.status == 409
    assert tab.locator("[role=alert]").get_attribute("data-code") == "vehicle_unavailable"

    # a KYC-approved customer books the car over the API
    headers = _cleared_customer(app)
    starts = (utcnow() + timedelta(hours=2)).replace(second=0, microsecond=0)
    response = app.test_client().post("/api/v1/bookings", headers=headers, json={
        "vehicle_id": car.public_id, "starts_at": iso(starts), "ends_at": iso(starts + timedelta(hours=5)),
        "accept_rental_terms_version": CURRENT[ConsentKind.RENTAL_TERMS].version,
        "accept_mit_mandate_version": CURRENT[ConsentKind.MIT_MANDATE].version})
    assert response.status_code == 201, response.get_json()
    reference = response.get_json()["reference"]

    # ...and it shows: on the dashboard if it is picked up today (Dubai), else in the bookings list
    tab.click("nav a:has-text('Dashboard')")
    tab.wait_for_url(f"{live_server}/agency/")
    if starts.astimezone(BUSINESS_TZ).date() == datetime.now(BUSINESS_TZ).date():
        row = tab.locator("table:below(#pickups) tbody tr", has_text=reference).first
        assert "Layla Haddad" in row.inner_text() and "Yaris" in row.inner_text()
    else:
        tab.click("nav a:has-text('Bookings')")
        tab.wait_for_url(f"{live_server}/agency/bookings")
        assert "Layla Haddad" in tab.locator("#bookings tbody tr", has_text=reference).inner_text()
    tab.click(f"a:has-text('{reference}')")
    tab.wait_for_url(f"{live_server}/agency/bookings/{reference}")
    details = tab.locator("#booking").inner_text()
    assert "Layla Haddad" in details and "DXB K 24680" in details and "Downtown Dubai" in details
    assert "@" not in details  # no e-mail address for the agency (P-17)

    # the 409 document is expected; anything else in the console is not
    assert [e for e in journal.errors if "status of 409" not in e] == []


def test_forms_below_tables_have_room(app: Flask, app_ctx: None, live_server: str, page: tuple[Any, Journal],
                                      tmp_path: Any) -> None:
    # issue 7 item 14: the "Add a car" and "Invite a staff member" forms touched the table above them
    tab, journal = page
    tab.set_viewport_size({"width": 1440, "height": 900})
    agency = make_agency(name="Desert Wheels LLC")
    owner = make_staff(Role.AGENCY_OWNER, agency=agency)
    _sign_in(tab, live_server, owner)
    for link, table, form in (("Fleet", "table#fleet", "#add"), ("Staff", "table", "div.card:has(h2)")):
        tab.click(f"nav a:has-text('{link}')")
        tab.wait_for_load_state()
        tab.screenshot(path=str(tmp_path / f"{link.lower()}.png"), full_page=True)
        above = tab.locator(table).first.bounding_box()
        below = tab.locator(form).last.bounding_box()
        assert above and below
        assert below["y"] - (above["y"] + above["height"]) >= 16, link
    assert journal.errors == []
