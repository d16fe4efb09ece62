"""The load side of `make bench`: customers who write on WhatsApp, and Meta's servers.

Everything here runs on one asyncio loop in the benchmark's own process, so every latency is
measured on one clock:

* `GraphStandIn` plays the Graph API: it takes the bot's sends (POST /{version}/{phone}/messages),
  answers with a wamid as WhatsApp does, records when each reply arrived (the outbox key the
  channel sends as biz_opaque_callback_data names the customer message it answers), and posts
  signed "sent" and "delivered" status webhooks back, as Meta does for every message.
* `WhatsAppTarget` sends a customer's message as Meta would: a signed webhook POST. Its
  acknowledgement time is the POST's; the reply time is the first reply's arrival at the stand-in.
* `RestTarget` sends the same message to Rasa's REST channel (stock Rasa): the reply is the
  HTTP answer.
* `closed_loop` (N customers, each writes when the previous reply came; they start evenly over
  the first second), `burst` (N customers' messages posted in the same instant), `open_loop`
  (messages at a fixed Poisson rate, whatever the replies do; latency counted from the scheduled
  moment, so a stalled server is charged for the wait) and `conversation` (one customer, many
  turns).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from bench.rest_bench import percentile as rest_percentile
from connectors.sandbox.server import message_value, status_value, webhook_body
from connectors.whatsapp.signature import sign

SCRIPT = (
    "hi", "what's my balance", "when is my bill due", "how many reward points do I have",
    "what is the minimum due", "show my recent transactions", "how much credit limit is available",
    "what is the interest rate", "mera bill kab due hai", "thanks",
)
REPLY_TIMEOUT = 60.0
RAMP_SECONDS = 1.0  # a closed loop's customers start evenly over this many seconds
IDLE_SECONDS = 20.0  # a kept-alive webhook connection idle longer is not reused (aiohttp's server closes at 75 s)


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """bench.rest_bench's percentile, None for no values."""
    return rest_percentile(list(values), q) if values else None


@dataclass
class Block:
    """One measured stretch of load."""

    name: str
    offered: str
    seconds: float = 0.0
    sent: int = 0
    answered: int = 0
    lost: int = 0
    duplicated: int = 0
    reply_ms: List[float] = field(default_factory=list)
    ack_ms: List[float] = field(default_factory=list)
    status_ack_ms: List[float] = field(default_factory=list)
    cpu_s: Dict[str, float] = field(default_factory=dict)

    def summary(self) -> Dict[str, object]:
        def r(value: Optional[float]) -> Optional[float]:
            return None if value is None else round(value, 1)

        server_cpu = sum(v for k, v in self.cpu_s.items() if not k.startswith("load"))
        return {
            "block": self.name, "offered": self.offered, "seconds": round(self.seconds, 1), "sent": self.sent,
            "answered": self.answered, "lost": self.lost, "duplicated": self.duplicated,
            "messages_per_s": round(self.answered / self.seconds, 2) if self.seconds else None,
            "reply_p50_ms": r(percentile(self.reply_ms, 50)), "reply_p95_ms": r(percentile(self.reply_ms, 95)),
            "reply_p99_ms": r(percentile(self.reply_ms, 99)),
            "ack_p50_ms": r(percentile(self.ack_ms, 50)), "ack_p99_ms": r(percentile(self.ack_ms, 99)),
            "ack_max_ms": r(max(self.ack_ms) if self.ack_ms else None),
            "status_ack_p99_ms": r(percentile(self.status_ack_ms, 99)),
            "cpu_ms_per_message": round(1000 * server_cpu / self.answered, 1) if self.answered else None,
            "cpu_s": {k: round(v, 2) for k, v in self.cpu_s.items()},
        }


