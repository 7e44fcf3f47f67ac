"""One error shape for every failure: ``{"error": {"code", "message", "details", "request_id"}}``.

Services raise ``AppError`` subclasses with stable codes; clients and tests branch on ``code``,
never on the English message. Each area adds its own subclasses next to its code.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from flask import Flask, Response, g, jsonify, render_template, request
from marshmallow import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class AppError(Exception):
    """An expected failure with an HTTP status and a stable machine-readable code."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    message: ClassVar[str] = "The request could not be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.text = message or self.message
        self.details = details or {}
        self.headers = headers or {}


class BadRequest(AppError):
    status = 400
    code = "bad_request"


class MalformedJson(AppError):
    status = 400
    code = "malformed_json"
    message = "The request body is not valid JSON."


class JsonTooDeep(MalformedJson):
    """Arrays and objects nested deeper than any request of this API needs (``webhelpers.MAX_JSON_DEPTH``)."""

    code = "json_too_deep"
    message = "The request body nests arrays or objects too deeply."


class Unauthenticated(AppError):
    status = 401
    code = "unauthenticated"
    message = "Sign-in is required, or the credentials are invalid or expired."


class ReauthRequired(AppError):
    status = 401
    code = "reauth_required"
    message = "This action needs a fresh sign-in."


class MfaInvalid(AppError):
    status = 401
    code = "mfa_invalid"
    message = "The one-time code is wrong, expired or already used."


class Forbidden(AppError):
    status = 403
    code = "forbidden"
    message = "You are not allowed to do this."


class MfaRequired(AppError):
    status = 403
    code = "mfa_required"
    message = "Multi-factor authentication must be completed first."


class CsrfFailed(AppError):
    status = 403
    code = "csrf_failed"
    message = "The form has expired or did not come from this site. Reload the page and try again."


class NotFound(AppError):
    status = 404
    code = "not_found"
    message = "Not found."


class MethodNotAllowed(AppError):
    status = 405
    code = "method_not_allowed"
    message = "This method is not allowed on this resource."


class Conflict(AppError):
    status = 409
    code = "conflict"
    message = "The request conflicts with the current state."


class Gone(AppError):
    status = 410
    code = "gone"
    message = "This link has expired or was already used."


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"
    message = "The request body is too large."


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"
    message = "This content type is not accepted here."


class Unprocessable(AppError):
    status = 422
    code = "validation_error"
    message = "The request contains invalid data."


class RateLimited(AppError):
    status = 429
    code = "rate_limited"
    message = "Too many attempts. Try again later."


class ServiceUnavailable(AppError):
    status = 503
    code = "service_unavailable"
    message = "The service is temporarily unavailable. Try again shortly."


_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request could not be understood."),
    401: ("unauthenticated", Unauthenticated.message),
    403: ("forbidden", Forbidden.message),
    404: ("not_found", NotFound.message),
    405: ("method_not_allowed", MethodNotAllowed.message),
    406: ("not_acceptable", "No acceptable representation is available."),
    409: ("conflict", Conflict.message),
    413: ("payload_too_large", PayloadTooLarge.message),
    415: ("unsupported_media_type", UnsupportedMediaType.message),
    422: ("validation_error", Unprocessable.message),
    429: ("rate_limited", RateLimited.message),
    503: ("service_unavailable", ServiceUnavailable.message),
}


def request_id() -> str | None:
    value = getattr(g, "request_id", None)
    return value if isinstance(value, str) else None


# ---- making any value safe to answer with --------------------------------------------------------------
# Error details are built from what a client sent (field names, marshmallow messages), so they may hold
# anything: ``None`` or numbers as keys, bytes, nested containers, huge strings. They are answered only
# as JSON-safe values of bounded size.

_MAX_TEXT = 1000
_MAX_KEY = 200
_MAX_ITEMS = 100
_MAX_NESTING = 8
_MAX_INT = 2**63


def _text(value: Any, limit: int = _MAX_TEXT) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value[: limit * 4]).decode("utf-8", "replace")
    else:
        try:
            text = str(value)
        except Exception:  # a value whose __str__ fails is still answered
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def field_name(key: Any) -> str:
    """A field name as it is answered: a part or key without a name is ``""``."""
    return "" if key is None else _text(key, _MAX_KEY)


