"""The bank writes first, through the real channel and the sandbox as WhatsApp: templates submitted
and approved (the approval arrives as a webhook), a reminder sent as a template outside the window,
its quick replies coming back as intents without NLU, delivery statuses in the ledger, a number
WhatsApp refuses paused, and a customer who said STOP left alone."""
from __future__ import annotations

import asyncio
import datetime as dt

import aiohttp
import pytest
from sqlalchemy import select

from cardsystem.db import session_scope
from cardsystem.models import MessageSend, MessagingConsent
from cardsystem.reminders import run_once
from cardsystem.reminders.book import GraphAccount, TemplateBook
from cardsystem.reminders.outreach import Outreach
from cardsystem.reminders.templates import Registry
from cardsystem.requests.notices import NoticeBox
from tests.conftest import ONE_CARD, TWO_CARDS
from tests.test_reminders import bill, quiet_everyone_else
from tests.whatsapp.test_channel import settle
from tests.whatsapp.test_channel_sandbox import world  # noqa: F401  (fixture)

pytestmark = pytest.mark.asyncio
NOW = dt.datetime(2026, 12, 5, 4, 30)  # 10:00 in India: the reminders' clock in these tests


async def until(check, seconds=5.0):
    for _ in range(int(seconds / 0.05)):
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
def outreach(system):
    registry = Registry.load(payment_base_url=system.settings.payment_base_url)
    return Outreach(system.engine, system.settings, registry=registry, desk_rules=system.desk_rules)


