"""Tenant isolation for the agency API (AZ-01 for these routes, AZ-03, AZ-04).

The matrix below is the machine-readable role x route table for /api/v1/agency...: every identity calls
every operation aimed at Ag1 (``?agency=<Ag1>``), and must get exactly the status in its cell.
Staff of Ag2 get 404 (Ag1's existence is not revealed), never 403.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient

from marketplace.agencies.models import AgencyStatus
from marketplace.permissions import Role
from tests.agencies.helpers import AGENCY, DOCUMENTS, STAFF, agency_with_people, upload
from tests.factories import Person, auth_headers, bearer, make_customer, make_staff
from tests.kyc.helpers import photo
from tests.staff_web import db_snapshot

IDENTITIES = ("anonymous", "customer", "kyc_reviewer", "admin", "ag1_owner", "ag1_manager", "ag1_staff",
              "ag2_owner", "ag2_staff")
OPERATIONS = ("read_profile", "patch_profile", "list_documents", "upload_document", "list_staff", "invite",
              "remove_staff")
_DENY_ALL_401 = dict.fromkeys(OPERATIONS, 401)
_DENY_ALL_403 = dict.fromkeys(OPERATIONS, 403)
_OTHER_AGENCY = dict.fromkeys(OPERATIONS, 404)
MATRIX: dict[str, dict[str, int]] = {
    "anonymous": _DENY_ALL_401,
    "customer": _DENY_ALL_403,
    "kyc_reviewer": _DENY_ALL_403,
    "admin": _DENY_ALL_403,  # platform admins verify agencies in the console, not through the agency API
    "ag1_owner": {"read_profile": 200, "patch_profile": 200, "list_documents": 200, "upload_document": 201,
                  "list_staff": 200, "invite": 201, "remove_staff": 204},
    "ag1_manager": {"read_profile": 200, "patch_profile": 403, "list_documents": 200, "upload_document": 403,
                    "list_staff": 200, "invite": 201, "remove_staff": 204},
    "ag1_staff": {"read_profile": 200, "patch_profile": 403, "list_documents": 200, "upload_document": 403,
                  "list_staff": 403, "invite": 403, "remove_staff": 403},
    "ag2_owner": _OTHER_AGENCY,
    "ag2_staff": _OTHER_AGENCY,
}


def _call(client: FlaskClient, operation: str, headers: dict[str, str], ag1: str, victim: str) -> Any:
    q = {"agency": ag1}
    calls: dict[str, Callable[[], Any]] = {
        "read_profile": lambda: client.get(AGENCY, headers=headers, query_string=q),
        "patch_profile": lambda: client.patch(AGENCY, headers=headers, query_string=q,
                                              json={"contact_phone": "+97145550000"}),
        "list_documents": lambda: client.get(DOCUMENTS, headers=headers, query_string=q),
        "upload_document": lambda: client.post(
            DOCUMENTS, headers=headers, query_string=q, content_type="multipart/form-data",
            data={"kind": "trade_licence", "image": (io.BytesIO(photo(300, 200)), "t.jpg", "image/jpeg")}),
        "list_staff": lambda: client.get(STAFF, headers=headers, query_string=q),
        "invite": lambda: client.post(STAFF, headers=headers, query_string=q,
                                      json={"email": "new.hire@example.com", "full_name": "New Hire",
                                            "role": "agency_staff"}),
        "remove_staff": lambda: client.delete(f"{STAFF}/{victim}", headers=headers, query_string=q),
    }
    return calls[operation]()


def test_agency_api_authorization_matrix(app, client, app_ctx):  # AZ-01, AZ-03, AZ-04, enforces P-12
    ag1 = agency_with_people(AgencyStatus.PENDING)
    ag2 = agency_with_people(AgencyStatus.ACTIVE)
    people: dict[str, Person | None] = {
        "anonymous": None, "customer": make_customer(), "kyc_reviewer": make_staff(Role.KYC_REVIEWER),
        "admin": make_staff(Role.ADMIN), "ag1_owner": ag1.owner, "ag1_manager": ag1.manager,
        "ag1_staff": ag1.staff, "ag2_owner": ag2.owner, "ag2_staff": ag2.staff,
    }
    headers = {name: auth_headers(client, p) if p is not None else {} for name, p in people.items()}
    deviations: list[str] = []
    combinations = 0
    for identity in IDENTITIES:
        for operation in OPERATIONS:
            victim = make_staff(Role.AGENCY_STAFF, agency=ag1.agency).public_id  # a fresh one each time
            expected = MATRIX[identity][operation]
            response = _call(client, operation, headers[identity], ag1.public_id, victim)
            combinations += 1
            if response.status_code != expected:
                deviations.append(f"{identity} {operation}: {response.status_code} (expected {expected}) "
                                  f"{response.get_data(as_text=True)[:200]}")
    assert deviations == [], "\n".join(deviations)
    assert combinations == len(IDENTITIES) * len(OPERATIONS)
    print(f"AZ-01 agency API: {combinations} combinations, 0 deviations")  # the release figure (TESTING.md section 5)


def test_other_agency_staff_see_nothing_of_ag1_and_change_nothing(app, client, app_ctx):  # AZ-03, AZ-04
    ag1 = agency_with_people(AgencyStatus.PENDING)
    ag2 = agency_with_people(AgencyStatus.PENDING)
    owner1 = auth_headers(client, ag1.owner)
    assert upload(client, owner1, "trade_licence").status_code == 201
    owner2 = auth_headers(client, ag2.owner)
    before = db_snapshot(app)
    # by path and by query: Ag1's id never works for Ag2 staff, and the answer is the never-existed answer
    never = client.get(AGENCY, headers=owner2, query_string={"agency": "00000000-0000-4000-8000-000000000000"})
    for response in (
        client.get(AGENCY, headers=owner2, query_string={"agency": ag1.public_id}),
        client.patch(AGENCY, headers=owner2, query_string={"agency": ag1.public_id}, json={"trn": "100999999999993"}),
        client.get(DOCUMENTS, headers=owner2, query_string={"agency": ag1.public_id}),
        upload(client, owner2, "trade_licence", agency=ag1.public_id),
        client.get(STAFF, headers=owner2, query_string={"agency": ag1.public_id}),
        client.post(STAFF, headers=owner2, query_string={"agency": ag1.public_id},
                    json={"email": "mole@example.com", "full_name": "A Mole", "role": "agency_owner"}),
        client.delete(f"{STAFF}/{ag1.manager.public_id}", headers=owner2),
        client.delete(f"{STAFF}/{ag1.manager.public_id}", headers=owner2, query_string={"agency": ag1.public_id}),
    ):
        assert response.status_code == 404, response.get_json()
        assert response.get_json()["error"]["code"] == never.get_json()["error"]["code"] == "not_found"
    after = db_snapshot(app)
    quiet = ("auth_sessions", "audit_events")
    assert {t: r for t, r in after.items() if t not in quiet} == {t: r for t, r in before.items() if t not in quiet}


def test_lists_hold_only_the_callers_agency(app, client, app_ctx):  # AZ-04
    ag1 = agency_with_people(AgencyStatus.PENDING)
    ag2 = agency_with_people(AgencyStatus.PENDING)
    assert upload(client, auth_headers(client, ag1.owner), "vat_certificate").status_code == 201
    headers = auth_headers(client, ag2.owner)
    profile = client.get(AGENCY, headers=headers).get_json()
    assert profile["id"] == ag2.public_id
    documents = client.get(DOCUMENTS, headers=headers).get_json()
    assert documents["items"] == []
    ids: list[str] = []
    cursor = None
    while True:  # page to the end
        page = client.get(STAFF, headers=headers, query_string={"limit": 1, **({"cursor": cursor} if cursor else {})})
        body = page.get_json()
        ids += [i["id"] for i in body["items"]]
        cursor = body["page"]["next_cursor"]
        if not cursor:
            break
    assert sorted(ids) == sorted([ag2.owner.public_id, ag2.manager.public_id, ag2.staff.public_id])
    text = str(documents) + str(profile)
    for secret in (ag1.public_id, ag1.owner.email, ag1.agency.business_name):
        assert secret not in text


def test_a_stale_token_after_role_removal_reaches_nothing(app, client, app_ctx):  # AZ-10
    ag1 = agency_with_people()
    tokens = auth_headers(client, ag1.manager)["Authorization"].split()[1]
    assert client.delete(f"{STAFF}/{ag1.manager.public_id}", headers=auth_headers(client, ag1.owner)).status_code == 204
    for path in (AGENCY, DOCUMENTS, STAFF):
        assert client.get(path, headers=bearer(tokens)).status_code == 401
