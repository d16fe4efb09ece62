"""The WhatsApp channel on a real Sanic server, talking to a fake Graph API over HTTP."""
from __future__ import annotations

import asyncio
import itertools
import json

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from sanic import Sanic

from cardsystem.db import dispose_engine
from connectors.whatsapp.channel import WhatsAppInput
from connectors.whatsapp.signature import sign
from tests.servers import free_port
from tests.whatsapp.test_pieces import envelope, message

pytestmark = pytest.mark.asyncio
SECRET, PHONE_ID = "app-secret", "1111"
_names = itertools.count()


class FakeGraph:
    """Answers like the Graph API's messages endpoint; can be told to fail first."""

    def __init__(self) -> None:
        self.received = []
        self.failures = []  # (http status, error code) to answer before succeeding
        self.ids = itertools.count(1)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        if body.get("status") == "read":
            return web.json_response({"success": True})
        if self.failures:
            status, code = self.failures.pop(0)
            return web.json_response({"error": {"code": code, "message": "fake", "type": "OAuthException"}}, status=status)
        return web.json_response({"messaging_product": "whatsapp", "messages": [{"id": f"wamid.out{next(self.ids)}"}]})

    def sent(self):
        return [b for b in self.received if b.get("type")]


async def serve_graph(handle) -> "tuple[web.AppRunner, int]":
    """A fake Graph API messages endpoint on a free local port."""
    graph_app = web.Application()
    graph_app.router.add_post(f"/v21.0/{PHONE_ID}/messages", handle)
    runner = web.AppRunner(graph_app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@pytest_asyncio.fixture
async def setup(tmp_path):
    graph = FakeGraph()
    runner, graph_port = await serve_graph(graph.handle)
    store_url = f"sqlite:///{tmp_path / 'channel.db'}"
    turns = []

    async def start_bot():
        channel = WhatsAppInput("verify-me", [SECRET], "token", PHONE_ID, f"http://127.0.0.1:{graph_port}", "v21.0",
                                store_url=store_url)

        async def on_new_message(user_message):  # stands in for Rasa's agent
            turns.append(user_message)
            await user_message.output_channel.send_response(user_message.sender_id, {
                "text": f"echo {user_message.text}",
                "buttons": [{"title": "Balance & dues", "payload": "/check_balance"}]})

        app = Sanic(f"wa_test_{next(_names)}")
        Sanic.test_mode = True  # lets Sanic 21.12 start a second app in one process (tests only)
        app.blueprint(channel.blueprint(on_new_message), url_prefix="/webhooks/whatsapp")
        port = free_port()
        server = await app.create_server(host="127.0.0.1", port=port, return_asyncio_server=True)
        await server.startup()
        await server.after_start()
        return channel, server, f"http://127.0.0.1:{port}/webhooks/whatsapp"

    yield graph, start_bot, turns
    await runner.cleanup()
    dispose_engine(store_url)


async def post(url, payload, secret=SECRET, raw=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if secret:
        headers["X-Hub-Signature-256"] = sign(body, secret)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/webhook", data=body, headers=headers) as response:
            return response.status, await response.text()


async def shutdown(channel, server):
    await channel.stop()
    await server.close()


async def settle(channel):
    for _ in range(100):
        await asyncio.sleep(0.02)
        if not channel._tasks:
            return


async def test_handshake_signatures_and_a_turn_with_buttons(setup):
    graph, start_bot, turns = setup
    channel, server, url = await start_bot()
    async with aiohttp.ClientSession() as session:
        ok = await session.get(f"{url}/webhook", params={"hub.mode": "subscribe", "hub.verify_token": "verify-me",
                                                          "hub.challenge": "42"})
        assert ok.status == 200 and await ok.text() == "42"
        bad = await session.get(f"{url}/webhook", params={"hub.mode": "subscribe", "hub.verify_token": "no",
                                                           "hub.challenge": "42"})
        assert bad.status == 403
    payload = envelope(message("text", {"body": "what's my balance"}, "wamid.in1"))
    assert (await post(url, payload, secret="wrong"))[0] == 403
    assert (await post(url, payload, secret=None))[0] == 403
    assert (await post(url, None, raw=b"{not json"))[0] == 200  # signed: acknowledged, never redelivered
    assert not turns and not graph.received  # nothing processed for refused webhooks
    assert (await post(url, payload))[0] == 200
    await settle(channel)
    assert [t.text for t in turns] == ["what's my balance"] and turns[0].sender_id == "919800000001"
    assert turns[0].metadata["whatsapp"]["message_id"] == "wamid.in1"
    [reply] = graph.sent()
    assert reply["to"] == "919800000001" and reply["interactive"]["type"] == "button"
    assert any(b.get("status") == "read" and b["message_id"] == "wamid.in1" for b in graph.received)
    assert channel.store.sends()[0]["status"] == "sent"
    await shutdown(channel, server)


async def test_redelivery_is_answered_once_and_throttling_is_retried(setup):
    graph, start_bot, turns = setup
    channel, server, url = await start_bot()
    graph.failures = [(400, 130429)]  # throughput limit arrives as HTTP 400 and must be retried
    payload = envelope(message("text", {"body": "hi"}, "wamid.dup"))
    assert (await post(url, payload))[0] == 200
    assert (await post(url, payload))[0] == 200
    await settle(channel)
    await asyncio.sleep(1.5)
    assert [t.text for t in turns] == ["hi"]
    assert len(graph.sent()) == 2 and channel.store.sends()[0]["attempts"] == 2
    graph.failures = [(400, 131026)]  # undeliverable: not retried
    assert (await post(url, envelope(message("text", {"body": "again"}, "wamid.2"))))[0] == 200
    await settle(channel)
    assert channel.store.sends()[-1]["status"] == "failed" and channel.store.sends()[-1]["error_code"] == 131026
    await shutdown(channel, server)


async def test_unanswered_message_is_answered_after_a_restart(setup):
    graph, start_bot, turns = setup
    channel, server, url = await start_bot()
    await shutdown(channel, server)
    from connectors.whatsapp.inbound import parse_webhook

    # recorded, then the process "died" before the turn ran
    [pending] = parse_webhook(envelope(message("text", {"body": "statement please"}, "wamid.lost")), PHONE_ID).messages
    assert channel.store.record_inbound(pending)
    channel2, server2, _ = await start_bot()
    await settle(channel2)
    assert [t.text for t in turns] == ["statement please"]
    assert channel2.store.pending() == []
    await shutdown(channel2, server2)


def test_a_workers_share_of_the_customers_is_read_from_its_slot(caplog):
    from connectors.whatsapp.channel import worker_slot

    assert worker_slot("1/3") == (1, 3) and worker_slot(" 0 / 2 ") == (0, 2)
    assert worker_slot(None) is None and worker_slot("") is None and worker_slot("0/1") is None  # one worker: all
    for wrong in ("2/2", "a/b", "1", "-1/2"):
        assert worker_slot(wrong) is None
    assert "CARDCARE_WORKER_SLOT" in caplog.text
