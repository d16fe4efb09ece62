"""The sandbox's Graph API checks what the real one checks for the shapes cardcare sends."""
import asyncio

import pytest

from connectors.sandbox.graph_api import GraphError, Outbox, validate
from connectors.whatsapp.outbound import buttons_message, text_message


def send(message, to="919800000001"):
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, **message}


def test_what_the_channel_sends_is_accepted():
    assert validate(send(text_message("hello"))) == "919800000001"
    for count in (2, 8, 12):
        for message in buttons_message("Pick", [{"title": f"Option {i}", "payload": f"/p{i}"} for i in range(count)])[0]:
            validate(send(message))
    outbox = Outbox()
    answer = outbox.accept(send(text_message("hi")))
    assert answer["messages"][0]["id"].startswith("wamid.") and outbox.for_recipient("919800000001")


@pytest.mark.parametrize("body, code", [
    ({"to": "9198", "type": "text", "text": {"body": "x"}}, 100),                      # no messaging_product
    (send(text_message("x" * 4097)), 100),
    (send({"type": "interactive", "interactive": {"type": "button", "body": {"text": "t"}, "action": {"buttons": [
        {"type": "reply", "reply": {"id": str(i), "title": f"b{i}"}} for i in range(4)]}}}), 131009),
    (send({"type": "interactive", "interactive": {"type": "button", "body": {"text": "t"}, "action": {"buttons": [
        {"type": "reply", "reply": {"id": "1", "title": "x" * 21}}]}}}), 100),
    (send({"type": "poll", "poll": {}}), 131051),
    ("not json", 100),
])
def test_invalid_sends_get_graph_errors(body, code):
    with pytest.raises(GraphError) as error:
        validate(body)
    assert error.value.code == code and error.value.body()["error"]["code"] == code


def test_the_sandbox_can_be_told_to_fail():
    outbox = Outbox()
    outbox.failures = [130429]
    with pytest.raises(GraphError) as error:
        outbox.accept(send(text_message("hi")))
    assert error.value.code == 130429 and error.value.http_status == 400
    assert outbox.accept(send(text_message("hi")))["messages"]


def test_media_uploads_are_checked_like_the_media_endpoint():
    outbox = Outbox()
    answer = outbox.upload({"messaging_product": "whatsapp", "type": "application/pdf"}, b"%PDF-1.7", "s.pdf", None)
    stored = outbox.media[answer["id"]]
    assert stored.content == b"%PDF-1.7" and stored.filename == "s.pdf" and len(stored.sha256) == 64
    document = {"type": "document", "document": {"id": answer["id"], "filename": "s.pdf"}}
    assert outbox.accept(send(document))["messages"]
    for fields, content, code in [({"type": "application/pdf"}, b"x", 100),                       # no messaging_product
                                  ({"messaging_product": "whatsapp", "type": "application/pdf"}, None, 100),
                                  ({"messaging_product": "whatsapp", "type": "application/zip"}, b"x", 131053),
                                  ({"messaging_product": "whatsapp", "type": "image/png"}, b"x" * (5 << 20 + 1), 131053),
                                  ({"messaging_product": "whatsapp", "type": "image/png"}, b"", 131053)]:
        with pytest.raises(GraphError) as error:
            outbox.upload(fields, content, "f", None)
        assert error.value.code == code
    with pytest.raises(GraphError):  # a media id the sandbox never issued
        outbox.accept(send({"type": "document", "document": {"id": "404", "filename": "x.pdf"}}))


@pytest.mark.asyncio
async def test_media_download_needs_the_token_and_statuses_reach_the_bot():
    import aiohttp
    from aiohttp import web

    from connectors.sandbox.server import make_app
    from connectors.whatsapp.signature import is_signed_by
    from tests.servers import free_port

    webhooks = []

    async def bot(request):
        raw = await request.read()
        assert is_signed_by(raw, request.headers.get("X-Hub-Signature-256"), ["s3cret"])
        webhooks.append(await request.json())
        return web.json_response({"status": "received"})

    bot_app = web.Application()
    bot_app.router.add_post("/webhook", bot)
    runners = []
    urls = []
    bot_port, sandbox_port = free_port(), free_port()
    for app, port in ((bot_app, bot_port), (make_app(f"http://127.0.0.1:{bot_port}/webhook", "s3cret", "1111"), sandbox_port)):
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{port}")
    sandbox = urls[1]
    auth = {"Authorization": "Bearer t"}
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", "image/png")
        form.add_field("file", b"\x89PNG...", filename="shot.png", content_type="image/png")
        async with http.post(f"{sandbox}/v21.0/1111/media", data=form, headers=auth) as answer:
            media_id = (await answer.json())["id"]
        async with http.get(f"{sandbox}/v21.0/{media_id}") as answer:
            assert answer.status == 401 and (await answer.json())["error"]["code"] == 190
        async with http.get(f"{sandbox}/v21.0/{media_id}", headers=auth) as answer:
            info = await answer.json()
        assert info["mime_type"] == "image/png" and info["file_size"] == 7
        async with http.get(info["url"]) as answer:
            assert answer.status == 401  # the download URL needs the token too
        async with http.get(info["url"], headers=auth) as answer:
            assert await answer.read() == b"\x89PNG..."
        async with http.post(f"{sandbox}/v21.0/1111/messages", headers=auth,
                             json=send({"type": "text", "text": {"body": "hi"}})) as answer:
            wamid = (await answer.json())["messages"][0]["id"]
        async with http.post(f"{sandbox}/_sandbox/send", json={"from": "91 98", "text": "x"}) as answer:
            assert answer.status == 400  # a sender that is not a number
        async with http.post(f"{sandbox}/_sandbox/send", json={"from": "919800000001", "text": "hello"}) as answer:
            assert (await answer.json())["bot_status"] == 200
        for _ in range(50):
            await asyncio.sleep(0.05)
            if len(webhooks) >= 3:
                break
    statuses = [s for w in webhooks for s in w["entry"][0]["changes"][0]["value"].get("statuses", [])]
    assert [(s["id"], s["status"]) for s in statuses] == [(wamid, "sent"), (wamid, "delivered")]
    said = [m for w in webhooks for m in w["entry"][0]["changes"][0]["value"].get("messages", [])]
    assert said[0]["text"]["body"] == "hello"
    for runner in runners:
        await runner.cleanup()
