"""Schema building blocks: strict types, unknown fields refused, one error schema, cursor pages."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from email_validator import SPECIAL_USE_DOMAIN_NAMES  # what users.service.normalise_email refuses
from flask import current_app
from flask_smorest.fields import Upload
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from marketplace.errors import Unprocessable

T = TypeVar("T")


class StrictSchema(Schema):
    """Every input schema: unknown fields are an error (no mass assignment).

    ``OPENAPI`` holds JSON Schema keywords for the whole object (``minProperties`` for "send at least one
    field"); ``marketplace.api`` writes them into the document.
    """

    OPENAPI: ClassVar[dict[str, Any]] = {}

    class Meta:
        unknown = RAISE


class OutSchema(Schema):
    """Response schemas: only the declared fields ever leave (allow-list)."""

    class Meta:
        unknown = RAISE
        ordered = True


class StrictBoolean(fields.Boolean):
    """JSON true/false only: no "yes", no 1."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class StrictInteger(fields.Integer):
    """JSON integers only: no true/false (Python's bool is an int), no 1.0, no "7"."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("strict", True)
        super().__init__(**kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class QueryInteger(fields.Integer):
    """Integers in a query string arrive as text; only plain digits are accepted."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or not value.lstrip("-").isdigit() or len(value) > 12:
            raise self.make_error("invalid", input=value)
        return int(value)


class Documented:
    """A validator that also states its rule in the OpenAPI document as JSON Schema keywords.

    ``keywords`` is a dict, or a function returning one (for a bound that moves, such as next year).
    ``check`` is the rule itself; without it the validator only documents a rule a service enforces.
    A ``weak`` one's keywords yield to the same keywords from elsewhere (the stricter pattern wins).
    """

    def __init__(self, keywords: dict[str, Any] | Callable[[], dict[str, Any]],
                 check: Callable[[Any], Any] | None = None, *, weak: bool = False) -> None:
        self._keywords = keywords
        self._check = check
        self.weak = weak

    @property
    def openapi(self) -> dict[str, Any]:
        return dict(self._keywords() if callable(self._keywords) else self._keywords)

    def __call__(self, value: Any) -> Any:
        if self._check is not None:
            self._check(value)
        return value


# no C0 control character but the tab, no DEL (JSON Schema has no "not" for characters, so a class)
NO_CONTROL_CHARS = r"^[^\x00-\x08\x0a-\x1f\x7f]*$"
# ... and something other than white space (names the services refuse when blank)
NOT_BLANK = r"^[^\x00-\x08\x0a-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x08\x0a-\x1f\x7f]*$"


def Text(  # noqa: N802
    *, max_length: int, min_length: int = 1, blank: bool = True, rules: tuple[Documented, ...] = (), **kwargs: Any,
) -> fields.String:
    """A length-limited string without control characters; ``blank=False``: not only white space (the
    services refuse blank names); ``rules``: what a service also checks (``PHONE``, ``EMAIL``)."""
    validators: list[Callable[[Any], Any]] = [
        validate.Length(min=min_length, max=max_length),
        Documented({"pattern": NO_CONTROL_CHARS if blank else NOT_BLANK}, _no_control_chars, weak=True),
        *rules,
    ]
    return fields.String(validate=validators, **kwargs)


def _no_control_chars(value: str) -> None:
    if any(ord(ch) < 32 and ch not in "\t" for ch in value) or "\x7f" in value:
        raise ValidationError("Control characters are not allowed.")


def documented(**keywords: Any) -> Documented:
    """JSON Schema keywords for a rule a service checks (``pattern``, ``format``, ``enum`` ...)."""
    return Documented(keywords)


# a phone number as the services store it; they also accept spaces, dashes, dots and brackets, and 00 for +
PHONE = documented(pattern=r"^\+[1-9][0-9]{7,14}$")


def _special_use_domains() -> str:
    return "|".join("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in name)
                    for name in SPECIAL_USE_DOMAIN_NAMES)


# an address users.service.normalise_email accepts: not on a special-use domain (.test, .local, .onion ...)
EMAIL = documented(format="email", pattern=rf"^[^@]+@(?!([^@]*\.)?({_special_use_domains()})$)[^@]+$")


COUNTRY_CODE = validate.Regexp(r"^[A-Za-z]{2}$", error="Use a two-letter ISO 3166-1 country code.")


def Password() -> fields.String:  # noqa: N802 - reads like the other field factories
    """A password in a request: never dumped; the policy itself is checked by the service."""
    return fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=256))


NEW_PASSWORD_LENGTH = (12, 128)  # users.passwords' MIN_LENGTH and MAX_LENGTH (a test keeps them equal)


def NewPassword() -> fields.String:  # noqa: N802
    """A password being chosen: the policy's length here, the rest in the description (users' service checks)."""
    low, high = NEW_PASSWORD_LENGTH
    # the service refuses a wrong length too, with the policy's own code (`weak_password`), so here it is stated only
    return fields.String(required=True, load_only=True,
                         validate=[validate.Length(min=1, max=256), documented(minLength=low, maxLength=high)],
                         metadata={"description": POLICY_TEXT})


