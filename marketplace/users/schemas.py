"""Account schemas, split by direction: ``*In`` for requests, the rest for responses."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validates_schema

from marketplace.schemas import (
    AT_LEAST_ONE_FIELD,
    COUNTRY_CODE,
    EMAIL,
    PHONE,
    NewPassword,
    OutSchema,
    PageInfoSchema,
    Password,
    PatchSchema,
    StrictBoolean,
    StrictSchema,
    Text,
    documented,
)
from marketplace.users.consent_texts import CURRENT
from marketplace.users.models import ConsentKind

_PHONE = "International format, e.g. +971501234567 (spaces, dashes, dots and brackets are ignored; 00 for +)"
_BIRTH = ("A customer is 21 to 120 years old on today's date in Dubai (refused with `underage`, or "
          "`validation_error` for a date in the future or more than 120 years ago)")


def _current_version(kind: ConsentKind) -> Any:
    return documented(enum=[CURRENT[kind].version])


class AddressIn(StrictSchema):
    line1 = Text(max_length=200, required=True)
    line2 = Text(max_length=200, allow_none=True)
    city = Text(max_length=100, required=True)
    region = Text(max_length=100, allow_none=True)
    postal_code = Text(max_length=20, allow_none=True)
    country = fields.String(required=True, validate=COUNTRY_CODE)


class AddressPatchIn(PatchSchema, AddressIn):
    """Every field optional: a patch changes only the parts it names."""


class EmergencyContactIn(StrictSchema):
    name = Text(max_length=200, required=True)
    phone = Text(max_length=20, required=True, rules=(PHONE,), metadata={"description": _PHONE})


class RegisterIn(StrictSchema):
    full_name = Text(max_length=200, required=True, metadata={"description": "Full legal name, as on the ID"})
    date_of_birth = fields.Date(required=True, metadata={"description": _BIRTH})
    nationality = fields.String(required=True, validate=COUNTRY_CODE)
    email = Text(max_length=254, required=True, rules=(EMAIL,))
    phone = Text(max_length=20, required=True, rules=(PHONE,), metadata={"description": _PHONE})
    address = fields.Nested(AddressIn, required=True)
    password = NewPassword()
    accepted_terms_version = Text(max_length=32, required=True, rules=(_current_version(ConsentKind.TERMS),),
                                  metadata={"description": "The version of the terms shown (the current one)"})
    accepted_privacy_version = Text(max_length=32, required=True, rules=(_current_version(ConsentKind.PRIVACY),),
                                    metadata={"description": "The version of the privacy notice shown"})
    marketing_opt_in = StrictBoolean(load_default=False)
    device = Text(max_length=200, allow_none=True, metadata={"description": "Device description for consent records"})
    emergency_contact = fields.Nested(EmergencyContactIn, allow_none=True)


class LoginIn(StrictSchema):
    email = Text(max_length=254, required=True)
    password = Password()


class TokenOut(OutSchema):
    token_type = fields.String(required=True, dump_default="Bearer")
    access_token = fields.String(required=True)
    expires_in = fields.Integer(required=True, metadata={"description": "Seconds until the access token expires"})
    refresh_token = fields.String(required=True)
    refresh_expires_in = fields.Integer(required=True)
    mfa_required = fields.Boolean(
        required=True,
        metadata={"description": "Staff: the tokens only reach POST /auth/mfa until a TOTP code is given"},
    )


class RefreshIn(StrictSchema):
    refresh_token = Text(max_length=200, required=True)


class LogoutIn(StrictSchema):
    all_sessions = StrictBoolean(load_default=False)


class MfaIn(StrictSchema):
    code = Text(max_length=12, required=True)


class ReauthIn(StrictSchema):
    password = Password()
    code = Text(max_length=12, allow_none=True, metadata={"description": "Staff only: a TOTP code"})


EMAILED_CODE = ("The code from the e-mail, as printed in it (the e-mail's link carries it after `#code=`; the "
                "page it opens sends it here)")


class TokenIn(StrictSchema):
    token = Text(max_length=200, required=True, metadata={"description": EMAILED_CODE})


class ResetRequestIn(StrictSchema):
    email = Text(max_length=254, required=True)


class ResetConfirmIn(StrictSchema):
    token = Text(max_length=200, required=True, metadata={"description": EMAILED_CODE})
    new_password = NewPassword()


class PasswordChangeIn(StrictSchema):
    current_password = Password()
    new_password = NewPassword()


class AddressOut(OutSchema):
    line1 = fields.String(attribute="address_line1", allow_none=True)
    line2 = fields.String(attribute="address_line2", allow_none=True)
    city = fields.String(attribute="address_city", allow_none=True)
    region = fields.String(attribute="address_region", allow_none=True)
    postal_code = fields.String(attribute="address_postal_code", allow_none=True)
    country = fields.String(attribute="address_country", allow_none=True)


class EmergencyContactOut(OutSchema):
    name = fields.String(attribute="emergency_contact_name", allow_none=True)
    phone = fields.String(attribute="emergency_contact_phone", allow_none=True)


_ADDRESS_OUT = AddressOut()
_EMERGENCY_CONTACT_OUT = EmergencyContactOut()


class MeOut(OutSchema):
    id = fields.String(attribute="public_id", required=True)
    account_type = fields.String(required=True)
    status = fields.String(required=True)
    email = fields.String(required=True)
    pending_email = fields.String(allow_none=True)
    phone = fields.String(allow_none=True)
    full_name = fields.String(required=True)
    date_of_birth = fields.Date(allow_none=True)
    nationality = fields.String(allow_none=True)
    # one instance each: building a schema per dump deep-copies its fields (a third of /me's own time)
    address = fields.Function(lambda u: _ADDRESS_OUT.dump(u))  # noqa: PLW0108 - Function passes context to 2-arg callables
    emergency_contact = fields.Function(lambda u: _EMERGENCY_CONTACT_OUT.dump(u))  # noqa: PLW0108
    roles = fields.Function(lambda u: sorted(str(r) for r in u.role_set()))
    mfa_enrolled = fields.Function(lambda u: u.totp_enrolled_at is not None)
    created_at = fields.DateTime(required=True)


class MePatchIn(StrictSchema):
    OPENAPI = AT_LEAST_ONE_FIELD

    full_name = Text(max_length=200)
    date_of_birth = fields.Date(metadata={"description": _BIRTH})
    nationality = fields.String(validate=COUNTRY_CODE)
    email = Text(max_length=254, rules=(EMAIL,),
                 metadata={"description": "Needs a recent sign-in; confirmed by e-mail first"})
    phone = Text(max_length=20, rules=(PHONE,), metadata={"description": "Needs a recent sign-in. " + _PHONE})
    address = fields.Nested(AddressPatchIn)
    emergency_contact = fields.Nested(EmergencyContactIn, allow_none=True)

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Send at least one field to change.")


class ConsentIn(StrictSchema):
    kind = fields.Enum(ConsentKind, by_value=True, required=True)
    text_version = Text(max_length=32, required=True)
    device = Text(max_length=200, allow_none=True)


class ConsentOut(OutSchema):
    id = fields.String(attribute="public_id", required=True)
    kind = fields.String(required=True)
    text_version = fields.String(required=True)
    text_sha256 = fields.String(required=True)
    granted_at = fields.DateTime(required=True)
    withdrawn_at = fields.DateTime(allow_none=True)
    active = fields.Function(lambda c: c.withdrawn_at is None)


class ConsentListOut(OutSchema):
    items = fields.List(fields.Nested(ConsentOut), required=True)


class ConsentKindPath(StrictSchema):
    kind = fields.Enum(ConsentKind, by_value=True, required=True)


class ConsentTextOut(OutSchema):
    kind = fields.String(required=True)
    version = fields.String(required=True)
    title = fields.String(required=True)
    text = fields.String(required=True)
    sha256 = fields.String(required=True)
    required_for = fields.String(required=True)


class ConsentTextListOut(OutSchema):
    items = fields.List(fields.Nested(ConsentTextOut), required=True)


class PreferencesOut(OutSchema):
    email = fields.Boolean(required=True)
    in_app = fields.Boolean(required=True)
    marketing = fields.Boolean(required=True)


class PreferencesIn(StrictSchema):
    OPENAPI = AT_LEAST_ONE_FIELD

    email = StrictBoolean()
    in_app = StrictBoolean()
    marketing = StrictBoolean()

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Send at least one preference to change.")


class NotificationOut(OutSchema):
    id = fields.String(attribute="public_id", required=True)
    kind = fields.String(required=True)
    title = fields.String(attribute="subject", required=True)
    body = fields.String(attribute="body_text", required=True)
    created_at = fields.DateTime(required=True)
    read_at = fields.DateTime(allow_none=True)


class NotificationPageOut(OutSchema):
    items = fields.List(fields.Nested(NotificationOut), required=True)
    page = fields.Nested(PageInfoSchema, required=True)


class NotificationPath(StrictSchema):
    notification_id = fields.UUID(required=True)
