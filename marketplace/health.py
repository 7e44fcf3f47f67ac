"""Liveness and readiness probes (public), and the bare endpoint benchmarks compare against."""

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
