"""Web helpers more than one front door needs: multipart uploads, image responses and configured limits.

Kernel: imports no area. The API views, the console and the agency app use these instead of reaching into
one another's ``views`` modules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, request
from flask_smorest.fields import Upload

from marketplace.schemas import StrictSchema


class ImageFileIn(StrictSchema):
    image = Upload(required=True, metadata={"description": "JPEG, PNG or WebP; metadata is removed"})


def multipart(view: Any) -> Any:
    """Mark a view as taking multipart/form-data (the OpenAPI document and the body checks read it)."""
    view._accepts_multipart = True
    return view


def configured_limit(name: str) -> Callable[[], str]:
    """A rate limit read from the settings when the request comes (``limits[name]``)."""
    return lambda: current_app.config["SETTINGS"].limits[name]


def upload_limit() -> str:
    return str(current_app.config["SETTINGS"].limits.get("upload_session", "20 per minute"))


def upload_key() -> str:
    """Uploads are limited per session: a hash of the bearer token, never the token."""
    token = request.headers.get("Authorization", "")
    return "upload:" + hashlib.sha256(token.encode()).hexdigest()[:24]


def image_response(data: bytes, mime: str) -> Response:
    """A decrypted image, never cached, sandboxed, and not sniffed as anything else."""
    response = Response(data, mimetype=mime)
    response.headers["Cache-Control"] = "no-store, max-age=0"
    response.headers["Pragma"] = "no-cache"
    response.headers["Content-Disposition"] = 'inline; filename="image.jpg"'
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
