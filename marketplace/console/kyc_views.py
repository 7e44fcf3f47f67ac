"""Console pages for KYC review: the queue, the side-by-side case view, claim and decide."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Response, redirect, request, url_for

from marketplace import transactions
from marketplace.console.views import _render, console_bp
from marketplace.errors import AppError
from marketplace.extensions import db
from marketplace.kyc import service as kyc
from marketplace.kyc.states import CaseStatus
from marketplace.permissions import Permission, Role
from marketplace.security import current_actor, requires
from marketplace.users import service as users
from marketplace.users.service import list_staff
from marketplace.vault import service as vault
from marketplace.webhelpers import image_response


@dataclass(frozen=True)
class ReviewImage:
    src: str
    width: int
    height: int

    @property
    def shape(self) -> str:
        """The frame to show it in, so a landscape ID card is not shrunk into a portrait box."""
        if self.width > self.height * 1.1:
            return "landscape"
        if self.height > self.width * 1.1:
            return "portrait"
        return "square"


# the comparison the reviewer makes (P-09) comes first and largest; the other sides follow
PRIMARY = ("selfie", "id_front")
LABELS = {"selfie": "Selfie", "id_front": "ID front", "id_back": "ID back", "licence_front": "Licence front",
          "licence_back": "Licence back"}


@console_bp.get("/kyc")
@requires(Permission.KYC_CASE_READ)
def kyc_queue() -> Any:
    return _render("console/kyc_queue.html", entries=kyc.queue(current_actor()), target=kyc.REVIEW_TARGET)


def _case_page(public_id: str, *, status: int = 200, error: str | None = None) -> Any:
    actor = current_actor()
    case = kyc.get_case_for_review(actor, public_id)
    customer = users.get_user(case.user_id)
    pending = kyc.pending_decision(case)
    may_view = (case.status == CaseStatus.IN_REVIEW and case.claimed_by_id == actor.user.id) or (
        case.status == CaseStatus.AWAITING_SECOND_REVIEW and pending is not None
        and pending.reviewer_id != actor.user.id
    )
    images: dict[str, ReviewImage] = {}
    if may_view and actor.can(Permission.KYC_IMAGE_VIEW):
        for kind, slot in kyc.SLOTS.items():
            blob_id = getattr(case, slot)
            if blob_id is not None:
                token = kyc.review_image_grant(actor, case, kind)
                width, height = vault.dimensions(blob_id)
                images[kind] = ReviewImage(url_for("console.kyc_image", token=token), width, height)
    transactions.commit_error_response()  # the grants (and their audit rows) are the page's, whatever its status
    reviewers = [u for u in list_staff() if Role.KYC_REVIEWER in u.role_set() and u.id != actor.user.id]
    people = {u.id: u for u in list_staff()}
    return _render(
        "console/kyc_case.html", status=status, error=error, case=case, customer=customer,
        identity=kyc.identity_of(customer) if customer else None, images=images, pending=pending, primary=PRIMARY,
        labels=LABELS,
        decisions=kyc.decisions(case), people=people, reviewers=reviewers, reasons={
            "approve": kyc.APPROVE_REASONS, "reject": kyc.REJECT_REASONS,
            "request_resubmission": kyc.RESUBMIT_REASONS},
        items=[*kyc.SLOTS, "identity"], claimant=people.get(case.claimed_by_id or -1), S=CaseStatus,
    )


@console_bp.get("/kyc/<string:case_id>")
@transactions.writes
@requires(Permission.KYC_CASE_READ)
def kyc_case(case_id: str) -> Any:
    return _case_page(case_id)


def _act(case_id: str, action: Any) -> Any:
    actor = current_actor()
    case = kyc.get_case_for_review(actor, case_id)
    try:
        action(actor, case)
    except AppError as exc:
        db.session.rollback()
        if exc.status == 404:
            raise
        detail = exc.details.get("fields") if isinstance(exc.details, dict) else None
        message = exc.text + ("" if not detail else " " + "; ".join(f"{k}: {', '.join(v)}" for k, v in detail.items()))
        return _case_page(case_id, status=exc.status, error=message)
    return redirect(url_for("console.kyc_case", case_id=case_id))


@console_bp.post("/kyc/<string:case_id>/claim")
@requires(Permission.KYC_CASE_DECIDE)
def kyc_claim(case_id: str) -> Any:
    return _act(case_id, kyc.claim)


@console_bp.post("/kyc/<string:case_id>/release")
@requires(Permission.KYC_CASE_DECIDE)
def kyc_release(case_id: str) -> Any:
    result = _act(case_id, kyc.release)
    return redirect(url_for("console.kyc_queue")) if isinstance(result, Response) else result


@console_bp.post("/kyc/<string:case_id>/reassign")
@requires(Permission.KYC_CASE_DECIDE)
def kyc_reassign(case_id: str) -> Any:
    reviewer = request.form.get("reviewer", "")[:36]
    return _act(case_id, lambda actor, case: kyc.reassign(actor, case, reviewer))


@console_bp.post("/kyc/<string:case_id>/decide")
@requires(Permission.KYC_CASE_DECIDE)
def kyc_decide(case_id: str) -> Any:
    form = request.form
    return _act(case_id, lambda actor, case: kyc.decide(
        actor, case, decision=form.get("decision", "")[:32], reason_code=form.get("reason_code", "")[:48],
        note=form.get("note", "")[:2000] or None, items=[i[:32] for i in form.getlist("items")][:8]))


@console_bp.post("/kyc/<string:case_id>/second-review")
@requires(Permission.KYC_CASE_DECIDE)
def kyc_second_review(case_id: str) -> Any:
    confirm = request.form.get("confirm") == "yes"
    note = request.form.get("note", "")[:2000] or None
    return _act(case_id, lambda actor, case: kyc.second_review(actor, case, confirm=confirm, note=note))


@console_bp.get("/kyc/images/<string:token>")
@transactions.writes
@requires(Permission.KYC_IMAGE_VIEW)
def kyc_image(token: str) -> Response:
    data, blob = kyc.open_granted_image(current_actor(), token)
    return image_response(data, blob.mime)
