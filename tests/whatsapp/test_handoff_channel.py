"""Handoff on the WhatsApp channel, on real servers: two bot instances sharing the databases,
the sandbox as Graph API, the agent console's API with its sessions and CSRF checks."""
from __future__ import annotations

import asyncio
import datetime as dt

import aiohttp
import pytest
import pytest_asyncio

from cardsystem.handoff import HandoffDesk, HandoffSettings
from tests.conftest import NOW, ONE_CARD, TWO_CARDS
from tests.test_handoff import Clock
from tests.whatsapp.test_channel import post
from tests.whatsapp.test_channel_sandbox import PNG, world  # noqa: F401  (fixture)
from tests.whatsapp.test_pieces import envelope, message

pytestmark = pytest.mark.asyncio


def desk_with_agents(system) -> HandoffDesk:
    """A desk on a stopped clock with two agents, priya and rahul."""
    clock = Clock(NOW)
    system._now = clock
    desk = HandoffDesk(system, HandoffSettings())
    desk.clock = clock
    desk.accounts.create_agent("priya", "Priya", "a-long-password")
    desk.accounts.create_agent("rahul", "Rahul", "another-long-password")
    return desk


@pytest_asyncio.fixture
async def desk(system):
    return desk_with_agents(system)


def queue_ticket(desk, sender=ONE_CARD):
    customer = desk.system.find_customer(sender)
    return desk.open_ticket(sender, customer.id, "4821", "customer_asked",
                            {"customer_name": customer.first_name}, [("customer", "agent please")], "summary")


async def until(condition, timeout=5.0):
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


class Console:
    def __init__(self, base: str, headers=None) -> None:
        self.base, self.api = base, f"{base}/agents/api"
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers)
        self.csrf = None

    async def login(self, username, password):
        async with self.http.post(f"{self.api}/login", json={"username": username, "password": password}) as answer:
            data = await answer.json()
            self.csrf = data.get("csrf")
            return answer.status, data

    async def get(self, path):
        async with self.http.get(f"{self.api}{path}") as answer:
            return answer.status, await answer.json()

    async def post(self, path, body=None, csrf=True):
        headers = {"X-CSRF-Token": self.csrf} if csrf and self.csrf else {}
        async with self.http.post(f"{self.api}{path}", json=body or {}, headers=headers) as answer:
            return answer.status, await answer.json()

    async def close(self):
        await self.http.close()


async def test_bot_to_agent_to_bot_across_two_instances(world, desk):
    outbox, start_bot, bot_port, _ = world
    turns = []

    async def bot(user_message):
        turns.append(user_message.text)

    one, url_one = await start_bot(bot, port=bot_port, desk=desk)
    two, url_two = await start_bot(bot, desk=desk)
    ticket = queue_ticket(desk)
    # the customer writes while waiting: to the agents, never to Rasa (whichever instance gets it)
    await post(url_two, envelope(message("text", {"body": "my card was charged twice"}, "wamid.h1")))
    image = outbox.keep(PNG, "image/png", None)
    await post(url_one, envelope(message("image", {"id": image.media_id, "mime_type": "image/png",
                                                   "sha256": image.sha256, "caption": "receipt"}, "wamid.h2")))
    await until(lambda: len(desk.messages_since(ticket.reference, 0)) == 3 and not one.store.pending())
    said = desk.messages_since(ticket.reference, 0)
    assert [m["text"] for m in said] == ["agent please", "my card was charged twice", "[image] receipt"]
    assert said[2]["attachment"]["stored"].endswith(".png") and turns == []
    console = Console(url_one)
    try:
        assert (await console.login("priya", "a-long-password"))[0] == 200
        status, queue = await console.get("/queue")
        assert status == 200 and queue["queue"][0]["reference"] == ticket.reference
        assert queue["queue"][0]["masked_sender"] == "91******0001" and ONE_CARD not in str(queue)
        assert (await console.post(f"/tickets/{ticket.reference}/claim"))[0] == 200
        await until(lambda: any("Priya from cardcare" in str(m["message"]) for m in outbox.messages))
        status, _ = await console.post(f"/tickets/{ticket.reference}/reply", {"text": "I can see the double charge."})
        assert status == 200
        await until(lambda: any("double charge" in str(m["message"]) for m in outbox.messages))
        assert outbox.messages[-1]["to"] == ONE_CARD
        assert one.store.sends(ONE_CARD)[-1]["status"] in ("sent", "delivered")  # recorded like the bot's sends
        # the customer answers the agent through the other instance
        await post(url_two, envelope(message("text", {"body": "thank you"}, "wamid.h3")))
        await until(lambda: desk.messages_since(ticket.reference, 0)[-1]["text"] == "thank you")
        status, detail = await console.get(f"/tickets/{ticket.reference}")
        assert [m["author"] for m in detail["messages"]][-3:] == ["agent", "customer", "customer"] or \
            [m["author"] for m in detail["messages"]][-2:] == ["agent", "customer"]
        assert detail["cards"] and detail["summary"] == "summary"
        assert (await console.post(f"/tickets/{ticket.reference}/close", {"resolution": ""}))[0] == 409
        assert (await console.post(f"/tickets/{ticket.reference}/close", {"resolution": "refund raised"}))[0] == 200
        await until(lambda: turns == ["/handoff_closed"])
        assert turns == ["/handoff_closed"]  # the bot takes over: it says so and asks for a rating
        await post(url_two, envelope(message("text", {"body": "4"}, "wamid.h4")))
        await until(lambda: turns == ["/handoff_closed", "4"])
        assert turns == ["/handoff_closed", "4"]  # back with the bot: Rasa answers again
    finally:
        await console.close()
    actions = {(a["actor"], a["action"]) for a in desk.system.audit_entries()}
    assert {("agent:priya", "agent_claim"), ("agent:priya", "agent_reply"), ("agent:priya", "agent_view"),
            ("agent:priya", "agent_close"), ("agent:priya", "agent_sign_in")} <= actions


