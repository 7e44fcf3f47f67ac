"""The test launcher and its localstripe extension do what devtools/localstripe_server.py promises.

Each extension test shows the stock behaviour first (STRIPE.md §3.4, against ``stock_localstripe``: the same
launcher without the patches) and then the patched one, so a localstripe upgrade that changes either shows up
here, not as a puzzling failure in a payments test. Raw HTTP or stripe-python, no gateway.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import stripe

from marketplace.payments.errors import InvalidSignature
from marketplace.payments.gateway import Gateway
from tests.payments.helpers import http, raw_client
from tests.stripe_fixtures import SECRET_KEY, LocalStripe

PICKLE = Path("/tmp/localstripe.pickle")  # noqa: S108 - the stock server's fixed path, which we must not write


def _pi_form(**extra: str) -> dict[str, str]:
    return {"amount": "1000", "currency": "aed", "payment_method": "pm_card_visa",
            "allowed_payment_method_types[0]": "card", **extra}


# ---- the launcher: loopback, in memory ------------------------------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def test_the_launcher_listens_on_loopback_only(localstripe: LocalStripe) -> None:  # STRIPE.md §3.2
    port = int(localstripe.base_url.rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing on [::]


def test_the_launcher_never_writes_the_shared_pickle(localstripe: LocalStripe) -> None:  # STRIPE.md §3.2
    before = PICKLE.stat().st_mtime_ns if PICKLE.exists() else None
    raw_client(localstripe).v1.customers.create(params={"email": "p@example.com"})
    after = PICKLE.stat().st_mtime_ns if PICKLE.exists() else None
    assert after == before


def test_reset_empties_the_store(localstripe: LocalStripe) -> None:
    raw_client(localstripe).v1.customers.create(params={"email": "p@example.com"})
    localstripe.reset()
    assert raw_client(localstripe).v1.customers.list().data == []


def test_the_launcher_refuses_another_localstripe_version(tmp_path: Path) -> None:
    """The patches touch 1.15.10's internals: a different version must stop the launcher, not half-work."""
    import subprocess
    import sys

    shim = tmp_path / "sitecustomize.py"
    shim.write_text("import localstripe\nlocalstripe.__version__ = '9.9.9'\n")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "devtools.localstripe_server", "1"], cwd=root, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{root}"}, timeout=60, check=False)
    assert result.returncode != 0 and "1.15.10" in result.stderr


# ---- 1. Idempotency-Key --------------------------------------------------------------------------------------


def test_stock_localstripe_ignores_idempotency_keys(stock_localstripe: LocalStripe) -> None:
    ids = {http(stock_localstripe, "POST", "/v1/payment_intents", _pi_form(),
                {"Idempotency-Key": "same"})[2]["id"] for _ in range(2)}
    assert len(ids) == 2


def test_the_extension_replays_the_first_answer_for_a_key(localstripe: LocalStripe) -> None:
    status, _, first = http(localstripe, "POST", "/v1/payment_intents", _pi_form(), {"Idempotency-Key": "k1"})
    assert status == 200
    status, headers, again = http(localstripe, "POST", "/v1/payment_intents", _pi_form(), {"Idempotency-Key": "k1"})
    assert status == 200 and again == first and headers.get("Idempotent-Replayed") == "true"
    assert len(raw_client(localstripe).v1.payment_intents.list().data) == 1


def test_the_extension_refuses_a_key_reused_with_other_parameters(localstripe: LocalStripe) -> None:
    http(localstripe, "POST", "/v1/payment_intents", _pi_form(), {"Idempotency-Key": "k1"})
    status, _, body = http(localstripe, "POST", "/v1/payment_intents", _pi_form(amount="1001"),
                           {"Idempotency-Key": "k1"})
    assert status == 400 and body["error"]["type"] == "idempotency_error"
    status, _, body = http(localstripe, "POST", "/v1/customers", {}, {"Idempotency-Key": "k1"})  # other endpoint
    assert status == 400 and body["error"]["type"] == "idempotency_error"
    with pytest.raises(stripe.IdempotencyError):  # how stripe-python names it
        raw_client(localstripe).v1.payment_intents.create(params={"amount": 5, "currency": "aed"},
                                                          options={"idempotency_key": "k1"})


