"""Verification documents: four photos through the one pipeline, encrypted under the agency's key."""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

from sqlalchemy import select

from marketplace import audit, images
from marketplace.agencies.errors import DocumentsLocked
from marketplace.agencies.models import Agency, AgencyDocument
from marketplace.agencies.profile import _resubmit, own_agency, require_in
from marketplace.agencies.rules import DOCUMENT_KINDS, _invalid, vault_owner
from marketplace.agencies.states import UNVERIFIED
from marketplace.errors import NotFound
from marketplace.extensions import db, utcnow
from marketplace.permissions import Permission
from marketplace.security import Actor
from marketplace.vault import service as vault

if TYPE_CHECKING:
    from marketplace.vault.models import Blob


def documents_of(agency: Agency) -> list[AgencyDocument]:
    rows = db.session.execute(select(AgencyDocument).where(AgencyDocument.agency_id == agency.id)).scalars()
    order = {kind: i for i, kind in enumerate(DOCUMENT_KINDS)}
    return sorted(rows, key=lambda d: order.get(d.kind, len(order)))


def list_documents(actor: Actor, agency_ref: str | None) -> tuple[Agency, list[AgencyDocument]]:
    agency = own_agency(actor, agency_ref)
    return agency, documents_of(agency)


def upload_document(actor: Actor, agency_ref: str | None, kind: str, stream: IO[bytes],
                    declared_type: str | None) -> AgencyDocument:
    """Run one document photo through the image pipeline and store it encrypted for the agency.

    Replacing a kind replaces its blob. Allowed only before verification (pending or rejected).
    """
    agency = own_agency(actor, agency_ref)
    require_in(actor, agency, Permission.AGENCY_PROFILE_WRITE)
    if kind not in DOCUMENT_KINDS:
        raise _invalid("kind", f"One of: {', '.join(DOCUMENT_KINDS)}.")
    if agency.status not in UNVERIFIED:
        raise DocumentsLocked(details={"status": agency.status})
    processed = images.process_image(stream, policy=images.DOCUMENT_POLICY, declared_type=declared_type)
    blob = vault.store(vault_owner(agency), kind, processed.data, mime=processed.mime, width=processed.width,
                       height=processed.height)
    now = utcnow()
    blob.attached_at = now  # claimed by the document row at once (never swept as an orphan upload)
    document = db.session.execute(
        select(AgencyDocument).where(AgencyDocument.agency_id == agency.id, AgencyDocument.kind == kind)
    ).scalar_one_or_none()
    old: Blob | None = None
    if document is None:
        document = AgencyDocument(agency_id=agency.id, kind=kind, blob_id=blob.id)
        db.session.add(document)
    else:
        old = vault.get_blob(document.blob_id)
        document.blob_id = blob.id
    document.uploaded_by_id = actor.user.id
    document.uploaded_at = now
    db.session.flush()
    if old is not None and old.deleted_at is None:
        vault.delete(old)
    _resubmit(actor, agency)
    audit.record(actor, "agency:document_upload", agency, kind=kind, blob=blob.public_id,
                 replaced=old.public_id if old is not None else None)
    return document


def document_blob(document: AgencyDocument) -> Blob:
    blob = vault.get_blob(document.blob_id)
    if blob is None or blob.deleted_at is not None:
        raise NotFound()
    return blob
