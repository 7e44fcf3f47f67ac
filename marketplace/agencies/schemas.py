"""Agency schemas, split by direction: ``*In`` for requests, ``*Out`` for responses (allow-listed fields)."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from marketplace.agencies.service import missing_documents
from marketplace.agencies.states import AgencyDocumentKind
from marketplace.permissions import AGENCY_ROLES
from marketplace.schemas import (
    AT_LEAST_ONE_FIELD,
    COUNTRY_CODE,
    EMAIL,
    PHONE,
    NewPassword,
    OutSchema,
    PageArgsSchema,
    PageInfoSchema,
    PatchSchema,
    StrictInteger,
    StrictSchema,
    Text,
    documented,
)

_AGENCY_PARAM = {"description": "Public id of one of your agencies; needed only if you work for several"}
_PHONE = "International format, e.g. +97143001234 (spaces, dashes, dots and brackets are ignored; 00 for +)"
# the forms agencies.service stores (it also removes spaces and dashes from a TRN and folds case and spaces
# of a trade licence number)
TRN = documented(pattern=r"^100[0-9]{12}$")
TRADE_LICENCE = documented(pattern=r"^[A-Z0-9][A-Z0-9/ -]{2,63}$")


class AgencyAddressIn(StrictSchema):
    line1 = Text(max_length=200, required=True, blank=False)
    city = Text(max_length=100, required=True, blank=False)
    country = fields.String(required=True, validate=COUNTRY_CODE)


class AgencyAddressPatchIn(PatchSchema, AgencyAddressIn):
    """Every field optional: a patch changes only the parts it names."""


class OwnerIn(StrictSchema):
    full_name = Text(max_length=200, required=True, blank=False)
    email = Text(max_length=254, required=True, rules=(EMAIL,), metadata={"description": "The owner's sign-in e-mail"})
    password = NewPassword()


class AgencySignUpIn(StrictSchema):
    business_name = Text(max_length=200, required=True, blank=False)
    trade_licence_number = Text(max_length=64, required=True, rules=(TRADE_LICENCE,))
    trn = Text(max_length=24, required=True, rules=(TRN,),
               metadata={"description": "UAE tax registration number: 15 digits starting with 100"})
    address = fields.Nested(AgencyAddressIn, required=True)
    representative_name = Text(max_length=200, required=True, blank=False,
                               metadata={"description": "Authorised representative"})
    contact_email = Text(max_length=254, required=True, rules=(EMAIL,))
    contact_phone = Text(max_length=20, required=True, rules=(PHONE,), metadata={"description": _PHONE})
    owner = fields.Nested(OwnerIn, required=True, metadata={"description": "The owner's staff account"})


class AgencyQueryIn(StrictSchema):
    agency = Text(max_length=64, metadata=_AGENCY_PARAM)


class AgencyPatchIn(StrictSchema):
    OPENAPI = AT_LEAST_ONE_FIELD

    business_name = Text(max_length=200, blank=False, metadata={"description": "Only before verification"})
    trade_licence_number = Text(max_length=64, rules=(TRADE_LICENCE,),
                                metadata={"description": "Only before verification"})
    trn = Text(max_length=24, rules=(TRN,), metadata={"description": "Only before verification"})
    representative_name = Text(max_length=200, blank=False, metadata={"description": "Only before verification"})
    contact_email = Text(max_length=254, rules=(EMAIL,))
    contact_phone = Text(max_length=20, rules=(PHONE,), metadata={"description": _PHONE})
    address = fields.Nested(AgencyAddressPatchIn)
    turnaround_minutes = StrictInteger(validate=validate.Range(min=0, max=1440),
                                       metadata={"description": "Default gap between two rentals of one car"})

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Send at least one field to change.")


def _missing_documents(agency: Any) -> list[str]:
    return missing_documents(agency)


class AgencyAddressOut(OutSchema):
    line1 = fields.String(attribute="address_line1", required=True)
    city = fields.String(attribute="address_city", required=True)
    country = fields.String(attribute="address_country", required=True)


class AgencyOut(OutSchema):
    id = fields.String(attribute="public_id", required=True)
    business_name = fields.String(required=True)
    trade_licence_number = fields.String(required=True)
    trn = fields.String(required=True)
    address = fields.Function(lambda a: AgencyAddressOut().dump(a), required=True)
    representative_name = fields.String(required=True)
    contact_email = fields.String(required=True)
    contact_phone = fields.String(required=True)
    status = fields.String(required=True, metadata={
        "description": "pending_verification, active, rejected, suspended or terminated"})
    status_reason = fields.String(allow_none=True, required=True,
                                  metadata={"description": "Why it was rejected or suspended"})
    verified_at = fields.DateTime(allow_none=True, required=True)
    turnaround_minutes = fields.Integer(required=True)
    missing_documents = fields.Function(_missing_documents, required=True,
                                        metadata={"description": "Verification documents still to upload"})
    created_at = fields.DateTime(required=True)


class AgencyDocumentFormIn(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf([k.value for k in AgencyDocumentKind]))


class AgencyDocumentOut(OutSchema):
    id = fields.String(attribute="public_id", required=True)
    kind = fields.String(required=True)
    uploaded_at = fields.DateTime(required=True)


class AgencyDocumentListOut(OutSchema):
    status = fields.String(required=True)
    items = fields.List(fields.Nested(AgencyDocumentOut), required=True)
    missing = fields.List(fields.String(), required=True)


class StaffPageIn(PageArgsSchema):
    agency = Text(max_length=64, metadata=_AGENCY_PARAM)


class StaffMemberOut(OutSchema):
    id = fields.Function(lambda m: m.user.public_id, required=True)
    full_name = fields.Function(lambda m: m.user.full_name, required=True)
    email = fields.Function(lambda m: m.user.email, required=True)
    status = fields.Function(lambda m: m.user.status, required=True)
    roles = fields.List(fields.String(), required=True, metadata={"description": "Roles in this agency"})
    mfa_enrolled = fields.Function(lambda m: m.user.totp_enrolled_at is not None, required=True)


class StaffPageOut(OutSchema):
    items = fields.List(fields.Nested(StaffMemberOut), required=True)
    page = fields.Nested(PageInfoSchema, required=True)


class InvitationIn(StrictSchema):
    email = Text(max_length=254, required=True, rules=(EMAIL,))
    full_name = Text(max_length=200, required=True, blank=False)
    role = fields.String(required=True, validate=validate.OneOf(sorted(str(r) for r in AGENCY_ROLES)),
                         metadata={"description": "Only an owner may invite another owner"})


class InvitationOut(OutSchema):
    id = fields.String(attribute="public_id", required=True)
    email = fields.String(required=True)
    full_name = fields.String(required=True)
    role = fields.String(required=True)
    expires_at = fields.DateTime(required=True)