async def approved_channel(world, system, outreach, bot):
    """A bot instance with the notices of `system`, its templates submitted to the sandbox and approved."""
    outbox, start_bot, bot_port, _ = world
    box = NoticeBox(engine=system.engine, outreach=outreach, clock=lambda: NOW)
    channel, url = await start_bot(bot, port=bot_port, notices=box)
    account = GraphAccount(channel.client.base.rsplit("/v21.0", 1)[0], "v21.0", "200000000000001", "token")
    book = TemplateBook(system.engine)
    results = await asyncio.to_thread(book.submit, outreach.registry, account)
    assert {r["status"] for r in results} == {"PENDING"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{account.api_base}/_sandbox/templates") as answer:
            listed = await answer.json()
        templates = listed["data"] if isinstance(listed, dict) else listed
        for template in templates:
            async with http.post(f"{account.api_base}/_sandbox/templates/{template['id']}/approve") as answer:
                assert answer.status == 200
    assert await until(lambda: {r["status"] for r in book.states().values()} == {"APPROVED"})  # by webhook
    return channel, url, box, account


async def test_a_reminder_reaches_the_customer_as_a_template_and_its_buttons_need_no_nlu(world, system, outreach):
    outbox = world[0]
    turns = []

    async def bot(user_message):
        turns.append((user_message.sender_id, user_message.text))
        await user_message.output_channel.send_text_message(user_message.sender_id, "Here is your link.")

    channel, url, box, account = await approved_channel(world, system, outreach, bot)
    customer, card = bill(system, ONE_CARD, dt.date(2026, 12, 10))
    bill(system, TWO_CARDS, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD, TWO_CARDS)
    await asyncio.to_thread(system.set_consent, TWO_CARDS, False, "whatsapp:STOP")
    now = NOW
    assert (await asyncio.to_thread(run_once, system, now, outreach))["reminders"] == 1   # STOP: not even queued
    assert await channel.deliver_notices_once(bot) == 1
    await settle(channel)
    [sent] = [m for m in outbox.messages if m["message"].get("type") == "template"]
    assert sent["message"]["to"] == ONE_CARD
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{account.api_base}/_sandbox/messages", params={"to": ONE_CARD}) as answer:
            seen = [m for m in await answer.json() if m.get("template")]
    shown = seen[-1]["template"]
    assert f"ending {card.last4}" in shown["body"] and "₹2,000.00" in shown["body"] and "10 Dec 2026" in shown["body"]
    assert [b["text"] for b in shown["buttons"]] == ["Pay bill", "Pay now", "Already paid", "Talk to us"]
    assert shown["buttons"][0]["url"].startswith("https://pay.example.test/pay?t=")
    assert not [m for m in outbox.messages if m["message"].get("to") == TWO_CARDS]
    # the sandbox reports sent and delivered, and read once the phone shows it: the ledger hears each
    assert await until(lambda: _send_state(system) in ("delivered", "read"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{account.api_base}/_sandbox/messages", params={"to": ONE_CARD, "read": "1"}) as answer:
            assert answer.status == 200
    assert await until(lambda: _send_state(system) == "read")

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{account.api_base}/_sandbox/send", json={
                "from": ONE_CARD, "name": "Ananya", "reply": {"kind": "button", "index": 1},
                "context": seen[-1]["id"]}) as answer:
            assert answer.status == 200, await answer.text()
    assert await until(lambda: bool(turns))
    await settle(channel)
    assert turns == [(ONE_CARD, f'/pay_bill{{"card_last4":"{card.last4}"}}')]   # the payload itself: no NLU


async def test_a_number_whatsapp_cannot_reach_is_paused(world, system, outreach):
    channel, bot = await reminded_while_failing(world, system, outreach, {"recipients": {ONE_CARD: 131026}})
    await settle(channel)
    assert await until(lambda: _send_state(system) == "failed")
    with session_scope(system.engine) as s:
        send = s.execute(select(MessageSend)).scalar_one()
        assert send.error_code == 131026
        consent = s.get(MessagingConsent, ONE_CARD)
        assert consent.paused_until is not None and consent.pause_error.startswith("131026")


async def reminded_while_failing(world, system, outreach, failures):
    """Ananya owes a bill; the sandbox is told to fail as `failures` says; the scheduler runs and the
    channel takes her reminder: (the channel, its bot)."""
    async def bot(user_message):
        pass

    channel, url, box, account = await approved_channel(world, system, outreach, bot)
    bill(system, ONE_CARD, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{account.api_base}/_sandbox/fail", json=failures) as answer:
            assert answer.status == 200
    await asyncio.to_thread(run_once, system, NOW, outreach)
    assert await channel.deliver_notices_once(bot) == 1
    return channel, bot


def _send_state(system):
    with session_scope(system.engine) as s:
        send = s.execute(select(MessageSend)).scalars().first()
        return send.state if send else None


async def test_a_reminder_held_up_by_an_outage_is_not_sent_after_stop(world, system, outreach):
    outbox = world[0]  # WhatsApp answers 131000 (try again later) to the next two sends
    channel, bot = await reminded_while_failing(world, system, outreach, {"codes": [131000, 131000]})
    await settle(channel)
    assert not [m for m in outbox.messages if m["message"].get("type") == "template"]
    await asyncio.to_thread(system.set_consent, ONE_CARD, False, "whatsapp:STOP")
    await asyncio.sleep(2.5)                        # the outbox's retry comes round
    await channel.drain(ONE_CARD, bot)
    await settle(channel)
    assert not [m for m in outbox.messages if m["message"].get("type") == "template"]
    assert await until(lambda: _send_state(system) == "withdrawn")


async def test_submit_sends_again_what_the_account_forgot_and_refuses_a_changed_text(world, system, outreach):
    async def bot(user_message):
        pass

    channel, url, box, account = await approved_channel(world, system, outreach, bot)
    book = TemplateBook(system.engine)
    async with aiohttp.ClientSession() as http:     # deleted in the WhatsApp Manager (or a sandbox restarted)
        async with http.delete(f"{account.api_base}/v21.0/{account.waba_id}/message_templates",
                               params={"name": "card_blocked"}, headers={"Authorization": "Bearer token"}) as answer:
            assert answer.status == 200
    synced = {r["template"]: r["status"] for r in await asyncio.to_thread(book.sync, outreach.registry, account)}
    assert synced["card_blocked"] == "MISSING" and synced["payment_received"] == "APPROVED"
    results = {r["template"]: r for r in await asyncio.to_thread(book.submit, outreach.registry, account)}
    assert results["card_blocked"]["status"] == "PENDING" and results["payment_received"]["status"] == "APPROVED"
    assert book.states()[("card_blocked", "en")]["status"] == "PENDING"
    changed = Registry.from_entries([{**{"name": "payment_received", "language": "en", "category": "utility",
                                         "body": "We got {{1}}, thanks.", "parameters": [{"field": "amount", "example": "₹1"}]}}])
    [result] = await asyncio.to_thread(book.submit, changed, account)
    assert result["status"] == "CHANGED" and "new name" in result["note"]
