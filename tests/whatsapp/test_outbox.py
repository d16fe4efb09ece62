"""Nothing lost, nothing twice: the channel's outbox, guarded turns, retries and dead letters,
on a real Sanic server talking to a fake Graph API over HTTP."""
from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import sys
import time
from types import SimpleNamespace

import pytest
import pytest_asyncio
from aiohttp import web
from sanic import Sanic
from sqlalchemy import select

from cardsystem.db import dispose_engine, session_scope
from connectors.whatsapp import channel as channel_module
from connectors.whatsapp.channel import TurnAborted, WhatsAppInput, typed_text
from connectors.whatsapp.deadletters import main as deadletters
from connectors.whatsapp.store import InboundRecord, OutboxRecord
from tests.servers import free_port
from tests.whatsapp.test_channel import PHONE_ID, SECRET, post, serve_graph
from tests.whatsapp.test_pieces import envelope, message

pytestmark = pytest.mark.asyncio
_names = itertools.count()
CUSTOMER = "919800000001"


class Graph:
    """The Graph API's messages endpoint; fails with HTTP 503 while `down_until` is in the future."""

    def __init__(self) -> None:
        self.accepted = []
        self.refused = 0
        self.down_until = 0.0
        self.ids = itertools.count(1)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("status") == "read":
            return web.json_response({"success": True})
        if time.monotonic() < self.down_until:
            self.refused += 1
            return web.json_response({"error": {"code": 2, "message": "Service temporarily unavailable"}}, status=503)
        self.accepted.append(body)
        return web.json_response({"messaging_product": "whatsapp", "messages": [{"id": f"wamid.out{next(self.ids)}"}]})

    def texts(self):
        return [b["text"]["body"] for b in self.accepted if b.get("type") == "text"]


@pytest_asyncio.fixture
async def world(tmp_path, monkeypatch):
    monkeypatch.setattr(channel_module, "DUE_SECONDS", 0.2)
    graph = Graph()
    runner, graph_port = await serve_graph(graph.handle)
    store_url = f"sqlite:///{tmp_path / 'channel.db'}"
    monkeypatch.setenv("CARDCARE_CHANNEL_DB_URL", store_url)
    servers = []

    async def start(bot, agent=None):
        channel = WhatsAppInput("verify-me", [SECRET], "token", PHONE_ID, f"http://127.0.0.1:{graph_port}", "v21.0",
                                store_url=store_url)
        app = Sanic(f"wa_outbox_{next(_names)}")
        Sanic.test_mode = True
        if agent is not None:
            app.ctx.agent = agent
        app.blueprint(channel.blueprint(bot), url_prefix="/webhooks/whatsapp")
        port = free_port()
        server = await app.create_server(host="127.0.0.1", port=port, return_asyncio_server=True)
        await server.startup()
        await server.after_start()
        servers.append((channel, server))
        return channel, f"http://127.0.0.1:{port}/webhooks/whatsapp"

    yield graph, start
    for channel, server in servers:
        await channel.stop()
        await server.close()
    await runner.cleanup()
    dispose_engine(store_url)


