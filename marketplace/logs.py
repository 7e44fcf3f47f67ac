"""Structured JSON logs: one event per line, every value encoded (no log injection), no secrets.

Log records carry only what ``extra={"event": {...}}`` names plus the request id; request bodies,
headers, tokens and personal data are never logged.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or _current_request_id()
        if request_id:
            payload["request_id"] = request_id
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            payload["event"] = event
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=True)


def _current_request_id() -> str | None:
    from flask import g, has_request_context

    if has_request_context():
        return g.get("request_id")
    return None


def configure(level: str) -> None:
    root = logging.getLogger("marketplace")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = True
    # werkzeug's access log prints full URLs; ours never carry secrets, but keep it terse
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def security_event(action: str, outcome: str, **fields: Any) -> None:
    logging.getLogger("marketplace.security").info(
        action, extra={"event": {"action": action, "outcome": outcome, **fields}}
    )
