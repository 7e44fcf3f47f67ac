"""The agency app's post-rental charge pages (P-21): the raise form on a returned booking (AED amounts, Dubai
time, evidence files through the one multipart parser), the charges list, one charge with its evidence
(audited views) and the withdraw form; who may raise, another agency's charge is a 404, bad input is a 4xx
with a message. Payments through localstripe on loopback; the clock moved with time_machine."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from marketplace.audit import AuditEvent
from marketplace.charges.models import Charge
from marketplace.clock import BUSINESS_TZ
from marketplace.extensions import db
from marketplace.permissions import Role
from tests.charges.helpers import at, charge_row, evidence_jpeg, returned_rental
from tests.factories import make_agency, make_staff, web_login
from tests.staff_web import error_code, page_csrf


def _local(when: Any) -> str:
    return when.astimezone(BUSINESS_TZ).strftime("%Y-%m-%dT%H:%M")


def _form(token: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "csrf_token": token,
        "kind": "fuel",
        "amount": "157.50",
        "description": "Returned with a quarter tank (pick-up: full)",
        "incurred_at": overrides.pop("incurred_at"),
        "evidence": [(io.BytesIO(evidence_jpeg()), "fuel.jpg", "image/jpeg")],
    }
    data.update(overrides)
    return data


def _post(web: Any, path: str, data: dict[str, Any]) -> Any:
    return web.post(path, data=data, content_type="multipart/form-data")


def _charges() -> list[Charge]:
    db.session.rollback()
    return list(db.session.execute(select(Charge).order_by(Charge.id)).scalars())


def _audit(action: str) -> list[dict[str, Any]]:
    db.session.rollback()
    rows = db.session.execute(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)).scalars()
    return [json.loads(row.data) for row in rows]


def test_a_manager_raises_a_charge_sees_it_with_its_evidence_and_withdraws_it(app, client, app_ctx, stripe_gateway):
    # enforces P-21: raised with evidence from the agency app, noticed to the customer, withdrawn with a reason
    rental = returned_rental(client, stripe_gateway)
    base = f"/agency/bookings/{rental.reference}"
    with at(rental.returned_at + timedelta(minutes=20)):
        web = app.test_client()
        web_login(web, rental.manager, door="agency")
        page = web.get(base)
        html = page.get_data(as_text=True)
        assert page.status_code == 200 and 'id="charge-raise"' in html and 'id="charge-evidence"' in html
        counter = web.get(f"{base}/handover").get_data(as_text=True)
        assert 'id="charge-link"' in counter
        token = page_csrf(web, base)
        raised = _post(
            web, f"{base}/charges", _form(token, incurred_at=_local(rental.returned_at - timedelta(hours=1)))
        )
        assert raised.status_code == 302, raised.get_data(as_text=True)[:800]
        (charge,) = _charges()
        assert charge.amount_fils == 15750 and charge.kind == "fuel" and charge.status == "noticed"
        assert charge.incurred_at.replace(tzinfo=None) == (rental.returned_at - timedelta(hours=1)).replace(
            second=0, microsecond=0, tzinfo=None
        )
        detail = web.get(raised.headers["Location"])
        text = detail.get_data(as_text=True)
        assert detail.status_code == 200 and "AED 157.50" in text and "The customer has been sent the notice" in text
        src = re.search(r'class="charge-thumb" data-side="agency" src="([^"]+)"', text)
        assert src is not None
        image = web.get(src.group(1))
        assert (
            image.status_code == 200 and image.mimetype == "image/jpeg" and "no-store" in image.headers["Cache-Control"]
        )
        assert _audit("charge:evidence:view")[-1]["viewer"] == "agency"
        listed = web.get("/agency/charges").get_data(as_text=True)
        assert charge.public_id in listed and rental.reference in listed
        assert charge.public_id in web.get(base).get_data(as_text=True)  # the booking page lists it too

        token = page_csrf(web, f"/agency/charges/{charge.public_id}")
        blank = web.post(f"/agency/charges/{charge.public_id}/withdraw", data={"csrf_token": token, "reason": " "})
        assert blank.status_code == 422 and "Give a reason" in blank.get_data(as_text=True)
        done = web.post(
            f"/agency/charges/{charge.public_id}/withdraw", data={"csrf_token": token, "reason": "Fuel receipt found"}
        )
        assert done.status_code == 302
        assert charge_row(charge.public_id).status == "withdrawn"
        assert _audit("charge:withdraw")


def test_bad_amounts_times_and_missing_evidence_are_refused_with_a_message(app, client, app_ctx, stripe_gateway):
    rental = returned_rental(client, stripe_gateway)
    base = f"/agency/bookings/{rental.reference}"
    when = _local(rental.returned_at - timedelta(hours=1))
    with at(rental.returned_at + timedelta(minutes=20)):
        web = app.test_client()
        web_login(web, rental.manager, door="agency")
        token = page_csrf(web, base)
        for amount, message in (
            ("157.505", "at most two decimals"),
            ("abc", "Give the amount in AED"),
            ("0.50", "between AED 1.00 and AED 50,000.00"),
            ("", "Give the amount in AED"),
            ("50000.01", "between AED 1.00"),
            ("NaN", "Give the amount in AED"),
            ("-5.00", "Give the amount in AED"),
            ("1e3", "Give the amount"),
        ):
            response = _post(web, f"{base}/charges", _form(token, amount=amount, incurred_at=when))
            text = response.get_data(as_text=True)
            assert response.status_code == 422, (amount, response.status_code)
            assert message in text and 'id="charge-error"' in text, amount
        future = _local(rental.returned_at + timedelta(days=2))
        for data, message in (
            (_form(token, incurred_at="yesterday"), "Pick the date and time"),
            (_form(token, incurred_at=future), "cannot be in the future"),
            (_form(token, incurred_at=when, evidence=[]), "Attach at least one evidence file"),
            (_form(token, incurred_at=when, kind="parking"), "Choose what the charge is for"),
            (_form(token, incurred_at=when, evidence=[(io.BytesIO(b"not an image"), "x.jpg", "image/jpeg")]), ""),
        ):
            response = _post(web, f"{base}/charges", data)
            assert 400 <= response.status_code < 500, (message, response.status_code)
            assert message in response.get_data(as_text=True), message
        unknown = _post(web, f"{base}/charges", _form(token, incurred_at=when, extra="1"))
        assert unknown.status_code == 422 and error_code(unknown) == "unknown_field"
        no_csrf = _post(
            web, f"{base}/charges", {k: v for k, v in _form(token, incurred_at=when).items() if k != "csrf_token"}
        )
        assert no_csrf.status_code == 403
        assert _charges() == []


def test_who_may_raise_and_another_agencys_charge_is_not_found(app, client, app_ctx, stripe_gateway):
    rental = returned_rental(client, stripe_gateway)
    base = f"/agency/bookings/{rental.reference}"
    desk = make_staff(Role.AGENCY_STAFF, agency=rental.agency)
    stranger = make_staff(Role.AGENCY_OWNER, agency=make_agency())
    with at(rental.returned_at + timedelta(minutes=20)):
        web = app.test_client()
        web_login(web, rental.manager, door="agency")
        token = page_csrf(web, base)
        raised = _post(web, f"{base}/charges", _form(token, incurred_at=_local(rental.returned_at)))
        assert raised.status_code == 302
        (charge,) = _charges()
        evidence = re.search(
            r'src="(/agency/charges/[^"]+/evidence/[^"]+)"',
            web.get(f"/agency/charges/{charge.public_id}").get_data(as_text=True),
        )
        assert evidence is not None
    with at(rental.returned_at + timedelta(minutes=25)):
        staff_web = app.test_client()
        web_login(staff_web, desk, door="agency")
        page = staff_web.get(base).get_data(as_text=True)
        assert 'id="charge-raise"' not in page and charge.public_id in page  # reads, cannot raise
        assert 'id="charge-withdraw"' not in staff_web.get(f"/agency/charges/{charge.public_id}").get_data(as_text=True)
        token = page_csrf(staff_web, base)
        refused = _post(staff_web, f"{base}/charges", _form(token, incurred_at=_local(rental.returned_at)))
        assert refused.status_code == 403
        assert (
            staff_web.post(
                f"/agency/charges/{charge.public_id}/withdraw", data={"csrf_token": token, "reason": "no"}
            ).status_code
            == 403
        )
    with at(rental.returned_at + timedelta(minutes=30)):
        other = app.test_client()
        web_login(other, stranger, door="agency")
        token = page_csrf(other, "/agency/charges")
        assert charge.public_id not in other.get("/agency/charges").get_data(as_text=True)
        assert other.get(base).status_code == 404
        assert other.get(f"/agency/charges/{charge.public_id}").status_code == 404
        assert other.get(evidence.group(1)).status_code == 404
        assert _post(other, f"{base}/charges", _form(token, incurred_at=_local(rental.returned_at))).status_code == 404
        assert (
            other.post(
                f"/agency/charges/{charge.public_id}/withdraw", data={"csrf_token": token, "reason": "mine now"}
            ).status_code
            == 404
        )
    assert [c.status for c in _charges()] == ["noticed"]
    assert all(row["viewer"] == "agency" for row in _audit("charge:evidence:view"))
