"""KYC schemas: identity in, status out (for the customer), and the signed image link."""

from __future__ import annotations

from marshmallow import fields, validate

from marketplace.schemas import COUNTRY_CODE, OutSchema, StrictSchema, Text, documented

# the forms kyc.service accepts (it upper-cases and trims them first); the number's form depends on the
# document type, which JSON Schema cannot tie to another field, so the pattern is the union of both
_DOCUMENT_NUMBER = documented(pattern=r"^([A-Za-z0-9]{6,9}|784-[0-9]{4}-[0-9]{7}-[0-9])$")
_LICENCE_NUMBER = documented(pattern=r"^[A-Za-z0-9-]{4,20}$")
_LICENCE_ISSUER = documented(pattern=r"^([A-Za-z]{2}|AE-(AZ|DU|SH|AJ|UQ|RK|FU))$")
_FUTURE = "A date after today (Asia/Dubai): an expired document is refused"


class IdentityIn(StrictSchema):
    legal_name = Text(max_length=200, required=True, metadata={"description": "As printed on the ID document"})
    date_of_birth = fields.Date(required=True, metadata={"description": "Drivers are at least 21 today"})
    nationality = fields.String(required=True, validate=COUNTRY_CODE)
    id_document_type = fields.String(required=True, validate=validate.OneOf(["passport", "emirates_id"]))
    id_document_number = Text(max_length=32, required=True, rules=(_DOCUMENT_NUMBER,), metadata={"description": (
        "passport: 6 to 9 letters and digits; emirates_id: 784-YYYY-NNNNNNN-N, YYYY the year of birth and the "
        "last digit a Luhn check digit")})
    id_document_expiry = fields.Date(required=True, metadata={"description": _FUTURE})
    licence_number = Text(max_length=32, required=True, rules=(_LICENCE_NUMBER,))
    licence_issuer = Text(max_length=8, required=True, rules=(_LICENCE_ISSUER,),
                          metadata={"description": "Issuing country (ISO code) or UAE emirate (AE-DU, AE-AZ, ...)"})
    licence_expiry = fields.Date(required=True, metadata={"description": _FUTURE})
    licence_category = Text(max_length=16, required=True)


class IdentityOut(OutSchema):
    legal_name = fields.String(required=True)
    date_of_birth = fields.Date(required=True)
    nationality = fields.String(required=True)
    id_document_type = fields.String(required=True)
    id_document_number = fields.String(required=True)
    id_document_expiry = fields.Date(required=True)
    licence_number = fields.String(required=True)
    licence_issuer = fields.String(required=True)
    licence_expiry = fields.Date(required=True)
    licence_category = fields.String(required=True)


class UploadedOut(OutSchema):
    id = fields.String(required=True)
    kind = fields.String(required=True)
    width = fields.Integer(required=True)
    height = fields.Integer(required=True)


class KycStatusOut(OutSchema):
    status = fields.String(required=True, metadata={"description": (
        "not_started, draft, submitted, in_review, awaiting_second_review, approved, rejected, "
        "resubmission_requested")})
    submitted_at = fields.DateTime(allow_none=True, required=True)
    decided_at = fields.DateTime(allow_none=True, required=True)
    reason = fields.String(allow_none=True, required=True)
    resubmit_items = fields.List(fields.String(), required=True)
    uploaded = fields.List(fields.String(), required=True)
    missing = fields.List(fields.String(), required=True)
    identity = fields.Nested(IdentityOut, allow_none=True, required=True)
    face_consent_version = fields.String(allow_none=True, required=True)


class DocumentFormIn(StrictSchema):
    kind = fields.String(required=True,
                         validate=validate.OneOf(["id_front", "id_back", "licence_front", "licence_back"]))


class ImageLinkOut(OutSchema):
    url = fields.String(required=True, metadata={"description": "Single-use link, valid about a minute"})
    expires_at = fields.DateTime(required=True)
