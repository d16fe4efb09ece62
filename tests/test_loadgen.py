"""bench.loadgen.WebhookPoster: the load generator posts webhooks as Meta does, each request
in one write on kept-alive connections, and a connection the server closed is replaced."""
from __future__ import annotations

import asyncio

from aiohttp import web

from bench.loadgen import WebhookPoster
from connectors.whatsapp.signature import is_signed_by


def test_webhooks_are_posted_signed_whole_and_on_kept_alive_connections():
    async def go():
        seen, peers = [], set()

        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            seen.append((body, is_signed_by(body, request.headers.get("X-Hub-Signature-256"), ["secret"])))
            peers.add(request.transport.get_extra_info("peername"))
            return web.json_response({"status": "received"}, status=200 if body != b'{"n": 3}' else 503)

        app = web.Application()
        app.router.add_post("/webhooks/whatsapp/webhook", hook)
        runner = web.AppRunner(app, keepalive_timeout=0.3)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        poster = WebhookPoster(f"http://127.0.0.1:{port}/webhooks/whatsapp/webhook", "secret")
        try:
            statuses = [await poster.post(poster.request(f'{{"n": {n}}}'.encode())) for n in range(5)]
            kept_alive = len(peers)
            await asyncio.sleep(0.6)  # the server closes the idle connection
            after_close = await poster.post(poster.request(b'{"n": 5}'))
            together = await asyncio.gather(*(poster.post(poster.request(b'{"n": 6}')) for _ in range(4)))
            await asyncio.sleep(0.6)  # ... and then four idle ones at once
            again = await asyncio.gather(*(poster.post(poster.request(b'{"n": 7}')) for _ in range(4)))
        finally:
            await poster.close()
            await runner.cleanup()
        return statuses, kept_alive, [after_close] + together + again, seen

    statuses, kept_alive, later, seen = asyncio.run(go())
    assert statuses == [200, 200, 200, 503, 200] and kept_alive == 1
    assert later == [200] * 9
    assert [body for body, _ in seen] == [f'{{"n": {n}}}'.encode() for n in range(6)] + [b'{"n": 6}'] * 4 + [b'{"n": 7}'] * 4
    assert all(signed for _, signed in seen)


def test_no_server_is_no_answer():
    async def go():
        poster = WebhookPoster("http://127.0.0.1:1/webhooks/whatsapp/webhook", "secret")
        return await poster.post(poster.request(b"{}"))

    assert asyncio.run(go()) is None


def test_both_targets_close_cleanly():
    from bench.loadgen import GraphStandIn, RestTarget, WhatsAppTarget

    async def go():
        rest = RestTarget("http://127.0.0.1:1/webhooks/rest/webhook")
        await rest.close()
        graph = GraphStandIn("secret", "1111")
        await graph.start()
        whatsapp = WhatsAppTarget("http://127.0.0.1:1/webhooks/whatsapp/webhook", graph, "secret", "1111")
        await whatsapp.close()
        await graph.stop()

    asyncio.run(go())
