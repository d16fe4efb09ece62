"""bench.loadgen: the load generator posts webhooks as Meta does, each request in one write on
kept-alive connections, and a connection the server closed is replaced; a closed loop's
customers start over its ramp, a burst's all at once, and every message is counted."""
from __future__ import annotations

import asyncio
import time

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


class FakeTarget:
    """Answers every message 10 ms after it is sent; notes when each was sent."""

    kind = "whatsapp"

    def __init__(self) -> None:
        self.sent = []

    async def send(self, sender, text):
        self.sent.append((sender, time.perf_counter()))
        reply = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, lambda: reply.set_result(time.perf_counter()))
        return 1.0, reply

    def duplicates(self):
        return 0


def test_closed_loop_customers_start_over_the_ramp_and_each_is_measured():
    from bench.loadgen import closed_loop

    target = FakeTarget()
    senders = [f"91{n}" for n in range(10)]
    started = time.perf_counter()
    block = asyncio.run(closed_loop(target, senders, 1.0, "closed 10", ramp=0.5))
    first = {}
    for sender, moment in target.sent:
        first.setdefault(sender, moment - started)
    assert first["910"] < 0.05 and 0.4 <= first["919"] < 0.55  # customer i starts i/10 of the ramp in
    assert sorted(first.values()) == [first[s] for s in senders]
    assert block.answered > 20 and block.lost == 0
    assert len(block.ack_ms) == len(target.sent)  # the ramp's messages are measured too


def test_a_burst_posts_every_customer_at_once_and_counts_every_answer():
    from bench.loadgen import burst

    target = FakeTarget()
    block = asyncio.run(burst(target, [f"91{n}" for n in range(20)], "burst 20"))
    moments = [moment for _, moment in target.sent]
    assert len(moments) == 20 and max(moments) - min(moments) < 0.05
    summary = block.summary()
    assert (summary["offered"], summary["sent"], summary["answered"], summary["lost"]) == ("20 at once", 20, 20, 0)
    assert summary["ack_max_ms"] == 1.0 and summary["reply_p50_ms"] >= 10