def json_safe(value: Any, depth: int = 0) -> Any:  # noqa: PLR0911 - one return per kind of value
    """``value`` as plain JSON (str keys, bounded strings, containers and nesting), never raising."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_MAX_INT < value < _MAX_INT else "<large number>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str | bytes | bytearray | memoryview):
        return _text(value)
    if depth >= _MAX_NESTING:
        return "..."
    if isinstance(value, Mapping):
        return {field_name(k): json_safe(v, depth + 1) for k, v in itertools.islice(value.items(), _MAX_ITEMS)}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in itertools.islice(value, _MAX_ITEMS)]
    return _text(value)


def _safe_headers(headers: Any) -> dict[str, str]:
    if not isinstance(headers, Mapping):
        return {}
    return {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)
            and not any(c in k + v for c in "\r\n\0") and k.isascii() and len(k + v) < 4096}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    safe_details = json_safe(details) if details else {}
    return {
        "error": {
            "code": _text(code, 64),
            "message": _text(message),
            "details": safe_details if isinstance(safe_details, dict) else {"_schema": safe_details},
            "request_id": request_id(),
        }
    }


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    if _wants_html():
        html = render_template("error.html", status=status, code=_text(code, 64), message=_text(message))
        response = Response(html, status=status, mimetype="text/html")
    else:
        response = jsonify(error_body(code, message, details))
        response.status_code = status
    for key, value in _safe_headers(headers).items():
        response.headers[key] = value
    return response


def fallback_response(status: Any = 500) -> Response:
    """The answer when building an error response failed: fixed words, no details, plain JSON."""
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        status = 500
    code, message = _HTTP_CODES.get(status, ("internal_error", "Something went wrong on our side."))
    try:
        rid = request_id()
    except Exception:  # outside a request there is no id to name
        rid = None
    body: dict[str, Any] = {"error": {"code": code, "message": message, "details": {}, "request_id": rid}}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _wants_html() -> bool:
    """Staff web pages get an HTML error page; everything else gets the JSON shape."""
    path = request.path
    return path.startswith(("/console", "/agency")) and not path.startswith("/api/")


_LOCATIONS = {"json", "query", "querystring", "form", "files", "multipart", "headers"}


def _unknown_paths(path: str, errors: Any, depth: int = 0) -> list[str]:
    """Dotted paths of unknown fields, nested objects included (``address.price``)."""
    if isinstance(errors, list | str) and errors in (["Unknown field."], "Unknown field."):
        return [path]
    if isinstance(errors, Mapping) and depth < _MAX_NESTING:
        return [p for key, value in errors.items()
                for p in _unknown_paths(f"{path}.{field_name(key)}", value, depth + 1)]
    return []


def validation_details(messages: Any) -> tuple[str, dict[str, Any]]:
    """Split marshmallow messages into a code (unknown_field wins) and field details."""
    if not isinstance(messages, Mapping):
        return "validation_error", {"_schema": messages}
    flat: dict[str, Any] = {}
    unknown: set[str] = set()
    # webargs nests messages under the location ("json", "query", "form", "files")
    for key, value in messages.items():
        inner = value if isinstance(key, str) and key in _LOCATIONS else {key: value}
        if not isinstance(inner, Mapping):
            flat[field_name(key)] = value
            continue
        for field, errors in inner.items():
            name = field_name(field)
            flat[name] = errors
            unknown.update(_unknown_paths(name, errors))
    if unknown:
        return "unknown_field", {"fields": flat, "unknown": sorted(unknown)}
    return "validation_error", {"fields": flat}


_Handler = TypeVar("_Handler", bound=Callable[[Any], Response])


def _never_fails(handler: _Handler) -> _Handler:
    """An error handler that fails answers ``fallback_response`` (with the status it meant), never a crash."""

    @functools.wraps(handler)
    def safe(exc: Any) -> Response:
        try:
            return handler(exc)
        except Exception:  # the last line of defence; logged with the request id
            log.exception("error handler failed", extra={"request_id": request_id()})
            status = exc.status if isinstance(exc, AppError) else getattr(exc, "code", None)
            return fallback_response(422 if isinstance(exc, ValidationError) else status)

    return safe  # type: ignore[return-value]


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AppError)
    @_never_fails
    def _app_error(exc: AppError) -> Response:
        return error_response(exc.status, exc.code, exc.text, exc.details, exc.headers)

    @app.errorhandler(ValidationError)
    @_never_fails
    def _validation_error(exc: ValidationError) -> Response:
        code, details = validation_details(exc.messages)
        return error_response(422, code, Unprocessable.message, details)

    @app.errorhandler(HTTPException)
    @_never_fails
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code if isinstance(exc.code, int) and 400 <= exc.code <= 599 else 500
        # flask-smorest/webargs attach the marshmallow messages to a 422
        data = getattr(exc, "data", None) or {}
        messages = data.get("messages") if isinstance(data, Mapping) else None
        if status == 422 and messages is not None:
            code, details = validation_details(messages)
            return error_response(422, code, Unprocessable.message, details)
        if status == 429:
            retry = exc.get_response().headers.get("Retry-After") if hasattr(exc, "get_response") else None
            headers = {"Retry-After": retry} if retry else {}
            return error_response(429, "rate_limited", RateLimited.message, headers=headers)
        code, message = _HTTP_CODES.get(status, ("http_error", _text(exc.description or "HTTP error")))
        headers = {}
        if status == 405 and exc.get_response().headers.get("Allow"):
            headers["Allow"] = exc.get_response().headers["Allow"]
        return error_response(status, code, message, headers=headers)

    @app.errorhandler(Exception)
    @_never_fails
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            log.warning("database connection lost", extra={"request_id": request_id()})
            return error_response(503, ServiceUnavailable.code, ServiceUnavailable.message)
        if isinstance(exc, DBAPIError) and _is_operational(exc):
            log.warning("database unavailable", extra={"request_id": request_id()})
            return error_response(503, ServiceUnavailable.code, ServiceUnavailable.message)
        log.exception("unhandled error", extra={"request_id": request_id()})
        return error_response(500, "internal_error", "Something went wrong on our side. It has been logged.")


def _is_operational(exc: Exception) -> bool:
    return isinstance(exc, OperationalError)
