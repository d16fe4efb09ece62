"""Workers woken by PostgreSQL (connectors.whatsapp.wakeup): the ingress's transaction that
records a customer's message NOTIFYs their number; each listening worker hears it at commit,
never for a rollback or a redelivery, and starts on the customer at once instead of finding
them by polling. Two workers woken together answer each message once (the lease decides).
A listener whose connection is cut polls meanwhile and listens again."""
from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import threading
import time

import psycopg2
import pytest
import pytest_asyncio
from sanic import Sanic

from cardsystem.db import dispose_engine, get_engine
from connectors.whatsapp import channel as channel_module
from connectors.whatsapp.channel import WhatsAppInput
from connectors.whatsapp.inbound import Inbound
from connectors.whatsapp.signature import sign
from connectors.whatsapp.store import Base, ChannelStore
from connectors.whatsapp.wakeup import InboundListener
from connectors.whatsapp.webhook import WebhookReceiver
from tests.servers import free_port
from tests.whatsapp.test_channel import PHONE_ID, SECRET, FakeGraph, serve_graph
from tests.whatsapp.test_pieces import envelope, message
from tests.whatsapp.test_store import POSTGRES, require_postgres

_names = itertools.count()


@pytest.fixture
def pg_url():
    require_postgres(POSTGRES)
    Base.metadata.drop_all(get_engine(POSTGRES))
    yield POSTGRES
    Base.metadata.drop_all(get_engine(POSTGRES))
    dispose_engine(POSTGRES)


class Heard:
    """What a listener heard, thread-safely."""

    def __init__(self) -> None:
        self.senders, self.lock = [], threading.Lock()

    def __call__(self, sender: str) -> None:
        with self.lock:
            self.senders.append(sender)

    def wait_for(self, count: int, seconds: float = 5.0) -> list:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(self.senders) < count:
            time.sleep(0.02)
        time.sleep(0.2)  # and nothing more after it
        return list(self.senders)


