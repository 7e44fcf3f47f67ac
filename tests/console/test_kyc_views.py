"""The console's KYC case page as a reviewer sees it (P-09): what the second reviewer of a proposal is shown."""

from __future__ import annotations

import html
import re

from flask import Flask
from flask.testing import FlaskClient

from marketplace.extensions import db
from marketplace.kyc.states import CaseStatus
from marketplace.permissions import Role
from tests.factories import auth_headers, make_customer, make_staff, web_login
from tests.kyc.helpers import latest_case, submitted_case
from tests.staff_web import page_csrf

NOTE = "Selfie <b>and</b> ID photo differ: ears & jaw line; the ID photo looks printed over."


def _text(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def test_second_reviewer_sees_the_first_reviewers_note_author_and_time(app: Flask, client: FlaskClient,
                                                                       app_ctx: None) -> None:
    # issue 7 item 13 (P-09, four eyes): the note explaining a proposed rejection was never shown
    customer = make_customer()
    submitted_case(client, auth_headers(client, customer))
    case = latest_case(customer.user_id)
    first, second = make_staff(Role.KYC_REVIEWER), make_staff(Role.KYC_REVIEWER)
    first_name, second_name = first.user().full_name, second.user().full_name
    path = f"/console/kyc/{case.public_id}"

    web1 = app.test_client()
    web_login(web1, first)
    assert web1.post(f"{path}/claim", data={"csrf_token": page_csrf(web1, path)}).status_code == 302
    response = web1.post(f"{path}/decide", data={"csrf_token": page_csrf(web1, path), "decision": "reject",
                                                 "reason_code": "face_mismatch", "note": NOTE})
    assert response.status_code == 302
    case = latest_case(customer.user_id)
    assert case.status == CaseStatus.AWAITING_SECOND_REVIEW
    db.session.rollback()

    web2 = app.test_client()
    web_login(web2, second)
    page = web2.get(path).get_data(as_text=True)
    proposal = page[page.index("<h2>Second review</h2>"):page.index("<h2>Decisions</h2>")]
    assert "&lt;b&gt;and&lt;/b&gt;" in proposal and "<b>and</b>" not in proposal  # shown as text, escaped
    text = _text(proposal)
    assert NOTE in text
    assert f"Internal note by {first_name}" in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text)
    decisions = _text(page[page.index("<h2>Decisions</h2>"):])
    assert NOTE in decisions and first_name in decisions

    response = web2.post(f"{path}/second-review", data={"csrf_token": page_csrf(web2, path), "confirm": "yes"})
    assert response.status_code == 302
    after = _text(web2.get(path).get_data(as_text=True))
    assert NOTE in after and f"confirmed by {second_name}" in after  # who confirmed it, and when
    db.session.rollback()


def test_a_proposal_without_a_note_says_so(app: Flask, client: FlaskClient, app_ctx: None) -> None:
    customer = make_customer()
    submitted_case(client, auth_headers(client, customer))
    case = latest_case(customer.user_id)
    first, second = make_staff(Role.KYC_REVIEWER), make_staff(Role.KYC_REVIEWER)
    path = f"/console/kyc/{case.public_id}"
    web1 = app.test_client()
    web_login(web1, first)
    web1.post(f"{path}/claim", data={"csrf_token": page_csrf(web1, path)})
    web1.post(f"{path}/decide", data={"csrf_token": page_csrf(web1, path), "decision": "reject",
                                      "reason_code": "document_not_genuine", "note": ""})
    web2 = app.test_client()
    web_login(web2, second)
    assert "No note was left with this proposal." in web2.get(path).get_data(as_text=True)
    db.session.rollback()