async def test_the_console_serves_nothing_without_a_session_or_csrf_token(world, desk):
    outbox, start_bot, bot_port, _ = world
    _, url = await start_bot(lambda m: None, port=bot_port, desk=desk)
    ticket = queue_ticket(desk)
    console = Console(url)
    try:
        assert (await console.get("/queue"))[0] == 401
        assert (await console.get(f"/tickets/{ticket.reference}"))[0] == 401
        assert (await console.post(f"/tickets/{ticket.reference}/claim"))[0] == 401
        assert (await console.login("priya", "wrong-password"))[0] == 401
        assert (await console.login("priya", "a-long-password"))[0] == 200
        assert (await console.post(f"/tickets/{ticket.reference}/claim", csrf=False))[0] == 403
        console.csrf = "forged"
        assert (await console.post(f"/tickets/{ticket.reference}/claim"))[0] == 403
        assert desk.open_ticket_for(ONE_CARD).status == "queued"  # nothing happened
        assert (await console.get("/tickets/HO000000XXXX"))[0] == 404
        status, me = await console.get("/me")
        console.csrf = me["csrf"]
        assert (await console.post(f"/tickets/{ticket.reference}/reply", {"text": "hi"}))[0] == 409  # not claimed
        assert (await console.post("/logout"))[0] == 200
        assert (await console.get("/queue"))[0] == 401
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/agents") as page:
                assert page.status == 200 and "default-src 'self'" in page.headers["Content-Security-Policy"]
    finally:
        await console.close()


async def test_a_waiting_customer_can_go_back_to_the_bot_and_long_waits_become_callbacks(world, desk):
    outbox, start_bot, bot_port, _ = world
    turns = []

    async def bot(user_message):
        turns.append((user_message.sender_id, user_message.text))

    channel, url = await start_bot(bot, port=bot_port, desk=desk, sweep_seconds=0.2)
    first = queue_ticket(desk, ONE_CARD)
    desk.clock.moment += dt.timedelta(minutes=3)
    await post(url, envelope(message("text", {"body": "hello?"}, "wamid.w1")))
    await until(lambda: any("number 1 in the queue" in str(m["message"]) for m in outbox.messages))
    assert any("number 1 in the queue" in str(m["message"]) for m in outbox.messages)  # told where they stand
    await post(url, envelope(message("text", {"body": " Bot "}, "wamid.w2")))
    await until(lambda: (ONE_CARD, "/handoff_returned") in turns)
    assert turns == [(ONE_CARD, "/handoff_returned")] and desk.latest(ONE_CARD).status == "returned"
    second = queue_ticket(desk, TWO_CARDS)
    desk.clock.moment += dt.timedelta(minutes=16)
    await until(lambda: (TWO_CARDS, "/handoff_expired") in turns)
    assert (TWO_CARDS, "/handoff_expired") in turns
    assert desk.latest(TWO_CARDS).reference == second.reference and desk.latest(TWO_CARDS).status == "callback"
    assert first.reference != second.reference