def test_the_extension_replays_a_decline_and_saves_no_validation_error(localstripe: LocalStripe) -> None:
    declined = _pi_form(payment_method="pm_card_chargeDeclined", confirm="true")
    first = http(localstripe, "POST", "/v1/payment_intents", declined, {"Idempotency-Key": "d1"})
    again = http(localstripe, "POST", "/v1/payment_intents", declined, {"Idempotency-Key": "d1"})
    assert first[0] == again[0] == 402 and first[2] == again[2]
    # a request refused before it ran saves nothing: the corrected request may use the key
    status, _, _ = http(localstripe, "POST", "/v1/payment_intents", {"amount": "-1", "currency": "aed"},
                        {"Idempotency-Key": "v1"})
    assert status == 400
    assert http(localstripe, "POST", "/v1/payment_intents", _pi_form(), {"Idempotency-Key": "v1"})[0] == 200


def test_keys_are_per_api_key_and_forgotten_on_reset(localstripe: LocalStripe) -> None:
    http(localstripe, "POST", "/v1/payment_intents", _pi_form(), {"Idempotency-Key": "k1"})
    other_account = http(localstripe, "POST", "/v1/payment_intents", _pi_form(amount="7"),
                         {"Idempotency-Key": "k1", "Authorization": "Bearer sk_test_other_account"})
    assert other_account[0] == 200
    localstripe.reset()
    assert http(localstripe, "POST", "/v1/payment_intents", _pi_form(amount="9"), {"Idempotency-Key": "k1"})[0] == 200


# ---- 2./3. off_session on confirm, 3-D Secure off-session ----------------------------------------------------


def test_stock_confirm_rejects_off_session(stock_localstripe: LocalStripe) -> None:
    pi = http(stock_localstripe, "POST", "/v1/payment_intents", _pi_form())[2]
    status, _, body = http(stock_localstripe, "POST", f"/v1/payment_intents/{pi['id']}/confirm",
                           {"off_session": "true"})
    assert status == 400 and "off_session" in body["error"]["message"]


def test_the_extension_confirms_off_session(localstripe: LocalStripe) -> None:
    pi = http(localstripe, "POST", "/v1/payment_intents", _pi_form())[2]
    status, _, body = http(localstripe, "POST", f"/v1/payment_intents/{pi['id']}/confirm", {"off_session": "true"})
    assert status == 200 and body["status"] == "succeeded"


def test_stock_3ds_off_session_is_requires_action_without_error(stock_localstripe: LocalStripe) -> None:
    pm = http(stock_localstripe, "POST", "/v1/payment_methods", {
        "type": "card", "card[number]": "4000002760003184", "card[exp_month]": "12", "card[exp_year]": "2034",
        "card[cvc]": "123"})[2]
    status, _, body = http(stock_localstripe, "POST", "/v1/payment_intents",
                           _pi_form(payment_method=pm["id"], confirm="true", off_session="true"))
    assert status == 200 and body["status"] == "requires_action" and body["last_payment_error"] is None


def test_the_extension_fails_3ds_off_session_as_stripe_does(localstripe: LocalStripe) -> None:
    status, _, body = http(localstripe, "POST", "/v1/payment_intents",
                           _pi_form(payment_method="pm_card_authenticationRequired", confirm="true",
                                    off_session="true"))
    error = body["error"]
    assert status == 402 and error["type"] == "card_error" and error["code"] == "authentication_required"
    assert error["payment_intent"]["status"] == "requires_payment_method"
    assert error["payment_intent"]["last_payment_error"]["code"] == "authentication_required"
    assert error["payment_method"]["id"].startswith("pm_")
    # on-session the same card still asks for 3-D Secure the normal way
    on_session = http(localstripe, "POST", "/v1/payment_intents",
                      _pi_form(payment_method="pm_card_authenticationRequired", confirm="true"))[2]
    assert on_session["status"] == "requires_action"


def test_the_extension_lets_a_failed_intent_be_confirmed_again_with_a_card(localstripe: LocalStripe) -> None:
    failed = http(localstripe, "POST", "/v1/payment_intents",
                  _pi_form(payment_method="pm_card_authenticationRequired", confirm="true", off_session="true"))
    intent_id = failed[2]["error"]["payment_intent"]["id"]
    status, _, body = http(localstripe, "POST", f"/v1/payment_intents/{intent_id}/confirm",
                           {"payment_method": "pm_card_visa"})
    assert status == 200 and body["status"] == "succeeded"


# ---- 4. declines -----------------------------------------------------------------------------------------------