POLICY_TEXT = (
    "12 to 128 characters, at least 5 different ones, not a commonly used password, and not containing your "
    "e-mail address or a part of your name (refused with `weak_password`)")


AT_LEAST_ONE_FIELD: dict[str, Any] = {"minProperties": 1}  # a ``StrictSchema.OPENAPI`` for "send something"


class ImageUpload(Upload):
    """An image part of a multipart body. ``marketplace.api`` states its content types (the part's
    ``encoding``) and ``marketplace.images``' limits in the document; the image pipeline checks them."""

    CONTENT_TYPES: ClassVar[tuple[str, ...]] = ("image/jpeg", "image/png", "image/webp")

    def __init__(self, *, description: str = "", **kwargs: Any) -> None:
        from marketplace.images import MIB, ImagePolicy  # noqa: PLC0415 - images imports schemas' siblings at load

        policy = ImagePolicy()
        limits = (f"JPEG, PNG or WebP (the part's Content-Type must match the bytes), at most "
                  f"{policy.max_bytes // MIB} MiB, {policy.max_pixels // 1_000_000} megapixels and "
                  f"{policy.max_side:,} px a side; metadata is removed and the pixels re-encoded as JPEG")
        kwargs["metadata"] = {"description": f"{limits}. {description}".strip(), **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not hasattr(value, "stream"):  # a plain form field under a file part's name
            raise ValidationError("Send a file part.")
        return value


class PatchSchema(StrictSchema):
    """Every field optional: a patch changes only the parts it names (marshmallow has no ``Meta.partial``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("partial", True)
        super().__init__(**kwargs)


class ErrorDetailSchema(Schema):
    code = fields.String(required=True, metadata={"description": "Stable machine-readable error code"})
    message = fields.String(required=True, metadata={"description": "Human-readable, may change"})
    details = fields.Dict(required=True)
    request_id = fields.String(allow_none=True)


class ErrorSchema(Schema):
    error = fields.Nested(ErrorDetailSchema, required=True)


class StatusSchema(OutSchema):
    status = fields.String(required=True)
    message = fields.String()


# ---- cursor pagination ---------------------------------------------------------------------------

MAX_PAGE = 100


CURSOR = ("Opaque: the `next_cursor` of the previous page of the same list; any other value is refused "
          "(`validation_error` naming `cursor`)")


class PageArgsSchema(StrictSchema):
    cursor = fields.String(load_default=None, validate=validate.Length(max=200), metadata={"description": CURSOR})
    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=MAX_PAGE))


class PageInfoSchema(OutSchema):
    next_cursor = fields.String(allow_none=True, required=True)


def _sign(payload: bytes) -> str:
    key = hashlib.sha256(b"cursor:" + current_app.config["SECRET_KEY"].encode()).digest()
    return hmac.new(key, payload, "sha256").hexdigest()[:24]


def encode_cursor(scope: str, value: Any) -> str:
    payload = json.dumps([scope, value], separators=(",", ":")).encode()
    body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    return f"{body}.{_sign(payload)}"


def decode_cursor(scope: str, cursor: str | None) -> Any:
    """The value inside a cursor we issued for this list; a forged or foreign cursor is a 422."""
    if cursor is None:
        return None
    body, _, signature = cursor.partition(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = json.loads(payload)
    except (ValueError, TypeError) as exc:
        raise Unprocessable(details={"fields": {"cursor": ["Invalid cursor."]}}) from exc
    if (
        not hmac.compare_digest(signature, _sign(payload))
        or not isinstance(data, list)
        or len(data) != 2
        or data[0] != scope
    ):
        raise Unprocessable(details={"fields": {"cursor": ["Invalid cursor."]}})
    return data[1]


def decode_id_cursor(scope: str, cursor: str | None) -> int | None:
    """The row id inside a keyset cursor we issued for this list (``None`` for the first page)."""
    after = decode_cursor(scope, cursor)
    if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
        raise Unprocessable(details={"fields": {"cursor": ["Invalid cursor."]}})
    return after if after is None else int(after)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a keyset-paginated list: its items and the cursor of the next page (``None`` on the last)."""

    items: list[T]
    next_cursor: str | None

    def out(self, render: Callable[[T], Any] | None = None) -> dict[str, Any]:
        """The page as every list answer has it: ``{"items": [...], "page": {"next_cursor": ...}}``."""
        items = [render(item) for item in self.items] if render is not None else self.items
        return {"items": items, "page": {"next_cursor": self.next_cursor}}


def _row_id(row: Any) -> Any:
    return row.id


def paginate(scope: str, limit: int, fetch: Callable[[int], Sequence[T]],
             key: Callable[[T], Any] = _row_id) -> Page[T]:
    """The one pagination slice: ``fetch(limit + 1)`` asks for one row more than the page shows, so a next page
    exists exactly when that row came back; the next cursor (signed, bound to ``scope``) carries ``key`` of the
    page's last item (its id unless said otherwise)."""
    rows = fetch(limit + 1)
    items = list(rows[:limit])
    more = len(rows) > limit
    return Page(items, encode_cursor(scope, key(items[-1])) if more and items else None)
