"""The handover check (P-18): the customer's selfie is revealed only at the handover, to the right staff, once,
watermarked; the outcome decides whether the car goes; the return measures lateness and frees the deposit.

Payments run against localstripe on loopback; a clock moved with time_machine puts the test at the counter."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import time_machine
from PIL import Image
from sqlalchemy import select

from marketplace.audit import AuditEvent
from marketplace.bookings.models import Booking
from marketplace.clock import BUSINESS_TZ
from marketplace.extensions import db, utcnow
from marketplace.kyc.models import KycCase
from marketplace.payments import service as payments
from marketplace.payments.models import Refund
from marketplace.payments.states import IntentState
from marketplace.permissions import Role
from tests.conftest import drain_jobs, sweep_and_drain
from tests.factories import (
    Person,
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

SELFIE = photo(600, 800, colour=(200, 200, 200))


@dataclass
class Counter:
    agency: Any
    customer: Person
    customer_headers: dict[str, str]
    staff: Person
    reference: str
    starts_at: datetime
    ends_at: datetime


def _counter(client: Any, server: Any, *, paid: bool = True, deposit: int = 100000) -> Counter:
    agency = make_agency()
    vehicle = make_vehicle(agency, daily_price_fils=20000, deposit_fils=deposit)
    customer = make_verified_customer(selfie=SELFIE)
    headers = auth_headers(client, customer)
    card = save_card(client, headers, server)
    reference = book(client, headers, vehicle, start_in_hours=3, hours=72)
    if paid:
        paid_response = pay(client, headers, reference, card)
        assert paid_response.status_code == 200, paid_response.get_json()
    booking = _booking(reference)
    return Counter(agency, customer, headers, make_staff(Role.AGENCY_STAFF, agency=agency), reference,
                   booking.starts_at, booking.ends_at)


def _booking(reference: str) -> Booking:
    db.session.expire_all()
    return db.session.execute(select(Booking).where(Booking.reference == reference)).scalar_one()


def _at(when: datetime) -> Any:
    return time_machine.travel(when, tick=True)


def _audit(action: str) -> list[dict[str, Any]]:
    db.session.expire_all()
    rows = db.session.execute(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)).scalars()
    return [json.loads(row.data) | {"_subject": row.subject_id, "_outcome": row.outcome} for row in rows]


def _reveal(client: Any, headers: dict[str, str], reference: str) -> Any:
    return client.post(f"/api/v1/agency/bookings/{reference}/handover/reveal", headers=headers)


def _refused(response: Any, reason: str) -> None:
    assert response.status_code == 403, response.get_json()
    body = response.get_json()["error"]
    assert body["code"] == "handover_reveal_refused"
    assert reason in body["details"]["reasons"], body


def _denials() -> list[list[str]]:
    return [row["reasons"] for row in _audit("handover:reveal_denied")]


# ---- today's list --------------------------------------------------------------------------------------------


def test_todays_pickups_list_the_agencys_bookings_with_names_only(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=30)):
        headers = auth_headers(client, c.staff)
        day = c.starts_at.astimezone(BUSINESS_TZ).date().isoformat()
        listed = client.get(f"/api/v1/agency/handovers?day={day}", headers=headers)
        assert listed.status_code == 200, listed.get_json()
        pickups = listed.get_json()["pickups"]
        assert [p["reference"] for p in pickups] == [c.reference]
        assert set(pickups[0]["renter"]) == {"first_name", "last_name"}
        assert pickups[0]["stage"] == "awaiting_check"
        other = auth_headers(client, make_staff(Role.AGENCY_STAFF, agency=make_agency()))
        assert client.get(f"/api/v1/agency/handovers?day={day}", headers=other).get_json()["pickups"] == []
        check = client.get(f"/api/v1/agency/bookings/{c.reference}/handover", headers=headers).get_json()
        assert check["licence"]["number"] == "DXB-778899" and check["stage"] == "awaiting_check"
        assert "email" not in json.dumps(check) and "date_of_birth" not in check


# ---- the reveal: every condition, each refusal audited (P-18) --------------------------------------------


def test_reveal_inside_the_window_is_a_single_use_watermarked_no_store_link(app, client, app_ctx, stripe_gateway):
    # enforces P-18 and P-11: one link, once, watermarked, never cached, every grant and view audited
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=30)):
        headers = auth_headers(client, c.staff)
        granted = _reveal(client, headers, c.reference)
        assert granted.status_code == 200, granted.get_json()
        url = granted.get_json()["url"]
        # the generic image door does not serve a handover link (it would carry no watermark)
        token = url.rsplit("/", 1)[1]
        assert client.get(f"/api/v1/images/{token}", headers=headers).status_code == 404
        served = client.get(url, headers=headers)
        assert served.status_code == 200
        assert "no-store" in served.headers["Cache-Control"]
        assert served.mimetype == "image/jpeg"
        assert client.get(url, headers=headers).status_code == 404  # a used link is dead
    image = Image.open(io.BytesIO(served.data)).convert("L")
    original = Image.open(io.BytesIO(SELFIE)).convert("L")
    assert image.size == original.size
    width, height = image.size
    band = image.crop((0, int(height * 0.8), width, height))
    levels = list(band.tobytes())
    assert sum(levels) / len(levels) < 120  # the dark band at the bottom (the selfie is light grey there)
    assert max(levels) > 200  # with white writing on it
    assert served.data != SELFIE
    assert [row["purpose"] for row in _audit("image:grant")] == ["handover"]
    assert [row["purpose"] for row in _audit("image:view")] == ["handover"]
    assert len(_audit("handover:reveal")) == 1


def test_the_watermark_names_the_booking_and_the_staff_member(app, app_ctx):
    from marketplace import images

    one = Image.open(io.BytesIO(images.watermark(SELFIE, ["CJ-AAAA-BBBB", "Staff One", "t"]))).convert("L")
    two = Image.open(io.BytesIO(images.watermark(SELFIE, ["CJ-CCCC-DDDD", "Staff Two", "t"]))).convert("L")
    plain = Image.open(io.BytesIO(images.watermark(SELFIE, ["", "", ""]))).convert("L")
    height = one.size[1]
    box = (0, int(height * 0.8), one.size[0], height)
    assert one.crop(box).tobytes() != two.crop(box).tobytes()  # the lines are drawn, not just a band
    assert max(plain.crop(box).tobytes()) < 200 < max(one.crop(box).tobytes())


def test_reveal_outside_the_window_is_refused_and_audited(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=90)):  # the window opens 60 minutes before pick-up
        _refused(_reveal(client, auth_headers(client, c.staff), c.reference), "outside_handover_window")
    with _at(c.starts_at + timedelta(minutes=181)):  # and closes 180 minutes after
        _refused(_reveal(client, auth_headers(client, c.staff), c.reference), "outside_handover_window")
    assert _denials() == [["outside_handover_window"]] * 2
    assert _audit("image:grant") == []


def test_reveal_by_another_agencys_staff_is_a_404_and_audited(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=10)):
        stranger = make_staff(Role.AGENCY_MANAGER, agency=make_agency())
        response = _reveal(client, auth_headers(client, stranger), c.reference)
    assert response.status_code == 404
    assert _denials() == [["not_found"]]
    assert _audit("image:grant") == []


def test_reveal_without_fresh_mfa_asks_for_step_up_and_is_audited(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=20)):
        headers = auth_headers(client, c.staff)
    with _at(c.starts_at - timedelta(minutes=13)):  # 7 minutes after MFA: the session lives, MFA is stale
        response = _reveal(client, headers, c.reference)
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"]["code"] == "reauth_required"
    assert _denials() == [["mfa_not_fresh"]]


def test_reveal_before_payment_is_refused_and_audited(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway, paid=False)
    with _at(c.starts_at - timedelta(minutes=10)):
        response = _reveal(client, auth_headers(client, c.staff), c.reference)
    _refused(response, "not_paid")
    assert {"booking_not_confirmed", "not_paid", "deposit_not_held"} <= set(_denials()[0])


def test_reveal_without_a_held_deposit_is_refused_and_audited(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway)
    booking = _booking(c.reference)
    payments.release_deposit(booking.id)
    db.session.commit()
    assert payments.current_deposit(booking.id).state == IntentState.RELEASED
    with _at(c.starts_at - timedelta(minutes=10)):
        response = _reveal(client, auth_headers(client, c.staff), c.reference)
    _refused(response, "deposit_not_held")
    assert _denials() == [["deposit_not_held"]]


def test_reveal_for_a_customer_no_longer_cleared_is_refused_and_audited(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway)
    withdrawn = client.delete("/api/v1/me/consents/face_data", headers=c.customer_headers)
    assert withdrawn.status_code in (200, 204), withdrawn.get_json()
    with _at(c.starts_at - timedelta(minutes=10)):
        response = _reveal(client, auth_headers(client, c.staff), c.reference)
    _refused(response, "customer_not_cleared")
    assert _denials() == [["customer_not_cleared"]]


# ---- the outcome, the handover, the return ---------------------------------------------------------------


def _check(client: Any, headers: dict[str, str], reference: str, outcome: str) -> Any:
    return client.post(f"/api/v1/agency/bookings/{reference}/handover/check", headers=headers,
                       json={"outcome": outcome})


def test_a_match_lets_the_car_go_and_then_no_more_reveals(app, client, app_ctx, stripe_gateway):
    # enforces P-18: only after a match is the car handed over; after that, no reveal
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=15)):
        headers = auth_headers(client, c.staff)
        base = f"/api/v1/agency/bookings/{c.reference}"
        assert client.post(f"{base}/handover", headers=headers).get_json()["error"]["code"] == "identity_not_confirmed"
        early = _check(client, headers, c.reference, "match")  # no photo seen yet: no match
        assert early.status_code == 403 and early.get_json()["error"]["code"] == "identity_not_confirmed"
        assert _reveal(client, headers, c.reference).status_code == 200
        assert _check(client, headers, c.reference, "licence_missing").get_json()["stage"] == "awaiting_check"
        matched = _check(client, headers, c.reference, "match")
        assert matched.status_code == 200 and matched.get_json()["stage"] == "matched"
        handed = client.post(f"{base}/handover", headers=headers)
        assert handed.status_code == 200, handed.get_json()
        assert handed.get_json()["status"] == "in_progress" and handed.get_json()["handed_over_at"] is not None
        _refused(_reveal(client, headers, c.reference), "handover_closed")
        assert client.post(f"{base}/handover", headers=headers).status_code == 409
    assert _booking(c.reference).status == "in_progress"
    assert "handover_closed" in _denials()[-1]


def test_a_mismatch_cancels_refunds_and_sends_the_account_to_re_review(app, client, app_ctx, stripe_gateway):
    # enforces P-18: a mismatch stops the handover, cancels per policy, and KYC looks again
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=15)):
        headers = auth_headers(client, c.staff)
        assert _reveal(client, headers, c.reference).status_code == 200
        stopped = _check(client, headers, c.reference, "mismatch")
        assert stopped.status_code == 200, stopped.get_json()
        assert stopped.get_json()["stage"] == "stopped" and stopped.get_json()["status"] == "cancelled"
        assert client.post(f"/api/v1/agency/bookings/{c.reference}/handover", headers=headers).status_code == 403
        _refused(_reveal(client, headers, c.reference), "handover_closed")
        drain_jobs(app)
    booking = _booking(c.reference)
    assert booking.status == "cancelled"
    refunds = db.session.execute(select(Refund)).scalars().all()  # per policy: all but one day's price
    assert [r.amount_fils for r in refunds] == [booking.total_fils - booking.cancellation_fee_fils]
    assert booking.cancellation_fee_fils > 0
    cases = db.session.execute(select(KycCase).where(KycCase.user_id == c.customer.user_id)
                               .order_by(KycCase.id)).scalars().all()
    assert [case.status for case in cases] == ["superseded", "submitted"]
    assert cases[-1].customer_reason == "handover_mismatch" and cases[-1].selfie_blob_id == cases[0].selfie_blob_id
    assert len(_audit("kyc:rereview")) == 1
    assert payments.current_deposit(booking.id).state == IntentState.RELEASED


def test_the_return_detects_lateness_and_releases_the_deposit(app, client, app_ctx, stripe_gateway):
    c = _counter(client, stripe_gateway)
    with _at(c.starts_at - timedelta(minutes=5)):
        headers = auth_headers(client, c.staff)
        assert _reveal(client, headers, c.reference).status_code == 200
        assert _check(client, headers, c.reference, "match").status_code == 200
        assert client.post(f"/api/v1/agency/bookings/{c.reference}/handover", headers=headers).status_code == 200
    with _at(c.ends_at + timedelta(minutes=90)):
        headers = auth_headers(client, c.staff)
        returned = client.post(f"/api/v1/agency/bookings/{c.reference}/return", headers=headers)
        assert returned.status_code == 200, returned.get_json()
        body = returned.get_json()
        assert body["status"] == "returned" and body["stage"] == "returned"
        assert 90 <= body["late_by_minutes"] <= 92
        assert client.post(f"/api/v1/agency/bookings/{c.reference}/return", headers=headers).status_code == 409
        drain_jobs(app)
    booking = _booking(c.reference)
    assert booking.status == "returned"
    assert payments.current_deposit(booking.id).state == IntentState.HELD  # kept for charges still to come
    keep = app.config["SETTINGS"].deposit_keep_after_return
    with _at(c.ends_at + timedelta(minutes=91) + keep):
        sweep_and_drain(app)
    booking = _booking(c.reference)
    assert booking.status == "completed"
    assert payments.current_deposit(booking.id).state == IntentState.RELEASED
    assert _audit("handover:return")[0]["late_by_minutes"] == body["late_by_minutes"]


def test_an_on_time_return_is_not_late_and_a_pending_charge_keeps_the_deposit(app, client, app_ctx, stripe_gateway,
                                                                              monkeypatch):
    from marketplace.handover import service

    c = _counter(client, stripe_gateway)
    with _at(c.starts_at):
        headers = auth_headers(client, c.staff)
        assert _reveal(client, headers, c.reference).status_code == 200
        assert _check(client, headers, c.reference, "match").status_code == 200
        assert client.post(f"/api/v1/agency/bookings/{c.reference}/handover", headers=headers).status_code == 200
    monkeypatch.setattr(service, "_DEPOSIT_KEEPERS", [lambda booking_id: True])  # a charge the agency will raise
    with _at(c.ends_at - timedelta(minutes=30)):
        headers = auth_headers(client, c.staff)
        body = client.post(f"/api/v1/agency/bookings/{c.reference}/return", headers=headers).get_json()
        drain_jobs(app)
    assert body["late_by_minutes"] == 0
    with _at(c.ends_at + app.config["SETTINGS"].deposit_keep_after_return + timedelta(minutes=1)):
        sweep_and_drain(app)
    assert _booking(c.reference).status == "completed"
    assert payments.current_deposit(_booking(c.reference).id).state == IntentState.HELD
    assert _audit("handover:return")[0]["deposit"] == "kept_for_charges"
    assert utcnow() < c.ends_at  # the clock came back
