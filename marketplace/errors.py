"""One error shape for every failure: ``{"error": {"code", "message", "details", "request_id"}}``.

Services raise ``AppError`` subclasses with stable codes; clients and tests branch on ``code``,
never on the English message. Each area adds its own subclasses next to its code.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

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
    return getattr(g, "request_id", None)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details or {},
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
        html = render_template("error.html", status=status, code=code, message=message)
        response = Response(html, status=status, mimetype="text/html")
    else:
        response = jsonify(error_body(code, message, details))
        response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _wants_html() -> bool:
    """Staff web pages get an HTML error page; everything else gets the JSON shape."""
    path = request.path
    return path.startswith(("/console", "/agency")) and not path.startswith("/api/")


_LOCATIONS = {"json", "query", "querystring", "form", "files", "multipart", "headers"}


def _unknown_paths(path: str, errors: Any) -> list[str]:
    """Dotted paths of unknown fields, nested objects included (``address.price``)."""
    if errors in (["Unknown field."], "Unknown field."):
        return [path]
    if isinstance(errors, dict):
        return [p for key, value in errors.items() for p in _unknown_paths(f"{path}.{key}", value)]
    return []


def validation_details(messages: Any) -> tuple[str, dict[str, Any]]:
    """Split marshmallow messages into a code (unknown_field wins) and field details."""
    if not isinstance(messages, dict):
        return "validation_error", {"_schema": messages}
    flat: dict[str, Any] = {}
    unknown: list[str] = []
    # webargs nests messages under the location ("json", "query", "form", "files")
    for key, value in messages.items():
        inner = value if key in _LOCATIONS else {key: value}
        if not isinstance(inner, dict):
            flat[key] = value
            continue
        for field, errors in inner.items():
            flat[field] = errors
            unknown += _unknown_paths(field, errors)
    if unknown:
        return "unknown_field", {"fields": flat, "unknown": sorted(unknown)}
    return "validation_error", {"fields": flat}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AppError)
    def _app_error(exc: AppError) -> Response:
        return error_response(exc.status, exc.code, exc.text, exc.details, exc.headers)

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        code, details = validation_details(exc.messages)
        return error_response(422, code, Unprocessable.message, details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        # flask-smorest/webargs attach the marshmallow messages to a 422
        data = getattr(exc, "data", None) or {}
        messages = data.get("messages") if isinstance(data, dict) else None
        if status == 422 and messages is not None:
            code, details = validation_details(messages)
            return error_response(422, code, Unprocessable.message, details)
        if status == 429:
            retry = exc.get_response().headers.get("Retry-After") if hasattr(exc, "get_response") else None
            headers = {"Retry-After": retry} if retry else {}
            return error_response(429, "rate_limited", RateLimited.message, headers=headers)
        code, message = _HTTP_CODES.get(status, ("http_error", exc.description or "HTTP error"))
        headers = {}
        if status == 405 and exc.get_response().headers.get("Allow"):
            headers["Allow"] = exc.get_response().headers["Allow"]
        return error_response(status, code, message, headers=headers)

    @app.errorhandler(Exception)
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
