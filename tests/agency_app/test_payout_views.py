"""Agency app: the payouts page shows the payout account (and, outside production, a note while it is not ready),
lets the owner start Stripe Connect onboarding, and lists the same payout lines as ``GET /api/v1/agency/payouts``
(P-22). Against localstripe with the extension's Connect stubs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from marketplace.bookings.models import Booking
from marketplace.extensions import db
from marketplace.payments import service
from marketplace.permissions import Role
from tests.factories import (
    auth_headers,
    book,
    make_agency,
    make_staff,
    make_vehicle,
    make_verified_customer,
    pay,
    save_card,
    web_login,
)
from tests.payments.helpers import raw_client
from tests.staff_web import location, page_csrf
from tests.stripe_fixtures import localstripe, localstripe_server, stripe_gateway  # noqa: F401


def test_the_owner_sees_the_note_and_starts_onboarding(app: Flask, client: FlaskClient, app_ctx: None,
                                                       stripe_gateway: Any) -> None:  # noqa: F811 - the fixture
    agency = make_agency()
    owner = make_staff(Role.AGENCY_OWNER, agency=agency)
    web_login(client, owner, door="agency")
    home = client.get("/agency/").get_data(as_text=True)
    assert 'href="/agency/payouts"' in home and 'id="payouts-note"' in home  # the visible note outside production
    html = client.get("/agency/payouts").get_data(as_text=True)
    assert 'id="payouts-not-ready"' in html and "Outside production your cars can still be listed" in html
    assert "Start onboarding with Stripe" in html and "No payouts yet." in html

    token = page_csrf(client, "/agency/payouts")
    started = client.post("/agency/payouts/onboarding", data={"csrf_token": token})
    assert started.status_code == 302
    link = location(started)
    assert link.startswith(stripe_gateway.base_url + "/_config/connect/onboard/")
    account_id = service.payout_account_of(agency.id).stripe_account_id
    # the owner completes Stripe's form, which sends them back; the page asks Stripe and records it ready
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(link, timeout=10)
        raise AssertionError("Stripe's form sends the owner back")
    except urllib.error.HTTPError as exc:
        back = exc.headers["Location"]
    assert back.startswith("http://localhost/agency/payouts?") and "returned=1" in back
    html = client.get(back.removeprefix("http://localhost")).get_data(as_text=True)
    assert f"Ready: Stripe pays {agency.business_name} out to account" in html and account_id in html
    assert 'id="payouts-not-ready"' not in html
    assert 'id="payouts-note"' not in client.get("/agency/").get_data(as_text=True)


def test_desk_staff_see_no_payouts_and_managers_cannot_onboard(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    agency = make_agency()
    web_login(client, make_staff(Role.AGENCY_STAFF, agency=agency), door="agency")
    assert 'href="/agency/payouts"' not in client.get("/agency/").get_data(as_text=True)
    assert client.get("/agency/payouts").status_code == 403
    manager = app.test_client()
    web_login(manager, make_staff(Role.AGENCY_MANAGER, agency=agency), door="agency")
    html = manager.get("/agency/payouts").get_data(as_text=True)
    assert "Start onboarding" not in html and "owner starts the onboarding" in html
    token = page_csrf(manager, "/agency/payouts")
    assert manager.post("/agency/payouts/onboarding", data={"csrf_token": token}).status_code == 403


def test_the_statement_lists_what_the_api_lists(app: Flask, client: FlaskClient, app_ctx: None,
                                               stripe_gateway: Any) -> None:  # noqa: F811 - the fixture
    # enforces P-22: a completed booking paid out less the platform fee, shown in the agency app
    agency, other = make_agency(), make_agency()
    headers = auth_headers(client, make_verified_customer())
    card = save_card(client, headers, stripe_gateway)
    reference = book(client, headers, make_vehicle(agency, daily_price_fils=20000, deposit_fils=0))
    assert pay(client, headers, reference, card).status_code == 200
    service.connect_payout_account(agency.id, raw_client(stripe_gateway).v1.accounts.create(
        params={"type": "standard"}).id)
    booking = db.session.execute(select(Booking).where(Booking.reference == reference)).scalar_one()
    booking.status = "completed"  # the handover and return flow is step 7's
    db.session.commit()
    assert service.release_payouts(now=booking.ends_at + timedelta(days=4)) == 1
    db.session.commit()

    owner = make_staff(Role.AGENCY_OWNER, agency=agency)
    [line] = client.get("/api/v1/agency/payouts", headers=auth_headers(client, owner)).get_json()["items"]
    web_login(client, owner, door="agency")
    html = client.get("/agency/payouts").get_data(as_text=True)
    table = html[html.index('id="payouts"'):]
    for shown in (reference, line["transfer_id"], "paid", f"AED {line['amount'] / 100:,.2f}",
                  f"AED {line['platform_fee'] / 100:,.2f}"):
        assert shown in table, shown
    stranger = app.test_client()
    web_login(stranger, make_staff(Role.AGENCY_OWNER, agency=other), door="agency")
    assert reference not in stranger.get("/agency/payouts").get_data(as_text=True)