def test_stock_declines_are_invalid_request_errors_without_decline_code(stock_localstripe: LocalStripe) -> None:
    status, _, body = http(stock_localstripe, "POST", "/v1/payment_intents",
                           _pi_form(payment_method="pm_card_chargeCustomerFail", confirm="true"))
    assert status == 402 and body["error"]["type"] == "invalid_request_error"
    assert "decline_code" not in body["error"] and "payment_intent" not in body["error"]
    # and a card that declines on attach is charged happily if never attached
    status, _, body = http(stock_localstripe, "POST", "/v1/payment_intents",
                           _pi_form(payment_method="pm_card_visa_chargeDeclined", confirm="true"))
    assert status == 200 and body["status"] == "succeeded"


@pytest.mark.parametrize(("pm", "decline"), [("pm_card_chargeCustomerFail", "generic_decline"),
                                             ("pm_card_chargeDeclined", "generic_decline"),
                                             ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds")])
def test_the_extension_declines_charges_as_card_errors(localstripe: LocalStripe, pm: str, decline: str) -> None:
    status, _, body = http(localstripe, "POST", "/v1/payment_intents", _pi_form(payment_method=pm, confirm="true"))
    error = body["error"]
    assert status == 402 and error["type"] == "card_error" and error["decline_code"] == decline
    assert error["payment_intent"]["last_payment_error"]["decline_code"] == decline


def test_the_extension_declines_attach_as_a_card_error(localstripe: LocalStripe) -> None:
    customer = http(localstripe, "POST", "/v1/customers", {})[2]
    pm = http(localstripe, "POST", "/v1/payment_methods", {
        "type": "card", "card[number]": "4000000000009995", "card[exp_month]": "12", "card[exp_year]": "2034",
        "card[cvc]": "123"})[2]
    status, _, body = http(localstripe, "POST", f"/v1/payment_methods/{pm['id']}/attach",
                           {"customer": customer["id"]})
    assert status == 402 and body["error"]["type"] == "card_error"
    assert body["error"]["decline_code"] == "insufficient_funds"


# ---- 5. latest_charge, amounts, capture ----------------------------------------------------------------------


def test_stock_embeds_latest_charge_and_has_no_amount_fields(stock_localstripe: LocalStripe) -> None:
    body = http(stock_localstripe, "POST", "/v1/payment_intents", _pi_form(confirm="true"))[2]
    assert isinstance(body["latest_charge"], dict)
    assert "amount_received" not in body and "amount_capturable" not in body


def test_the_extension_gives_latest_charge_as_an_id_and_the_amounts(localstripe: LocalStripe) -> None:
    hold = http(localstripe, "POST", "/v1/payment_intents", _pi_form(confirm="true", capture_method="manual"))[2]
    assert isinstance(hold["latest_charge"], str) and hold["amount_capturable"] == 1000
    assert hold["amount_received"] == 0
    expanded = http(localstripe, "GET", f"/v1/payment_intents/{hold['id']}?expand[]=latest_charge")[2]
    card = expanded["latest_charge"]["payment_method_details"]["card"]
    assert card["capture_before"] == expanded["latest_charge"]["created"] + 7 * 24 * 3600
    captured = http(localstripe, "POST", f"/v1/payment_intents/{hold['id']}/capture", {"amount_to_capture": "400"})[2]
    assert captured["status"] == "succeeded" and captured["amount_received"] == 400
    assert captured["amount_capturable"] == 0
    charge = http(localstripe, "GET", f"/v1/charges/{captured['latest_charge']}")[2]
    assert charge["amount_captured"] == 400 and charge["amount_refunded"] == 0  # no invented refund
    assert "capture_before" not in charge["payment_method_details"]["card"]


# ---- 6. SetupIntent attaches ---------------------------------------------------------------------------------


def _setup_and_confirm(server: LocalStripe) -> str:
    customer = http(server, "POST", "/v1/customers", {})[2]
    setup = http(server, "POST", "/v1/setup_intents", {"customer": customer["id"], "usage": "off_session"})[2]
    confirmed = http(server, "POST", f"/v1/setup_intents/{setup['id']}/confirm", {"payment_method": "pm_card_visa"})
    assert confirmed[0] == 200 and confirmed[2]["status"] == "succeeded"
    pm = http(server, "GET", f"/v1/payment_methods/{confirmed[2]['payment_method']}")[2]
    return str(pm["customer"]) if pm["customer"] else ""


def test_stock_setup_intent_does_not_attach(stock_localstripe: LocalStripe) -> None:
    assert _setup_and_confirm(stock_localstripe) == ""


def test_the_extension_setup_intent_attaches(localstripe: LocalStripe) -> None:
    assert _setup_and_confirm(localstripe).startswith("cus_")


# ---- 7. refunds ------------------------------------------------------------------------------------------------


def test_stock_refund_defaults_to_the_full_charge_again_and_allows_over_refunds(stock_localstripe) -> None:
    pi = http(stock_localstripe, "POST", "/v1/payment_intents", _pi_form(confirm="true"))[2]
    assert http(stock_localstripe, "POST", "/v1/refunds", {"payment_intent": pi["id"], "amount": "600"})[0] == 200
    assert http(stock_localstripe, "POST", "/v1/refunds", {"payment_intent": pi["id"]})[2]["amount"] == 1000


def test_the_extension_refunds_the_remainder_and_never_more(localstripe: LocalStripe) -> None:
    pi = http(localstripe, "POST", "/v1/payment_intents", _pi_form(confirm="true"))[2]
    assert http(localstripe, "POST", "/v1/refunds", {"payment_intent": pi["id"], "amount": "600"})[0] == 200
    status, _, body = http(localstripe, "POST", "/v1/refunds", {"payment_intent": pi["id"], "amount": "401"})
    assert status == 400 and body["error"]["code"] == "amount_too_large"
    assert http(localstripe, "POST", "/v1/refunds", {"payment_intent": pi["id"]})[2]["amount"] == 400
    status, _, body = http(localstripe, "POST", "/v1/refunds", {"payment_intent": pi["id"]})
    assert status == 400 and body["error"]["code"] == "charge_already_refunded"
    hold = http(localstripe, "POST", "/v1/payment_intents", _pi_form(confirm="true", capture_method="manual"))[2]
    status, _, body = http(localstripe, "POST", "/v1/refunds", {"payment_intent": hold["id"], "amount": "1"})
    assert status == 400 and body["error"]["code"] == "charge_not_captured"  # never refund an uncaptured hold


# ---- 8. Connect stubs ------------------------------------------------------------------------------------------


def test_stock_has_no_connect(stock_localstripe: LocalStripe) -> None:
    assert http(stock_localstripe, "POST", "/v1/accounts", {"type": "express"})[0] == 404
    assert http(stock_localstripe, "POST", "/v1/transfers", {"amount": "1", "currency": "aed"})[0] == 404


def test_the_extension_has_accounts_and_transfers_within_the_balance(localstripe: LocalStripe) -> None:
    account = http(localstripe, "POST", "/v1/accounts", {"type": "express", "country": "AE"})[2]
    assert account["id"].startswith("acct_")
    assert http(localstripe, "GET", f"/v1/accounts/{account['id']}")[2]["id"] == account["id"]
    transfer = {"amount": "700", "currency": "aed", "destination": account["id"], "transfer_group": "booking_1"}
    status, _, body = http(localstripe, "POST", "/v1/transfers", transfer)
    assert status == 400 and body["error"]["code"] == "balance_insufficient"  # nothing charged yet
    http(localstripe, "POST", "/v1/payment_intents", _pi_form(confirm="true"))
    status, _, body = http(localstripe, "POST", "/v1/transfers", transfer)
    assert status == 200 and body["id"].startswith("tr_") and body["transfer_group"] == "booking_1"
    unknown = http(localstripe, "POST", "/v1/transfers", {**transfer, "amount": "1", "destination": "acct_nope"})
    assert unknown[0] == 400


def test_stock_has_no_account_links(stock_localstripe: LocalStripe) -> None:
    assert http(stock_localstripe, "POST", "/v1/account_links", {"account": "acct_1"})[0] == 404


def test_the_extension_onboards_an_express_account_through_its_link(localstripe: LocalStripe) -> None:
    # Stripe: an Express account takes no payouts until onboarded; the hosted form returns to return_url
    import urllib.error
    import urllib.request

    account = http(localstripe, "POST", "/v1/accounts", {"type": "express", "country": "AE"})[2]
    assert (account["details_submitted"], account["payouts_enabled"]) == (False, False)
    form = {"account": account["id"], "type": "account_onboarding",
            "refresh_url": "http://127.0.0.1:5000/agency/payouts", "return_url": "http://127.0.0.1:5000/agency/back"}
    status, _, link = http(localstripe, "POST", "/v1/account_links", form)
    assert status == 200 and link["object"] == "account_link" and link["url"].startswith(localstripe.base_url)
    assert http(localstripe, "POST", "/v1/account_links", {**form, "account": "acct_nope"})[0] == 400
    assert http(localstripe, "POST", "/v1/account_links", {**form, "type": "nonsense"})[0] == 400

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(link["url"], timeout=10)
        raise AssertionError("the onboarding page redirects")
    except urllib.error.HTTPError as exc:
        assert exc.code == 302 and exc.headers["Location"] == "http://127.0.0.1:5000/agency/back"
    onboarded = http(localstripe, "GET", f"/v1/accounts/{account['id']}")[2]
    assert (onboarded["details_submitted"], onboarded["payouts_enabled"], onboarded["charges_enabled"]) == (
        True, True, True)
    events = http(localstripe, "GET", "/v1/events", None)[2]["data"]
    assert any(e["type"] == "account.updated" and e["data"]["object"]["id"] == account["id"] for e in events)


# ---- 9. webhook endpoints ----------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[bytes, str]]]]:
    received: list[tuple[bytes, str]] = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers["Stripe-Signature"]))
            arrived.set()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_stock_has_no_webhook_endpoints_api(stock_localstripe: LocalStripe) -> None:
    assert http(stock_localstripe, "POST", "/v1/webhook_endpoints", {"url": "http://127.0.0.1:1/x"})[0] == 404


