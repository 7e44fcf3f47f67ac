"""Schema building blocks: strict types, unknown fields refused, one error schema, cursor pages."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from flask import current_app
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from marketplace.errors import Unprocessable

T = TypeVar("T")


class StrictSchema(Schema):
    """Every input schema: unknown fields are an error (no mass assignment)."""

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


def Text(*, max_length: int, min_length: int = 1, **kwargs: Any) -> fields.String:  # noqa: N802
    """A trimmed, length-limited string (no control characters)."""
    validators: list[Callable[[Any], Any]] = [validate.Length(min=min_length, max=max_length), _no_control_chars]
    return fields.String(validate=validators, **kwargs)


def _no_control_chars(value: str) -> None:
    if any(ord(ch) < 32 and ch not in "\t" for ch in value) or "\x7f" in value:
        raise ValidationError("Control characters are not allowed.")


COUNTRY_CODE = validate.Regexp(r"^[A-Za-z]{2}$", error="Use a two-letter ISO 3166-1 country code.")


def Password() -> fields.String:  # noqa: N802 - reads like the other field factories
    """A password in a request: never dumped; the policy itself is checked by the service."""
    return fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=256))


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


class PageArgsSchema(StrictSchema):
    cursor = fields.String(load_default=None, validate=validate.Length(max=200))
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
