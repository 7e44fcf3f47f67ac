"""The OpenAPI document (generated from the views and schemas) and the offline interactive docs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import flask_smorest
import swagger_ui_bundle
from apispec import BasePlugin
from flask import Blueprint, Flask, abort, render_template, send_from_directory
from flask_smorest import Api
from werkzeug.routing import BaseConverter
from werkzeug.wrappers import Response

from marketplace.schemas import ErrorSchema, ImageUpload
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

    def _init_spec(self, **kwargs: Any) -> None:
        kwargs["extra_plugins"] = [*(kwargs.get("extra_plugins") or ()), ConstraintsPlugin()]
        super()._init_spec(**kwargs)
        self.ma_plugin.converter.add_attribute_function(validators2properties)


# ---- every rule the code enforces, in the document ---------------------------------------------------------


def validators2properties(self: Any, field: Any, ret: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """JSON Schema keywords a field's validators state (``marketplace.schemas.Documented``), and a nullable
    nested object that is exactly the object or null.

    apispec writes a nullable ``Nested`` as ``anyOf: [{type: object, nullable: true}, {$ref}]`` in OpenAPI 3.0,
    whose first branch is any object at all; generated requests then carry fields the code refuses.
    """
    out: dict[str, Any] = {}
    for validator in getattr(field, "validators", ()):
        keywords = getattr(validator, "openapi", None)
        if not isinstance(keywords, dict):
            continue
        for key, value in keywords.items():
            if getattr(validator, "weak", False) and (key in ret or key in out):
                continue
            joined = key == "description" and ret.get("description")
            out[key] = f"{ret['description']}. {value}" if joined else value
    if out.get("type") == "string":  # a number written as text (a query parameter): the pattern holds the range
        ret.pop("minimum", None), ret.pop("maximum", None)
    branches = ret.get("anyOf")
    if isinstance(branches, list) and len(branches) == 2 and {"type": "object", "nullable": True} in branches:
        ref = next(b for b in branches if b != {"type": "object", "nullable": True})
        out["anyOf"] = [ref, {"type": "object", "nullable": True, "enum": [None]}]
    return out


class ConstraintsPlugin(BasePlugin):
    """Object-level keywords of an input schema (``StrictSchema.OPENAPI``, e.g. ``minProperties``), and the
    content types of each image part of a multipart body (its ``encoding``)."""

    def __init__(self) -> None:
        self._parts: dict[str, dict[str, Any]] = {}  # component name -> {field: {"contentType": ...}}

    def schema_helper(self, name: str, definition: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
        schema = kwargs.get("schema")
        cls = schema if isinstance(schema, type) else type(schema)
        fields_ = getattr(cls, "_declared_fields", {})
        images = {key: getattr(f, "inner", f) for key, f in fields_.items()}  # a list of image parts too
        parts = {key: {"contentType": ", ".join(f.CONTENT_TYPES)} for key, f in images.items()
                 if isinstance(f, ImageUpload)}
        if parts:
            self._parts[name] = parts
        keywords: dict[str, Any] = getattr(cls, "OPENAPI", {})
        return dict(keywords) or None

    def operation_helper(self, path: str | None = None, operations: dict[str, Any] | None = None,
                         **kwargs: Any) -> None:
        for operation in (operations or {}).values():
            content = operation.get("requestBody", {}).get("content", {})
            for media, body in content.items():
                ref = body.get("schema", {}).get("$ref", "") if isinstance(body.get("schema"), dict) else ""
                parts = self._parts.get(ref.rsplit("/", 1)[-1])
                if media == "multipart/form-data" and parts:
                    body["encoding"] = parts


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


class DocumentedConverter(BaseConverter):
    """A path converter that states its form in the document (``openapi``: the parameter's schema).

    An area subclasses it when a plain ``<string:...>`` would also match a static sibling: ``/bookings/quote``
    beside ``/bookings/<reference>`` answered (and advertised in ``Allow``) the reference's GET and PATCH.
    """

    openapi: ClassVar[dict[str, Any]] = {"type": "string"}


def _converter_param(converter: DocumentedConverter) -> dict[str, Any]:
    return dict(converter.openapi)


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
    api.register_converter(DocumentedConverter, _converter_param)
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
