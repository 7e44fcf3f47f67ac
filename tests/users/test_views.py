"""The customer-account API over HTTP: registration, e-mail verification, sign-in and tokens, password
reset and change, the account itself (rectification), consents, notification preferences and in-app
notices. Each test names the promise (P-xx) or catalogue entry (AN-xx, AZ-xx) it enforces.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from marketplace.extensions import db, utcnow
from marketplace.notifications.models import Channel, OutboxMessage, OutboxStatus
from marketplace.users.consent_texts import CURRENT
from marketplace.users.models import AccountStatus, AuthSession, Consent, ConsentKind, User
from tests.conftest import drain_jobs
from tests.factories import (
    PASSWORD,
    Person,
    api_login,
    auth_headers,
    bearer,
    make_customer,
    outbox_token,
    registration_body,
    table_rows,
)
from tests.queries import statements

REGISTER = "/api/v1/auth/register"
VERIFY = "/api/v1/auth/verify-email"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
REAUTH = "/api/v1/auth/reauth"
RESET = "/api/v1/auth/password-reset"
RESET_CONFIRM = "/api/v1/auth/password-reset/confirm"
ME = "/api/v1/me"
PASSWORD_CHANGE = "/api/v1/me/password"
CONSENTS = "/api/v1/me/consents"
PREFERENCES = "/api/v1/me/notification-preferences"
NOTIFICATIONS = "/api/v1/me/notifications"

NEW_PASSWORD = "Lantern-Orchid-Meteor-77"
# the tables a refused registration must leave exactly as they were
ACCOUNT_TABLES = ("users", "consents", "outbox_messages", "one_time_tokens", "work_items", "auth_sessions")


# ---- helpers -----------------------------------------------------------------------------------


def error(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) == {"code", "message", "details", "request_id"}, err
    assert err["request_id"] == response.headers["X-Request-ID"]
    return err


def code(response: Any) -> str:
    return str(error(response)["code"])


def without_request_id(response: Any) -> dict[str, Any]:
    """The error body minus the per-request id, for "identical answer" comparisons."""
    err = dict(error(response))
    err.pop("request_id")
    return err


def outbox(app: Flask, *, to: str | None = None, kind: str | None = None) -> list[OutboxMessage]:
    with app.app_context():
        stmt = select(OutboxMessage).order_by(OutboxMessage.id)
        if to is not None:
            stmt = stmt.where(OutboxMessage.to_address == to)
        if kind is not None:
            stmt = stmt.where(OutboxMessage.kind == kind)
        rows = list(db.session.execute(stmt).scalars())
        db.session.expunge_all()
        return rows


def user_by_email(app: Flask, email: str) -> User | None:
    with app.app_context():
        user = db.session.execute(select(User).where(User.email == email)).scalar_one_or_none()
        db.session.expunge_all()
        return user


def fresh_user(person: Person) -> User:
    """The row as committed now (the factory's session may hold an older copy)."""
    db.session.rollback()
    return person.user()


def consents_of(app: Flask, user_id: int) -> list[Consent]:
    with app.app_context():
        rows = list(db.session.execute(
            select(Consent).where(Consent.user_id == user_id).order_by(Consent.id)
        ).scalars())
        db.session.expunge_all()
        return rows


def register_verified(app: Flask, client: FlaskClient, **overrides: Any) -> dict[str, Any]:
    body = registration_body(**overrides)
    assert client.post(REGISTER, json=body).status_code == 202
    token = outbox_token(app, to=body["email"], kind="verify_email")
    assert client.post(VERIFY, json={"token": token}).status_code == 200
    return body


def login(client: FlaskClient, email: str, password: str = PASSWORD) -> Any:
    return client.post(LOGIN, json={"email": email, "password": password})


def me_status(client: FlaskClient, access_token: str) -> int:
    return int(client.get(ME, headers=bearer(access_token)).status_code)


def refresh_status(client: FlaskClient, refresh_token: str) -> int:
    return int(client.post(REFRESH, json={"refresh_token": refresh_token}).status_code)


def adult_dob(years: int = 30) -> str:
    today = date.today()
    return date(today.year - years, 1, 15).isoformat()


# ---- registration (P-01, P-02, AN-04) ----------------------------------------------------------


def test_registration_creates_a_pending_account_with_a_strong_hash(app, client):  # enforces P-01
    body = registration_body(
        full_name="  Maryam   Al Suwaidi ", nationality="ae",
        address={"line1": "Villa 12, Street 4", "line2": "Al Barsha 2", "city": "Dubai", "region": "Dubai",
                 "postal_code": "00000", "country": "ae"},
        emergency_contact={"name": "Omar Al Suwaidi", "phone": "+971 50 765 4321"},
    )
    response = client.post(REGISTER, json=body)
    assert response.status_code == 202
    assert response.get_json() == {"status": "verification_sent",
                                   "message": "If this e-mail can be used, a confirmation code is on its way."}

    user = user_by_email(app, body["email"])
    assert user is not None
    assert user.status == AccountStatus.PENDING
    assert user.account_type == "customer"
    assert user.full_name == "Maryam Al Suwaidi"
    assert user.date_of_birth == date(1994, 3, 8)
    assert user.nationality == "AE"
    assert user.phone == body["phone"]
    assert (user.address_line1, user.address_line2, user.address_city, user.address_region,
            user.address_postal_code, user.address_country) == (
        "Villa 12, Street 4", "Al Barsha 2", "Dubai", "Dubai", "00000", "AE")
    assert (user.emergency_contact_name, user.emergency_contact_phone) == ("Omar Al Suwaidi", "+971507654321")
    # stored only as an argon2id hash, never the password itself
    assert user.password_hash.startswith("$argon2id$")
    assert body["password"] not in user.password_hash
    assert PasswordHasher().verify(user.password_hash, body["password"])
    # and a confirmation code went to the address given
    assert [m.kind for m in outbox(app, to=body["email"])] == ["verify_email"]


def test_registration_records_terms_and_privacy_consents(app, client):  # enforces P-02
    body = registration_body(device="iPhone 15 Pro / iOS 19.1")
    response = client.post(REGISTER, json=body, environ_base={"REMOTE_ADDR": "203.0.113.7"},
                           headers={"User-Agent": "CareJar-iOS/3.1"})
    assert response.status_code == 202
    user = user_by_email(app, body["email"])
    assert user is not None
    rows = consents_of(app, user.id)
    assert sorted(r.kind for r in rows) == ["privacy", "terms"]  # no marketing unless opted in
    for row in rows:
        text = CURRENT[ConsentKind(row.kind)]
        assert row.text_version == text.version
        assert row.text_sha256 == hashlib.sha256(text.text.encode()).hexdigest()
        assert row.ip_address == "203.0.113.7"
        assert row.device == "iPhone 15 Pro / iOS 19.1"
        assert row.granted_at is not None
        assert row.withdrawn_at is None


def test_registration_device_defaults_to_user_agent_and_records_marketing_opt_in(app, client):  # enforces P-02
    body = registration_body(marketing_opt_in=True)
    assert client.post(REGISTER, json=body, headers={"User-Agent": "CareJar-Android/2.0"}).status_code == 202
    user = user_by_email(app, body["email"])
    assert user is not None
    rows = {r.kind: r for r in consents_of(app, user.id)}
    assert set(rows) == {"terms", "privacy", "marketing"}
    assert rows["marketing"].text_version == CURRENT[ConsentKind.MARKETING].version
    assert rows["marketing"].text_sha256 == CURRENT[ConsentKind.MARKETING].sha256
    assert all(r.device == "CareJar-Android/2.0" and r.ip_address == "127.0.0.1" for r in rows.values())


def test_registration_answer_is_the_same_for_new_and_existing_accounts(app, client, app_ctx):  # AN-04
    existing = make_customer()
    owner = fresh_user(existing)
    new = client.post(REGISTER, json=registration_body())
    same_email = client.post(REGISTER, json=registration_body(email=existing.email.upper()))
    # the same number written another way still names the existing account
    spaced = f"{owner.phone[:4]} {owner.phone[4:6]} {owner.phone[6:]}"
    same_phone = client.post(REGISTER, json=registration_body(phone=spaced))

    assert new.status_code == same_email.status_code == same_phone.status_code == 202
    assert new.get_json() == same_email.get_json() == same_phone.get_json()
    header_names = [sorted(k for k, _ in r.headers.items() if k != "X-Request-ID")
                    for r in (new, same_email, same_phone)]
    assert header_names[0] == header_names[1] == header_names[2]

    # only the genuinely new registration created an account
    with app.app_context():
        emails = sorted(u.email for u in db.session.execute(select(User)).scalars())
    assert len(emails) == 2 and existing.email in emails
    # the owner is told by e-mail, twice; no confirmation code goes anywhere near their address
    warnings = outbox(app, to=existing.email, kind="account_exists")
    assert len(warnings) == 2
    assert not outbox(app, to=existing.email, kind="verify_email")
    assert "No new account was created" in warnings[0].body_text
    drain_jobs(app)
    assert {m.status for m in outbox(app, to=existing.email)} == {OutboxStatus.KEPT}


@pytest.mark.parametrize(
    ("now_utc", "dob", "expected"),
    [
        # 21:00 UTC on 8 March is already 9 March in Dubai: the 21st birthday has begun there
        (datetime(2026, 3, 8, 21, 0, tzinfo=UTC), "2005-03-09", 202),
        # one day short of 21 in Dubai
        (datetime(2026, 3, 8, 21, 0, tzinfo=UTC), "2005-03-10", 422),
        # 19:00 UTC on 8 March is 23:00 in Dubai: still 20 for someone born on 9 March 2005
        (datetime(2026, 3, 8, 19, 0, tzinfo=UTC), "2005-03-09", 422),
        # a 29 February birthday: 21 on 1 March in a common year
        (datetime(2025, 2, 28, 12, 0, tzinfo=UTC), "2004-02-29", 422),
        (datetime(2025, 2, 28, 20, 30, tzinfo=UTC), "2004-02-29", 202),
    ],
)
def test_minimum_age_is_21_on_the_day_in_dubai(app, client, now_utc, dob, expected):  # enforces P-01
    before = table_rows(app, *ACCOUNT_TABLES)
    body = registration_body(date_of_birth=dob)
    with time_machine.travel(now_utc, tick=False):
        response = client.post(REGISTER, json=body)
    assert response.status_code == expected, response.get_json()
    if expected == 422:
        assert code(response) == "underage"
        # nothing at all is kept about someone under 21: no account, consent, e-mail or code
        assert table_rows(app, *ACCOUNT_TABLES) == before
    else:
        user = user_by_email(app, body["email"])
        assert user is not None and user.date_of_birth == date.fromisoformat(dob)


def test_underage_registration_with_an_existing_email_is_still_refused_and_nothing_sent(
        app, client, app_ctx):  # enforces P-01
    existing = make_customer()
    before = table_rows(app, *ACCOUNT_TABLES)
    today = date.today()
    dob = date(today.year - 18, today.month, 1).isoformat()
    response = client.post(REGISTER, json=registration_body(email=existing.email, date_of_birth=dob))
    assert response.status_code == 422
    assert code(response) == "underage"
    assert table_rows(app, *ACCOUNT_TABLES) == before


def test_date_of_birth_in_the_future_is_refused(app, client):  # enforces P-01
    before = table_rows(app, *ACCOUNT_TABLES)
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    response = client.post(REGISTER, json=registration_body(date_of_birth=tomorrow))
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "validation_error"
    assert "date_of_birth" in err["details"]["fields"]
    assert table_rows(app, *ACCOUNT_TABLES) == before


@pytest.mark.parametrize("dob", ["2023-02-30", "2001-13-01", "1990-00-10", "17/05/1990", "1990-5-17T00:00",
                                 "", "yesterday", 19900517, None])
def test_impossible_dates_of_birth_are_refused(app, client, dob):  # enforces P-01, IN-02
    before = table_rows(app, *ACCOUNT_TABLES)
    response = client.post(REGISTER, json=registration_body(date_of_birth=dob))
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "validation_error"
    assert list(err["details"]["fields"]) == ["date_of_birth"]
    assert table_rows(app, *ACCOUNT_TABLES) == before


@pytest.mark.parametrize("phone", ["0501234567", "+0501234567", "+97150", "+97155abc4567", "phone",
                                   "+9715512345678901", "+971 55 123 4567 ext 9"])
def test_bad_phone_numbers_are_refused(app, client, phone):  # enforces P-01
    before = table_rows(app, *ACCOUNT_TABLES)
    response = client.post(REGISTER, json=registration_body(phone=phone))
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "validation_error"
    assert "phone" in err["details"]["fields"]
    assert table_rows(app, *ACCOUNT_TABLES) == before


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two@@example.com", "space in@example.com"])
def test_bad_email_addresses_are_refused(app, client, email):  # enforces P-01
    before = table_rows(app, *ACCOUNT_TABLES)
    response = client.post(REGISTER, json=registration_body(email=email))
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "validation_error"
    assert "email" in err["details"]["fields"]
    assert table_rows(app, *ACCOUNT_TABLES) == before


@pytest.mark.parametrize(
    "password",
    [
        "Short-Pw-1",  # under 12 characters
        "password1234",  # a common password
        "PASSWORD1234",  # ... in any case
        "abababababababab",  # too few different characters
        "x" * 129,  # over the maximum
        "suwaidi-Rocks-2024",  # contains the name
        "{local}-Summit-91",  # contains the e-mail's local part
    ],
)
def test_weak_passwords_are_refused(app, client, password):  # enforces P-01
    body = registration_body(full_name="Maryam Al Suwaidi", email="maryam.home@example.com")
    body["password"] = password.replace("{local}", "maryam.home")
    before = table_rows(app, *ACCOUNT_TABLES)
    response = client.post(REGISTER, json=body)
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "weak_password"
    assert err["details"]["fields"]["password"]
    assert password not in str(err)  # the password is never echoed back
    assert table_rows(app, *ACCOUNT_TABLES) == before


@pytest.mark.parametrize("field", ["accepted_terms_version", "accepted_privacy_version"])
def test_outdated_consent_version_is_refused(app, client, field):  # enforces P-02
    before = table_rows(app, *ACCOUNT_TABLES)
    response = client.post(REGISTER, json=registration_body(**{field: "2024-01-01"}))
    assert response.status_code == 409
    err = error(response)
    assert err["code"] == "consent_version_outdated"
    kind = "terms" if field == "accepted_terms_version" else "privacy"
    assert err["details"] == {"kind": kind, "current_version": CURRENT[ConsentKind(kind)].version}
    assert table_rows(app, *ACCOUNT_TABLES) == before


def test_registration_requires_every_field_of_p01(app, client):  # enforces P-01
    body = registration_body()
    for name in ("full_name", "date_of_birth", "nationality", "email", "phone", "address", "password"):
        partial = {k: v for k, v in body.items() if k != name}
        response = client.post(REGISTER, json=partial)
        assert response.status_code == 422, name
        err = error(response)
        assert err["code"] == "validation_error"
        assert name in err["details"]["fields"]
    for name in ("line1", "city", "country"):
        address = {k: v for k, v in body["address"].items() if k != name}
        response = client.post(REGISTER, json={**body, "address": address})
        assert response.status_code == 422
        assert name in error(response)["details"]["fields"]["address"]
    assert user_by_email(app, body["email"]) is None


# ---- e-mail verification ------------------------------------------------------------------------


def test_email_verification_code_works_once(app, client):
    body = registration_body()
    assert client.post(REGISTER, json=body).status_code == 202
    token = outbox_token(app, to=body["email"], kind="verify_email")

    first = client.post(VERIFY, json={"token": token})
    assert first.status_code == 200
    assert first.get_json() == {"status": "verified"}
    user = user_by_email(app, body["email"])
    assert user is not None and user.status == AccountStatus.ACTIVE and user.email_verified_at is not None

    again = client.post(VERIFY, json={"token": token})
    assert again.status_code == 400
    assert code(again) == "token_invalid"
    forged = client.post(VERIFY, json={"token": token[:-2] + "xx"})
    assert forged.status_code == 400
    assert without_request_id(forged) == without_request_id(again)


def test_email_verification_code_expires_after_a_day(app, client):
    body = registration_body()
    assert client.post(REGISTER, json=body).status_code == 202
    token = outbox_token(app, to=body["email"], kind="verify_email")
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=24, minutes=1)):
        response = client.post(VERIFY, json={"token": token})
    assert response.status_code == 400
    assert code(response) == "token_invalid"
    user = user_by_email(app, body["email"])
    assert user is not None and user.status == AccountStatus.PENDING