class GraphStandIn:
    """The Graph API, recording: what the bot sent, when, in answer to which customer message."""

    def __init__(self, app_secret: str, phone_number_id: str, statuses: bool = True) -> None:
        self.app_secret = app_secret
        self.phone_number_id = phone_number_id
        self.statuses = statuses
        self.webhook_url: Optional[str] = None  # where status webhooks go (the ingress)
        self.waiting: Dict[str, asyncio.Future] = {}
        self.replies: Dict[str, int] = {}  # outbox key -> times received (more than 1: a duplicate)
        self.status_ack_ms: List[float] = []
        self._ids = itertools.count(1)
        self._tasks: set = set()
        self._runner: Optional[web.AppRunner] = None
        self._poster: Optional[WebhookPoster] = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/{version}/{phone}/messages", self._messages)
        app.router.add_post("/{version}/{phone}/media", self._media)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._poster is not None:
            await self._poster.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def expect(self, message_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting[message_id] = future
        return future

    async def _media(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"id": f"media.{next(self._ids)}"})

    async def _messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("status") == "read":
            return web.json_response({"success": True})
        wamid = f"wamid.out.{next(self._ids)}"
        key = str(body.get("biz_opaque_callback_data") or "")
        recipient = str(body.get("to") or body.get("recipient") or "")
        if key:
            self.replies[key] = self.replies.get(key, 0) + 1
            future = self.waiting.get(key.split(":", 1)[0])
            if future is not None and not future.done():
                future.set_result(time.perf_counter())
        if self.statuses and self.webhook_url and key:
            task = asyncio.ensure_future(self._report(wamid, recipient, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"messaging_product": "whatsapp", "contacts": [{"input": recipient, "wa_id": recipient}],
                                  "messages": [{"id": wamid}]})

    async def _report(self, wamid: str, recipient: str, key: str) -> None:
        """Meta's "sent" then "delivered" for a message, a moment after accepting it."""
        for status in ("sent", "delivered"):
            await asyncio.sleep(0.02)
            raw = json.dumps(webhook_body(self.phone_number_id, status_value(wamid, recipient, status, None, key))).encode()
            if self._poster is None or self._poster.url != self.webhook_url:
                self._poster = WebhookPoster(self.webhook_url, self.app_secret)
            request = self._poster.request(raw)
            started = time.perf_counter()
            if await self._poster.post(request) == 200:
                self.status_ack_ms.append((time.perf_counter() - started) * 1000)


class WebhookPoster:
    """Signed webhooks posted as Meta's servers post them: each request written whole, in one
    write, on kept-alive connections; returns the answer's status (None: no answer).

    (aiohttp 3.9's client writes a request's headers at once and its body from a task of its
    own, a turn of the event loop later: on a busy load generator the ingress sat waiting for
    the body, and that wait, the load generator's own, was counted in the acknowledgement:
    20-30 ms at p99 at 30 customers on a 2-core box.)"""

    def __init__(self, url: str, app_secret: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        self.app_secret = app_secret
        self._idle: List["tuple[asyncio.StreamReader, asyncio.StreamWriter, float]"] = []

    def request(self, raw: bytes) -> bytes:
        return (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"X-Hub-Signature-256: {sign(raw, self.app_secret)}\r\nContent-Length: {len(raw)}\r\n\r\n"
                ).encode() + raw

    async def post(self, request: bytes) -> Optional[int]:
        """`request` from request(); sent on a kept-alive connection, and again on a new one if
        that connection turns out to have been closed by the server meanwhile."""
        connection = self._reusable()
        if connection is not None:
            status = await self._exchange(connection, request)
            if status is not None:
                return status
        try:
            connection = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return None
        return await self._exchange(connection, request)

    def _reusable(self) -> "Optional[tuple[asyncio.StreamReader, asyncio.StreamWriter]]":
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < IDLE_SECONDS and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def _exchange(self, connection, request: bytes) -> Optional[int]:
        reader, writer = connection
        try:
            writer.write(request)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionResetError("closed before an answer")
            status, length, close = int(status_line.split()[1]), 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                elif name.strip().lower() == "connection" and "close" in value.lower():
                    close = True
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            writer.close()
            return None
        if close:
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return status

    async def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()


class WhatsAppTarget:
    """Customers writing to the bank's WhatsApp number (signed webhooks to the ingress)."""

    kind = "whatsapp"

    def __init__(self, webhook_url: str, graph: GraphStandIn, app_secret: str, phone_number_id: str) -> None:
        self.webhook_url = webhook_url
        self.graph = graph
        self.app_secret = app_secret
        self.phone_number_id = phone_number_id
        self.poster = WebhookPoster(webhook_url, app_secret)
        self.run = f"{time.time_ns():x}"
        self._ids = itertools.count(1)

    async def close(self) -> None:
        await self.poster.close()

    async def send(self, sender: str, text: str) -> "tuple[Optional[float], asyncio.Future]":
        """Post the message; (acknowledgement ms or None when refused, future of the reply's arrival)."""
        message_id = f"wamid.bench.{self.run}.{next(self._ids)}"
        value = message_value(sender, "Bench", {"type": "text", "text": {"body": text}})
        value["messages"][0]["id"] = message_id
        raw = json.dumps(webhook_body(self.phone_number_id, value)).encode()
        reply = self.graph.expect(message_id)
        request = self.poster.request(raw)
        started = time.perf_counter()
        ok = await self.poster.post(request) == 200
        return ((time.perf_counter() - started) * 1000 if ok else None), reply

    def duplicates(self) -> int:
        return sum(count - 1 for key, count in self.graph.replies.items() if key.startswith(f"wamid.bench.{self.run}."))


class RestTarget:
    """The same customers on Rasa's REST channel (stock Rasa): the reply is the HTTP answer."""

    kind = "rest"

    def __init__(self, url: str) -> None:
        self.url = f"{url}/webhooks/rest/webhook"
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=REPLY_TIMEOUT * 2))
        self._tasks: set = set()

    async def close(self) -> None:
        await self.session.close()

    async def send(self, sender: str, text: str) -> "tuple[Optional[float], asyncio.Future]":
        reply = asyncio.get_running_loop().create_future()

        async def post() -> None:
            try:
                async with self.session.post(self.url, json={"sender": sender, "message": text}) as answer:
                    replies = await answer.json(content_type=None)
                if answer.status == 200 and replies:
                    reply.set_result(time.perf_counter())
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                pass

        task = asyncio.ensure_future(post())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None, reply

    def duplicates(self) -> int:
        return 0


