"""The agents' desk: queue, routing state, agents, sessions, ratings and the audit trail."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from actions.common import use_card_system
from cardsystem.db import dispose_engine
from cardsystem.models import Base
from cardsystem.seed import seed
from cardsystem.service import CardSystem

from cardsystem.errors import NotAllowed, NotFound
from cardsystem.accounts import hash_password, verify_password
from cardsystem.handoff import HandoffDesk, HandoffSettings
from tests.conftest import NOW, ONE_CARD, STRANGER, TODAY, TWO_CARDS, make_system


class Clock:
    def __init__(self, moment: dt.datetime) -> None:
        self.moment = moment

    def __call__(self) -> dt.datetime:
        return self.moment


POSTGRES = os.environ.get("CARDCARE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def system(request, tmp_path, seeded_template):
    """The seeded card system on the embedded default and on PostgreSQL (production's)."""
    if request.param == "sqlite":
        (tmp_path / "cards.db").write_bytes(seeded_template.read_bytes())
        system = make_system(tmp_path)
    else:
        try:
            with create_engine(POSTGRES).connect():
                pass
        except OperationalError:
            pytest.skip(f"no PostgreSQL at {POSTGRES}")
        system = make_system(tmp_path)
        system = CardSystem(dataclasses.replace(system.settings, db_url=POSTGRES), today=lambda: TODAY, now=lambda: NOW)
        Base.metadata.drop_all(system.engine)
        seed(system, TODAY, progress=False)
    use_card_system(system)
    yield system
    use_card_system(None)
    if request.param == "postgresql":
        Base.metadata.drop_all(system.engine)
    dispose_engine(system.settings.db_url)


@pytest.fixture
def desk(system):
    clock = Clock(NOW)  # Monday 23 Nov 2026, 10:30: within agent hours
    system._now = clock
    desk = HandoffDesk(system, HandoffSettings())
    desk.clock = clock
    return desk


def open_for(desk, sender, reason="asked for a person"):
    customer = desk.system.find_customer(sender)
    return desk.open_ticket(sender, customer.id if customer else None, None, reason,
                            {"customer_name": customer.first_name if customer else None, "intents": ["talk_to_human"]},
                            [("customer", "I want to talk to someone"), ("bot", "Connecting you")], "summary")


def test_passwords_are_salted_scrypt_and_checked_in_constant_time():
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$16384$8$1$") and "correct" not in stored
    assert stored != hash_password("correct horse battery")  # salted
    assert verify_password("correct horse battery", stored)
    assert not verify_password("wrong", stored) and not verify_password("x", "garbage")


def test_agents_sign_in_with_expiring_sessions(desk):
    priya = desk.accounts.create_agent("priya", "Priya", "a-long-password")
    with pytest.raises(NotAllowed):
        desk.accounts.create_agent("priya", "Priya", "a-long-password")
    with pytest.raises(NotAllowed):
        desk.accounts.create_agent("x", "X", "short")
    for weak in ("aaaaaaaaaa", "1212121212", "ravishankar"):  # repeated characters, or the name itself
        with pytest.raises(NotAllowed):
            desk.accounts.create_agent("ravishankar", "Ravi", weak)
    assert desk.accounts.sign_in("priya", "wrong-password") is None
    assert desk.accounts.sign_in("nobody", "a-long-password") is None
    token, csrf, agent = desk.accounts.sign_in("Priya", "a-long-password")
    assert agent == priya.__class__(priya.id, "priya", "Priya", True) and len(csrf) >= 24
    assert desk.accounts.session(token)[0].username == "priya" and desk.accounts.session(token)[1] == csrf
    assert desk.accounts.session("forged") is None and desk.accounts.session(None) is None
    desk.clock.moment += dt.timedelta(hours=8, seconds=1)
    assert desk.accounts.session(token) is None  # expired
    token, _, _ = desk.accounts.sign_in("priya", "a-long-password")
    desk.accounts.sign_out(token)
    assert desk.accounts.session(token) is None
    actions = [a["action"] for a in desk.system.audit_entries()]
    assert {"create_agent", "agent_sign_in", "agent_sign_in_failed", "agent_sign_out"} <= set(actions)


def test_availability_follows_hours_and_online_agents(desk):
    assert desk.availability().why_not == "no_agents"
    desk.accounts.create_agent("priya", "Priya", "a-long-password")
    desk.accounts.sign_in("priya", "a-long-password")
    assert desk.availability().open and desk.availability().agents_online == 1
    desk.clock.moment += dt.timedelta(minutes=3)  # the console stopped polling
    assert desk.availability().why_not == "no_agents"
    desk.clock.moment = dt.datetime(2026, 11, 23, 21, 5)
    assert desk.availability().why_not == "closed"
    desk.clock.moment = dt.datetime(2026, 11, 29, 11, 0)  # a Sunday
    assert desk.availability().why_not == "closed"
    always = HandoffDesk(desk.system, HandoffSettings(opens=dt.time(0), closes=dt.time(0), days=tuple(range(7))))
    desk.clock.moment = dt.datetime(2026, 11, 29, 23, 59, 30)
    assert always.availability().why_not == "no_agents"  # open round the clock, nobody signed in
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CARDCARE_AGENT_HOURS", "10:00-18:30")
        env.setenv("CARDCARE_AGENT_DAYS", "Sat-Mon")
        settings = HandoffSettings.from_env()
        assert (settings.opens, settings.closes, settings.days) == (dt.time(10), dt.time(18, 30), (5, 6, 0))


def test_queue_order_claim_reply_transfer_close_and_rating(desk):
    priya = desk.accounts.sign_in(*("priya", "a-long-password")) if False else None
    desk.accounts.create_agent("priya", "Priya", "a-long-password")
    desk.accounts.create_agent("rahul", "Rahul", "another-long-password")
    _, _, priya = desk.accounts.sign_in("priya", "a-long-password")
    first = open_for(desk, ONE_CARD)
    desk.clock.moment += dt.timedelta(minutes=1)
    second = open_for(desk, TWO_CARDS)
    assert open_for(desk, ONE_CARD).reference == first.reference  # already waiting: same ticket
    assert [(r["reference"], r["position"]) for r in desk.queue(priya)] == [(first.reference, 1), (second.reference, 2)]
    assert desk.place(second.reference).position == 2 and desk.place(second.reference).wait_minutes == 12
    assert desk.open_ticket_for(ONE_CARD).status == "queued" and desk.open_ticket_for(STRANGER) is None
    with pytest.raises(NotAllowed):
        desk.agent_said(first.reference, priya, "hello")  # not claimed yet
    claimed = desk.claim(first.reference, priya)
    assert claimed.status == "active" and claimed.agent.first_name == "Priya"
    with pytest.raises(NotAllowed):
        desk.claim(first.reference, priya)
    assert desk.place(second.reference).position == 1
    desk.agent_said(first.reference, priya, "Hi Ananya, I'm looking at it")
    desk.customer_said(first.reference, "thanks", {"media_id": "m1", "kind": "image"})
    desk.customer_said(first.reference, "my card 4111 1111 1111 1111 was charged")
    desk.note(first.reference, priya, "asked about a duplicate charge")
    detail = desk.ticket(first.reference, priya)
    polled = desk.messages_since(first.reference, detail["messages"][2]["id"])
    assert polled == detail["messages"][3:] and polled[0]["agent"] == "Priya"  # polled entries look the same
    assert [m["author"] for m in detail["messages"]] == ["customer", "bot", "system", "agent", "customer", "customer",
                                                         "note"]
    assert "4111111111111111" not in str(detail) and "XXXX-XXXX-XXXX-1111" in detail["messages"][5]["text"]
    assert detail["masked_sender"] == "91******0001" and "sender" not in detail and detail["cards"]
    assert detail["cards"][0]["outstanding"].startswith("\u20b9")
    _, rahul = desk.transfer(first.reference, priya, "rahul")
    with pytest.raises(NotAllowed):
        desk.close(first.reference, priya, "done")  # not hers any more
    rahul_view = desk.accounts.sign_in("rahul", "another-long-password")[2]
    with pytest.raises(NotAllowed):
        desk.close(first.reference, rahul_view, "  ")
    closed = desk.close(first.reference, rahul_view, "explained the duplicate; refund raised")
    assert closed.status == "closed" and desk.open_ticket_for(ONE_CARD) is None
    assert desk.rate(ONE_CARD, 4, "quick and kind").rating == 4
    with pytest.raises(NotAllowed):
        desk.rate(ONE_CARD, 6)
    assert desk.rate(STRANGER, 5) is None
    actors = {(a["actor"], a["action"]) for a in desk.system.audit_entries()}
    assert {("agent:priya", "agent_claim"), ("agent:priya", "agent_reply"), ("agent:priya", "agent_note"),
            ("agent:priya", "agent_view"), ("agent:priya", "agent_transfer"), ("agent:rahul", "agent_close"),
            ("customer", "handoff_rating"), ("bot", "handoff")} <= actors


def test_waiting_customers_can_go_back_to_the_bot_or_become_callbacks(desk):
    first = open_for(desk, ONE_CARD)
    assert not desk.customer_said(first.reference, "hello?")  # told where they stand a moment ago
    desk.clock.moment += dt.timedelta(minutes=3)
    assert desk.customer_said(first.reference, "anyone?")     # time for another notice
    returned = desk.return_to_bot(first.reference)
    assert returned.status == "returned" and desk.open_ticket_for(ONE_CARD) is None
    with pytest.raises(NotAllowed):
        desk.return_to_bot(first.reference)
    waiting = open_for(desk, TWO_CARDS)
    stranger = open_for(desk, STRANGER)
    desk.clock.moment += dt.timedelta(minutes=16)
    expired = {t.reference: t for t in desk.expire_waiting()}
    assert expired[waiting.reference].status == "callback" and expired[waiting.reference].callback_reference
    assert expired[stranger.reference].callback_reference is None  # not a customer: no callback record
    assert desk.expire_waiting() == []
    with pytest.raises(NotFound):
        desk.place("HO000000XXXX")


# -- the bot's side: actions ---------------------------------------------------------------------
from actions.disputes import ActionFileDispute  # noqa: E402
from actions.handoff import (  # noqa: E402
    ActionAskRating, ActionHandoff, ActionHandoffClosed, ActionHandoffExpired, ActionHandoffFromForm, ActionStoreRating,
    ValidateRatingForm, use_handoff_desk,
)
from actions.session import ActionFallback  # noqa: E402
from tests.conftest import make_tracker, rendered, run_action, slots_of  # noqa: E402

WA = {"whatsapp": {"reply_by": "to", "type": "text"}}


@pytest.fixture
def live_desk(desk):
    desk.accounts.create_agent("priya", "Priya", "a-long-password")
    desk.accounts.sign_in("priya", "a-long-password")
    use_handoff_desk(desk)
    yield desk
    use_handoff_desk(None)


def chat_history():
    return [{"event": "user", "text": "what's my balance", "parse_data": {"intent": {"name": "check_balance"}}},
            {"event": "bot", "text": "Outstanding \u20b912,345.00"},
            {"event": "user", "text": "/request_statement", "parse_data": {"intent": {"name": "request_statement"}}}]


@pytest.mark.asyncio
async def test_a_person_is_asked_for_on_whatsapp_with_the_whole_context(system, live_desk, domain):
    tracker = make_tracker(ONE_CARD, "talk_to_human", text="I want to talk to a person", channel="whatsapp",
                           metadata=WA, slots={"month": "2026-10"}, history=chat_history(),
                           active_loop="statement_form")
    events, messages = await run_action(ActionHandoffFromForm(), tracker, domain)
    text = rendered(messages, domain)[0]
    assert "number 1 in the queue" in text and "about 6 minutes" in text and '"bot"' in text
    reference = slots_of(events)["handoff_ticket"]
    assert {"event": "active_loop", "name": None} in [{k: e.get(k) for k in ("event", "name")} for e in events]
    ticket = live_desk.ticket(reference, live_desk.accounts.agents()[0])
    assert ticket["status"] == "queued" and ticket["card_last4"] == "4821" and ticket["reason"] == "customer_asked"
    assert ticket["context"]["intents"] == ["check_balance", "request_statement", "talk_to_human"]
    assert ticket["context"]["slots"] == {"month": "2026-10"}
    assert [m["author"] for m in ticket["messages"]] == ["customer", "bot", "customer", "customer"]
    assert ticket["messages"][2]["text"] == "[tapped: request_statement]"
    summary = ticket["summary"]
    assert summary.startswith("Ananya (registered customer, card \u2022\u20224821) was handed over because the customer")
    assert "checked the balance" in summary and "I want to talk to a person" in summary
    assert "919800000001" not in str(ticket)  # only the masked number reaches the console


@pytest.mark.asyncio
async def test_nobody_can_join_so_a_callback_is_booked(system, desk, domain):
    use_handoff_desk(desk)
    try:
        tracker = make_tracker(ONE_CARD, "talk_to_human", channel="whatsapp", metadata=WA)
        _, messages = await run_action(ActionHandoff(), tracker, domain)  # no agent signed in: a call is offered
        assert [m["response"] for m in messages] == ["utter_handoff_no_agents", "utter_offer_callback"]
        tracker = make_tracker(ONE_CARD, "talk_to_human", text="can someone call me", channel="whatsapp", metadata=WA)
        _, messages = await run_action(ActionHandoff(), tracker, domain)  # asked to be called: booked
        assert [m["response"] for m in messages] == ["utter_handoff_no_agents", "utter_callback_booked"]
        desk.clock.moment = dt.datetime(2026, 11, 23, 22, 0)
        _, messages = await run_action(ActionHandoff(), make_tracker(TWO_CARDS, "complain", channel="whatsapp",
                                                                     metadata=WA), domain)
        assert [m["response"] for m in messages] == ["utter_handoff_closed_hours", "utter_callback_booked"]
        assert "9:00 AM" in rendered(messages, domain)[0]
        _, messages = await run_action(ActionHandoff(), make_tracker(STRANGER, "talk_to_human", channel="whatsapp",
                                                                     metadata=WA), domain)
        assert [m["response"] for m in messages] == ["utter_handoff_closed_hours", "utter_handoff_stranger"]
    finally:
        use_handoff_desk(None)


@pytest.mark.asyncio
async def test_second_miss_and_fraud_disputes_go_to_a_person(system, live_desk, domain):
    miss = {"event": "user", "text": "blah", "parse_data": {"intent": {"name": "nlu_fallback"}}}
    tracker = make_tracker(TWO_CARDS, "nlu_fallback", text="qqq", channel="whatsapp", metadata=WA, history=[miss])
    events, messages = await run_action(ActionFallback(), tracker, domain)
    assert [m["response"] for m in messages] == ["utter_handoff_after_misses", "utter_handoff_queued"]
    assert live_desk.latest(TWO_CARDS).reason == "not_understood"
    customer = system.find_customer(ONE_CARD)
    txn = system.recent_transactions(system.cards_of(customer.id)[0].id, 5, debits_only=True)[0]
    submit = make_tracker(ONE_CARD, "affirm", channel="whatsapp", metadata=WA, slots={
        "card_last4": "4821", "transaction_id": txn.reference, "dispute_reason": "not_recognised",
        "dispute_attachment": "none", "dispute_confirm": True})
    events, messages = await run_action(ActionFileDispute(), submit, domain)
    responses = [m["response"] for m in messages]
    assert responses[0] == "utter_dispute_filed" and responses[-2:] == ["utter_dispute_to_person", "utter_handoff_queued"]
    ticket = live_desk.latest(ONE_CARD)
    assert ticket.reason == "fraud_dispute" and slots_of(events)["handoff_ticket"] == ticket.reference
    detail = live_desk.ticket(ticket.reference, live_desk.accounts.agents()[0])
    assert any(r["kind"] == "dispute" for r in detail["context"]["open_requests"])


@pytest.mark.asyncio
async def test_after_the_agent_closes_the_customer_rates_the_chat(system, live_desk, domain):
    ticket = open_for(live_desk, ONE_CARD)
    priya = live_desk.accounts.agents()[0]
    live_desk.claim(ticket.reference, priya)
    live_desk.close(ticket.reference, priya, "explained the charge")
    _, messages = await run_action(ActionHandoffClosed(), make_tracker(ONE_CARD, "handoff_closed"), domain)
    assert rendered(messages, domain)[0].startswith("Priya has closed the chat")
    form = ValidateRatingForm()
    opened = make_tracker(ONE_CARD, "handoff_closed", slots={"rating": None, "rating_comment": None},
                          active_loop="rating_form", set_this_turn=["rating", "rating_comment"])
    events, messages = await run_action(form, opened, domain)  # the form starts: no complaint, no answer yet
    assert messages == [] and slots_of(events).get("rating") is None and slots_of(events).get("rating_comment") is None
    _, messages = await run_action(ActionAskRating(), opened, domain)
    assert [b["title"] for b in messages[0]["buttons"]][:2] == ["5 - Excellent", "4 - Good"]
    assert messages[0]["buttons"][1]["payload"] == '/rate{"rating": "4"}'
    typed = make_tracker(ONE_CARD, "inform", text="4", slots={"requested_slot": "rating"}, active_loop="rating_form")
    events, _ = await run_action(form, typed, domain)
    assert slots_of(events)["rating"] == "4"
    wrong = make_tracker(ONE_CARD, "rate", entities=[("rating", "9")], text='/rate{"rating": "9"}',
                         slots={"requested_slot": "rating"}, active_loop="rating_form")
    events, messages = await run_action(form, wrong, domain)
    assert slots_of(events)["rating"] is None and messages[0]["response"] == "utter_rating_invalid"
    comment = make_tracker(ONE_CARD, "thank", text="Priya was quick and kind, thank you",
                           slots={"rating": "4", "requested_slot": "rating_comment"}, active_loop="rating_form")
    events, _ = await run_action(form, comment, domain)
    assert slots_of(events)["rating_comment"] == "Priya was quick and kind, thank you"
    skip = make_tracker(ONE_CARD, "deny", text="/deny", slots={"rating": "4", "requested_slot": "rating_comment"},
                        active_loop="rating_form")
    events, _ = await run_action(form, skip, domain)
    assert slots_of(events)["rating_comment"] == "none"
    done = make_tracker(ONE_CARD, "deny", slots={"rating": "4", "rating_comment": "quick and kind"})
    events, messages = await run_action(ActionStoreRating(), done, domain)
    assert messages[0]["response"] == "utter_rating_thanks"
    assert live_desk.latest(ONE_CARD).rating == 4


@pytest.mark.asyncio
async def test_a_chat_nobody_took_becomes_a_callback_the_customer_is_told_about(system, live_desk, domain):
    ticket = open_for(live_desk, ONE_CARD)
    live_desk.clock.moment += dt.timedelta(minutes=16)
    [expired] = live_desk.expire_waiting()
    assert expired.reference == ticket.reference
    events, messages = await run_action(ActionHandoffExpired(), make_tracker(ONE_CARD, "handoff_expired"), domain)
    assert messages[0]["response"] == "utter_handoff_expired_callback"
    assert slots_of(events)["reference_id"] == expired.callback_reference


def test_the_desk_keeps_its_own_database_when_told(system, tmp_path):
    """Agents, sessions and tickets in a database of their own (CARDCARE_DESK_DB_URL): the card
    system's database holds none of them, and the desk still reaches the card system's calls."""
    from sqlalchemy import func, select

    from cardsystem.db import dispose_engine, session_scope
    from cardsystem.models import Agent

    url = f"sqlite:///{tmp_path / 'desk.db'}"
    desk = HandoffDesk(system, HandoffSettings(), db_url=url)
    try:
        desk.accounts.create_agent("priya", "Priya", "a-long-password")
        customer = system.find_customer(ONE_CARD)
        ticket = desk.open_ticket(ONE_CARD, customer.id, "4821", "customer_asked", {}, [("customer", "hi")], "summary")
        assert desk.open_ticket_for(ONE_CARD).reference == ticket.reference
        with session_scope(system.engine) as s:
            assert s.execute(select(func.count()).select_from(Agent)).scalar_one() == 0
        _, _, priya = desk.accounts.sign_in("priya", "a-long-password")
        assert desk.ticket(ticket.reference, priya)["cards"]   # the card system's data, through its calls
    finally:
        dispose_engine(url)