def test_unverified_account_cannot_sign_in(app, client):
    body = registration_body()
    assert client.post(REGISTER, json=body).status_code == 202
    right = login(client, body["email"], body["password"])
    assert right.status_code == 403
    assert code(right) == "email_unverified"
    assert "access_token" not in right.get_data(as_text=True)
    # a wrong password learns nothing about the pending account
    wrong = login(client, body["email"], "Not-The-Password-123")
    unknown = login(client, "nobody-here@example.com", "Not-The-Password-123")
    assert wrong.status_code == unknown.status_code == 401
    assert without_request_id(wrong) == without_request_id(unknown)


# ---- sign-in (AN-04) ----------------------------------------------------------------------------


def test_sign_in_returns_a_token_pair_and_stores_only_hashes(app, client, app_ctx):
    person = make_customer()
    response = login(client, person.email)
    assert response.status_code == 200
    tokens = response.get_json()
    assert set(tokens) == {"token_type", "access_token", "expires_in", "refresh_token", "refresh_expires_in",
                           "mfa_required"}
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 15 * 60
    assert tokens["refresh_expires_in"] == 30 * 24 * 3600
    assert tokens["mfa_required"] is False
    assert tokens["access_token"] != tokens["refresh_token"]
    with app.app_context():
        session = db.session.execute(select(AuthSession)).scalar_one()
        assert session.access_token_hash == hashlib.sha256(tokens["access_token"].encode()).hexdigest()
        assert session.refresh_token_hash == hashlib.sha256(tokens["refresh_token"].encode()).hexdigest()
        stored = " ".join(str(v) for v in session.__dict__.values())
        assert tokens["access_token"] not in stored and tokens["refresh_token"] not in stored
    assert me_status(client, tokens["access_token"]) == 200