async def until(condition, seconds=15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def states(channel):
    with session_scope(channel.store.engine) as s:
        inbound = {r.message_id: r.state for r in s.execute(select(InboundRecord)).scalars()}
        outbox = [(r.key, r.state) for r in s.execute(select(OutboxRecord).order_by(OutboxRecord.id)).scalars()]
    return inbound, outbox


def echo_bot(turns, replies=2):
    async def bot(user_message):
        turns.append(user_message.text)
        for n in range(replies):
            await user_message.output_channel.send_text_message(user_message.sender_id, f"{user_message.text} #{n}")
    return bot


async def test_replies_wait_out_a_graph_outage_and_go_out_once_in_order(world):
    graph, start = world
    turns = []
    channel, url = await start(echo_bot(turns))
    graph.down_until = time.monotonic() + 2.5
    for n in range(3):
        assert (await post(url, envelope(message("text", {"body": f"m{n}"}, f"wamid.in{n}"))))[0] == 200
    await until(lambda: set(states(channel)[0].values()) == {"done"} and len(states(channel)[0]) == 3)
    assert graph.refused > 0  # the outage was real
    assert graph.texts() == ["m0 #0", "m0 #1", "m1 #0", "m1 #1", "m2 #0", "m2 #1"]
    assert turns == ["m0", "m1", "m2"]  # each turn ran once, though its sends failed
    await asyncio.sleep(1.0)
    assert len(graph.texts()) == 6  # nothing twice
    inbound, outbox = states(channel)
    assert set(inbound.values()) == {"done"} and {state for _, state in outbox} == {"sent"}
    assert [key for key, _ in outbox][:2] == ["wamid.in0:0", "wamid.in0:1"]


async def test_a_failed_action_call_retries_the_whole_turn_and_answers_once(world):
    graph, start = world
    turns = []
    failures = [TurnAborted("action server unreachable (ClientConnectorError)"), TurnAborted("HTTP 502")]

    async def bot(user_message):
        turns.append(user_message.text)
        await user_message.output_channel.send_text_message(user_message.sender_id, "Let me check...")
        if failures:
            raise failures.pop(0)  # as the guarded action endpoint does inside Rasa's processor
        await user_message.output_channel.send_text_message(user_message.sender_id, "Your balance is 1,000")

    channel, url = await start(bot)
    assert (await post(url, envelope(message("text", {"body": "balance"}, "wamid.a"))))[0] == 200
    assert (await post(url, envelope(message("text", {"body": "thanks"}, "wamid.b"))))[0] == 200
    await until(lambda: states(channel)[0] == {"wamid.a": "done", "wamid.b": "done"})
    # the aborted turns' partial replies were never sent; the next message waited its turn
    assert graph.texts() == ["Let me check...", "Your balance is 1,000", "Let me check...", "Your balance is 1,000"]
    assert turns == ["balance", "balance", "balance", "thanks"]
    inbound, _ = states(channel)
    assert inbound == {"wamid.a": "done", "wamid.b": "done"}


async def test_no_model_loaded_is_a_failed_turn_not_an_answered_message(world):
    graph, start = world
    agent = SimpleNamespace(ready=False, is_ready=lambda: agent.ready, processor=None, tracker_store=None)
    turns = []
    channel, url = await start(echo_bot(turns, replies=1), agent=agent)
    assert (await post(url, envelope(message("text", {"body": "hello"}, "wamid.m"))))[0] == 200
    await until(lambda: channel.store.pending() and channel.store.pending()[0].attempts >= 1)
    assert turns == [] and graph.texts() == []
    agent.ready = True
    await until(lambda: states(channel)[0] == {"wamid.m": "done"})
    assert graph.texts() == ["hello #0"]


async def test_past_the_limit_an_apology_with_a_reference_and_a_dead_letter_to_replay(world, capsys):
    graph, start = world
    broken = [True]

    async def bot(user_message):
        if broken[0]:
            raise TurnAborted("action server answered HTTP 500")
        await user_message.output_channel.send_text_message(user_message.sender_id, "Here is your answer")

    channel, url = await start(bot)
    channel.give_up_after = dt.timedelta(seconds=0)
    assert (await post(url, envelope(message("text", {"body": "block my card"}, "wamid.d"))))[0] == 200
    await until(lambda: len(graph.texts()) == 1)
    [apology] = graph.texts()
    [letter] = channel.store.dead_letters()
    assert letter.reference in apology and "call you back" in apology
    assert letter.text == "block my card" and letter.attempts >= 1 and "HTTP 500" in letter.reason
    assert states(channel)[0] == {"wamid.d": "dead"}
    assert deadletters(["list"]) == 0 and letter.reference in capsys.readouterr().out
    broken[0] = False
    assert deadletters(["replay", letter.reference]) == 0
    await until(lambda: states(channel)[0] == {"wamid.d": "done"})
    assert graph.texts()[-1:] == ["Here is your answer"] and channel.store.dead_letters() == []
    assert deadletters(["replay", letter.reference]) == 1  # only once


async def test_after_a_crash_a_saved_turn_is_sent_from_the_tracker_not_run_again(world):
    from rasa.shared.core.events import ActionExecuted, BotUttered, UserUttered
    from rasa.shared.core.trackers import DialogueStateTracker

    graph, start = world
    tracker = DialogueStateTracker.from_events(CUSTOMER, [
        ActionExecuted("action_listen"), UserUttered("balance", message_id="wamid.c"),
        BotUttered("Your balance is 1,000", {"buttons": [{"title": "Pay now", "payload": "/pay_bill"}]}),
        ActionExecuted("action_listen")])

    class Store:
        async def retrieve(self, sender):
            return tracker if sender == CUSTOMER else None

    agent = SimpleNamespace(is_ready=lambda: True, processor=None, tracker_store=Store())
    turns = []
    channel, url = await start(echo_bot(turns), agent=agent)
    await channel.stop()  # no background work while the crash is staged
    channel._spawn = lambda coroutine: coroutine.close()  # (nor the webhook's own drain)
    assert (await post(url, envelope(message("text", {"body": "balance"}, "wamid.c"))))[0] == 200
    channel.store.begin_turn("wamid.c")  # the turn had started when the process died
    await channel.drain(CUSTOMER, echo_bot(turns))
    assert turns == []  # not run twice
    [reply] = graph.accepted
    assert reply["interactive"]["body"]["text"] == "Your balance is 1,000"
    assert reply["biz_opaque_callback_data"] == "wamid.c:0"
    assert states(channel)[0] == {"wamid.c": "done"}


async def test_a_reply_left_sending_by_a_crash_is_not_sent_again_when_whatsapp_had_it(world):
    graph, start = world
    turns = []
    channel, url = await start(echo_bot(turns, replies=1))
    await channel.stop()
    channel._spawn = lambda coroutine: coroutine.close()  # no drain of the webhook's own while the crash is staged
    assert (await post(url, envelope(message("text", {"body": "hi"}, "wamid.s"))))[0] == 200
    channel.store.commit_turn("wamid.s", CUSTOMER, "to", [{"type": "text", "text": {"body": "hi #0"}}])
    [reply] = channel.store.queued_replies(CUSTOMER)
    channel.store.reply_sending(reply.id)  # in flight when the process died
    assert not await channel.flush(CUSTOMER)  # unknown fate: wait for the status webhook
    assert channel.store.reply_accepted("wamid.s:0", "wamid.out-before-crash")
    assert await channel.flush(CUSTOMER) and graph.accepted == []
    assert states(channel) == ({"wamid.s": "done"}, [("wamid.s:0", "sent")])


async def test_typed_slash_commands_are_text_and_only_offered_buttons_are_intents(world):
    graph, start = world
    turns = []

    async def bot(user_message):
        turns.append(user_message.text)
        await user_message.output_channel.send_text_with_buttons(
            user_message.sender_id, "Anything else?", [{"title": "Balance", "payload": "/check_balance"}])

    channel, url = await start(bot)
    tap = lambda mid, payload: message("interactive", {"type": "button_reply",  # noqa: E731
                                                       "button_reply": {"id": payload, "title": "x"}}, mid)
    assert (await post(url, envelope(message("text", {"body": "/handoff_closed"}, "wamid.t1"))))[0] == 200
    await until(lambda: len(turns) == 1)
    assert (await post(url, envelope(tap("wamid.t2", "/block_card"))))[0] == 200  # never offered
    await until(lambda: len(turns) == 2)
    assert (await post(url, envelope(tap("wamid.t3", "/check_balance"))))[0] == 200  # offered above
    await until(lambda: len(turns) == 3)
    assert turns == ["handoff_closed", "block_card", "/check_balance"]
    assert typed_text("  //greet") == "greet" and typed_text("pay 1/2 now") == "pay 1/2 now"


async def test_a_turn_costs_the_channel_store_five_transactions(world, monkeypatch):
    """Take the customer (lease, queue, the turn started, its menu and button), commit the turn (its
    replies, what is next), the reply in flight, then sent, the lease given back."""
    from connectors.whatsapp import store as store_module

    opened, turn_work = [], {"take", "begin_turn", "turn_choice", "finish_turn", "queue", "reply_sending",
                             "reply_sent", "reply_done", "release_if_done", "save_choices", "save_menu", "save_offered"}
    real = store_module.session_scope

    def counted(engine, **options):
        opened.append(sys._getframe(1).f_code.co_name)
        return real(engine, **options)

    monkeypatch.setattr(store_module, "session_scope", counted)
    graph, start = world
    channel, url = await start(echo_bot([], replies=1))
    assert (await post(url, envelope(message("text", {"body": "balance"}, "wamid.in0"))))[0] == 200
    await until(lambda: states(channel)[0] == {"wamid.in0": "done"})
    await until(lambda: "release_if_done" in opened)
    assert [name for name in opened if name in turn_work] == ["take", "finish_turn", "reply_sending", "reply_sent",
                                                                "release_if_done"]
    assert graph.texts() == ["balance #0"]
