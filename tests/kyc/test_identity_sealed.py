"""Identity numbers at rest: the passport / Emirates ID number and the driving-licence number are stored only
sealed under the customer's data key, so erasure by key destruction covers them (issue 7 item 7, CR-03,
enforces P-08). Every view that showed them still shows the same values.
"""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text, update

from marketplace.crypto import DecryptionFailed
from marketplace.extensions import db
from marketplace.kyc.models import KycIdentity, data_owner
from marketplace.users.models import User
from marketplace.vault import service as vault
from tests.factories import auth_headers, make_customer
from tests.kyc.helpers import emirates_id, identity_body
from tests.kyc.test_privacy import database_dump

IDENTITY = "/api/v1/me/kyc/identity"
EMIRATES_ID = emirates_id(1990, middle="7654321")
LICENCE = "SHJ-4471902"
PASSPORT = "Q9081726"


def _plaintext_forms(*numbers: str) -> list[bytes]:
    forms: list[bytes] = []
    for number in numbers:
        for variant in (number, number.replace("-", ""), number.lower()):
            forms += [variant.encode(), variant.encode().hex().encode()]
    return forms


def _identity(user_id: int) -> KycIdentity:
    db.session.expunge_all()  # read the row back from the database, not the request's cached copy
    identity = db.session.execute(select(KycIdentity).where(KycIdentity.user_id == user_id)).scalar_one()
    return identity


def test_no_identity_number_in_clear_anywhere_in_the_database(
    app: Flask, client: FlaskClient, app_ctx: None,
) -> None:  # issue 7 item 7, CR-03, enforces P-08
    person = make_customer()
    headers = auth_headers(client, person)
    response = client.put(IDENTITY, headers=headers, json=identity_body(id_document_number=EMIRATES_ID,
                                                                        licence_number=LICENCE.lower()))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["identity"]["id_document_number"] == EMIRATES_ID
    db.session.commit()

    # a dump-like SELECT of every column of the table
    columns = db.session.execute(text("SELECT * FROM kyc_identities")).mappings().all()
    assert len(columns) == 1
    assert "id_document_number" not in columns[0] and "licence_number" not in columns[0]
    cells = b"\x00".join(v if isinstance(v, bytes) else str(v).encode() for v in columns[0].values())
    needles = _plaintext_forms(EMIRATES_ID, LICENCE)
    assert not [n for n in needles if n in cells]
    # and the whole database as a backup holds it (pg_dump on PostgreSQL, the file itself on SQLite)
    leaks = [(name, n) for name, data in database_dump(app).items() for n in needles if n in data]
    assert leaks == []
    # negative control: the scan does see a number written in clear
    db.session.execute(update(KycIdentity).values(licence_category=LICENCE))
    db.session.commit()
    assert any(LICENCE.encode() in data for data in database_dump(app).values())


def test_identity_numbers_round_trip_through_the_api(
    app: Flask, client: FlaskClient, app_ctx: None,
) -> None:  # issue 7 item 7, enforces P-05
    person = make_customer()
    headers = auth_headers(client, person)
    assert client.put(IDENTITY, headers=headers, json=identity_body(id_document_number=EMIRATES_ID,
                                                                    licence_number=LICENCE)).status_code == 200
    shown = client.get("/api/v1/me/kyc", headers=headers).get_json()["identity"]
    assert (shown["id_document_number"], shown["licence_number"]) == (EMIRATES_ID, LICENCE)

    # replaced: a passport now; the old number is gone and the new one sealed afresh
    old = _identity(person.user().id).id_document_number_enc
    body = identity_body(id_document_type="passport", id_document_number=PASSPORT.lower(), licence_number=LICENCE)
    assert client.put(IDENTITY, headers=headers, json=body).status_code == 200
    shown = client.get("/api/v1/me/kyc", headers=headers).get_json()["identity"]
    assert (shown["id_document_type"], shown["id_document_number"]) == ("passport", PASSPORT)
    stored = _identity(person.user().id)
    assert stored.id_document_number_enc != old and PASSPORT.encode() not in stored.id_document_number_enc
    assert (stored.id_document_number, stored.licence_number) == (PASSPORT, LICENCE)


def test_a_destroyed_data_key_makes_the_numbers_unreadable(
    app: Flask, client: FlaskClient, app_ctx: None,
) -> None:  # issue 7 item 7: erasure by key destruction covers them (P-27, PV-07)
    person = make_customer()
    headers = auth_headers(client, person)
    assert client.put(IDENTITY, headers=headers, json=identity_body(licence_number=LICENCE)).status_code == 200
    user_id = person.user().id
    assert _identity(user_id).licence_number == LICENCE

    vault.shred_owner(data_owner(person.public_id))
    db.session.commit()
    identity = _identity(user_id)
    for name in ("id_document_number", "licence_number"):
        with pytest.raises(DecryptionFailed):
            getattr(identity, name)


def test_a_sealed_number_moved_to_another_row_or_column_does_not_open(
    app: Flask, client: FlaskClient, app_ctx: None,
) -> None:  # CR-02 for identity numbers: bound to owner and field
    a, b = make_customer(), make_customer()
    for person, licence in ((a, "AAA-1111"), (b, "BBB-2222")):
        body = identity_body(licence_number=licence)
        assert client.put(IDENTITY, headers=auth_headers(client, person), json=body).status_code == 200
    db.session.commit()
    a_id, b_id = a.user().id, b.user().id
    b_token = _identity(b_id).licence_number_enc
    a_doc = _identity(a_id).id_document_number_enc
    db.session.execute(update(KycIdentity).where(KycIdentity.user_id == a_id).values(licence_number_enc=b_token))
    with pytest.raises(DecryptionFailed):  # B's sealed licence number in A's row
        _identity(a_id).licence_number  # noqa: B018 - reading is the point
    db.session.execute(update(KycIdentity).where(KycIdentity.user_id == a_id).values(licence_number_enc=a_doc))
    with pytest.raises(DecryptionFailed):  # A's ID number in A's licence column
        _identity(a_id).licence_number  # noqa: B018
    db.session.rollback()
    assert db.session.get(User, b_id) is not None and _identity(b_id).licence_number == "BBB-2222"