def test_sign_in_accepts_the_email_in_any_case(app, client, app_ctx):
    person = make_customer()
    assert login(client, "  " + person.email.upper() + " ").status_code == 200


def test_wrong_password_and_unknown_email_look_identical_and_cost_one_hash_check(
        app, client, app_ctx, monkeypatch):  # AN-04
    person = make_customer()
    calls: list[str] = []
    real_verify = PasswordHasher.verify

    def spy(self: PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        calls.append("verify")
        return real_verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", spy)

    answers = {}
    counts = {}
    for label, email in (("wrong_password", person.email), ("unknown_email", "no-such-user@example.com"),
                         ("not_an_email", "no-such-user")):
        calls.clear()
        answers[label] = login(client, email, "Wrong-Password-000")
        counts[label] = len(calls)

    for response in answers.values():
        assert response.status_code == 401
        assert code(response) == "invalid_credentials"
    bodies = [without_request_id(r) for r in answers.values()]
    assert bodies[0] == bodies[1] == bodies[2]
    header_names = [sorted(k for k, _ in r.headers.items() if k != "X-Request-ID") for r in answers.values()]
    assert header_names[0] == header_names[1] == header_names[2]
    # exactly one password-hash verification whether or not the account exists (no timing oracle)
    assert counts == {"wrong_password": 1, "unknown_email": 1, "not_an_email": 1}


@pytest.mark.parametrize("status", [AccountStatus.DISABLED, AccountStatus.CLOSED])
def test_disabled_and_closed_accounts_cannot_sign_in(app, client, app_ctx, status):  # AN-04
    person = make_customer(status=status)
    right = login(client, person.email)
    unknown = login(client, "nobody@example.com")
    assert right.status_code == unknown.status_code == 401
    assert without_request_id(right) == without_request_id(unknown)


# ---- tokens: refresh, logout, malformed and expired (AN-05, AN-07, P-04) -----------------------


def test_refresh_rotates_both_tokens(app, client, app_ctx):  # AN-05
    tokens = api_login(client, make_customer())
    response = client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 200
    rotated = response.get_json()
    assert rotated["access_token"] != tokens["access_token"]
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert me_status(client, rotated["access_token"]) == 200
    assert me_status(client, tokens["access_token"]) == 401  # the old access token is retired with its pair


def test_reusing_a_rotated_refresh_token_revokes_the_whole_session(app, client, app_ctx):  # AN-05, P-04
    person = make_customer()
    tokens = api_login(client, person)
    other_session = api_login(client, person)
    rotated = client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]}).get_json()
    assert me_status(client, rotated["access_token"]) == 200

    replay = client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert replay.status_code == 401
    assert code(replay) == "unauthenticated"
    # the whole session is dead, including the newest tokens the legitimate holder got
    assert me_status(client, rotated["access_token"]) == 401
    assert refresh_status(client, rotated["refresh_token"]) == 401
    with app.app_context():
        reasons = {s.revoke_reason for s in db.session.execute(select(AuthSession)).scalars()}
    assert "refresh_reuse" in reasons
    # another session of the same person is not touched
    assert me_status(client, other_session["access_token"]) == 200


