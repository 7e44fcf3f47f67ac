"""Web helpers every front door shares: the strict JSON loader, the one multipart parser, image responses.

Kernel: this module imports no area. The JSON API's blueprints parse with ``StrictParser``; upload routes
declare their body with ``upload_arguments`` (the only way a route reads ``multipart/form-data``), so every
upload refuses the same things with the same codes.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable
from decimal import Decimal
from itertools import accumulate
from typing import IO, Any

from flask import Request, Response, current_app, request
from flask.json.provider import DefaultJSONProvider
from flask_smorest.fields import Upload
from marshmallow import RAISE, Schema, fields
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.datastructures import CombinedMultiDict, MultiDict

from marketplace.errors import AppError, JsonTooDeep, MalformedJson, Unprocessable
from marketplace.schemas import ImageUpload, StrictSchema

# ---- JSON bodies -----------------------------------------------------------------------------------------

# No request body of this API nests more than a few levels; past this, a body is refused before it is
# parsed (the C decoder recurses per level and raises RecursionError near 1,000, which is no ValueError)
MAX_JSON_DEPTH = 32

_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = {ord("["): 1, ord("]"): -1}
_CHUNK = 1 << 16


class JsonDepthError(ValueError):
    """The body nests arrays and objects deeper than ``MAX_JSON_DEPTH`` (a ``ValueError``, so Werkzeug's
    ``get_json(silent=True)`` answers ``None`` like for any other bad body)."""


def _utf8(data: str | bytes) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    encoding = json.detect_encoding(data)  # as json.loads does: UTF-8, or UTF-16/32 by their byte pattern
    if encoding in ("utf-8", "utf-8-sig"):
        return data
    return data.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")


def json_too_deep(data: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON text nests deeper than ``limit``, found without parsing it (C-speed byte operations).

    Brackets inside strings do not count. For a well-formed text the answer is exact; for a malformed one
    it may say "too deep" where the decoder would stop earlier, which refuses it either way.
    """
    raw = _utf8(data)
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    # drop escaped backslashes, then escaped quotes; what remains between quotes is string content
    outside = b"".join(raw.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = outside.translate(_BRACKETS, _NOT_BRACKETS)
    rounds = 2  # wide, shallow documents (lists of small objects) collapse in a round or two
    for _ in range(rounds):
        brackets = brackets.replace(b"[]", b"")  # lowers every closed peak by exactly one level
    depth = 0
    for start in range(0, len(brackets), _CHUNK):
        steps = list(accumulate(map(_STEP.__getitem__, brackets[start:start + _CHUNK]), initial=depth))
        if max(steps) > limit - rounds:
            return True
        depth = steps[-1]
    return False


def _no_constants(name: str) -> Any:
    """``NaN`` and ``Infinity`` are Python extensions, not JSON (RFC 8259)."""
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def loads_json(data: str | bytes, **kwargs: Any) -> Any:
    """The one JSON loader for request bodies: no duplicate keys, no ``NaN``, no excessive depth.

    Every failure is a ``ValueError`` (``JsonDepthError`` for depth); nothing else escapes.
    """
    if json_too_deep(data):
        raise JsonDepthError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    kwargs.setdefault("object_pairs_hook", _no_duplicates)
    kwargs.setdefault("parse_constant", _no_constants)
    try:
        return json.loads(data, **kwargs)
    except RecursionError as exc:  # a deep call stack left less room than the limit above assumes
        raise JsonDepthError("nested too deeply") from exc


def json_error(exc: ValueError | None) -> MalformedJson:
    """The API error for a body the loader refused."""
    return JsonTooDeep() if isinstance(exc, JsonDepthError) else MalformedJson()


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with the strict loader (``request.get_json``, ``current_app.json.loads``)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads_json(s, **kwargs)


class StrictRequest(Request):
    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        raise json_error(e)

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        """Uploads stay in memory (bounded by MAX_CONTENT_LENGTH): plaintext images never touch disk."""
        return io.BytesIO()


# ---- the API's argument parser (JSON, query, multipart) ------------------------------------------------


def _named(parts: MultiDict[Any, Any]) -> MultiDict[str, Any]:
    """A part without a name (Werkzeug keys it ``None``) becomes the field ``""``: an unknown field like any
    other, so the schema refuses it with ``unknown_field`` and no handler meets a ``None`` key."""
    return MultiDict([(key if isinstance(key, str) else "", value) for key, value in parts.items(multi=True)])


class StrictParser(FlaskParser):
    """Unknown query parameters are refused like unknown body fields; bad JSON gets ``malformed_json``."""

    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": RAISE, "querystring": RAISE,
                                   "multipart": RAISE}
    __location_map__ = {**FlaskParser.__location_map__, "multipart": "load_multipart"}

    def load_multipart(self, req: Any, schema: Any) -> Any:
        """The one multipart parser: form fields and files of one multipart/form-data body, read by one schema.

        Two ``arguments`` (``form`` and ``files``) would parse, but OpenAPI 3 has one request body, so
        flask-smorest documents the second as an invalid ``in: formData`` parameter; and ``files`` alone
        would never see (so never refuse) an extra form field.
        """
        return self._makeproxy(CombinedMultiDict([_named(req.form), _named(req.files)]), schema)

    def _raw_load_json(self, req: Any) -> Any:
        if not (req.mimetype == "application/json" or req.mimetype.endswith("+json")):
            return core.missing
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        try:
            return loads_json(data)
        except ValueError as exc:  # bad syntax, bad encoding, duplicate keys, too deep
            raise json_error(exc) from exc

    def _handle_invalid_json_error(self, error: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
        raise MalformedJson()


# ---- uploads ---------------------------------------------------------------------------------------------


class ImageFileIn(StrictSchema):
    image = ImageUpload(required=True)


def multipart(view: Any) -> Any:
    """Mark a view as taking ``multipart/form-data`` (``security.check_content_type`` answers 415 otherwise)."""
    view._accepts_multipart = True
    return view


def upload_arguments(blueprint: Any, schema: Any, **kwargs: Any) -> Callable[[Any], Any]:
    """Declare an upload route's body: one multipart/form-data schema, read by the one multipart parser.

    Unknown fields and parts without a name are refused with 422 ``unknown_field``, on every upload route.
    """
    parse = blueprint.arguments(schema, location="multipart", **kwargs)

    def decorator(view: Any) -> Any:
        return parse(multipart(view))

    return decorator


class ImageFormIn(StrictSchema):
    """A staff page's upload form: its CSRF token (the gate checks it) and the image (the page asks for it)."""

    csrf_token = fields.String(load_default="")
    image = Upload(load_default=None)


_FORM_PARSER = StrictParser()


def read_upload_form(schema: Schema) -> dict[str, Any]:
    """A web page's upload form, read by the one multipart parser.

    Unknown fields and parts without a name are refused as on the API's upload routes: 422
    ``unknown_field`` (the staff pages show it on the error page).
    """
    parsed: dict[str, Any] = _FORM_PARSER.parse(schema, location="multipart")
    return parsed


_AED = re.compile(r"[0-9]{1,9}(\.[0-9]{1,2})?")
_AED_TOO_PRECISE = re.compile(r"[0-9]{1,9}\.[0-9]{3,}")


def aed_to_fils(raw: str, *, low: int, high: int, field: str = "amount", what: str = "amount") -> int:
    """An amount a staff page's form typed in AED (``157.50``: digits, at most two decimals) as fils, between
    ``low`` and ``high`` fils; anything else is a 422 naming ``field``."""
    text = raw.strip().replace(",", "")[:20]

    def invalid(message: str) -> Unprocessable:
        return Unprocessable(details={"fields": {field: [message]}})

    if not _AED.fullmatch(text):
        if _AED_TOO_PRECISE.fullmatch(text):
            raise invalid(f"Give the {what} in AED with at most two decimals, for example 157.50.")
        raise invalid(f"Give the {what} in AED, for example 157.50.")
    fils = int(Decimal(text) * 100)
    if not low <= fils <= high:
        raise invalid(f"The {what} must be between AED {low / 100:,.2f} and AED {high / 100:,.2f}.")
    return fils


def error_text(exc: AppError) -> str:
    """One line for a staff page: the error's message and the fields it names (``details.fields``, or a
    service's bare ``{"field": [...]}``)."""
    details = exc.details if isinstance(exc.details, dict) else {}
    named = details.get("fields", details)
    parts = [f"{k}: {', '.join(map(str, v))}" for k, v in named.items() if isinstance(v, list)] \
        if isinstance(named, dict) else []
    return " ".join([exc.text, "; ".join(parts)]).strip()


def image_response(data: bytes, mime: str) -> Response:
    """An image for one viewer: never cached, never sniffed, never run as a document."""
    response = Response(data, mimetype=mime)
    response.headers["Cache-Control"] = "no-store, max-age=0"
    response.headers["Pragma"] = "no-cache"
    response.headers["Content-Disposition"] = 'inline; filename="image.jpg"'
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def configured_limit(name: str) -> Callable[[], str]:
    """A rate limit read from the settings when the request comes (``limits[name]``)."""
    return lambda: current_app.config["SETTINGS"].limits[name]


def upload_limit() -> str:
    return str(current_app.config["SETTINGS"].limits.get("upload_session", "20 per minute"))


def upload_key() -> str:
    """Uploads are limited per session: a hash of the bearer token, never the token."""
    token = request.headers.get("Authorization", "")
    return "upload:" + hashlib.sha256(token.encode()).hexdigest()[:24]
