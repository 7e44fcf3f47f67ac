"""Normalising an agency's business identity (TRN, trade licence), names and addresses; fixed limits."""

from __future__ import annotations

import re

from marketplace.agencies.models import Agency
from marketplace.agencies.states import AgencyDocumentKind
from marketplace.errors import Unprocessable
from marketplace.users import service as users

DOCUMENT_KINDS: tuple[str, ...] = tuple(k.value for k in AgencyDocumentKind)


IDENTITY_FIELDS = frozenset({"business_name", "trade_licence_number", "trn", "representative_name"})
_TRN = re.compile(r"^100[0-9]{12}$")  # UAE TRN: 15 ASCII digits starting with 100 (\d matches any script)
_TRADE_LICENCE = re.compile(r"^[A-Z0-9][A-Z0-9/\- ]{2,63}$")


def _invalid(field: str, message: str) -> Unprocessable:
    return Unprocessable(details={"fields": {field: [message]}})


def vault_owner(agency: Agency) -> str:
    """Agency documents are encrypted under the agency's own data key, not a person's."""
    return f"agency:{agency.public_id}"


def normalise_trn(raw: str) -> str:
    value = re.sub(r"[\s\-]", "", raw)
    if not _TRN.match(value):
        raise _invalid("trn", "A UAE TRN has 15 digits and starts with 100.")
    return value


def normalise_trade_licence(raw: str) -> str:
    value = " ".join(raw.split()).upper()
    if not _TRADE_LICENCE.match(value):
        raise _invalid("trade_licence_number", "3 to 64 letters, digits, spaces, dashes or slashes.")
    return value


def _email(raw: str, field: str) -> str:
    try:
        return users.normalise_email(raw)
    except Unprocessable as exc:
        raise _invalid(field, "Not a valid e-mail address.") from exc


def _name(raw: str, field: str = "name") -> str:
    value = " ".join(raw.split())
    if not value:
        raise _invalid(field, "Must not be blank.")
    return value