def test_logout_kills_access_and_refresh_token_at_once(app, client, app_ctx):  # AN-05, P-04
    person = make_customer()
    tokens = api_login(client, person)
    other = api_login(client, person)
    response = client.post(LOGOUT, headers=bearer(tokens["access_token"]))
    assert response.status_code == 204
    assert response.get_data() == b""
    assert me_status(client, tokens["access_token"]) == 401
    assert refresh_status(client, tokens["refresh_token"]) == 401
    assert me_status(client, other["access_token"]) == 200
    assert refresh_status(client, other["refresh_token"]) == 200


def test_logout_all_sessions(app, client, app_ctx):  # AN-05, P-04
    person = make_customer()
    sessions = [api_login(client, person) for _ in range(3)]
    bystander = api_login(client, make_customer())
    response = client.post(LOGOUT, json={"all_sessions": True}, headers=bearer(sessions[0]["access_token"]))
    assert response.status_code == 204
    for tokens in sessions:
        assert me_status(client, tokens["access_token"]) == 401
        assert refresh_status(client, tokens["refresh_token"]) == 401
    assert me_status(client, bystander["access_token"]) == 200


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer ",
        "bearer",
        "Basic Y3VzdG9tZXJAZXhhbXBsZS5jb206cGFzc3dvcmQ=",
        "Token cja_abc",
        "Bearer garbage",
        "Bearer cja_" + "A" * 43,
        "Bearer " + "x" * 5000,
        "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIiwicm9sZSI6ImFkbWluIn0.",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "Bearer a b c",
    ],
)
def test_malformed_or_forged_credentials_get_401(app, client, authorization):  # AN-07
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.get(ME, headers=headers)
    assert response.status_code == 401
    assert code(response) == "unauthenticated"
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and "File \"" not in text


def test_refresh_token_is_not_an_access_token_and_vice_versa(app, client, app_ctx):  # AN-07
    tokens = api_login(client, make_customer())
    response = client.get(ME, headers=bearer(tokens["refresh_token"]))
    assert response.status_code == 401
    assert code(response) == "unauthenticated"
    wrong_way = client.post(REFRESH, json={"refresh_token": tokens["access_token"]})
    assert wrong_way.status_code == 401
    assert code(wrong_way) == "unauthenticated"
    # neither mistake hurt the session
    assert me_status(client, tokens["access_token"]) == 200


def test_access_token_expires_after_15_minutes_and_refresh_after_30_days(app, client, app_ctx):  # AN-07
    tokens = api_login(client, make_customer())
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=15, seconds=5)):
        expired = client.get(ME, headers=bearer(tokens["access_token"]))
        assert expired.status_code == 401
        assert code(expired) == "unauthenticated"
        rotated = client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]}).get_json()
        assert me_status(client, rotated["access_token"]) == 200
    with time_machine.travel(datetime.now(UTC) + timedelta(days=31)):
        response = client.post(REFRESH, json={"refresh_token": rotated["refresh_token"]})
        assert response.status_code == 401
        assert code(response) == "unauthenticated"


def test_deactivated_account_tokens_die_at_once(app, client, app_ctx):  # AZ-10, P-04
    person = make_customer()
    tokens = api_login(client, person)
    user = fresh_user(person)
    user.status = AccountStatus.DISABLED
    db.session.commit()
    assert me_status(client, tokens["access_token"]) == 401
    assert refresh_status(client, tokens["refresh_token"]) == 401


# ---- password reset (AN-04, AN-05, AZ-10) -------------------------------------------------------


def test_password_reset_answer_is_the_same_for_known_and_unknown_addresses(app, client, app_ctx):  # AN-04
    person = make_customer()
    pending = make_customer(status=AccountStatus.PENDING)
    answers = [client.post(RESET, json={"email": email})
               for email in (person.email, "nobody@example.com", "not-an-email", pending.email)]
    assert {r.status_code for r in answers} == {202}
    assert all(r.get_json() == answers[0].get_json() for r in answers)
    assert answers[0].get_json()["status"] == "reset_sent"
    # a code goes only to the real accounts
    assert len(outbox(app, to=person.email, kind="password_reset")) == 1
    assert len(outbox(app, to=pending.email, kind="password_reset")) == 1
    assert len(outbox(app, kind="password_reset")) == 2


def test_password_reset_code_is_single_use_and_ends_every_session(app, client, app_ctx):  # AN-05, AZ-10, P-04
    person = make_customer()
    sessions = [api_login(client, person) for _ in range(2)]
    bystander = api_login(client, make_customer())
    assert client.post(RESET, json={"email": person.email}).status_code == 202
    token = outbox_token(app, to=person.email, kind="password_reset")

    response = client.post(RESET_CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})
    assert response.status_code == 200
    assert response.get_json() == {"status": "password_changed"}
    # the very next request with any old token fails
    for tokens in sessions:
        assert me_status(client, tokens["access_token"]) == 401
        assert refresh_status(client, tokens["refresh_token"]) == 401
    assert me_status(client, bystander["access_token"]) == 200

    again = client.post(RESET_CONFIRM, json={"token": token, "new_password": "Another-Strong-Pass-55"})
    assert again.status_code == 400
    assert code(again) == "token_invalid"
    assert login(client, person.email, PASSWORD).status_code == 401
    assert login(client, person.email, NEW_PASSWORD).status_code == 200
    assert outbox(app, to=person.email, kind="password_changed")


def test_only_the_newest_reset_code_survives_a_reset(app, client, app_ctx):  # AN-05
    person = make_customer()
    assert client.post(RESET, json={"email": person.email}).status_code == 202
    first = outbox_token(app, to=person.email, kind="password_reset")
    assert client.post(RESET, json={"email": person.email}).status_code == 202
    second = outbox_token(app, to=person.email, kind="password_reset")
    assert first != second
    assert client.post(RESET_CONFIRM, json={"token": second, "new_password": NEW_PASSWORD}).status_code == 200
    stale = client.post(RESET_CONFIRM, json={"token": first, "new_password": "Another-Strong-Pass-55"})
    assert stale.status_code == 400
    assert code(stale) == "token_invalid"
    assert login(client, person.email, NEW_PASSWORD).status_code == 200


def test_password_reset_code_expires(app, client, app_ctx):  # AN-05
    person = make_customer()
    assert client.post(RESET, json={"email": person.email}).status_code == 202
    token = outbox_token(app, to=person.email, kind="password_reset")
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=61)):
        response = client.post(RESET_CONFIRM, json={"token": token, "new_password": NEW_PASSWORD})
        assert response.status_code == 400
        assert code(response) == "token_invalid"
        assert login(client, person.email, PASSWORD).status_code == 200


