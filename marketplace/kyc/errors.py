"""The errors KYC's rules raise (public: front doors and other areas catch them by class)."""

from __future__ import annotations

from marketplace.errors import Conflict, Forbidden, Unprocessable


class ConsentRequired(Forbidden):
    code = "consent_required"
    message = "Accept the current face-data consent before uploading a selfie."


class KycRequired(Forbidden):
    code = "kyc_required"
    message = "Identity verification is needed before booking."


class ReverificationRequired(Conflict):
    code = "reverification_required"
    message = "Your verification is already submitted or approved. Start a re-verification to replace images."


class CaseIncomplete(Unprocessable):
    code = "kyc_incomplete"
    message = "Some identity data or images are missing."


class NotClaimant(Forbidden):
    code = "not_claimant"
    message = "Only the reviewer who claimed this case can do this."


class SelfReviewForbidden(Forbidden):
    code = "self_review_forbidden"
    message = "You cannot review your own case or confirm your own decision."