def listening(listener: InboundListener, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not listener.listening:
        time.sleep(0.02)
    return listener.listening


def inbound(mid: str, sender: str) -> Inbound:
    return Inbound(message_id=mid, sender=sender, reply_by="to", kind="text", text="balance", timestamp=0)


def test_every_listening_worker_hears_a_recorded_customer_once_per_commit(pg_url):
    store = ChannelStore(pg_url)
    heard = [Heard(), Heard()]
    listeners = [InboundListener(store.engine, h) for h in heard]
    for listener in listeners:
        listener.start()
    try:
        assert all(listening(listener) for listener in listeners)
        store.record_webhooks([inbound("wamid.1", "919800000001"), inbound("wamid.2", "919800000001"),
                               inbound("wamid.3", "919800000002")], [])
        for each in heard:  # one notification per customer and commit, whoever listens
            assert sorted(each.wait_for(2)) == ["919800000001", "919800000002"]
        store.record_webhooks([inbound("wamid.1", "919800000001")], [])  # a redelivery: nothing new
        store.record_inbound(inbound("wamid.4", "919800000003"))
        assert heard[0].wait_for(3)[2:] == ["919800000003"]
    finally:
        for listener in listeners:
            listener.stop()


@pytest.fixture
def listened(pg_url):
    """A channel store on PostgreSQL and one listener on it, listening: (store, what it heard)."""
    store, heard = ChannelStore(pg_url), Heard()
    listener = InboundListener(store.engine, heard)
    listener.start()
    try:
        assert listening(listener)
        yield store, heard, listener
    finally:
        listener.stop()


def test_a_batch_that_rolls_back_wakes_nobody(listened, monkeypatch):
    store, heard, _ = listened

    def broken(_session, _status):
            raise RuntimeError("the statuses spoil the batch")

    monkeypatch.setattr(store, "_record_delivery", broken)
    with pytest.raises(RuntimeError):
        store.record_webhooks([inbound("wamid.9", "919800000009")], [object()])
    assert heard.wait_for(1, seconds=1.0) == []
    assert store.pending() == []


def test_a_listener_whose_connection_is_cut_listens_again(listened):
    store, heard, listener = listened
    admin = psycopg2.connect(POSTGRES)
    admin.autocommit = True
    with admin.cursor() as cursor:  # the database drops the listener's connection
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()")
    admin.close()
    deadline = time.monotonic() + 5
    while listener.listening and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not listener.listening  # (the worker polls quickly meanwhile)
    assert listening(listener)
    store.record_inbound(inbound("wamid.5", "919800000005"))
    assert heard.wait_for(1) == ["919800000005"]


# -- two Rasa workers behind an ingress, woken by the database ---------------------------------

@pytest_asyncio.fixture
async def workers(pg_url, monkeypatch):
    """Two channels (workers) behind an ingress on PostgreSQL, with polling slowed to a crawl:
    only a wake-up can get a message answered quickly."""
    monkeypatch.setattr(channel_module, "INGRESS_POLL_SECONDS", 30.0)
    monkeypatch.setattr(channel_module, "DUE_SECONDS", 30.0)
    graph = FakeGraph()
    runner, graph_port = await serve_graph(graph.handle)
    turns, started = [], []

    async def start_worker(name: str, slot: str = ""):
        channel = WhatsAppInput("verify-me", [SECRET], "token", PHONE_ID, f"http://127.0.0.1:{graph_port}", "v21.0",
                                store_url=pg_url, ingress=True, slot=slot)

        async def on_new_message(user_message):  # stands in for Rasa's agent
            turns.append((name, user_message.text, user_message.sender_id))
            await user_message.output_channel.send_response(user_message.sender_id,
                                                            {"text": f"echo {user_message.text}"})

        app = Sanic(f"wa_wakeup_{next(_names)}")
        Sanic.test_mode = True
        app.blueprint(channel.blueprint(on_new_message), url_prefix="/webhooks/whatsapp")
        server = await app.create_server(host="127.0.0.1", port=free_port(), return_asyncio_server=True)
        await server.startup()
        await server.after_start()
        started.append((channel, server))
        return channel

    yield start_worker, graph, turns
    for channel, server in started:
        await channel.stop()
        await server.close()
    await runner.cleanup()


def webhook(mid: str, text: str, sender: str) -> "tuple[bytes, str]":
    raw = json.dumps(envelope(message("text", {"body": text}, mid, sender))).encode()
    return raw, sign(raw, SECRET)


@pytest.mark.asyncio
async def test_two_workers_woken_together_answer_each_message_once_in_order(workers, pg_url):
    start_worker, graph, turns = workers
    first, second = await start_worker("first"), await start_worker("second")
    for _ in range(200):
        if first._listener.listening and second._listener.listening:
            break
        await asyncio.sleep(0.05)
    assert first._poll_seconds() == second._poll_seconds() == channel_module.DUE_SECONDS
    ingress = WebhookReceiver(ChannelStore(pg_url), [SECRET], PHONE_ID, "verify-me")
    customers = [f"91980000{n:04d}" for n in range(6)]
    for round_ in range(3):
        batch = [webhook(f"wamid.{c}.{round_}", f"msg {round_}", c) for c in customers]
        assert [r.status for r in await asyncio.to_thread(ingress.receive_many, batch)] == [200] * len(batch)
    deadline = time.monotonic() + 10  # polling would take 30 s
    while len(graph.sent()) < 18 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    replies = graph.sent()
    assert len(replies) == 18, replies
    for customer in customers:  # each message answered once, in the customer's order
        assert [r["text"]["body"] for r in replies if r["to"] == customer] == ["echo msg 0", "echo msg 1", "echo msg 2"]
    assert ChannelStore(pg_url).pending() == []
    assert {name for name, _, _ in turns} <= {"first", "second"} and len(turns) == 18


async def until_answered(graph, count: int, seconds: float) -> list:
    deadline = time.monotonic() + seconds
    while len(graph.sent()) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return graph.sent()


@pytest.mark.asyncio
async def test_each_worker_answers_its_own_share_of_the_customers(workers, pg_url):
    start_worker, graph, turns = workers
    first, second = await start_worker("first", "0/2"), await start_worker("second", "1/2")
    for _ in range(200):
        if first._listener.listening and second._listener.listening:
            break
        await asyncio.sleep(0.05)
    ingress = WebhookReceiver(ChannelStore(pg_url), [SECRET], PHONE_ID, "verify-me")
    customers = [f"91980000{n:04d}" for n in range(8)]
    assert {first.mine(c) for c in customers} == {True, False}  # both have a share ...
    assert all(first.mine(c) != second.mine(c) for c in customers)  # ... and no customer is in both
    for round_ in range(3):
        batch = [webhook(f"wamid.{c}.{round_}", f"msg {round_}", c) for c in customers]
        assert [r.status for r in await asyncio.to_thread(ingress.receive_many, batch)] == [200] * len(batch)
    replies = await until_answered(graph, 24, 10)
    assert len(replies) == 24
    for customer in customers:
        assert [r["text"]["body"] for r in replies if r["to"] == customer] == ["echo msg 0", "echo msg 1", "echo msg 2"]
        owner = "first" if first.mine(customer) else "second"
        assert {name for name, _, sender in turns if sender == customer} == {owner}


@pytest.mark.asyncio
async def test_another_workers_customer_is_answered_once_they_have_waited(workers, pg_url, monkeypatch, caplog):
    """Their worker is down (or far behind): whoever sees them waiting past AFFINITY_GRACE answers,
    and says so in its log (the number masked)."""
    monkeypatch.setattr(channel_module, "DUE_SECONDS", 0.2)
    monkeypatch.setattr(channel_module, "AFFINITY_GRACE", dt.timedelta(seconds=1.5))
    start_worker, graph, turns = workers
    second = await start_worker("second", "1/2")  # the worker "0/2" never came up
    customer = next(f"91980000{n:04d}" for n in range(20) if not second.mine(f"91980000{n:04d}"))
    ingress = WebhookReceiver(ChannelStore(pg_url), [SECRET], PHONE_ID, "verify-me")
    sent = time.monotonic()
    assert [r.status for r in await asyncio.to_thread(ingress.receive_many, [webhook("wamid.x", "hello", customer)])] \
        == [200]
    replies = await until_answered(graph, 1, 10)
    assert [r["text"]["body"] for r in replies] == ["echo hello"] and turns == [("second", "hello", customer)]
    assert time.monotonic() - sent >= 1.5  # not before: its own worker would have answered by then
    [line] = [r.getMessage() for r in caplog.records if "is answering" in r.getMessage()]
    assert line.startswith("worker 2/2 is answering 1 customer of worker 1/2, whose messages waited 1.5 s or more")
    assert customer[:2] + "******" + customer[-4:] in line and customer not in line


@pytest.mark.asyncio
async def test_replies_a_dead_worker_committed_but_never_sent_are_sent_by_another(workers, pg_url, monkeypatch):
    """Their worker died after committing the turn (message answered, replies queued) and before
    sending: once its lease lapses and the replies have waited AFFINITY_GRACE, whoever sees them
    sends them, once, without running the turn again (a stranger's kill -9 found them waiting
    for the dead worker's restart instead)."""
    monkeypatch.setattr(channel_module, "DUE_SECONDS", 0.2)
    monkeypatch.setattr(channel_module, "INGRESS_POLL_SECONDS", 0.2)
    monkeypatch.setattr(channel_module, "AFFINITY_GRACE", dt.timedelta(seconds=1.5))
    start_worker, graph, turns = workers
    store = ChannelStore(pg_url)
    second = await start_worker("second", "1/2")
    customer = next(f"91980000{n:04d}" for n in range(20) if not second.mine(f"91980000{n:04d}"))
    assert store.acquire(customer, "first-worker", dt.timedelta(seconds=1))  # the first worker holds them ...
    ingress = WebhookReceiver(store, [SECRET], PHONE_ID, "verify-me")
    assert [r.status for r in await asyncio.to_thread(ingress.receive_many, [webhook("wamid.z", "hello", customer)])] \
        == [200]
    store.commit_turn("wamid.z", customer, "to", [{"type": "text", "text": {"body": "answer 1"}},
                                                   {"type": "text", "text": {"body": "answer 2"}}])
    started = time.monotonic()  # ... answered the message, and died before sending a reply
    replies = await until_answered(graph, 2, 10)
    assert [r["text"]["body"] for r in replies] == ["answer 1", "answer 2"] and {r["to"] for r in replies} == {customer}
    assert time.monotonic() - started >= 1.0 and turns == []  # (not before: its worker would have sent them)
    await asyncio.sleep(0.5)
    assert len(graph.sent()) == 2 and store.pending() == []