def test_weak_new_password_does_not_burn_the_reset_code(app, client, app_ctx):  # AN-05
    person = make_customer()
    tokens = api_login(client, person)
    assert client.post(RESET, json={"email": person.email}).status_code == 202
    token = outbox_token(app, to=person.email, kind="password_reset")
    weak = client.post(RESET_CONFIRM, json={"token": token, "new_password": "password1234"})
    assert weak.status_code == 422
    assert code(weak) == "weak_password"
    assert me_status(client, tokens["access_token"]) == 200  # nothing happened
    assert client.post(RESET_CONFIRM, json={"token": token, "new_password": NEW_PASSWORD}).status_code == 200


def test_reset_confirms_a_pending_address(app, client):  # AN-05
    body = registration_body()
    assert client.post(REGISTER, json=body).status_code == 202
    assert client.post(RESET, json={"email": body["email"]}).status_code == 202
    token = outbox_token(app, to=body["email"], kind="password_reset")
    assert client.post(RESET_CONFIRM, json={"token": token, "new_password": NEW_PASSWORD}).status_code == 200
    assert login(client, body["email"], NEW_PASSWORD).status_code == 200


# ---- password change (P-04, AN-05) ---------------------------------------------------------------


def test_password_change_revokes_other_sessions_but_keeps_this_one(app, client, app_ctx):  # enforces P-04
    person = make_customer()
    current = api_login(client, person)
    other = api_login(client, person)
    response = client.post(PASSWORD_CHANGE, json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
                           headers=bearer(current["access_token"]))
    assert response.status_code == 204
    assert me_status(client, current["access_token"]) == 200
    assert me_status(client, other["access_token"]) == 401
    assert refresh_status(client, other["refresh_token"]) == 401
    assert refresh_status(client, current["refresh_token"]) == 200
    assert login(client, person.email, PASSWORD).status_code == 401
    assert login(client, person.email, NEW_PASSWORD).status_code == 200
    assert outbox(app, to=person.email, kind="password_changed")


def test_password_change_needs_the_current_password_and_a_strong_new_one(app, client, app_ctx):  # P-04
    person = make_customer()
    tokens = api_login(client, person)
    other = api_login(client, person)
    headers = bearer(tokens["access_token"])
    before = table_rows(app, "users")

    wrong = client.post(PASSWORD_CHANGE, json={"current_password": "Wrong-Password-000",
                                               "new_password": NEW_PASSWORD}, headers=headers)
    assert wrong.status_code == 401
    err = error(wrong)
    assert err["code"] == "invalid_credentials"
    assert "current_password" in err["details"]["fields"]

    weak = client.post(PASSWORD_CHANGE, json={"current_password": PASSWORD, "new_password": "short"},
                       headers=headers)
    assert weak.status_code == 422
    assert code(weak) == "weak_password"
    assert table_rows(app, "users") == before
    assert me_status(client, other["access_token"]) == 200


# ---- the account: read and rectify (P-03, AN-06) -----------------------------------------------


def test_me_returns_exactly_the_account_fields(app, client, app_ctx):  # enforces P-03
    person = make_customer(emergency_contact_name="Omar Kareem", emergency_contact_phone="+971507654321")
    response = client.get(ME, headers=auth_headers(client, person))
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"id", "account_type", "status", "email", "pending_email", "phone", "full_name",
                         "date_of_birth", "nationality", "address", "emergency_contact", "roles", "mfa_enrolled",
                         "created_at"}
    assert body["id"] == person.public_id
    assert body["email"] == person.email
    assert body["date_of_birth"] == "1990-05-17"
    assert body["address"] == {"line1": "1 Test Street", "line2": None, "city": "Dubai", "region": None,
                               "postal_code": None, "country": "AE"}
    assert body["emergency_contact"] == {"name": "Omar Kareem", "phone": "+971507654321"}
    assert body["roles"] == ["customer"]
    assert body["mfa_enrolled"] is False
    assert "password" not in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"


def test_customer_can_correct_names_address_and_emergency_contact(app, client, app_ctx):  # enforces P-03
    person = make_customer()
    headers = auth_headers(client, person)
    response = client.patch(ME, json={"full_name": "  Layla  Hassan Al Mansoori ", "nationality": "jo"},
                            headers=headers)
    assert response.status_code == 200
    assert response.get_json()["full_name"] == "Layla Hassan Al Mansoori"
    assert response.get_json()["nationality"] == "JO"

    # a partial address patch changes only what it names
    response = client.patch(ME, json={"address": {"city": "Abu Dhabi", "line2": "Flat 804"}}, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["address"] == {"line1": "1 Test Street", "line2": "Flat 804", "city": "Abu Dhabi",
                                              "region": None, "postal_code": None, "country": "AE"}

    response = client.patch(ME, json={"emergency_contact": {"name": "Sami Hassan", "phone": "00971 50 111 2233"}},
                            headers=headers)
    assert response.status_code == 200
    assert response.get_json()["emergency_contact"] == {"name": "Sami Hassan", "phone": "+971501112233"}

    # the corrections are what a fresh read returns
    body = client.get(ME, headers=headers).get_json()
    assert body["full_name"] == "Layla Hassan Al Mansoori"
    assert body["address"]["city"] == "Abu Dhabi"
    assert body["emergency_contact"]["phone"] == "+971501112233"

    cleared = client.patch(ME, json={"emergency_contact": None}, headers=headers)
    assert cleared.status_code == 200
    assert cleared.get_json()["emergency_contact"] == {"name": None, "phone": None}


@pytest.mark.parametrize(
    ("body", "expected_code"),
    [
        ({"address": {"country": "Emirates"}}, "validation_error"),
        ({"address": {"line1": ""}}, "validation_error"),
        ({"address": {"city": "x" * 101}}, "validation_error"),
        ({"emergency_contact": {"name": "Sami"}}, "validation_error"),
        ({"emergency_contact": {"name": "Sami", "phone": "12345"}}, "validation_error"),
        ({"full_name": ""}, "validation_error"),
        ({"full_name": "Evil\r\nName"}, "validation_error"),
        ({"nationality": "ARE"}, "validation_error"),
        ({}, "validation_error"),
    ],
)
def test_invalid_corrections_change_nothing(app, client, app_ctx, body, expected_code):  # enforces P-03
    person = make_customer()
    headers = auth_headers(client, person)
    before = table_rows(app, "users")
    response = client.patch(ME, json=body, headers=headers)
    assert response.status_code == 422
    assert code(response) == expected_code
    assert table_rows(app, "users") == before


def test_date_of_birth_correction_is_checked_for_21_plus(app, client, app_ctx):  # enforces P-01, P-03
    person = make_customer()
    headers = auth_headers(client, person)
    before = table_rows(app, "users")
    today = date.today()
    for dob in (date(today.year - 19, 6, 1).isoformat(), (today + timedelta(days=3)).isoformat()):
        response = client.patch(ME, json={"date_of_birth": dob, "full_name": "Changed Too"}, headers=headers)
        assert response.status_code == 422
        assert code(response) in {"underage", "validation_error"}
        assert table_rows(app, "users") == before
    underage = client.patch(ME, json={"date_of_birth": date(today.year - 19, 6, 1).isoformat()}, headers=headers)
    assert code(underage) == "underage"

    adult = adult_dob(35)
    response = client.patch(ME, json={"date_of_birth": adult}, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["date_of_birth"] == adult


def test_email_and_phone_changes_need_a_recent_sign_in(app, client, app_ctx):  # AN-06, enforces P-03
    person = make_customer()
    tokens = api_login(client, person)
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=2)):
        # the access token is long dead by now; the app refreshes as a client would
        assert me_status(client, tokens["access_token"]) == 401
        fresh = client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]}).get_json()
        headers = bearer(fresh["access_token"])
        before = table_rows(app, "users", "outbox_messages", "one_time_tokens")

        for body in ({"email": "layla.new@example.com"}, {"phone": "+971509998877"},
                     {"full_name": "Sneaky Change", "phone": "+971509998877"}):
            response = client.patch(ME, json=body, headers=headers)
            assert response.status_code == 401
            assert code(response) == "reauth_required"
        assert table_rows(app, "users", "outbox_messages", "one_time_tokens") == before
        # other corrections still work without stepping up
        assert client.patch(ME, json={"full_name": "Layla Hassan"}, headers=headers).status_code == 200

        wrong = client.post(REAUTH, json={"password": "Wrong-Password-000"}, headers=headers)
        assert wrong.status_code == 401
        assert code(wrong) == "invalid_credentials"
        assert client.patch(ME, json={"phone": "+971509998877"}, headers=headers).status_code == 401

        assert client.post(REAUTH, json={"password": PASSWORD}, headers=headers).status_code == 204
        email_change = client.patch(ME, json={"email": "layla.new@example.com"}, headers=headers)
        assert email_change.status_code == 200
        assert email_change.get_json()["pending_email"] == "layla.new@example.com"
        phone_change = client.patch(ME, json={"phone": "+971 50 999 8877"}, headers=headers)
        assert phone_change.status_code == 200
        assert phone_change.get_json()["phone"] == "+971509998877"

    # step-up is needed again once the re-authentication window has passed
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=2, minutes=20)):
        fresh = client.post(REFRESH, json={"refresh_token": fresh["refresh_token"]}).get_json()
        response = client.patch(ME, json={"phone": "+971509998800"}, headers=bearer(fresh["access_token"]))
        assert response.status_code == 401
        assert code(response) == "reauth_required"


