"""The KYC review workflow: the state machine, claiming, four eyes, who may decide and who may see images,
clearance to drive, and the purge of abandoned uploads.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from marketplace import jobs
from marketplace.audit import AuditEvent
from marketplace.errors import AppError
from marketplace.extensions import db, utcnow
from marketplace.kyc import jobs as kyc_jobs
from marketplace.kyc import service as kyc
from marketplace.kyc import states
from marketplace.kyc.models import KycCase, KycDecision
from marketplace.kyc.states import TRANSITIONS, CaseStatus, IllegalTransition
from marketplace.notifications.models import Channel, OutboxMessage
from marketplace.permissions import Role
from marketplace.security import Actor
from marketplace.users.models import AuthSession
from marketplace.vault import service as vault
from marketplace.vault.models import Blob
from tests.conftest import drain_jobs
from tests.factories import actor_for, auth_headers, make_customer, make_staff, web_login
from tests.kyc.helpers import (
    approve_case,
    blob_files,
    give_face_consent,
    identity_body,
    latest_case,
    submitted_case,
    upload,
)
from tests.staff_web import error_code, page_csrf


def reviewer() -> Actor:
    actor: Actor = actor_for(make_staff(Role.KYC_REVIEWER))
    db.session.commit()  # the new session row must not hold SQLite's write lock during the test
    return actor


def submitted(client: Any) -> tuple[Any, dict[str, str], KycCase]:
    person = make_customer()
    headers = auth_headers(client, person)
    submitted_case(client, headers)
    return person, headers, latest_case(person.user_id)


def refused(call: Any, status: int, code: str) -> AppError:
    with pytest.raises(AppError) as caught:
        call()
    db.session.rollback()
    assert (caught.value.status, caught.value.code) == (status, code)
    return caught.value


def audit_rows(action: str, **where: Any) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
    for column, value in where.items():
        stmt = stmt.where(getattr(AuditEvent, column) == value)
    db.session.expire_all()
    return list(db.session.execute(stmt).scalars())


def notices(user_id: int, kind: str) -> dict[str, list[OutboxMessage]]:
    rows = db.session.execute(select(OutboxMessage).where(OutboxMessage.user_id == user_id,
                                                          OutboxMessage.kind == kind)).scalars().all()
    return {channel: [r for r in rows if r.channel == channel] for channel in (Channel.IN_APP, Channel.EMAIL)}


# ---- the transition table ----------------------------------------------------------------------------

ILLEGAL = [(a, b) for a in CaseStatus for b in CaseStatus if b not in TRANSITIONS[a]]
LEGAL = [(a, b) for a in CaseStatus for b in sorted(TRANSITIONS[a])]  # sorted: stable test ids


def test_every_state_has_a_row_and_final_states_lead_nowhere_else():  # enforces P-09
    assert set(TRANSITIONS) == set(CaseStatus)
    assert TRANSITIONS[CaseStatus.SUPERSEDED] == frozenset()
    assert CaseStatus.DRAFT not in {target for targets in TRANSITIONS.values() for target in targets}


@pytest.mark.parametrize(("current", "target"), ILLEGAL)
def test_every_illegal_move_is_refused(current, target):  # enforces P-09
    with pytest.raises(IllegalTransition) as caught:
        states.check(current, target)
    assert (caught.value.status, caught.value.code) == (409, "illegal_state_transition")
    assert caught.value.details == {"from": str(current), "to": str(target)}


@pytest.mark.parametrize(("current", "target"), LEGAL)
def test_every_legal_move_is_allowed(current, target):  # enforces P-09
    states.check(current, target)


def _to_status(client: Any, status: CaseStatus) -> tuple[Any, dict[str, str], KycCase]:
    """A customer whose case was walked through the real workflow to ``status``."""
    person, headers, case = submitted(client)
    first, second = reviewer(), reviewer()
    if status != CaseStatus.SUBMITTED:
        kyc.claim(first, case)
    if status in (CaseStatus.AWAITING_SECOND_REVIEW, CaseStatus.REJECTED):
        kyc.decide(first, case, decision="reject", reason_code="face_mismatch", note=None)
    if status == CaseStatus.REJECTED:
        kyc.second_review(second, case, confirm=True, note=None)
    if status == CaseStatus.APPROVED:
        kyc.decide(first, case, decision="approve", reason_code="documents_match", note=None)
    db.session.commit()
    assert latest_case(person.user_id).status == status
    return person, headers, latest_case(person.user_id)


@pytest.mark.parametrize("status", [CaseStatus.SUBMITTED, CaseStatus.IN_REVIEW, CaseStatus.AWAITING_SECOND_REVIEW,
                                    CaseStatus.APPROVED, CaseStatus.REJECTED])
def test_customer_cannot_resubmit_a_case_that_is_not_theirs_to_edit(app, client, app_ctx, status):  # P-09
    person, headers, case = _to_status(client, status)
    before = (case.status, case.claimed_by_id, case.submitted_at)
    response = client.post("/api/v1/me/kyc/submit", headers=headers)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "illegal_state_transition"
    case = latest_case(person.user_id)
    assert (case.status, case.claimed_by_id, case.submitted_at) == before  # the reviewer keeps the claim


def test_resubmission_cannot_be_requested_on_an_approved_case(app, client, app_ctx):  # enforces P-09
    _, _, case = _to_status(client, CaseStatus.APPROVED)
    refused(lambda: kyc.decide(reviewer(), case, decision="request_resubmission", reason_code="blurry_image",
                               note=None, items=["selfie"]), 409, "illegal_state_transition")
    assert latest_case(case.user_id).status == CaseStatus.APPROVED


def test_unknown_decisions_and_reasons_are_refused(app, client, app_ctx):  # enforces P-09
    _, _, case = submitted(client)
    actor = reviewer()
    kyc.claim(actor, case)
    db.session.commit()
    error = refused(lambda: kyc.decide(actor, case, decision="maybe", reason_code="documents_match", note=None),
                    422, "validation_error")
    assert "decision" in error.details["fields"]
    error = refused(lambda: kyc.decide(actor, case, decision="approve", reason_code="looks_fine", note=None),
                    422, "validation_error")
    assert "reason_code" in error.details["fields"]
    error = refused(lambda: kyc.decide(actor, case, decision="request_resubmission", reason_code="blurry_image",
                                       note=None, items=["passport_photo"]), 422, "validation_error")
    assert "items" in error.details["fields"]
    assert latest_case(case.user_id).status == CaseStatus.IN_REVIEW


# ---- claiming ------------------------------------------------------------------------------------------


def test_claim_race_has_one_winner(app, client, app_ctx):  # CC: compare-and-set claim, enforces P-09
    _, _, case = submitted(client)
    racers = [reviewer() for _ in range(5)]
    session_ids = [actor.session.id for actor in racers]
    case_id, user_id = case.id, case.user_id
    db.session.commit()
    db.session.remove()
    barrier = threading.Barrier(len(racers))
    outcomes: dict[int, str] = {}

    def race(index: int) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=30)
                # BEGIN IMMEDIATE on SQLite (ignored on PostgreSQL), so SQLite queues the writers instead of
                # failing the loser with "database is locked"; on PostgreSQL they really run at once
                db.session.connection(execution_options={"sqlite_begin": "immediate"})
                actor = Actor.for_session(db.session.get(AuthSession, session_ids[index]))
                target = db.session.get(KycCase, case_id)
                assert target is not None
                kyc.claim(actor, target)
                db.session.commit()
                outcomes[index] = "won"
            except AppError as exc:
                db.session.rollback()
                outcomes[index] = exc.code
            finally:
                db.session.remove()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(racers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes.values()) == ["conflict"] * (len(racers) - 1) + ["won"]
    winner = next(i for i, outcome in outcomes.items() if outcome == "won")
    case = latest_case(user_id)
    assert case.status == CaseStatus.IN_REVIEW
    assert case.claimed_by_id == db.session.get(AuthSession, session_ids[winner]).user_id
    assert len(audit_rows("kyc:claim")) == 1


def test_second_claim_on_a_stale_page_gets_a_conflict(app, client, app_ctx):  # enforces P-09
    _, _, case = submitted(client)
    first, second = make_staff(Role.KYC_REVIEWER), make_staff(Role.KYC_REVIEWER)
    clients = [app.test_client(), app.test_client()]
    tokens = []
    for web, person in zip(clients, (first, second), strict=True):
        web_login(web, person)
        tokens.append(page_csrf(web, f"/console/kyc/{case.public_id}"))  # both pages offer "Claim"
    won = clients[0].post(f"/console/kyc/{case.public_id}/claim", data={"csrf_token": tokens[0]})
    assert won.status_code == 302
    lost = clients[1].post(f"/console/kyc/{case.public_id}/claim", data={"csrf_token": tokens[1]})
    assert lost.status_code == 409
    assert 'role="alert"' in lost.get_data(as_text=True)
    assert latest_case(case.user_id).claimed_by_id == first.user_id


def test_only_the_claimant_decides_releases_or_reassigns(app, client, app_ctx):  # enforces P-09, AZ-06
    _, _, case = submitted(client)
    owner, other = reviewer(), reviewer()
    # nobody decides an unclaimed case
    refused(lambda: kyc.decide(owner, case, decision="approve", reason_code="documents_match", note=None),
            403, "not_claimant")
    kyc.claim(owner, case)
    db.session.commit()
    refused(lambda: kyc.claim(other, case), 409, "conflict")
    refused(lambda: kyc.decide(other, case, decision="approve", reason_code="documents_match", note=None),
            403, "not_claimant")
    refused(lambda: kyc.release(other, case), 403, "not_claimant")
    refused(lambda: kyc.reassign(other, case, other.user.public_id), 403, "not_claimant")
    case = latest_case(case.user_id)
    assert (case.status, case.claimed_by_id) == (CaseStatus.IN_REVIEW, owner.user.id)
    assert db.session.execute(select(KycDecision)).first() is None


def test_release_returns_the_case_to_the_queue(app, client, app_ctx):  # enforces P-09
    _, _, case = submitted(client)
    owner, other = reviewer(), reviewer()
    kyc.claim(owner, case)
    kyc.release(owner, case)
    db.session.commit()
    case = latest_case(case.user_id)
    assert (case.status, case.claimed_by_id, case.claimed_at) == (CaseStatus.SUBMITTED, None, None)
    assert [e.case.public_id for e in kyc.queue(other)] == [case.public_id]
    kyc.claim(other, case)
    db.session.commit()
    assert latest_case(case.user_id).claimed_by_id == other.user.id
    assert len(audit_rows("kyc:release", actor_id=owner.user.public_id)) == 1


def test_reassign_hands_over_the_decision(app, client, app_ctx):  # enforces P-09
    _, _, case = submitted(client)
    owner, colleague = reviewer(), reviewer()
    kyc.claim(owner, case)
    db.session.commit()
    disputes = make_staff(Role.DISPUTES_AGENT)
    for target in (disputes.public_id, "no-such-person", make_customer().public_id):
        error = refused(lambda t=target: kyc.reassign(owner, case, t), 422, "validation_error")
        assert "reviewer" in error.details["fields"]
    kyc.reassign(owner, case, colleague.user.public_id)
    db.session.commit()
    assert latest_case(case.user_id).claimed_by_id == colleague.user.id
    refused(lambda: kyc.decide(owner, case, decision="approve", reason_code="documents_match", note=None),
            403, "not_claimant")
    refused(lambda: kyc.review_image_grant(owner, case, "selfie"), 404, "not_found")
    kyc.decide(colleague, case, decision="approve", reason_code="documents_match", note=None)
    db.session.commit()
    assert latest_case(case.user_id).status == CaseStatus.APPROVED
    [row] = audit_rows("kyc:reassign")
    assert row.actor_id == owner.user.public_id and colleague.user.public_id in row.data


def test_reassign_to_the_customer_is_refused(app, client, app_ctx):  # AZ-06
    _, _, case = submitted(client)
    owner = reviewer()
    # a reviewer who is also the customer of this case (a staff account holding a KYC case)
    customer_reviewer = make_staff(Role.KYC_REVIEWER)
    case.user_id = customer_reviewer.user_id
    kyc.claim(owner, case)
    db.session.commit()
    refused(lambda: kyc.reassign(owner, case, customer_reviewer.public_id), 422, "validation_error")


# ---- four eyes --------------------------------------------------------------------------------------


def test_rejection_waits_for_a_second_reviewer(app, client, app_ctx):  # enforces P-09
    person, headers, case = submitted(client)
    first, second = reviewer(), reviewer()
    kyc.claim(first, case)
    pending = kyc.decide(first, case, decision="reject", reason_code="face_mismatch", note="different chin")
    db.session.commit()
    assert pending.status == "pending"
    assert latest_case(person.user_id).status == CaseStatus.AWAITING_SECOND_REVIEW
    assert notices(person.user_id, "kyc_rejected") == {Channel.IN_APP: [], Channel.EMAIL: []}
    assert client.get("/api/v1/me/kyc", headers=headers).get_json()["status"] == "awaiting_second_review"

    refused(lambda: kyc.second_review(first, case, confirm=True, note=None), 403, "self_review_forbidden")
    assert latest_case(person.user_id).status == CaseStatus.AWAITING_SECOND_REVIEW

    kyc.second_review(second, case, confirm=True, note="agree")
    db.session.commit()
    drain_jobs(app)
    case = latest_case(person.user_id)
    assert case.status == CaseStatus.REJECTED and case.decided_at is not None
    decision = db.session.get(KycDecision, pending.id)
    assert (decision.status, decision.second_reviewer_id) == ("confirmed", second.user.id)
    told = notices(person.user_id, "kyc_rejected")
    assert len(told[Channel.IN_APP]) == len(told[Channel.EMAIL]) == 1
    assert "face mismatch" in told[Channel.EMAIL][0].body_text
    assert "different chin" not in told[Channel.EMAIL][0].body_text  # internal notes stay internal
    status = client.get("/api/v1/me/kyc", headers=headers).get_json()
    assert (status["status"], status["reason"]) == ("rejected", "face_mismatch")
    refused(lambda: kyc.second_review(second, case, confirm=True, note=None), 409, "conflict")
    assert [row.action for row in audit_rows("kyc:second_review")] == ["kyc:second_review"]


def test_overturned_rejection_goes_back_to_review(app, client, app_ctx):  # enforces P-09
    person, _, case = submitted(client)
    first, second = reviewer(), reviewer()
    kyc.claim(first, case)
    pending = kyc.decide(first, case, decision="reject", reason_code="document_not_genuine", note=None)
    kyc.second_review(second, case, confirm=False, note="hologram visible on the back")
    db.session.commit()
    case = latest_case(person.user_id)
    assert (case.status, case.claimed_by_id) == (CaseStatus.IN_REVIEW, second.user.id)
    assert db.session.get(KycDecision, pending.id).status == "overturned"
    assert notices(person.user_id, "kyc_rejected")[Channel.EMAIL] == []
    kyc.decide(second, case, decision="approve", reason_code="documents_match", note=None)
    db.session.commit()
    assert latest_case(person.user_id).status == CaseStatus.APPROVED


def test_overriding_an_approval_needs_four_eyes(app, client, app_ctx):  # enforces P-09, P-10
    person, _, case = submitted(client)
    approver, doubter, confirmer = reviewer(), reviewer(), reviewer()
    approve_case(person.user_id, approver)
    case = latest_case(person.user_id)
    refused(lambda: kyc.decide(doubter, case, decision="approve", reason_code="documents_match", note=None),
            409, "conflict")
    proposal = kyc.decide(doubter, case, decision="reject", reason_code="duplicate_identity", note=None)
    db.session.commit()
    assert proposal.status == "pending"
    assert latest_case(person.user_id).status == CaseStatus.AWAITING_SECOND_REVIEW
    [row] = audit_rows("kyc:decide:reject")
    assert '"override":true' in row.data and '"four_eyes":true' in row.data
    refused(lambda: kyc.second_review(doubter, case, confirm=True, note=None), 403, "self_review_forbidden")
    kyc.second_review(confirmer, case, confirm=True, note=None)
    db.session.commit()
    assert latest_case(person.user_id).status == CaseStatus.REJECTED
    with pytest.raises(kyc.KycRequired):
        kyc.ensure_cleared_to_drive(person.user(), date.today() + timedelta(days=1))


# ---- roles stay in their lanes (AZ-06) ------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.DISPUTES_AGENT, Role.DPO])
def test_disputes_agent_and_dpo_cannot_decide(app, client, app_ctx, role):  # AZ-06, enforces P-09
    _, _, case = submitted(client)
    outsider = make_staff(role)
    actor = actor_for(outsider)
    db.session.commit()
    for call in (lambda: kyc.claim(actor, case), lambda: kyc.queue(actor),
                 lambda: kyc.get_case_for_review(actor, case.public_id),
                 lambda: kyc.decide(actor, case, decision="approve", reason_code="documents_match", note=None),
                 lambda: kyc.second_review(actor, case, confirm=True, note=None)):
        refused(call, 403, "forbidden")

    web = app.test_client()
    web_login(web, outsider)
    token = page_csrf(web, "/console/")
    assert error_code(web.get("/console/kyc")) == "forbidden"
    assert web.get(f"/console/kyc/{case.public_id}").status_code == 403
    for action in ("claim", "decide", "release", "second-review"):
        response = web.post(f"/console/kyc/{case.public_id}/{action}",
                            data={"csrf_token": token, "decision": "approve", "reason_code": "documents_match",
                                  "confirm": "yes"})
        assert response.status_code == 403, action
        assert error_code(response) == "forbidden"
    case = latest_case(case.user_id)
    assert (case.status, case.claimed_by_id) == (CaseStatus.SUBMITTED, None)
    assert audit_rows("kyc:claim") == []


def test_reviewer_cannot_review_their_own_case(app, client, app_ctx):  # AZ-06
    _, _, case = submitted(client)
    self_reviewer = make_staff(Role.KYC_REVIEWER)
    case.user_id = self_reviewer.user_id  # the reviewer's own verification
    db.session.commit()
    actor = actor_for(self_reviewer)
    db.session.commit()
    refused(lambda: kyc.claim(actor, case), 403, "self_review_forbidden")
    refused(lambda: kyc.decide(actor, case, decision="approve", reason_code="documents_match", note=None),
            403, "self_review_forbidden")
    web = app.test_client()
    web_login(web, self_reviewer)
    response = web.post(f"/console/kyc/{case.public_id}/claim",
                        data={"csrf_token": page_csrf(web, f"/console/kyc/{case.public_id}")})
    assert response.status_code == 403
    assert latest_case(self_reviewer.user_id).status == CaseStatus.SUBMITTED


def test_images_only_for_the_claimant(app, client, app_ctx):  # enforces P-11, AZ-06, PV-01
    _, _, case = submitted(client)
    owner, other = reviewer(), reviewer()
    selfie = db.session.get(Blob, case.selfie_blob_id)

    refused(lambda: kyc.review_image_grant(owner, case, "selfie"), 404, "not_found")  # not claimed yet
    kyc.claim(owner, case)
    db.session.commit()
    refused(lambda: kyc.review_image_grant(other, case, "selfie"), 404, "not_found")  # someone else's claim
    denied = audit_rows("image:view_denied")
    assert [(row.actor_id, row.outcome, row.subject_id) for row in denied] == [
        (owner.user.public_id, "denied", selfie.public_id), (other.user.public_id, "denied", selfie.public_id)]
    assert all(f'"context":"{case.public_id}"' in row.data for row in denied)

    web = app.test_client()
    web_login(web, make_staff(Role.KYC_REVIEWER))
    page = web.get(f"/console/kyc/{case.public_id}").get_data(as_text=True)
    assert "<img" not in page and "/console/kyc/images/" not in page
    assert audit_rows("image:grant") == []

    token = kyc.review_image_grant(owner, case, "selfie")
    db.session.commit()
    refused(lambda: kyc.open_granted_image(other, token), 404, "not_found")  # a grant is for one viewer only
    data, blob = kyc.open_granted_image(owner, token)
    db.session.commit()
    assert blob.id == selfie.id and data.startswith(b"\xff\xd8\xff")


# ---- clearance to drive (P-10) ------------------------------------------------------------------------


def reasons(user: Any, until: Any) -> list[str]:
    db.session.expire_all()
    try:
        kyc.ensure_cleared_to_drive(user, until)
    except kyc.KycRequired as exc:
        assert (exc.status, exc.code) == (403, "kyc_required")
        return list(exc.details["reasons"])
    return []


def test_clearance_needs_an_approved_case(app, client, app_ctx):  # enforces P-10
    nobody = make_customer()
    assert reasons(nobody.user(), utcnow()) == ["kyc_not_approved", "licence_not_valid_for_period",
                                                "face_data_consent_missing"]
    person, _, _ = submitted(client)
    assert reasons(person.user(), utcnow() + timedelta(days=2)) == ["kyc_not_approved"]
    approve_case(person.user_id)
    assert reasons(person.user(), utcnow() + timedelta(days=2)) == []


def test_licence_must_be_valid_through_the_last_day(app, client, app_ctx):  # enforces P-10
    person, _, _ = submitted(client)
    approve_case(person.user_id)
    expiry = date.fromisoformat(identity_body()["licence_expiry"])
    assert reasons(person.user(), expiry) == []
    assert reasons(person.user(), datetime.combine(expiry, datetime.min.time(), UTC) + timedelta(hours=20)) == []
    assert reasons(person.user(), expiry + timedelta(days=1)) == ["licence_not_valid_for_period"]
    assert reasons(person.user(), datetime.combine(expiry, datetime.min.time(), UTC) + timedelta(days=1)) == [
        "licence_not_valid_for_period"]


def test_withdrawing_face_consent_blocks_at_once(app, client, app_ctx):  # enforces P-10, P-06
    person, headers, _ = submitted(client)
    approve_case(person.user_id)
    until = utcnow() + timedelta(days=3)
    assert reasons(person.user(), until) == []
    assert client.delete("/api/v1/me/consents/face_data", headers=headers).status_code == 204
    assert reasons(person.user(), until) == ["face_data_consent_withdrawn"]
    give_face_consent(client, headers)  # consenting again lifts the block
    assert reasons(person.user(), until) == []


def test_face_consent_never_given_is_not_reported_as_withdrawn(app, client, app_ctx):
    # issue 7 item 9: a customer who never consented was told her consent was "withdrawn"
    person = make_customer()
    headers = auth_headers(client, person)
    until = utcnow() + timedelta(days=3)
    assert "face_data_consent_missing" in reasons(person.user(), until)
    assert "face_data_consent_withdrawn" not in reasons(person.user(), until)
    give_face_consent(client, headers)
    assert not {"face_data_consent_missing", "face_data_consent_withdrawn"} & set(reasons(person.user(), until))
    assert client.delete("/api/v1/me/consents/face_data", headers=headers).status_code == 204
    assert "face_data_consent_withdrawn" in reasons(person.user(), until)
    assert "face_data_consent_missing" not in reasons(person.user(), until)


# ---- abandoned uploads are purged after 24 h ---------------------------------------------------------


def test_unclaimed_uploads_are_purged_after_24_hours_submitted_ones_kept(app, client, app_ctx):  # P-08, P-27
    assert kyc_jobs.purge_unclaimed_uploads in jobs._PERIODIC  # runs on the sweeper's clock
    drafter = make_customer()
    headers = auth_headers(client, drafter)
    give_face_consent(client, headers)
    for kind in ("selfie", "id_front"):
        assert upload(client, headers, kind).status_code == 201
    keeper, _, kept_case = submitted(client)
    draft = latest_case(drafter.user_id)
    abandoned = [db.session.get(Blob, draft.selfie_blob_id), db.session.get(Blob, draft.id_front_blob_id)]
    kept = db.session.execute(select(Blob).where(Blob.user_id == keeper.user_id)).scalars().all()
    assert len(kept) == 5
    files = blob_files(app)
    start = datetime.now(UTC)

    with time_machine.travel(start + timedelta(hours=23, minutes=50), tick=False):
        jobs.run_periodic()
    assert blob_files(app) == files
    assert all(db.session.get(Blob, b.id).deleted_at is None for b in abandoned)

    with time_machine.travel(start + timedelta(hours=24, minutes=5), tick=False):
        jobs.run_periodic()
    db.session.expire_all()
    for blob in abandoned:
        row = db.session.get(Blob, blob.id)
        assert row.deleted_at is not None
        assert not vault.blob_store().exists(row.storage_key)
    draft = latest_case(drafter.user_id)
    assert (draft.selfie_blob_id, draft.id_front_blob_id) == (None, None)
    assert draft.status == CaseStatus.DRAFT
    for blob in kept:
        row = db.session.get(Blob, blob.id)
        assert row.deleted_at is None and vault.read(row).startswith(b"\xff\xd8\xff")
    assert latest_case(keeper.user_id).id == kept_case.id
    purged = audit_rows("kyc:purge_upload")
    assert sorted(row.subject_id for row in purged) == sorted(b.public_id for b in abandoned)
    assert all(row.actor_type == "system" for row in purged)
