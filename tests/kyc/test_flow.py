"""The KYC journey end to end: consent, uploads, submit, claim, approve, clearance."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from marketplace.extensions import db, utcnow
from marketplace.kyc import service as kyc
from marketplace.kyc.models import KycCase
from marketplace.permissions import Role
from marketplace.users.models import AuthSession
from tests.factories import actor_for, auth_headers, make_customer, make_staff
from tests.kyc.helpers import submitted_case, upload


def test_selfie_needs_face_consent_first(app, client, app_ctx):  # enforces P-06
    customer = make_customer()
    headers = auth_headers(client, customer)
    response = upload(client, headers, "selfie")
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "consent_required"


def test_submit_claim_approve_then_cleared(app, client, app_ctx):  # enforces P-09, P-10
    customer = make_customer()
    headers = auth_headers(client, customer)
    status = submitted_case(client, headers)
    assert status["status"] == "submitted"
    with pytest.raises(kyc.KycRequired):
        kyc.ensure_cleared_to_drive(customer.user(), utcnow() + timedelta(days=3))

    reviewer = actor_for(make_staff(Role.KYC_REVIEWER))
    case = db.session.execute(select(KycCase)).scalar_one()
    kyc.claim(reviewer, case)
    token = kyc.review_image_grant(reviewer, case, "selfie")
    data, blob = kyc.open_granted_image(reviewer, token)
    assert data[:3] == b"\xff\xd8\xff" and blob.kind == "selfie"
    kyc.decide(reviewer, case, decision="approve", reason_code="documents_match", note=None)
    db.session.commit()
    kyc.ensure_cleared_to_drive(customer.user(), utcnow() + timedelta(days=3))
    assert db.session.execute(select(AuthSession)).scalars().first() is not None
