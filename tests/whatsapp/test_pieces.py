"""The WhatsApp channel's pure parts: signatures, webhook parsing, message shapes."""
from __future__ import annotations

import json

from connectors.whatsapp.inbound import parse_webhook
from connectors.whatsapp.outbound import (
    LIST_ROW_DESCRIPTION_MAX, LIST_ROW_TITLE_MAX, REPLY_TITLE_MAX, TEXT_LIMIT, buttons_message, cut,
    document_message, menu_choice, split_text,
)
from connectors.whatsapp.signature import is_signed_by, sign

PHONE_ID = "1111"


def envelope(*messages, statuses=(), contacts=None, phone_id=PHONE_ID):
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": phone_id},
             "contacts": contacts if contacts is not None else [{"profile": {"name": "Ananya"}, "wa_id": "919800000001"}],
             "messages": list(messages), "statuses": list(statuses)}
    return {"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [{"field": "messages", "value": value}]}]}


def message(kind, body, mid="wamid.1", sender="919800000001", **extra):
    return {"from": sender, "id": mid, "timestamp": "1795500000", "type": kind, kind: body, **extra}


def test_signature_over_the_raw_bytes_in_constant_time():
    body = json.dumps({"text": "\u20b9 caf\u00e9"}).encode()
    header = sign(body, "app-secret")
    assert is_signed_by(body, header, ["app-secret"])
    assert is_signed_by(body, header, ["new-secret", "app-secret"])  # rotation overlap
    assert not is_signed_by(body + b" ", header, ["app-secret"])
    assert not is_signed_by(body, header, ["other"])
    for bad in (None, "", "sha1=" + header[7:], header[:-1], "sha256=" + "z" * 64):
        assert not is_signed_by(body, bad, ["app-secret"])
    assert not is_signed_by(body, sign(body, ""), [""])  # an unset secret verifies nothing


def test_every_message_type_is_read_and_none_crashes():
    payload = envelope(
        message("text", {"body": "what's my balance"}, "m1"),
        message("interactive", {"type": "button_reply", "button_reply": {"id": '/check_balance{"card_last4":"4821"}', "title": "Card ending 4821"}}, "m2",
                context={"id": "wamid.menu"}),
        message("interactive", {"type": "list_reply", "list_reply": {"id": "/pay_bill", "title": "Pay"}}, "m3"),
        message("button", {"payload": "/pay_bill", "text": "Pay now"}, "m4"),
        message("image", {"id": "media-9", "mime_type": "image/jpeg", "caption": "receipt"}, "m5"),
        message("document", {"id": "media-10", "mime_type": "application/pdf", "filename": "bill.pdf"}, "m6"),
        message("location", {"latitude": 12.9, "longitude": 77.6}, "m7"),
        message("reaction", {"message_id": "wamid.x", "emoji": "\U0001F44D"}, "m8"),
        {"from": "919800000001", "id": "m9", "timestamp": "x", "type": "unsupported"},
        {"id": "m10", "type": "system", "system": {"type": "user_changed_number"}},
        {"from_user_id": "IN.1648738043044942", "id": "m11", "timestamp": "1795500001", "type": "text", "text": {"body": "hi"}},
        {"type": "text"}, "garbage",
    )
    webhook = parse_webhook(payload, PHONE_ID)
    got = {m.message_id: m for m in webhook.messages}
    assert got["m1"].text == "what's my balance" and got["m1"].profile_name == "Ananya" and got["m1"].reply_by == "to"
    assert got["m2"].text == '/check_balance{"card_last4":"4821"}' and got["m2"].context_id == "wamid.menu"
    assert got["m3"].text == "/pay_bill" and got["m4"].text == "/pay_bill"
    assert got["m5"].attachment["media_id"] == "media-9" and got["m5"].text == "receipt"
    assert got["m5"].metadata()["attachment"]["mime_type"] == "image/jpeg"
    assert got["m6"].attachment["filename"] == "bill.pdf"
    assert not got["m7"].supported and not got["m8"].supported and not got["m9"].supported
    assert "m10" not in got  # system messages are not customer utterances
    assert got["m11"].sender == "IN.1648738043044942" and got["m11"].reply_by == "recipient"
    assert len(webhook.problems) == 2


def test_statuses_other_numbers_and_malformed_bodies():
    status = {"id": "wamid.out", "status": "failed", "recipient_id": "919800000001", "timestamp": "1795500002",
              "errors": [{"code": 131047}]}
    webhook = parse_webhook(envelope(statuses=[status, {"status": "read"}]), PHONE_ID)
    assert webhook.statuses[0].status == "failed" and webhook.statuses[0].errors[0]["code"] == 131047
    assert webhook.problems == ["status without id or status"]
    other = parse_webhook(envelope(message("text", {"body": "hi"})), "2222")
    assert not other.messages and other.problems
    for body in (None, [], {"object": "page"}, {"object": "whatsapp_business_account", "entry": "x"},
                 {"object": "whatsapp_business_account", "entry": [{"changes": [None, {"field": "messages"}]}]}):
        assert parse_webhook(body, PHONE_ID).messages == []


def test_long_text_splits_at_sensible_boundaries():
    paragraph = ("Your statement is ready. " * 60).strip()
    text = "\n\n".join([paragraph] * 5)
    parts = split_text(text)
    assert all(len(p) <= TEXT_LIMIT for p in parts) and len(parts) >= 2
    assert all(p.endswith(".") for p in parts[:-1])
    assert " ".join(" ".join(p.split()) for p in parts) == " ".join(text.split())
    assert split_text("x" * 9000) == ["x" * 4096, "x" * 4096, "x" * 808]


def test_buttons_become_reply_buttons_lists_or_a_numbered_menu():
    three = [{"title": "Card ending 1117", "payload": '/check_balance{"card_last4":"1117"}'},
             {"title": "Card ending 6392", "payload": '/check_balance{"card_last4":"6392"}'},
             {"title": "Talk to a person about my card please", "payload": "/talk_to_human"}]
    [reply], menu = buttons_message("Which card?", three)
    buttons = reply["interactive"]["action"]["buttons"]
    assert reply["interactive"]["type"] == "button" and not menu
    assert [b["reply"]["title"] for b in buttons] == ["Card ending 1117", "Card ending 6392", "Talk to a person"]
    assert all(len(b["reply"]["title"]) <= REPLY_TITLE_MAX for b in buttons)
    eight = [{"title": f"\u20b9{i},000 Amazon India purchase on {i} Nov 2026 at night", "payload": f"/inform{{\"n\":{i}}}"}
             for i in range(8)]
    [listing], menu = buttons_message("Which transaction?", eight)
    rows = listing["interactive"]["action"]["sections"][0]["rows"]
    assert listing["interactive"]["type"] == "list" and len(rows) == 8 and not menu
    assert all(len(r["title"]) <= LIST_ROW_TITLE_MAX and len(r.get("description", "")) <= LIST_ROW_DESCRIPTION_MAX for r in rows)
    assert len({r["title"] for r in rows}) == 8
    twelve = [{"title": f"Option {i}", "payload": f"/p{i}"} for i in range(1, 13)]
    messages, menu = buttons_message("Pick one", twelve)
    assert messages[0]["type"] == "text" and "12. Option 12" in messages[0]["text"]["body"]
    assert menu_choice(" 12. ", menu) == "/p12" and menu_choice("13", menu) is None and menu_choice("hello 1", menu) is None


def test_documents_and_cutting_titles():
    doc = document_message("Statement-2026-10-4821.pdf", link="https://files.example/x.pdf", caption="October")
    assert doc == {"type": "document", "document": {"link": "https://files.example/x.pdf",
                                                    "filename": "Statement-2026-10-4821.pdf", "caption": "October"}}
    assert document_message("a.pdf", media_id="m1")["document"]["id"] == "m1"
    assert cut("Travel Signature card ending 6392", 20) == "Travel Signature"
    assert cut("Supercalifragilisticexpialidocious", 20) == "Supercalifragilistic"


def test_secrets_typed_by_mistake_are_hidden_before_anyone_stores_them():
    payload = envelope(
        message("text", {"body": "please block card 4532 7781 0093 4821 i lost it"}, "s1"),
        message("image", {"id": "media-11", "mime_type": "image/png", "caption": "otp is 482913"}, "s2"),
        message("text", {"body": "statement for 12/11 please"}, "s3"),
    )
    card, photo, plain = parse_webhook(payload, PHONE_ID).messages
    assert "4532" not in card.text and "4821" in card.text and card.hidden == ("card number",)
    assert card.metadata()["whatsapp"]["hidden"] == ["card number"]
    assert "482913" not in photo.attachment["caption"] and photo.hidden == ("OTP",)
    assert plain.text == "statement for 12/11 please" and plain.hidden == ()


def test_an_action_calls_body_is_the_json_rasa_would_send():
    import math

    import pytest

    from connectors.whatsapp.channel import action_request_body

    tracker = {"sender_id": "919800000001", "events": [
        {"event": "user", "text": "मेरा बैलेंस क्या है? 😀 a/b \"quoted\" \\ \n\t", "timestamp": 1796328123.1965463,
         "parse_data": {"intent": {"name": "ask_balance", "confidence": 0.9123456789012345},
                        "entities": [], "intent_ranking": [{"name": "x", "confidence": 1e-12}]}},
        {"event": "slot", "name": "amount", "value": 4500.5}, {"event": "slot", "name": "n", "value": -(2 ** 63)},
        {"event": "slot", "name": "none", "value": None}, {"event": "slot", "name": "flag", "value": True}],
        "latest_message": {"text": ""}, "tuple": (1, 2)}
    for value in (tracker, {"big": 2 ** 70}, {"surrogate": "\ud83d"}, {"nan": math.nan}, [], "plain", {1: "int key"}):
        body = action_request_body(value)
        expected = json.dumps(value)
        if isinstance(value, dict) and "nan" in value:
            assert math.isnan(json.loads(body)["nan"]) and "NaN" in expected  # (as json.dumps writes it)
        else:
            assert json.loads(body) == json.loads(expected)
    with pytest.raises(TypeError):
        action_request_body({"a set": {1, 2}})  # as json.dumps raises


def test_action_calls_go_out_with_that_body():
    import asyncio

    from aiohttp import web

    from connectors.whatsapp.channel import GuardedActionEndpoint

    async def scenario():
        received = []

        async def webhook(request):
            received.append(await request.text())
            return web.json_response({"events": [], "responses": []})

        app = web.Application()
        app.router.add_post("/webhook", webhook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        endpoint = GuardedActionEndpoint(f"http://127.0.0.1:{port}/webhook")
        try:
            answer = await endpoint.request(json={"next_action": "action_x", "text": "₹ 4,500 / café"}, method="post")
        finally:
            await GuardedActionEndpoint.close_clients()
            await runner.cleanup()
        assert answer == {"events": [], "responses": []}
        assert json.loads(received[0]) == {"next_action": "action_x", "text": "₹ 4,500 / café"}
        assert "₹ 4,500 / café" in received[0]  # UTF-8, not escaped

    asyncio.run(scenario())
