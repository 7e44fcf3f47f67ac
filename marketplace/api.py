"""The OpenAPI document (generated from the views and schemas) and the offline interactive docs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flask_smorest
from flask import Blueprint, Flask, abort, render_template, send_from_directory
from flask_smorest import Api
from werkzeug.wrappers import Response

from marketplace.schemas import ErrorSchema
from marketplace.webhelpers import StrictParser


class ApiBlueprint(flask_smorest.Blueprint):
    """Every API blueprint parses with the strict parser."""

    ARGUMENTS_PARSER = StrictParser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {
        **flask_smorest.Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        "multipart": "multipart/form-data",
    }


class MarketplaceApi(Api):
    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        """``marketplace.errors`` owns every error response."""


API_DESCRIPTION = """\
JSON API of the CareJar car-rental marketplace.

* Every error has one shape: `{"error": {"code", "message", "details", "request_id"}}`. Branch on
  `code`, never on `message`.
* Customers authenticate with `Authorization: Bearer <access_token>` from `POST /api/v1/auth/login`;
  access tokens live 15 minutes, refresh tokens rotate on every use.
* Staff tokens need a TOTP code (`POST /api/v1/auth/mfa`) before they reach anything else.
* Unknown fields in a request are refused (`unknown_field`); times are ISO 8601 in UTC; money is in
  minor units (fils) with a currency.
* A body that is not valid JSON, or has duplicate keys, is `400 malformed_json`; one that nests arrays or
  objects deeper than 32 levels is `400 json_too_deep`. In a `multipart/form-data` upload, an unknown
  field or a part without a name (named `""` in `details.unknown`) is `422 unknown_field`.
"""


def create_api(app: Flask) -> Api:
    app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", None)
    api = MarketplaceApi(
        app,
        spec_kwargs={
            "info": {"description": API_DESCRIPTION},
            "servers": [{"url": "/"}],
            "components": {
                "securitySchemes": {
                    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "Access token"}
                }
            },
            "security": [{"bearerAuth": []}],
        },
    )
    gates: dict[str, str] = app.extensions.setdefault("route_gates", {})
    gates["api-docs"] = "public"  # flask-smorest's blueprint serving /api/openapi.json
    app.register_blueprint(docs_bp)
    gates[docs_bp.name] = "public"
    return api


_SWAGGER_DIR: Path | None = None


def _swagger_dir() -> Path:
    global _SWAGGER_DIR  # noqa: PLW0603 - resolved once
    if _SWAGGER_DIR is None:
        import swagger_ui_bundle

        _SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)
    return _SWAGGER_DIR


docs_bp = Blueprint("docs", __name__, url_prefix="/api/docs")
_ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
           "favicon-32x32.png", "favicon-16x16.png"}


@docs_bp.get("")
def docs_page() -> str:
    """Interactive API docs; every asset is served from this server (works offline)."""
    return render_template("api_docs.html")


@docs_bp.get("/assets/<path:name>")
def docs_asset(name: str) -> Response:
    if name == "init.js":
        return send_from_directory(Path(__file__).parent / "static", "swagger-init.js", max_age=3600)
    if name not in _ASSETS:
        abort(404)
    return send_from_directory(_swagger_dir(), name, max_age=86400)


def spec_dict(app: Flask) -> dict[str, Any]:
    api: Api = app.extensions["flask-smorest"]["apis"][""]["ext_obj"]
    value: dict[str, Any] = api.spec.to_dict()
    return value
