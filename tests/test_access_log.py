"""Single-use link tokens stay out of the logs (issue 7 item 7).

Signed image links carry their token in the path (``/api/v1/images/<token>``, the console's
``/console/kyc/images/<token>``); gunicorn's access log and the development server's log redact it.
"""

from __future__ import annotations

import json
import logging
import secrets

from marketplace.logs import REDACTED, TOKEN_PATH_PREFIXES, JsonFormatter, redact_path
from tests.factories import auth_headers, make_customer
from tests.kyc.helpers import submitted_case
from tests.live_gunicorn import gunicorn, request


def test_every_route_with_a_token_in_its_path_is_redacted(app):  # issue 7 item 7
    covered = 0
    for rule in app.url_map.iter_rules():
        if "token" not in rule.arguments:
            continue
        secret = secrets.token_urlsafe(24)
        path = rule.rule.replace("<string:token>", secret).replace("<token>", secret)
        assert secret in path, rule.rule
        assert secret not in redact_path(f"GET {path} HTTP/1.1"), rule.rule
        covered += 1
    assert covered == len(TOKEN_PATH_PREFIXES)


def test_redaction_sees_through_spellings_that_route_to_the_same_link():  # issue 7 item 7
    for spelling in ("/api/v1/images/{t}", "//api//v1/images//{t}", "/api/v1/%69mages/{t}", "/API/v1/images/{t}",
                     "http://127.0.0.1:5000/console/kyc/images/{t}?x=1"):
        token = secrets.token_urlsafe(24)
        redacted = redact_path(spelling.format(t=token))
        assert token not in redacted and REDACTED in redacted, spelling
    assert redact_path("/api/v1/me/selfie") == "/api/v1/me/selfie"


def test_app_logs_redact_token_paths(caplog):  # issue 7 item 7
    token = secrets.token_urlsafe(24)
    caplog.set_level(logging.INFO, logger="werkzeug")
    logging.getLogger("werkzeug").info('%s - - "GET %s HTTP/1.1" 200 -', "127.0.0.1", f"/api/v1/images/{token}")
    assert token not in caplog.text and REDACTED in caplog.text
    record = logging.LogRecord("marketplace", logging.INFO, __file__, 1, "opened %s", (f"/api/v1/images/{token}",),
                               None)
    assert token not in json.loads(JsonFormatter().format(record))["message"]


def test_image_link_token_is_not_in_gunicorns_access_log(app, app_overrides, app_ctx, tmp_path):  # issue 7 item 7
    client = app.test_client()
    headers = auth_headers(client, make_customer())
    submitted_case(client, headers)
    url = client.get("/api/v1/me/selfie", headers=headers).get_json()["url"]
    token = url.rsplit("/", 1)[1]
    other = client.get("/api/v1/me/selfie", headers=headers).get_json()["url"]
    with gunicorn(app_overrides, tmp_path) as server:
        status, answer_headers, body = request(server.base, "GET", url, headers=headers)
        assert status == 200 and answer_headers["Content-Type"] == "image/jpeg" and body[:3] == b"\xff\xd8\xff"
        # a spent link and an odd spelling of a live one are logged redacted too
        assert request(server.base, "GET", url, headers=headers)[0] != 200
        odd = other.replace("/images/", "/%69mages/")
        request(server.base, "GET", odd, headers=headers)
    log = server.access_log.read_text()
    assert "/api/v1/images/" + REDACTED in log
    assert token not in log and other.rsplit("/", 1)[1] not in log
    assert headers["Authorization"].split()[1] not in log
