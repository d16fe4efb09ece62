"""The console's Requests view on a real server: executives work the worklist, ask for a document,
the customer's upload returns the request, it is resolved, and every change reaches the customer on
WhatsApp (sandbox as Graph API); sessions, CSRF and roles hold."""
from __future__ import annotations

import pytest

from cardsystem.requests.notices import NoticeBox
from tests.conftest import ONE_CARD
from tests.whatsapp.test_channel import post, settle
from tests.whatsapp.test_channel_sandbox import PNG, world  # noqa: F401  (fixture)
from tests.whatsapp.test_handoff_channel import Console, desk_with_agents, until
from tests.whatsapp.test_pieces import envelope, message

pytestmark = pytest.mark.asyncio


def texts_to(outbox, number):
    return [m["message"]["text"]["body"] for m in outbox.messages
            if m["message"].get("to") == number and m["message"].get("type") == "text"]


async def test_an_executive_works_a_request_and_the_customer_hears_each_step(world, system, make_desk):
    outbox, start_bot, bot_port, _ = world
    agents = desk_with_agents(system)
    agents.accounts.create_agent("meena", "Meena", "a-supervisor-password", role="supervisor")
    service = make_desk()

    async def bot(user_message):
        await user_message.output_channel.send_text_message(user_message.sender_id, "Noted.")

    # documents go by link here (no statement-file server in this test to fetch them from for an upload)
    channel, url = await start_bot(bot, port=bot_port, desk=agents, service_desk=service, upload_documents=False,
                                   notices=NoticeBox(engine=system.engine, proof_dir=service.proof_dir))
    await post(url, envelope(message("text", {"body": "hello"}, "wamid.r1")))
    await settle(channel)
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    request = system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise + 5_000_000)

    stranger = Console(url)
    assert (await stranger.get("/requests"))[0] == 401
    priya = Console(url)
    assert (await priya.login("priya", "a-long-password"))[0] == 200
    status, listing = await priya.get("/requests")
    assert status == 200 and request.reference in [r["reference"] for r in listing["requests"]]
    assert {"kind": "address_change", "label": "Change of address"} in listing["kinds"]
    assert (await priya.post(f"/requests/{request.reference}/status", {"status": "in_progress"}, csrf=False))[0] == 403
    status, refused = await priya.post(f"/requests/{request.reference}/status", {"status": "resolved"})
    assert status == 409 and "resolution" in refused["error"]

    status, asked = await priya.post(f"/requests/{request.reference}/status",
                                     {"status": "needs_documents", "note": "your last 3 salary slips"})
    assert status == 200 and asked["status"] == "needs_documents" and asked["assigned_to"] == "priya"
    assert await until(lambda: any("salary slips" in t for t in texts_to(outbox, ONE_CARD)))
    assert (await priya.get("/requests?mine=1"))[1]["requests"][0]["reference"] == request.reference

    # the customer's photo comes back through the channel; the desk attaches it (as the bot's action does)
    stored = outbox.keep(PNG, "image/png", None)
    await post(url, envelope(message("image", {"id": stored.media_id, "mime_type": "image/png",
                                               "sha256": stored.sha256}, "wamid.r2")))
    await settle(channel)
    key = f"{stored.sha256}.png"                       # the channel fetched and kept the file
    assert channel.media.path(key) is not None
    attachment = {"media_id": stored.media_id, "mime_type": "image/png", "stored": key, "sha256": stored.sha256}
    got = service.documents_received(customer.id, None, attachment)
    assert got["back_to_desk"]
    status, shown = await priya.get(f"/requests/{request.reference}")
    assert status == 200 and shown["status"] == "in_progress" and shown["documents"][0]["mime_type"] == "image/png"
    async with priya.http.get(f"{priya.api}/requests/{request.reference}/documents/1") as answer:
        assert answer.status == 200 and await answer.read() == PNG
        assert answer.headers["Content-Disposition"].startswith("attachment")
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert (await priya.get(f"/requests/{request.reference}/documents/9"))[0] == 404

    # an agent takes work for themself only; a supervisor gives it to anyone
    assert (await priya.post(f"/requests/{request.reference}/assign", {"to": "rahul"}))[0] == 403
    meena = Console(url)
    await meena.login("meena", "a-supervisor-password")
    status, given = await meena.post(f"/requests/{request.reference}/assign", {"to": "rahul"})
    assert status == 200 and given["assigned_to"] == "rahul"

    status, done = await priya.post(f"/requests/{request.reference}/status",
                                    {"status": "resolved", "note": "Limit raised to Rs 3,50,000"})
    assert status == 200 and done["closed"]
    assert await until(lambda: any(t.startswith("Your credit limit request has been decided") for t in
                                   texts_to(outbox, ONE_CARD)))
    assert [h["actor"] for h in done["history"]][-1] == "agent:priya"
    documents = lambda: [m["message"]["document"] for m in outbox.messages  # noqa: E731
                         if m["message"].get("to") == ONE_CARD and m["message"].get("type") == "document"]
    assert await until(lambda: documents())
    assert documents()[-1]["filename"] == f"CardCare-{request.reference}-proof.pdf"
    assert "/webhooks/files/statements/" in documents()[-1]["link"]
    status, figures = await meena.get("/figures")
    assert status == 200 and any(f["kind"] == "limit_increase" and f["resolved_in_time"] >= 1 for f in figures["kinds"])
    for console in (stranger, priya, meena):
        await console.close()
