"""The OpenAPI document (generated from the views and schemas) and the offline interactive docs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flask_smorest
import swagger_ui_bundle
from flask import Blueprint, Flask, abort, current_app, render_template, send_from_directory
from flask_smorest import Api
from marshmallow import RAISE
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.datastructures import CombinedMultiDict
from werkzeug.wrappers import Response

from marketplace.errors import MalformedJson
from marketplace.schemas import ErrorSchema


class StrictParser(FlaskParser):
    """Unknown query parameters are refused like unknown body fields; bad JSON gets ``malformed_json``."""

    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": RAISE, "querystring": RAISE,
                                   "multipart": RAISE}
    __location_map__ = {**FlaskParser.__location_map__, "multipart": "load_multipart"}

    def load_multipart(self, req: Any, schema: Any) -> Any:
        """Form fields and files of one multipart/form-data body, read by one schema.

        Two ``arguments`` (``form`` and ``files``) would parse, but OpenAPI 3 has one request body, so
        flask-smorest documents the second as an invalid ``in: formData`` parameter.
        """
        return self._makeproxy(CombinedMultiDict([req.form, req.files]), schema)

    def _raw_load_json(self, req: Any) -> Any:
        if not (req.mimetype == "application/json" or req.mimetype.endswith("+json")):
            return core.missing
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        try:
            return _strict_loads(data)
        except ValueError as exc:  # bad syntax, bad encoding, duplicate keys
            raise MalformedJson() from exc

    def _handle_invalid_json_error(self, error: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
        raise MalformedJson()


def _strict_loads(data: bytes) -> Any:
    return current_app.json.loads(data)


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