async def _one(target, block: Block, sender: str, text: str, since: float) -> Optional[float]:
    """Send one message, wait for its reply; the reply's latency in ms from `since`, None if lost."""
    block.sent += 1
    ack, reply = await target.send(sender, text)
    if ack is not None:
        block.ack_ms.append(ack)
    try:
        arrived = await asyncio.wait_for(asyncio.shield(reply), REPLY_TIMEOUT)
    except asyncio.TimeoutError:
        block.lost += 1
        return None
    block.answered += 1
    latency = (arrived - since) * 1000
    block.reply_ms.append(latency)
    return latency


async def closed_loop(target, senders: Sequence[str], seconds: float, name: str, offset: int = 0,
                      ramp: float = RAMP_SECONDS) -> Block:
    """len(senders) customers, each writing again as soon as the previous reply came. They
    start `ramp` seconds apart in all, evenly (customers do not write in the same millisecond;
    that case is burst()'s); every message from the first one on is measured."""
    block = Block(name, f"{len(senders)} users")
    deadline = time.perf_counter() + seconds
    finished: List[float] = []

    async def customer(index: int, sender: str) -> None:
        turn = offset + index
        await asyncio.sleep(ramp * index / len(senders))
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            if await _one(target, block, sender, SCRIPT[turn % len(SCRIPT)], started) is not None:
                finished.append(time.perf_counter())
            turn += 1

    started = time.perf_counter()
    await asyncio.gather(*(customer(i, s) for i, s in enumerate(senders)))
    block.seconds = deadline - started
    in_time = sum(1 for moment in finished if moment <= deadline)
    block.answered, extra = in_time, block.answered - in_time  # throughput counts what was answered in time
    block.sent -= extra  # (the last replies, after the deadline, are checked for loss but not counted)
    block.duplicated = target.duplicates()
    return block


async def burst(target, senders: Sequence[str], name: str, text: str = "what is my balance") -> Block:
    """One message from each sender, all posted in the same instant (as a synchronized start, or
    Meta redelivering a backlog, would): their acknowledgements and replies."""
    block = Block(name, f"{len(senders)} at once")
    started = time.perf_counter()
    await asyncio.gather(*(_one(target, block, sender, text, started) for sender in senders))
    block.seconds = time.perf_counter() - started
    block.duplicated = target.duplicates()
    return block


async def open_loop(target, senders: Sequence[str], rate: float, seconds: float, name: str, seed: int = 7) -> Block:
    """Messages at `rate` per second (Poisson), round-robin over `senders`, whatever the replies do."""
    block = Block(name, f"{rate:g} msg/s")
    rng = random.Random(seed)
    moments, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            break
        moments.append(t)
    started = time.perf_counter()
    tasks = []
    for number, moment in enumerate(moments):
        delay = started + moment - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sender = senders[number % len(senders)]
        text = SCRIPT[(number // len(senders)) % len(SCRIPT)]
        tasks.append(asyncio.ensure_future(_one(target, block, sender, text, started + moment)))
    await asyncio.gather(*tasks)
    block.seconds = seconds
    block.duplicated = target.duplicates()
    return block


async def conversation(target, sender: str, turns: int) -> List[float]:
    """One customer, `turns` messages one after another: each turn's reply latency in ms."""
    block = Block("conversation", "1 user")
    latencies = []
    for turn in range(turns):
        started = time.perf_counter()
        latency = await _one(target, block, sender, SCRIPT[turn % len(SCRIPT)], started)
        latencies.append(latency if latency is not None else float("nan"))
    return latencies
