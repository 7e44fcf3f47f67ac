"""The console's post-rental charge pages (P-21): the disputes team's queue, the case page (the agency's
evidence beside the customer's dispute files, the incurred time against the actual rental, the notice's
delivery), the decision (uphold, reduce, waive) and the platform review of a fine or toll timed outside the
rental. Disputes agents only, behind the console gate with its MFA step; every view and action is audited.
Payments through localstripe on loopback; the clock moved with time_machine."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from marketplace.audit import AuditEvent
from marketplace.extensions import db
from marketplace.notifications.models import OutboxMessage
from marketplace.permissions import Role
from tests.charges.helpers import at, charge_row, evidence_jpeg, raise_charge, returned_rental
from tests.conftest import sweep_and_drain
from tests.factories import auth_headers, make_staff, web_login
from tests.staff_web import location, page_csrf


def _audit(action: str) -> list[dict[str, Any]]:
    db.session.rollback()
    rows = db.session.execute(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)).scalars()
    return [json.loads(row.data) for row in rows]


def _mail(kind: str, to: str | None = None) -> list[OutboxMessage]:
    db.session.rollback()
    stmt = select(OutboxMessage).where(OutboxMessage.kind == kind)
    if to is not None:
        stmt = stmt.where(OutboxMessage.to_address == to)
    return list(db.session.execute(stmt).scalars())


def _disputed(client: Any, server: Any) -> tuple[Any, str]:
    rental = returned_rental(client, server)
    with at(rental.returned_at + timedelta(minutes=20)):
        raised = raise_charge(
            client,
            auth_headers(client, rental.manager),
            rental.reference,
            incurred_at=rental.returned_at - timedelta(hours=2),
        )
        assert raised.status_code == 201, raised.get_json()
        charge_id = raised.get_json()["id"]
        disputed = client.post(
            f"/api/v1/charges/{charge_id}/dispute",
            headers=auth_headers(client, rental.customer),
            content_type="multipart/form-data",
            data={
                "reason": "The tank was full when I returned it, see the photo",
                "file_1": (io.BytesIO(evidence_jpeg((10, 200, 10))), "f.jpg", "image/jpeg"),
            },
        )
        assert disputed.status_code == 200, disputed.get_json()
    return rental, charge_id


def test_the_disputes_agent_compares_both_sides_and_reduces_the_charge(app, client, app_ctx, stripe_gateway):
    # enforces P-21: a disputed charge is decided by a person, with a reason; both sides are told
    rental, charge_id = _disputed(client, stripe_gateway)
    agent = make_staff(Role.DISPUTES_AGENT)
    with at(rental.returned_at + timedelta(hours=1)):
        web = app.test_client()
        web_login(web, agent)
        queue = web.get("/console/charges")
        assert queue.status_code == 200 and charge_id in queue.get_data(as_text=True)
        assert _audit("console:charges_view")
        case = web.get(f"/console/charges/{charge_id}")
        html = case.get_data(as_text=True)
        assert case.status_code == 200 and rental.reference in html and "inside the rental" in html
        assert "The tank was full when I returned it" in html and "157.50 AED" in html
        assert 'id="inspection-facts-pickup"' in html and 'id="notice-sent"' in html
        sides = re.findall(r'class="evidence" data-side="(\w+)" src="([^"]+)"', html)
        assert [side for side, _ in sides] == ["agency", "customer"]
        for _side, src in sides:
            image = web.get(src)
            assert image.status_code == 200 and image.mimetype == "image/jpeg"
        assert [row["viewer"] for row in _audit("charge:evidence:view")] == ["console", "console"]
        assert _audit("console:charge_view")

        token = page_csrf(web, f"/console/charges/{charge_id}")
        path = f"/console/charges/{charge_id}/decide"
        for data, message in (
            ({"decision": "reduce", "amount": "abc"}, "Give the reduced amount in AED"),
            ({"decision": "reduce", "amount": "80.005"}, "Give the reduced amount in AED"),
            ({"decision": "reduce", "amount": "157.50"}, "less than the noticed amount"),
            ({"decision": "shrug", "amount": ""}, "Choose uphold, reduce or waive"),
            ({"decision": "reduce", "amount": "80.00", "reason": ""}, "Give the reason"),
        ):
            refused = web.post(path, data={"csrf_token": token, "reason": "Half a tank, per photos", **data})
            assert refused.status_code == 422, (data, refused.status_code)
            assert message in refused.get_data(as_text=True), data
        assert web.post(path, data={"decision": "waive", "reason": "no token"}).status_code == 403
        assert charge_row(charge_id).status == "disputed"
        decided = web.post(
            path,
            data={"csrf_token": token, "decision": "reduce", "amount": "80.00", "reason": "Half a tank, per photos"},
        )
        assert decided.status_code == 302 and location(decided).endswith(f"/console/charges/{charge_id}?decided=1")
        row = charge_row(charge_id)
        assert row.status == "due" and row.collect_fils == 8000 and row.decision == "reduce"
        assert _audit("charge:decide")[-1]["amount"] == 8000
        assert 'id="decision-submit"' not in web.get(f"/console/charges/{charge_id}").get_data(as_text=True)
    assert _mail("charge_decided") and _mail("charge_decided_agency", rental.agency.contact_email)
    with at(row.due_at + timedelta(minutes=5)):
        sweep_and_drain(app)
    paid = charge_row(charge_id)
    assert paid.status == "paid" and paid.collect_fils == 8000


def test_platform_review_of_a_toll_outside_the_rental(app, client, app_ctx, stripe_gateway):
    rental = returned_rental(client, stripe_gateway)
    grace = app.config["SETTINGS"].charge_time_grace
    with at(rental.returned_at + timedelta(hours=1)):
        raised = raise_charge(
            client,
            auth_headers(client, rental.manager),
            rental.reference,
            kind="toll",
            amount=400,
            incurred_at=rental.returned_at + grace + timedelta(minutes=5),
        )
        charge_id = raised.get_json()["id"]
        assert raised.get_json()["status"] == "platform_review"
    agent = make_staff(Role.DISPUTES_AGENT)
    with at(rental.returned_at + timedelta(hours=2)):
        web = app.test_client()
        web_login(web, agent)
        html = web.get(f"/console/charges/{charge_id}").get_data(as_text=True)
        assert "OUTSIDE the rental" in html and 'id="review-submit"' in html and 'id="decision-submit"' not in html
        token = page_csrf(web, f"/console/charges/{charge_id}")
        blank = web.post(f"/console/charges/{charge_id}/review", data={"csrf_token": token, "decision": "approve"})
        assert blank.status_code == 422 and "Give the reason" in blank.get_data(as_text=True)
        done = web.post(
            f"/console/charges/{charge_id}/review",
            data={"csrf_token": token, "decision": "approve", "reason": "Salik log shows our plate"},
        )
        assert done.status_code == 302
        assert charge_row(charge_id).status == "noticed"
        assert _audit("charge:review")[-1]["decision"] == "approve"
        wrong = web.post(
            f"/console/charges/{charge_id}/decide",
            data={"csrf_token": token, "decision": "waive", "reason": "not disputed"},
        )
        assert 400 <= wrong.status_code < 500


def test_only_disputes_staff_past_mfa_see_charges(app, client, app_ctx, stripe_gateway):
    rental, charge_id = _disputed(client, stripe_gateway)
    reviewer = make_staff(Role.KYC_REVIEWER)
    agent = make_staff(Role.DISPUTES_AGENT)
    with at(rental.returned_at + timedelta(hours=1)):
        web = app.test_client()
        web_login(web, reviewer)
        assert web.get("/console/charges").status_code == 403
        assert web.get(f"/console/charges/{charge_id}").status_code == 403
        token = page_csrf(web, "/console/")
        assert (
            web.post(
                f"/console/charges/{charge_id}/decide", data={"csrf_token": token, "decision": "waive", "reason": "no"}
            ).status_code
            == 403
        )
        half = app.test_client()
        web_login(half, agent, mfa=False)
        assert half.get(f"/console/charges/{charge_id}").status_code in (302, 303, 401, 403)
    with at(rental.returned_at + timedelta(hours=2)):
        full = app.test_client()
        web_login(full, agent)
        assert full.get("/console/charges/not-a-charge").status_code == 404
        assert full.get(f"/console/charges/{charge_id}/evidence/nothing").status_code == 404
    assert charge_row(charge_id).status == "disputed"
