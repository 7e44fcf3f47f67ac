"""KYC's fixed rules: review target, time limits, the document slots and the accepted codes."""

from __future__ import annotations

from datetime import timedelta

from marketplace.kyc import states
from marketplace.kyc.states import Decision

REVIEW_TARGET = timedelta(hours=24)
UNCLAIMED_UPLOAD_TTL = timedelta(hours=24)
GRANT_TTL = timedelta(seconds=60)
DOCUMENT_KINDS = ("id_front", "id_back", "licence_front", "licence_back")
SLOTS = {"selfie": "selfie_blob_id", "id_front": "id_front_blob_id", "id_back": "id_back_blob_id",
         "licence_front": "licence_front_blob_id", "licence_back": "licence_back_blob_id"}
ID_TYPES = ("passport", "emirates_id")
EMIRATES = ("AE-AZ", "AE-DU", "AE-SH", "AE-AJ", "AE-UQ", "AE-RK", "AE-FU")
REJECT_REASONS = states.REASONS[Decision.REJECT]
RESUBMIT_REASONS = states.REASONS[Decision.REQUEST_RESUBMISSION]
APPROVE_REASONS = states.REASONS[Decision.APPROVE]
