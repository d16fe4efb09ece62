"""The channel against the project's sandbox as its Graph API, both on real HTTP servers:
numbered menus typed back, media both ways, delivery statuses, the 24-hour window, and
per-customer order across two instances sharing one database."""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import itertools
import os
import stat

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from sanic import Sanic

from cardsystem.db import dispose_engine
from connectors.sandbox.server import make_app
from connectors.whatsapp.channel import WhatsAppInput, WhatsAppOutput
from connectors.whatsapp.inbound import parse_webhook
from connectors.whatsapp.store import ChannelStore
from tests.servers import free_port
from tests.whatsapp.test_channel import post, settle, shutdown
from tests.whatsapp.test_pieces import envelope, message

pytestmark = pytest.mark.asyncio
SECRET, PHONE_ID, CUSTOMER = "app-secret", "1111", "919800000001"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
_names = itertools.count()


async def serve_aiohttp(app):
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture
async def world(tmp_path):
    """A sandbox (Graph API) and a factory of bot instances sharing one channel database."""
    bot_port = free_port()
    sandbox = make_app(f"http://127.0.0.1:{bot_port}/webhooks/whatsapp/webhook", SECRET, PHONE_ID)
    runner, sandbox_url = await serve_aiohttp(sandbox)
    store_url = f"sqlite:///{tmp_path / 'channel.db'}"
    started = []

    async def start_bot(on_new_message, port=None, **options):
        channel = WhatsAppInput("verify", [SECRET], "token", PHONE_ID, sandbox_url, "v21.0", store_url=store_url,
                                media_dir=str(tmp_path / "media"), **options)
        app = Sanic(f"wa_sandbox_test_{next(_names)}")
        Sanic.test_mode = True
        app.blueprint(channel.blueprint(on_new_message), url_prefix="/webhooks/whatsapp")
        server = await app.create_server(host="127.0.0.1", port=port or free_port(), return_asyncio_server=True)
        await server.startup()
        await server.after_start()
        started.append((channel, server))
        return channel, f"http://127.0.0.1:{server.server.sockets[0].getsockname()[1]}/webhooks/whatsapp"

    yield sandbox["outbox"], start_bot, bot_port, tmp_path
    for channel, server in started:
        await shutdown(channel, server)
    await runner.cleanup()
    dispose_engine(store_url)


async def test_a_typed_number_answers_a_numbered_menu(world):
    outbox, start_bot, bot_port, _ = world
    turns = []
    options = [{"title": f"Reward item {i}", "payload": f'/redeem_rewards{{"reward_code":"R{i}"}}'} for i in range(1, 13)]

    async def bot(user_message):
        turns.append((user_message.text, user_message.metadata["whatsapp"].get("menu_choice")))
        if len(turns) == 1:
            await user_message.output_channel.send_response(user_message.sender_id, {"text": "Pick one",
                                                                                      "buttons": options})

    channel, url = await start_bot(bot, port=bot_port)
    await post(url, envelope(message("text", {"body": "redeem"}, "wamid.m1")))
    await settle(channel)
    menu = outbox.messages[-1]["message"]["text"]["body"]
    assert "12. Reward item 12" in menu and "Reply with a number" in menu
    await post(url, envelope(message("text", {"body": " 7. "}, "wamid.m2")))
    await settle(channel)
    await post(url, envelope(message("text", {"body": "7"}, "wamid.m3")))  # the menu was answered already
    await settle(channel)
    assert turns == [("redeem", None), ('/redeem_rewards{"reward_code":"R7"}', "7."), ("7", None)]


