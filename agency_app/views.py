"""The agency staff web app: a second front door onto the same services."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from marketplace.fleet import service as fleet
from marketplace.permissions import Permission
from marketplace.security import csrf_token, current_actor
from marketplace.webauth import add_auth_routes

REQUIRED = Permission.AGENCY_ACCESS
TITLE = "Agency app"

agency_bp = Blueprint("agency", __name__, url_prefix="/agency", template_folder="templates")
add_auth_routes(agency_bp, door="agency", title=TITLE, permission=REQUIRED)


def _render(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    actor = current_actor()
    return render_template(template, door="agency", title=TITLE, actor=actor, csrf_token=csrf_token(actor),
                           P=Permission, **context), status


@agency_bp.get("/", endpoint="home")
def home() -> Any:
    actor = current_actor()
    return _render("agency/home.html", agencies=fleet.agencies_of(actor), vehicles=fleet.vehicles_for_staff(actor))