def test_reauth_needs_a_signed_in_session(app, client):  # AN-06
    response = client.post(REAUTH, json={"password": PASSWORD})
    assert response.status_code == 401
    assert code(response) == "unauthenticated"


def test_email_change_is_pending_until_the_new_address_confirms_it(app, client, app_ctx):  # enforces P-03
    person = make_customer()
    headers = auth_headers(client, person)
    new_email = "layla.confirmed@example.com"
    response = client.patch(ME, json={"email": new_email.upper()}, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["email"] == person.email
    assert response.get_json()["pending_email"] == new_email
    # the old address is warned, the new one gets the code
    assert outbox(app, to=person.email, kind="email_change_requested")
    assert login(client, new_email).status_code == 401
    assert login(client, person.email).status_code == 200

    token = outbox_token(app, to=new_email, kind="verify_email")
    assert client.post(VERIFY, json={"token": token}).status_code == 200
    body = client.get(ME, headers=headers).get_json()
    assert body["email"] == new_email
    assert body["pending_email"] is None
    assert login(client, new_email).status_code == 200
    assert login(client, person.email).status_code == 401
    assert code(client.post(VERIFY, json={"token": token})) == "token_invalid"


def test_a_code_sent_to_an_earlier_address_cannot_confirm_a_later_one(app, client, app_ctx):  # enforces P-03
    person = make_customer()
    headers = auth_headers(client, person)
    first, second = "first.choice@example.com", "second.choice@example.com"
    assert client.patch(ME, json={"email": first}, headers=headers).status_code == 200
    first_token = outbox_token(app, to=first, kind="verify_email")
    assert client.patch(ME, json={"email": second}, headers=headers).status_code == 200

    # the code proves control of the first address only; it must not switch the account to the second
    stale = client.post(VERIFY, json={"token": first_token})
    assert stale.status_code == 400
    assert code(stale) == "token_invalid"
    assert client.get(ME, headers=headers).get_json()["email"] == person.email

    second_token = outbox_token(app, to=second, kind="verify_email")
    assert client.post(VERIFY, json={"token": second_token}).status_code == 200
    assert client.get(ME, headers=headers).get_json()["email"] == second


def test_email_change_to_a_taken_address_gives_the_same_answer(app, client, app_ctx):  # AN-04, P-03
    person = make_customer()
    other = make_customer()
    headers = auth_headers(client, person)
    free = client.patch(ME, json={"email": "unused.address@example.com"}, headers=headers)
    taken = client.patch(ME, json={"email": other.email}, headers=headers)
    assert free.status_code == taken.status_code == 200
    free_body, taken_body = free.get_json(), taken.get_json()
    assert free_body.pop("pending_email") == "unused.address@example.com"
    assert taken_body.pop("pending_email") == other.email
    assert free_body == taken_body
    # but no code goes to the other person's address, and their account is untouched
    assert not outbox(app, to=other.email)
    assert login(client, other.email).status_code == 200
    assert client.get(ME, headers=headers).get_json()["email"] == person.email


def test_phone_change_to_a_number_in_use_is_refused_without_change(app, client, app_ctx):  # enforces P-03
    person = make_customer()
    other = make_customer()
    other_phone = fresh_user(other).phone
    headers = auth_headers(client, person)
    before = table_rows(app, "users")
    response = client.patch(ME, json={"phone": other_phone}, headers=headers)
    assert response.status_code == 409
    assert "phone" in error(response)["details"]["fields"]
    assert table_rows(app, "users") == before


# ---- consents (P-02) ---------------------------------------------------------------------------


def test_consent_history_lists_every_consent_newest_first(app, client, app_ctx):  # enforces P-02
    person = make_customer()
    headers = auth_headers(client, person)
    response = client.get(CONSENTS, headers=headers)
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert sorted(i["kind"] for i in items) == ["privacy", "terms"]
    for item in items:
        assert set(item) == {"id", "kind", "text_version", "text_sha256", "granted_at", "withdrawn_at", "active"}
        assert item["text_sha256"] == CURRENT[ConsentKind(item["kind"])].sha256
        assert item["active"] is True

    face = CURRENT[ConsentKind.FACE_DATA]
    assert client.post(CONSENTS, json={"kind": "face_data", "text_version": face.version},
                       headers=headers).status_code == 201
    assert client.delete(f"{CONSENTS}/face_data", headers=headers).status_code == 204
    items = client.get(CONSENTS, headers=headers).get_json()["items"]
    assert items[0]["kind"] == "face_data"
    assert items[0]["active"] is False and items[0]["withdrawn_at"] is not None


def test_granting_a_consent_records_version_hash_ip_and_device(app, client, app_ctx):  # enforces P-02
    person = make_customer()
    headers = auth_headers(client, person)
    face = CURRENT[ConsentKind.FACE_DATA]
    response = client.post(CONSENTS, json={"kind": "face_data", "text_version": face.version,
                                           "device": "Pixel 9 / Android 16"},
                           headers=headers, environ_base={"REMOTE_ADDR": "198.51.100.23"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["kind"] == "face_data"
    assert body["text_version"] == face.version
    assert body["text_sha256"] == hashlib.sha256(face.text.encode()).hexdigest()
    assert body["active"] is True and body["withdrawn_at"] is None

    row = next(r for r in consents_of(app, person.user_id) if r.kind == "face_data")
    assert row.public_id == body["id"]
    assert row.ip_address == "198.51.100.23"
    assert row.device == "Pixel 9 / Android 16"

    # the same version again is the same consent, not a new row
    again = client.post(CONSENTS, json={"kind": "face_data", "text_version": face.version}, headers=headers)
    assert again.status_code == 200
    assert again.get_json()["id"] == body["id"]
    assert len([r for r in consents_of(app, person.user_id) if r.kind == "face_data"]) == 1


def test_consent_for_an_outdated_text_is_refused(app, client, app_ctx):  # enforces P-02
    person = make_customer()
    headers = auth_headers(client, person)
    before = table_rows(app, "consents")
    response = client.post(CONSENTS, json={"kind": "face_data", "text_version": "2025-01-01"}, headers=headers)
    assert response.status_code == 409
    err = error(response)
    assert err["code"] == "consent_version_outdated"
    assert err["details"]["current_version"] == CURRENT[ConsentKind.FACE_DATA].version
    assert table_rows(app, "consents") == before


def test_withdrawal_takes_effect_at_once(app, client, app_ctx):  # enforces P-02
    person = make_customer()
    headers = auth_headers(client, person)
    location = CURRENT[ConsentKind.PRECISE_LOCATION]
    granted = client.post(CONSENTS, json={"kind": "precise_location", "text_version": location.version},
                          headers=headers)
    assert granted.status_code == 201
    response = client.delete(f"{CONSENTS}/precise_location", headers=headers,
                             environ_base={"REMOTE_ADDR": "198.51.100.99"})
    assert response.status_code == 204
    row = next(r for r in consents_of(app, person.user_id) if r.kind == "precise_location")
    assert row.withdrawn_at is not None
    assert row.withdrawn_ip_address == "198.51.100.99"
    # nothing is left to withdraw
    again = client.delete(f"{CONSENTS}/precise_location", headers=headers)
    assert again.status_code == 404
    assert code(again) == "not_found"
    # giving it again is a new row; the history keeps both
    regranted = client.post(CONSENTS, json={"kind": "precise_location", "text_version": location.version},
                            headers=headers)
    assert regranted.status_code == 201
    assert regranted.get_json()["id"] != granted.get_json()["id"]
    assert len([r for r in consents_of(app, person.user_id) if r.kind == "precise_location"]) == 2


@pytest.mark.parametrize("kind", ["terms", "privacy"])
def test_terms_and_privacy_cannot_be_withdrawn(app, client, app_ctx, kind):  # enforces P-02
    person = make_customer()
    headers = auth_headers(client, person)
    before = table_rows(app, "consents")
    response = client.delete(f"{CONSENTS}/{kind}", headers=headers)
    assert response.status_code == 409
    err = error(response)
    assert err["code"] == "consent_required_for_account"
    assert err["details"] == {"kind": kind}
    assert table_rows(app, "consents") == before


def test_unknown_consent_kinds_are_refused(app, client, app_ctx):  # enforces P-02, IN-02
    person = make_customer()
    headers = auth_headers(client, person)
    before = table_rows(app, "consents")
    deleted = client.delete(f"{CONSENTS}/telepathy", headers=headers)
    assert deleted.status_code == 422
    assert code(deleted) == "validation_error"
    for kind in ("telepathy", "FACE_DATA", "", None, 1, True):
        posted = client.post(CONSENTS, json={"kind": kind, "text_version": "2026-11-01"}, headers=headers)
        assert posted.status_code == 422, kind
        err = error(posted)
        assert err["code"] == "validation_error"
        assert "kind" in err["details"]["fields"]
    assert table_rows(app, "consents") == before


def test_mit_mandate_is_not_given_through_the_consent_endpoint(app, client, app_ctx):  # enforces P-02, P-20
    person = make_customer()
    headers = auth_headers(client, person)
    before = table_rows(app, "consents")
    response = client.post(CONSENTS, json={"kind": "mit_mandate",
                                           "text_version": CURRENT[ConsentKind.MIT_MANDATE].version},
                           headers=headers)
    assert response.status_code == 409
    assert error(response)["details"] == {"kind": "mit_mandate"}
    assert table_rows(app, "consents") == before


def test_consents_need_a_signed_in_customer(app, client):  # AZ-03
    for response in (client.get(CONSENTS), client.post(CONSENTS, json={"kind": "marketing",
                                                                       "text_version": "2026-11-01"}),
                     client.delete(f"{CONSENTS}/marketing")):
        assert response.status_code == 401
        assert code(response) == "unauthenticated"


# ---- notification preferences (P-03, P-02) -----------------------------------------------------


def test_notification_preferences_default_and_change_at_once(app, client, app_ctx):  # enforces P-03
    person = make_customer()
    headers = auth_headers(client, person)
    assert client.get(PREFERENCES, headers=headers).get_json() == {"email": True, "in_app": True,
                                                                   "marketing": False}
    response = client.patch(PREFERENCES, json={"email": False}, headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"email": False, "in_app": True, "marketing": False}
    response = client.patch(PREFERENCES, json={"in_app": False, "email": True}, headers=headers)
    assert response.get_json() == {"email": True, "in_app": False, "marketing": False}

    # effective at once: an optional notice now reaches e-mail but not the in-app list
    from marketplace.notifications import service as notifications

    user = fresh_user(person)
    sent = notifications.notify(user, kind="password_changed", context={"user": user})
    db.session.commit()
    assert [m.channel for m in sent] == [Channel.EMAIL]
    assert client.get(NOTIFICATIONS, headers=headers).get_json()["items"] == []


def test_marketing_opt_in_and_out_is_a_consent_row_effective_at_once(app, client, app_ctx):  # enforces P-03, P-02
    person = make_customer()
    headers = auth_headers(client, person)
    response = client.patch(PREFERENCES, json={"marketing": True}, headers=headers,
                            environ_base={"REMOTE_ADDR": "192.0.2.44"})
    assert response.status_code == 200
    assert response.get_json()["marketing"] is True
    assert client.get(PREFERENCES, headers=headers).get_json()["marketing"] is True
    rows = [r for r in consents_of(app, person.user_id) if r.kind == "marketing"]
    assert len(rows) == 1
    assert rows[0].text_version == CURRENT[ConsentKind.MARKETING].version
    assert rows[0].text_sha256 == CURRENT[ConsentKind.MARKETING].sha256
    assert rows[0].ip_address == "192.0.2.44"
    assert rows[0].withdrawn_at is None

    # opting in again is no new consent
    assert client.patch(PREFERENCES, json={"marketing": True}, headers=headers).status_code == 200
    assert len([r for r in consents_of(app, person.user_id) if r.kind == "marketing"]) == 1

    response = client.patch(PREFERENCES, json={"marketing": False}, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["marketing"] is False
    assert client.get(PREFERENCES, headers=headers).get_json()["marketing"] is False
    rows = [r for r in consents_of(app, person.user_id) if r.kind == "marketing"]
    assert len(rows) == 1 and rows[0].withdrawn_at is not None
    history = client.get(CONSENTS, headers=headers).get_json()["items"]
    assert any(i["kind"] == "marketing" and i["active"] is False for i in history)


@pytest.mark.parametrize("value", [1, 0, "true", "false", "yes", "x", None, [], {}])
def test_preferences_take_only_json_booleans(app, client, app_ctx, value):  # IN-02, P-03
    person = make_customer()
    headers = auth_headers(client, person)
    before = table_rows(app, "users", "consents")
    for name in ("email", "in_app", "marketing"):
        response = client.patch(PREFERENCES, json={name: value}, headers=headers)
        assert response.status_code == 422
        err = error(response)
        assert err["code"] == "validation_error"
        assert name in err["details"]["fields"]
    assert table_rows(app, "users", "consents") == before


# ---- in-app notifications (AZ-03, IN-01) ---------------------------------------------------------


def add_notices(user_id: int, count: int) -> list[str]:
    now = utcnow()
    rows = [OutboxMessage(user_id=user_id, channel=Channel.IN_APP, kind="booking_update",
                          subject=f"Notice {i}", body_text=f"Body of notice {i}", status=OutboxStatus.DELIVERED,
                          created_at=now, sent_at=now) for i in range(count)]
    db.session.add_all(rows)
    db.session.commit()
    return [r.public_id for r in rows]


def test_notifications_are_paged_with_a_cursor_newest_first(app, client, app_ctx):  # IN-01
    person = make_customer()
    other = make_customer()
    mine = add_notices(person.user_id, 25)
    add_notices(other.user_id, 3)
    # an e-mail to me is not an in-app notice
    db.session.add(OutboxMessage(user_id=person.user_id, channel=Channel.EMAIL, kind="password_changed",
                                 to_address=person.email, subject="s", body_text="b",
                                 status=OutboxStatus.KEPT, created_at=utcnow()))
    db.session.commit()
    headers = auth_headers(client, person)

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        query = {"limit": "10"} | ({"cursor": cursor} if cursor else {})
        response = client.get(NOTIFICATIONS, query_string=query, headers=headers)
        assert response.status_code == 200
        body = response.get_json()
        pages += 1
        seen.extend(item["id"] for item in body["items"])
        for item in body["items"]:
            assert set(item) == {"id", "kind", "title", "body", "created_at", "read_at"}
        cursor = body["page"]["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(mine))  # newest first, each exactly once, none of anyone else's

    default = client.get(NOTIFICATIONS, headers=headers).get_json()
    assert len(default["items"]) == 20


@pytest.mark.parametrize(
    "query",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": "WyJub3RpZmljYXRpb25zIiwxMF0.0000000000000000deadbeef"},  # right shape, forged signature
        {"cursor": "."},
        {"cursor": "x" * 201},
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": str(10**9)},
        {"limit": "1.0"},
        {"limit": "true"},
        {"limit": "ten"},
    ],
)
def test_forged_cursors_and_bad_page_sizes_are_refused(app, client, app_ctx, query):  # IN-01, IN-02
    person = make_customer()
    add_notices(person.user_id, 3)
    response = client.get(NOTIFICATIONS, query_string=query, headers=auth_headers(client, person))
    assert response.status_code == 422
    err = error(response)
    assert err["code"] == "validation_error"
    assert set(err["details"]["fields"]) == set(query)


def test_a_cursor_from_another_list_or_a_tampered_value_is_refused(app, client, app_ctx):  # IN-01
    from marketplace.schemas import encode_cursor

    person = make_customer()
    add_notices(person.user_id, 3)
    headers = auth_headers(client, person)
    with app.test_request_context():
        foreign = encode_cursor("bookings", 10)
        not_an_int = encode_cursor("notifications", True)
        text_value = encode_cursor("notifications", "10 OR 1=1")
    for cursor in (foreign, not_an_int, text_value):
        response = client.get(NOTIFICATIONS, query_string={"cursor": cursor}, headers=headers)
        assert response.status_code == 422
        assert code(response) == "validation_error"
    unknown = client.get(NOTIFICATIONS, query_string={"user_id": "1"}, headers=headers)
    assert unknown.status_code == 422
    assert code(unknown) == "unknown_field"


def test_mark_read_and_another_customers_notice_is_not_found(app, client, app_ctx):  # AZ-03
    person = make_customer()
    other = make_customer()
    (mine,) = add_notices(person.user_id, 1)
    (theirs,) = add_notices(other.user_id, 1)
    headers = auth_headers(client, person)

    response = client.post(f"{NOTIFICATIONS}/{mine}/read", headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == mine and body["read_at"] is not None
    again = client.post(f"{NOTIFICATIONS}/{mine}/read", headers=headers)
    assert again.status_code == 200
    assert again.get_json()["read_at"] == body["read_at"]  # the first reading time is kept

    before = table_rows(app, "outbox_messages")
    foreign = client.post(f"{NOTIFICATIONS}/{theirs}/read", headers=headers)
    never = client.post(f"{NOTIFICATIONS}/{'0' * 8}-0000-4000-8000-{'0' * 12}/read", headers=headers)
    garbage = client.post(f"{NOTIFICATIONS}/not-a-uuid/read", headers=headers)
    for response in (foreign, never, garbage):
        assert response.status_code == 404
        assert code(response) == "not_found"
    # exactly the same answer as for an id that never existed
    assert without_request_id(foreign) == without_request_id(never) == without_request_id(garbage)
    assert table_rows(app, "outbox_messages") == before

    # and the other customer's notice is still unread for them
    their_list = client.get(NOTIFICATIONS, headers=auth_headers(client, other)).get_json()["items"]
    assert [(i["id"], i["read_at"]) for i in their_list] == [(theirs, None)]


def test_a_refresh_token_rotated_long_ago_still_revokes_the_session(app, client, app_ctx):  # AN-05
    """Reuse detection covers every rotated token, not only the previous one."""
    from tests.factories import bearer as _bearer
    from tests.factories import make_customer as _make_customer

    person = _make_customer()
    first = client.post("/api/v1/auth/login", json={"email": person.email, "password": person.password}).get_json()
    stolen = first["refresh_token"]
    tokens = first
    for _ in range(3):  # the real user keeps refreshing
        tokens = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).get_json()
    replay = client.post("/api/v1/auth/refresh", json={"refresh_token": stolen})
    assert replay.status_code == 401
    # the whole session is gone, including the newest tokens of the real user
    assert client.get("/api/v1/me", headers=_bearer(tokens["access_token"])).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401


def test_a_signed_in_customer_request_costs_one_query_for_the_gate(app, client, app_ctx):
    # issue 7 item 17: the gate loaded the customer's (empty) staff roles with a second query on every request
    headers = auth_headers(client, make_customer())
    with statements() as sent:
        response = client.get("/api/v1/me", headers=headers)
    assert response.status_code == 200 and response.get_json()["roles"] == ["customer"]
    assert len(sent) == 1, sent