async def test_customer_media_is_fetched_checked_and_kept_for_the_actions(world):
    outbox, start_bot, bot_port, tmp_path = world
    turns = []

    async def bot(user_message):
        turns.append(user_message)

    channel, url = await start_bot(bot, port=bot_port)
    stored = outbox.keep(PNG, "image/png", None)
    image = {"id": stored.media_id, "mime_type": "image/png", "sha256": stored.sha256, "caption": "the charge"}
    await post(url, envelope(message("image", image, "wamid.img")))
    forged = outbox.keep(b"not what the hash says", "image/png", None)
    await post(url, envelope(message("image", {"id": forged.media_id, "mime_type": "image/png",
                                                "sha256": "0" * 64}, "wamid.bad")))
    await settle(channel)
    good, bad = [t.metadata["attachment"] for t in turns]
    assert turns[0].text == "the charge" and good["media_id"] == stored.media_id
    kept = tmp_path / "media" / good["stored"]
    assert kept.read_bytes() == PNG and good["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600
    assert "stored" not in bad and bad["media_id"] == forged.media_id  # the turn still runs, unstored


async def test_documents_are_uploaded_and_sent_by_media_id(world):
    outbox, start_bot, bot_port, tmp_path = world
    pdf = b"%PDF-1.7 statement"
    files = web.Application()
    files.router.add_get("/statements/{name}", lambda r: web.Response(body=pdf, content_type="application/pdf"))
    runner, files_url = await serve_aiohttp(files)

    async def bot(user_message):
        await user_message.output_channel.send_response(user_message.sender_id, {
            "attachment": f"{files_url}/statements/Statement-2026-10-1234.pdf"})
        await user_message.output_channel.send_response(user_message.sender_id, {
            "attachment": f"{files_url}/missing/Other.pdf"})

    channel, url = await start_bot(bot, port=bot_port)
    await post(url, envelope(message("text", {"body": "statement"}, "wamid.s")))
    await settle(channel)
    uploaded, by_link = [m["message"]["document"] for m in outbox.messages]
    assert uploaded["filename"] == "Statement-2026-10-1234.pdf" and "link" not in uploaded
    assert outbox.media[uploaded["id"]].content == pdf and outbox.media[uploaded["id"]].mime_type == "application/pdf"
    assert by_link == {"link": f"{files_url}/missing/Other.pdf", "filename": "Other.pdf"}  # fetch failed: by link
    await runner.cleanup()


async def test_delivery_statuses_come_back_and_are_recorded(world):
    outbox, start_bot, bot_port, _ = world
    turns = []

    async def bot(user_message):
        turns.append(user_message.text)
        await user_message.output_channel.send_response(user_message.sender_id, {"text": "hello"})

    channel, url = await start_bot(bot, port=bot_port)
    await post(url, envelope(message("text", {"body": "hi"}, "wamid.st1")))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if channel.store.sends() and channel.store.sends()[0]["status"] == "delivered":
            break
    assert channel.store.sends()[0]["status"] == "delivered" and turns == ["hi"]  # statuses never reach Rasa
    assert outbox.read == ["wamid.st1"]
    outbox.status_failures = [131026]
    await post(url, envelope(message("text", {"body": "again"}, "wamid.st2")))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if len(channel.store.sends()) == 2 and channel.store.sends()[1]["status"] == "failed":
            break
    assert channel.store.sends()[1]["status"] == "failed" and channel.store.sends()[1]["error_code"] == 131026


async def test_free_form_replies_outside_the_24_hour_window_are_refused(world):
    outbox, start_bot, bot_port, _ = world
    channel, _url = await start_bot(lambda m: None, port=bot_port)
    output = WhatsAppOutput(channel.client)
    await output.send_text_message("919811111111", "Your bill is due")  # never wrote to us
    assert output.refused == 1 and outbox.messages == []
    [refusal] = channel.store.sends("919811111111")
    assert refusal["status"] == "refused" and refusal["error_code"] == 131047
    submitted = outbox.templates.create({"name": "payment_due_reminder", "language": "en", "category": "UTILITY",
                                         "components": [{"type": "BODY", "text": "Your card bill is due."}]}, "waba")
    outbox.templates.decide(submitted.id, "APPROVED")  # only an approved template is sent (132001 otherwise)
    template = {"type": "template", "template": {"name": "payment_due_reminder", "language": {"code": "en"}}}
    await output.send_custom_json("919811111111", template)  # templates are allowed
    assert outbox.messages[-1]["message"]["type"] == "template" and output.refused == 1


async def test_one_customer_is_answered_in_order_by_one_instance_at_a_time(world):
    outbox, start_bot, bot_port, _ = world
    busy, log = set(), []

    def bot_for(name):
        async def bot(user_message):
            assert user_message.sender_id not in busy, "two instances answered one customer at once"
            busy.add(user_message.sender_id)
            await asyncio.sleep(0.05)
            log.append((user_message.sender_id, user_message.text, name))
            busy.discard(user_message.sender_id)
        return bot

    one, url_one = await start_bot(bot_for("one"), port=bot_port, sweep_seconds=0.5)
    two, url_two = await start_bot(bot_for("two"), sweep_seconds=0.5)
    senders = ["919800000001", "919800000002"]
    for n in range(8):  # Meta may deliver consecutive messages to either instance
        for sender in senders:
            body = envelope(message("text", {"body": f"m{n}"}, f"wamid.{sender}.{n}", sender=sender),
                            contacts=[{"wa_id": sender, "profile": {"name": "x"}}])
            await post(url_one if (n + int(sender[-1])) % 2 else url_two, body)
    for _ in range(200):
        await asyncio.sleep(0.05)
        if len(log) == 16 and not one.store.pending():
            break
    for sender in senders:
        assert [text for s, text, _ in log if s == sender] == [f"m{n}" for n in range(8)]
    assert one.store.pending() == [] and {name for *_, name in log} <= {"one", "two"}


async def test_a_message_left_by_a_dead_instance_is_answered_by_another(world):
    outbox, start_bot, bot_port, _ = world
    turns = []

    async def bot(user_message):
        turns.append(user_message.text)

    store = ChannelStore(f"sqlite:///{world[3] / 'channel.db'}")
    [orphan] = parse_webhook(envelope(message("text", {"body": "block my card"}, "wamid.orphan")), PHONE_ID).messages
    store.record_inbound(orphan, received_at=dt.datetime.utcnow() - dt.timedelta(seconds=5))
    assert store.acquire(orphan.sender, "dead-instance", ttl=dt.timedelta(seconds=1))  # it died holding the lease
    channel, _ = await start_bot(bot, port=bot_port, sweep_seconds=0.3)
    for _ in range(100):  # the turn, then its commit (the message marked answered) a moment later
        await asyncio.sleep(0.05)
        if turns and not channel.store.pending():
            break
    assert turns == ["block my card"] and channel.store.pending() == []


async def test_messages_the_bot_cannot_use_get_a_polite_reply_and_never_reach_rasa(world):
    outbox, start_bot, bot_port, _ = world
    turns = []

    async def bot(user_message):
        turns.append(user_message.text)

    channel, url = await start_bot(bot, port=bot_port)
    kinds = [
        message("location", {"latitude": 12.97, "longitude": 77.59, "name": "MG Road"}, "wamid.p1"),
        message("contacts", [{"name": {"formatted_name": "Ravi"}}], "wamid.p2"),
        message("reaction", {"message_id": "wamid.out1", "emoji": "\U0001F44D"}, "wamid.p3"),
        message("reaction", {"message_id": "wamid.out1", "emoji": ""}, "wamid.p4"),  # taken back: no reply
        message("audio", {"id": "9", "mime_type": "audio/ogg", "voice": True}, "wamid.p5"),
        message("sticker", {"id": "10", "mime_type": "image/webp"}, "wamid.p6"),
        {"from": CUSTOMER, "id": "wamid.p7", "timestamp": "1795500000", "type": "unsupported",
         "errors": [{"code": 131051, "title": "Message type unknown"}]},
    ]
    for body in kinds:
        status, _ = await post(url, envelope(body))
        assert status == 200
    await settle(channel)
    replies = [m["message"]["text"]["body"] for m in outbox.messages]
    assert len(replies) == 6 and turns == []
    assert replies[0].startswith("Thanks for sharing your location") and "contacts" in replies[1]
    assert replies[2].startswith("Thanks for the \U0001F44D") and "voice messages" in replies[3]
    assert replies[4].startswith("Nice sticker") and replies[5].startswith("Sorry, I can't read that kind")
    assert channel.store.pending() == []
