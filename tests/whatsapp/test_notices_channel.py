"""The bank writes first: a service request's updates reach the customer through the WhatsApp
channel's outbox (sandbox as Graph API), once, and never outside the 24-hour window."""
from __future__ import annotations

import pytest

from cardsystem.requests.notices import NoticeBox
from tests.conftest import ONE_CARD, TWO_CARDS
from tests.whatsapp.test_channel import post, settle
from tests.whatsapp.test_channel_sandbox import world  # noqa: F401  (fixture)
from tests.whatsapp.test_pieces import envelope, message

pytestmark = pytest.mark.asyncio


def texts_to(outbox, number):
    return [m["message"]["text"]["body"] for m in outbox.messages
            if m["message"].get("to") == number and m["message"].get("type") == "text"]


def limit_request(system, sender):
    customer = system.find_customer(sender)
    card = system.cards_of(customer.id)[0]
    return system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise + 5_000_000)


async def test_status_changes_are_told_once_inside_the_window_and_held_outside(world, system, make_desk):
    outbox, start_bot, bot_port, _ = world
    box = NoticeBox(engine=system.engine, held_recheck_seconds=0)
    desk = make_desk()

    async def bot(user_message):
        await user_message.output_channel.send_text_message(user_message.sender_id, "Hello!")

    channel, url = await start_bot(bot, port=bot_port, notices=box)
    await post(url, envelope(message("text", {"body": "hi"}, "wamid.n1", sender=ONE_CARD)))
    await settle(channel)

    writing = limit_request(system, ONE_CARD)
    silent = limit_request(system, TWO_CARDS)
    desk.set_status(writing.reference, "needs_documents", "your last 3 salary slips", "agent:asha")
    desk.set_status(silent.reference, "in_progress", "", "agent:asha")

    assert await channel.deliver_notices_once(bot) == 1
    await settle(channel)
    told = [t for t in texts_to(outbox, ONE_CARD) if writing.reference in t]
    assert len(told) == 1 and "your last 3 salary slips" in told[0]
    assert texts_to(outbox, TWO_CARDS) == []                       # silent for 24 hours: held, not refused
    assert [n["state"] for n in box.of(silent.reference)] == ["held"]

    assert await channel.deliver_notices_once(bot) == 0            # nothing twice
    await settle(channel)
    assert len([t for t in texts_to(outbox, ONE_CARD) if writing.reference in t]) == 1

    await post(url, envelope(message("text", {"body": "any news?"}, "wamid.n2", sender=TWO_CARDS)))
    await settle(channel)
    assert await channel.deliver_notices_once(bot) == 1            # they wrote: the held update goes now
    await settle(channel)
    assert any(silent.reference in t and "working on it" in t for t in texts_to(outbox, TWO_CARDS))
    assert [n["state"] for n in box.of(silent.reference)] == ["sent"]
