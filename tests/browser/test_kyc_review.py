"""A KYC reviewer's journey in the system's headless Chromium: sign in with password and TOTP, open the queue,
claim a case, compare the selfie with the ID photos side by side (zoom, rotate), approve. Enforces P-09.

The browser, the page journal (console and page errors) and the sign-in steps are shared with
test_console_signin.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask

from marketplace.extensions import db, utcnow
from marketplace.kyc import service as kyc
from marketplace.permissions import Role
from tests.browser import test_console_signin as signin
from tests.browser.test_console_signin import BROWSER_JOURNEY, Journal
from tests.factories import auth_headers, make_customer, make_staff
from tests.kyc.helpers import latest_case, submitted_case

pytestmark = BROWSER_JOURNEY

# the shared fixtures: one headless Chromium per module, a fresh page (with its error journal) per test
browser = signin.browser
page = signin.page

ALL_LOADED = """() => {
    const images = [...document.querySelectorAll('figure.viewer img')];
    return images.length === 5 && images.every(img => img.complete && img.naturalWidth > 0);
}"""


def _transform(tab: Any, kind: str) -> str:
    return str(tab.locator(f"img[data-kind={kind}]").evaluate("img => img.style.transform"))


def test_reviewer_claims_compares_and_approves(app: Flask, app_ctx: None, live_server: str,
                                              page: tuple[Any, Journal]) -> None:  # enforces P-09, P-10
    client = app.test_client()
    customer = make_customer(full_name="Layla Haddad")
    submitted_case(client, auth_headers(client, customer))
    case = latest_case(customer.user_id)
    reviewer = make_staff(Role.KYC_REVIEWER)
    signin._fresh()

    tab, journal = page
    signin._sign_in_with_password(tab, live_server, reviewer)
    signin._enter_code(tab, live_server, signin._code(reviewer))

    tab.click("nav a:has-text('KYC queue')")
    tab.wait_for_url(f"{live_server}/console/kyc")
    row = tab.locator("tbody tr", has_text="Layla Haddad")
    assert "submitted" in row.inner_text()
    row.locator("a:has-text('Open')").click()
    tab.wait_for_url(f"{live_server}/console/kyc/{case.public_id}")
    assert tab.locator("#case-status").inner_text() == "submitted"
    assert tab.locator("figure.viewer img").count() == 0  # no images before the claim

    tab.click("#claim")
    tab.wait_for_url(f"{live_server}/console/kyc/{case.public_id}")
    assert tab.locator("#case-status").inner_text() == "in_review"
    tab.wait_for_function(ALL_LOADED)
    kinds = tab.eval_on_selector_all("figure.viewer img", "images => images.map(img => img.dataset.kind)")
    assert sorted(kinds) == ["id_back", "id_front", "licence_back", "licence_front", "selfie"]
    # side by side: the selfie and the ID photo share a row, at different places on it
    selfie = tab.locator("img[data-kind=selfie]").bounding_box()
    id_front = tab.locator("img[data-kind=id_front]").bounding_box()
    assert selfie and id_front and selfie["width"] > 100 and id_front["width"] > 100
    assert abs(selfie["y"] - id_front["y"]) < selfie["height"] and selfie["x"] != id_front["x"]

    figure = tab.locator("figure.viewer", has=tab.locator("img[data-kind=selfie]"))
    figure.get_by_role("button", name="Zoom in").click()
    figure.get_by_role("button", name="Zoom in").click()
    figure.get_by_role("button", name="Rotate").click()
    assert _transform(tab, "selfie") == "scale(1.5625) rotate(90deg)"
    figure.get_by_role("button", name="Zoom out").click()
    assert _transform(tab, "selfie") == "scale(1.25) rotate(90deg)"
    assert _transform(tab, "id_front") == ""  # each viewer has its own controls

    tab.select_option("#decision", "approve")
    tab.select_option("#reason_code", "documents_match")
    tab.click("#decide")
    tab.wait_for_url(f"{live_server}/console/kyc/{case.public_id}")
    assert tab.locator("#case-status").inner_text() == "approved"
    assert "documents_match" in tab.locator("table", has_text="Four eyes").inner_text()
    assert journal.errors == []

    signin._fresh()
    kyc.ensure_cleared_to_drive(customer.user(), utcnow() + timedelta(days=5))
    db.session.rollback()


def _landscape_case(client: Any, customer: Any) -> Any:
    """A submitted case with a portrait selfie and landscape (ID-1 card shaped) documents, as phones send them."""
    from marketplace import demo
    from tests.kyc.helpers import give_face_consent, identity_body, upload

    headers = auth_headers(client, customer)
    give_face_consent(client, headers)
    assert client.put("/api/v1/me/kyc/identity", headers=headers, json=identity_body()).status_code == 200
    card = demo.card_front("UNITED ARAB EMIRATES", "RESIDENT IDENTITY CARD", [("Name", "LAYLA HADDAD")])
    for kind, data in (("selfie", demo.selfie()), ("id_front", card), ("id_back", demo.card_back("ID", "BACK")),
                       ("licence_front", card), ("licence_back", demo.card_back("LICENCE", "BACK"))):
        assert upload(client, headers, kind, data).status_code == 201
    assert client.post("/api/v1/me/kyc/submit", headers=headers).status_code == 200
    return latest_case(customer.user_id)


def _box(tab: Any, selector: str) -> dict[str, float]:
    box = tab.locator(selector).bounding_box()
    assert box is not None, selector
    return dict(box)


def test_case_page_lays_out_selfie_and_id_photo_at_a_comparable_size(
    app: Flask, app_ctx: None, live_server: str, page: tuple[Any, Journal], tmp_path: Any,
) -> None:  # issue 7 item 14 (P-09: the reviewer compares the selfie with the ID photo)
    client = app.test_client()
    customer = make_customer(full_name="Layla Haddad")
    case = _landscape_case(client, customer)
    reviewer = make_staff(Role.KYC_REVIEWER)
    signin._fresh()

    tab, journal = page
    tab.set_viewport_size({"width": 1440, "height": 900})
    signin._sign_in_with_password(tab, live_server, reviewer)
    signin._enter_code(tab, live_server, signin._code(reviewer))
    tab.goto(f"{live_server}/console/kyc/{case.public_id}")
    tab.click("#claim")
    tab.wait_for_url(f"{live_server}/console/kyc/{case.public_id}")
    tab.wait_for_function(ALL_LOADED)
    tab.screenshot(path=str(tmp_path / "kyc_case.png"), full_page=True)

    selfie, id_front = _box(tab, "img[data-kind=selfie]"), _box(tab, "img[data-kind=id_front]")
    # the landscape ID card is shown landscape and large, not shrunk into a ~215 px portrait frame
    assert id_front["width"] > id_front["height"] and id_front["width"] >= 480, id_front
    assert selfie["height"] > selfie["width"] and selfie["height"] >= 400, selfie
    # side by side on one row, at the same height, so the two faces can be compared
    assert abs(selfie["y"] - id_front["y"]) < 0.1 * selfie["height"] and selfie["x"] + selfie["width"] <= id_front["x"]
    assert abs(selfie["height"] - id_front["height"]) < 0.1 * selfie["height"]
    # each image fills its frame's width or height: no frame of the wrong shape around it
    for kind in ("selfie", "id_front", "id_back", "licence_front", "licence_back"):
        img = _box(tab, f"img[data-kind={kind}]")
        frame = _box(tab, f"figure.viewer:has(img[data-kind={kind}]) .frame")
        assert img["width"] >= 0.9 * frame["width"] or img["height"] >= 0.9 * frame["height"], kind
        assert img["width"] >= 0.75 * frame["width"] and img["height"] >= 0.75 * frame["height"], kind
    # captions stay on one line and nothing on the page scrolls sideways
    for label in tab.locator("figure.viewer figcaption").all():
        box = label.bounding_box()
        assert box is not None and box["height"] < 40, label.inner_text()
    assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert journal.errors == []
