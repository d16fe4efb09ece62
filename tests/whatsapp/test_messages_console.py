"""The console's Messages view on a real server: a supervisor (or grievance officer) reads what the
bank's own messages did and cost per day and category, against SMS; an agent is refused, a
stranger must sign in, and a period outside 1..90 days is refused."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete, update

from cardsystem.db import session_scope
from cardsystem.models import CustomerNotice, MessageSend, Transaction, utcnow
from cardsystem.reminders.policy import Policy
from tests.conftest import ONE_CARD, TWO_CARDS
from tests.whatsapp.test_channel_sandbox import world  # noqa: F401  (fixture)
from tests.whatsapp.test_handoff_channel import Console, desk_with_agents

pytestmark = pytest.mark.asyncio


def sent(key, customer, card, kind, category, at, state="delivered", rate=1150, sms=3500):
    """A ledger row as the channel leaves it: sent at `at`, then delivered/read, or failed."""
    return MessageSend(notice_key=key, customer_id=customer, card_id=card, kind=kind, via="template",
                       template=kind, category=category, country="IN", rate_e4=rate, sms_rate_e4=sms, state=state,
                       wamid=None if state == "failed" else f"wamid.{key}", queued_at=at,
                       sent_at=None if state == "failed" else at,
                       delivered_at=at + dt.timedelta(minutes=1) if state in ("delivered", "read") else None,
                       read_at=at + dt.timedelta(minutes=2) if state == "read" else None,
                       failed_at=at if state == "failed" else None, error_code=131026 if state == "failed" else None)


def notice(key, customer, state, at, error=None):
    return CustomerNotice(key=key, medium="whatsapp", customer_id=customer, address=ONE_CARD, text="news",
                          state=state, attempts=0, error=error, created_at=at, kind="payment_due")


def the_banks_messages(system):
    """Yesterday: two reminders (one paid an hour later, one read), one failed, one statement notice
    (service, free); twenty days ago one more reminder. Some notices skipped, some waiting."""
    one = system.find_customer(ONE_CARD)
    two = system.find_customer(TWO_CARDS)
    card_one, card_two = system.cards_of(one.id)[0], system.cards_of(two.id)[0]
    now = utcnow()
    yesterday, long_ago = now - dt.timedelta(days=1), now - dt.timedelta(days=20)
    paid = system.record_payment(card_one.id, 50_000, via="upi")
    with session_scope(system.engine) as s:
        s.execute(delete(MessageSend))
        s.execute(delete(CustomerNotice))  # only this test's news counts
        s.execute(update(Transaction).where(Transaction.reference == paid.reference)
                  .values(posted_at=yesterday + dt.timedelta(hours=1)))
        s.add_all([
            sent("r1", one.id, card_one.id, "payment_due", "utility", yesterday, state="read"),
            sent("r2", two.id, card_two.id, "payment_due", "utility", yesterday),
            sent("r3", two.id, card_two.id, "payment_due", "utility", yesterday, state="failed"),
            sent("s1", one.id, card_one.id, "statement_ready", "service", yesterday, rate=0),
            sent("old", one.id, card_one.id, "payment_due", "utility", long_ago),
            notice("n1", one.id, "skipped", now - dt.timedelta(hours=3), "no_consent: never opted in"),
            notice("n2", two.id, "skipped", now - dt.timedelta(hours=2), "no_consent: never opted in"),
            notice("n3", two.id, "skipped", now - dt.timedelta(hours=2), "paid: the minimum is paid"),
            notice("n4", one.id, "pending", now - dt.timedelta(hours=1)),
            notice("n5", two.id, "held", now - dt.timedelta(hours=1)),
        ])
    return yesterday


async def test_a_supervisor_reads_the_cost_of_the_banks_messages_and_an_agent_does_not(world, system, make_desk):
    outbox, start_bot, bot_port, _ = world
    agents = desk_with_agents(system)
    agents.accounts.create_agent("meena", "Meena", "a-supervisor-password", role="supervisor")
    agents.accounts.create_agent("gita", "Gita", "a-grievance-password", role="grievance_officer")
    service = make_desk()
    yesterday = the_banks_messages(system)
    day = Policy.load(timezone=service.rules.calendar.timezone).local(yesterday).date().isoformat()

    async def bot(user_message):
        pass

    channel, url = await start_bot(bot, port=bot_port, desk=agents, service_desk=service)
    stranger, priya, meena, gita = Console(url), Console(url), Console(url), Console(url)
    try:
        assert (await stranger.get("/messages/report"))[0] == 401
        assert (await priya.login("priya", "a-long-password"))[0] == 200
        status, refused = await priya.get("/messages/report?days=7")
        assert status == 403 and "supervisors" in refused["error"]
        assert (await priya.get("/figures"))[0] == 200  # the desk's figures stay open to agents

        assert (await meena.login("meena", "a-supervisor-password"))[0] == 200
        status, figures = await meena.get("/messages/report")  # 7 days unless asked
        assert status == 200
        assert figures["timezone"] == "Asia/Kolkata" and figures["currency"] == "INR"
        assert "effective 2026-01-01" in figures["rates"]
        assert dt.date.fromisoformat(figures["to"]) - dt.date.fromisoformat(figures["from"]) == dt.timedelta(days=6)
        rows = {(r["day"], r["category"]): r for r in figures["rows"]}
        assert set(rows) == {(day, "utility"), (day, "service")}  # the one of twenty days ago is outside
        utility = rows[(day, "utility")]
        assert (utility["sent"], utility["delivered"], utility["read"], utility["failed"], utility["reminders"],
                utility["paid_48h"]) == (2, 2, 1, 1, 2, 1)
        assert (utility["whatsapp_cost"], utility["sms_cost"]) == ("0.23", "0.7")
        assert (rows[(day, "service")]["whatsapp_cost"], rows[(day, "service")]["sms_cost"]) == ("0", "0.35")
        total = figures["total"]
        assert (total["day"], total["sent"], total["reminders"], total["paid_48h"]) == ("total", 3, 2, 1)
        assert (total["whatsapp_cost"], total["sms_cost"]) == ("0.23", "1.05")
        assert figures["not_sent"] == {"no_consent": 2, "paid": 1}
        assert figures["waiting"] == {"pending": 1, "held": 1}

        status, month = await meena.get("/messages/report?days=30")
        assert status == 200 and month["total"]["sent"] == 4 and month["total"]["reminders"] == 3
        assert dt.date.fromisoformat(month["to"]) - dt.date.fromisoformat(month["from"]) == dt.timedelta(days=29)
        assert (await meena.get("/messages/report?days=90"))[0] == 200
        for days in ("0", "91", "abc", "-3", "7.5", "1e2"):
            status, bad = await meena.get(f"/messages/report?days={days}")
            assert status == 400 and "1 to 90" in bad["error"], days

        assert (await gita.login("gita", "a-grievance-password"))[0] == 200
        status, same = await gita.get("/messages/report?days=7")
        assert status == 200 and same["total"] == total
    finally:
        for console in (stranger, priya, meena, gita):
            await console.close()


async def test_the_page_has_the_messages_tab_hidden_until_the_role_allows_it(world, system):
    _, start_bot, bot_port, _ = world

    async def bot(user_message):
        pass

    _, url = await start_bot(bot, port=bot_port, desk=desk_with_agents(system))
    console = Console(url)
    try:
        async with console.http.get(f"{url}/agents") as answer:
            page = await answer.text()
        assert '<button id="tab-messages" hidden>Messages</button>' in page and 'id="messages-view" hidden' in page
        assert all(f'<option value="{days}">' in page for days in (7, 30, 90))
        async with console.http.get(f"{url}/agents/requests.js") as answer:
            script = await answer.text()
        assert '"/messages/report?days="' in script and "showTab(\"messages\")" in script
        assert ".innerHTML = \"\"" in script and "innerHTML = data" not in script  # text only, never markup
        async with console.http.get(f"{url}/agents/console.js") as answer:
            assert 'REPORT_ROLES = ["supervisor", "grievance_officer"]' in await answer.text()
    finally:
        await console.close()