def test_the_extension_registers_a_webhook_endpoint_that_delivers_signed_events(localstripe, receiver) -> None:
    url, received = receiver
    endpoint = raw_client(localstripe).v1.webhook_endpoints.create(
        params={"url": url, "enabled_events": ["customer.created"]})
    assert endpoint.secret.startswith("whsec_")
    raw_client(localstripe).v1.customers.create(params={"email": "hook@example.com"})
    for _ in range(100):  # localstripe sends about 1 s later
        if received:
            break
        threading.Event().wait(0.05)
    assert received, "no webhook delivered"
    body, signature = received[0]
    gateway = Gateway(secret_key=SECRET_KEY, webhook_secret=endpoint.secret)
    assert gateway.verify_webhook(body, signature)["type"] == "customer.created"
    with pytest.raises(InvalidSignature):
        Gateway(secret_key=SECRET_KEY, webhook_secret="whsec_other").verify_webhook(body, signature)
    raw_client(localstripe).v1.webhook_endpoints.delete(endpoint.id)


# ---- 12. payment_method_types is gone from the API version stripe-python 16 speaks --------------------------


def test_stock_accepts_payment_method_types_and_the_extension_refuses_it_as_stripe_does(stock_localstripe,
                                                                                         localstripe) -> None:
    old_form = {"amount": "1000", "currency": "aed", "payment_method": "pm_card_visa",
                "payment_method_types[0]": "card"}
    assert http(stock_localstripe, "POST", "/v1/payment_intents", old_form)[0] == 200
    status, _, body = http(localstripe, "POST", "/v1/payment_intents", old_form)
    assert status == 400 and body["error"]["code"] == "payment_method_types_no_longer_supported"
    status, _, body = http(localstripe, "POST", "/v1/setup_intents", {"payment_method_types[0]": "card"})
    assert status == 400 and body["error"]["code"] == "payment_method_types_no_longer_supported"
    created = http(localstripe, "POST", "/v1/payment_intents", _pi_form())[2]
    assert created["allowed_payment_method_types"] == created["payment_method_types"] == ["card"]


# ---- 10. more test cards ---------------------------------------------------------------------------------------


def test_stock_knows_three_test_payment_methods_only(stock_localstripe: LocalStripe) -> None:
    assert http(stock_localstripe, "GET", "/v1/payment_methods/pm_card_authenticationRequired")[0] == 404


@pytest.mark.parametrize(("pm", "brand", "last4"), [("pm_card_mastercard", "mastercard", "4444"),
                                                    ("pm_card_authenticationRequired", "visa", "3184"),
                                                    ("pm_card_chargeDeclinedInsufficientFunds", "visa", "9995")])
def test_the_extension_knows_more_test_payment_methods(localstripe: LocalStripe, pm: str, brand: str,
                                                       last4: str) -> None:
    status, _, body = http(localstripe, "GET", f"/v1/payment_methods/{pm}")
    assert status == 200 and body["card"]["brand"] == brand and body["card"]["last4"] == last4
    intent = http(localstripe, "POST", "/v1/payment_intents", _pi_form(payment_method=pm))[2]
    assert intent["payment_method"].startswith("pm_") and intent["payment_method"] != pm  # a real id, as on Stripe
