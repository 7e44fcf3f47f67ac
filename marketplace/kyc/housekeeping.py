"""KYC housekeeping: uploads no submitted case claimed are deleted after 24 hours."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update

from marketplace import audit
from marketplace.extensions import db, utcnow
from marketplace.kyc.models import KycCase
from marketplace.kyc.rules import SLOTS, UNCLAIMED_UPLOAD_TTL
from marketplace.vault import service as vault


def purge_unclaimed_uploads(now: datetime | None = None) -> int:
    """Delete uploads no submitted case claimed within 24 hours (and empty their draft slots)."""
    cutoff = (now or utcnow()) - UNCLAIMED_UPLOAD_TTL
    stale = vault.unattached_before(cutoff, owner_prefix="user:")
    for blob in stale:
        for slot in SLOTS.values():
            db.session.execute(update(KycCase).where(getattr(KycCase, slot) == blob.id).values({slot: None}))
        vault.delete(blob)
        audit.record(None, "kyc:purge_upload", blob, kind=blob.kind)
    db.session.flush()
    return len(stale)
