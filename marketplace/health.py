"""The API index, liveness and readiness probes (public), and the bare endpoint benchmarks compare against."""

from __future__ import annotations

from typing import Any

from marshmallow import fields
from sqlalchemy import text

from marketplace.api import ApiBlueprint as Blueprint
from marketplace.errors import ServiceUnavailable
from marketplace.extensions import db
from marketplace.schemas import OutSchema
from marketplace.security import public

health_bp = Blueprint("health", __name__, url_prefix="/api/v1", description="Service health")


class HealthOut(OutSchema):
    status = fields.String(required=True)
    database = fields.String(required=True)


class PingOut(OutSchema):
    pong = fields.Boolean(required=True)


class ApiLinksOut(OutSchema):
    docs = fields.String(required=True, metadata={"description": "Interactive API docs (work offline)"})
    openapi = fields.String(required=True, metadata={"description": "This API's OpenAPI 3 document"})
    health = fields.String(required=True, metadata={"description": "Readiness probe"})
    ping = fields.String(required=True, metadata={"description": "Liveness probe"})
    consent_texts = fields.String(required=True, metadata={"description": "The consent texts and their versions"})


class ApiIndexOut(OutSchema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    links = fields.Nested(ApiLinksOut, required=True)


@health_bp.route("")
@health_bp.response(200, ApiIndexOut)
@public
def index() -> dict[str, Any]:
    """Where to start: links to the API docs, the OpenAPI document and the health probes."""
    return {"name": "CareJar marketplace API", "version": "v1", "links": {
        "docs": "/api/docs", "openapi": "/api/openapi.json", "health": "/api/v1/health", "ping": "/api/v1/ping",
        "consent_texts": "/api/v1/legal/consent-texts"}}


@health_bp.route("/health")
@health_bp.response(200, HealthOut)
@public
def health() -> dict[str, Any]:
    """Readiness: the database answers."""
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as exc:
        raise ServiceUnavailable() from exc
    return {"status": "ok", "database": "ok"}


@health_bp.route("/ping")
@health_bp.response(200, PingOut)
@public
def ping() -> dict[str, bool]:
    """Liveness: a bare JSON answer (the baseline every benchmark ratio is measured against)."""
    return {"pong": True}
