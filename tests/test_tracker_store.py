"""The tracker store that reads a conversation's recent turns (components.tracker_store).

What it must keep: everything the policies and actions see of the recent past is what the
stock store gives (the last states the policies featurize, slots, the active form), the
events saved are exactly the new ones, nothing is deleted, and the stock store reads the
same table.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path

import pytest
import sqlalchemy as sa

from rasa.core.tracker_store import SQLTrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import (ActionExecuted, ActiveLoop, BotUttered, LoopInterrupted, Restarted,
                                     SessionStarted, SlotSet, UserUttered)
from rasa.shared.core.trackers import DialogueStateTracker

from components.tracker_store import RecentTurnsSQLTrackerStore, decode

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = Domain.load(str(ROOT / "domain.yml"))
INTENTS = sorted(DOMAIN.intents)[:12]
SLOTS = [s.name for s in DOMAIN.slots if s.type_name == "text"][:4]
FORM = sorted(DOMAIN.form_names)[0]


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request, tmp_path):
    """The embedded default and PostgreSQL (what make serve's workers share)."""
    if request.param == "sqlite":
        yield {"db": str(tmp_path / "tracker.db")}
        return
    from tests.servers import postgres_database

    with postgres_database("cardcare_tracker") as name:
        yield {"dialect": "postgresql", "host": "127.0.0.1", "port": 5432, "username": "postgres", "db": name}


def stores(where, keep_turns: int = 6):
    where = where if isinstance(where, dict) else {"db": str(where / "tracker.db")}
    return SQLTrackerStore(DOMAIN, **where), RecentTurnsSQLTrackerStore(DOMAIN, **where, keep_turns=keep_turns)


def start(store, sender: str) -> None:
    tracker = DialogueStateTracker(sender, DOMAIN.slots)
    for event in (ActionExecuted("action_session_start"), SessionStarted(), ActionExecuted("action_listen")):
        tracker.update(event)
    run(store.save(tracker))


def turn(store, sender: str, number: int, rng: random.Random, extra=()) -> None:
    tracker = run(store.retrieve(sender))
    tracker.update(UserUttered(f"message {number}", {"name": rng.choice(INTENTS), "confidence": 0.9}))
    for event in extra:
        tracker.update(event)
    tracker.update(ActionExecuted("utter_greet"))
    tracker.update(BotUttered(f"reply {number}"))
    tracker.update(ActionExecuted("action_listen"))
    run(store.save(tracker))


def same_recent_past(full: DialogueStateTracker, recent: DialogueStateTracker, states: int = 8) -> None:
    """What the policies (max_history 4 and 5) and the actions see: `states` states back."""
    assert recent.current_slot_values() == full.current_slot_values()
    assert (recent.active_loop_name, recent.is_active_loop_interrupted) == \
        (full.active_loop_name, full.is_active_loop_interrupted)
    assert recent.latest_message.text == full.latest_message.text
    assert recent.latest_action_name == full.latest_action_name
    assert recent.past_states(DOMAIN)[-states:] == full.past_states(DOMAIN)[-states:]


def test_a_long_conversation_reads_its_recent_turns_with_the_state_of_everything_before(where):
    stock, recent = stores(where)
    start(recent, "c1")
    rng = random.Random(3)
    for number in range(40):
        extra = []
        if number % 3 == 0:
            extra.append(SlotSet(SLOTS[number % len(SLOTS)], f"value {number}"))
        if number == 5:
            extra.append(SlotSet(SLOTS[0], None))
        if number == 10:
            extra.append(ActiveLoop(FORM))
        if number == 12:
            extra.append(LoopInterrupted(True))
        turn(recent, "c1", number, rng, extra)
        full, window = run(stock.retrieve("c1")), run(recent.retrieve("c1"))
        same_recent_past(full, window)
    assert len(window.events) < len(full.events) / 3
    assert sum(isinstance(e, UserUttered) for e in window.events) == 6


def test_saving_writes_the_new_events_once_and_deletes_nothing(where):
    stock, recent = stores(where)
    start(recent, "c2")
    rng = random.Random(4)
    for number in range(25):
        turn(recent, "c2", number, rng)
    tracker = run(recent.retrieve("c2"))
    run(recent.save(tracker))  # saved again without changes: nothing new
    full = run(stock.retrieve_full_tracker("c2"))
    assert len(full.events) == 3 + 25 * 4
    assert [e.text for e in full.events if isinstance(e, UserUttered)] == [f"message {n}" for n in range(25)]
    assert len(run(recent.retrieve_full_tracker("c2")).events) == len(full.events)


def test_a_tracker_it_did_not_read_is_saved_as_the_stock_store_saves_it(where):
    stock, recent = stores(where)
    for store, sender in ((stock, "stock"), (recent, "recent")):
        tracker = DialogueStateTracker(sender, DOMAIN.slots)
        for event in (ActionExecuted("action_session_start"), SessionStarted(), ActionExecuted("action_listen"),
                      UserUttered("hi", {"name": INTENTS[0], "confidence": 1.0}), ActionExecuted("action_listen")):
            tracker.update(event)
        run(store.save(tracker))
    def written(sender):
        return [{k: v for k, v in e.as_dict().items() if k != "timestamp"}
                for e in run(stock.retrieve_full_tracker(sender)).events]

    assert written("recent") == written("stock") and len(written("stock")) == 5
    kept = tracker  # the recent store's, as it saved it
    for store, tracker in ((stock, run(stock.retrieve_full_tracker("stock"))), (recent, kept)):
        tracker.update(BotUttered("more"))
        run(store.save(tracker))
    # then only what was added (the stock store, counting the events of the session, which leaves
    # out the `action_session_start` before SessionStarted, writes the last stored event again)
    assert [e.as_dict()["event"] for e in run(stock.retrieve_full_tracker("recent")).events] == \
        ["action", "session_started", "action", "user", "action", "bot"]
    assert [e.as_dict()["event"] for e in run(stock.retrieve_full_tracker("stock")).events] == \
        ["action", "session_started", "action", "user", "action", "action", "bot"]


def test_a_new_conversation_is_counted_once_then_appended_to(where):
    """Rasa saves a new customer's tracker when it creates it, then again after the turn:
    only the first save counts what is stored."""
    stock, recent = stores(where)
    statements = []
    sa.event.listen(recent.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    tracker = DialogueStateTracker("new", DOMAIN.slots)
    tracker.update(ActionExecuted("action_listen"))
    run(recent.save(tracker))
    counted = [s for s in statements if "count(" in s.lower()]
    assert len(counted) == 1
    statements.clear()
    for event in (ActionExecuted("action_session_start"), SessionStarted(), ActionExecuted("action_listen"),
                  UserUttered("hi", {"name": INTENTS[0], "confidence": 1.0}), ActionExecuted("utter_greet"),
                  BotUttered("hello"), ActionExecuted("action_listen")):
        tracker.update(event)
    run(recent.save(tracker))
    run(recent.save(tracker))  # (Rasa may save twice: written once)
    assert not [s for s in statements if "count(" in s.lower()]
    assert [e.as_dict()["event"] for e in run(stock.retrieve_full_tracker("new")).events] == \
        [e.as_dict()["event"] for e in tracker.events]


def test_a_restart_before_the_window_forgets_the_slots_set_before_it(where):
    stock, recent = stores(where, keep_turns=3)
    start(recent, "c4")
    rng = random.Random(5)
    turn(recent, "c4", 0, rng, [SlotSet(SLOTS[0], "before the restart")])
    turn(recent, "c4", 1, rng, [Restarted()])
    for number in range(2, 8):
        turn(recent, "c4", number, rng, [SlotSet(SLOTS[1], f"after {number}")] if number == 3 else [])
    window = run(recent.retrieve("c4"))
    assert window.get_slot(SLOTS[0]) is None and window.get_slot(SLOTS[1]) == "after 3"
    same_recent_past(run(stock.retrieve("c4")), window, states=4)


def test_only_the_current_session_is_read(where):
    stock, recent = stores(where, keep_turns=3)
    start(recent, "c5")
    rng = random.Random(6)
    for number in range(5):
        turn(recent, "c5", number, rng, [SlotSet(SLOTS[0], "old session")] if number == 0 else [])
    tracker = run(recent.retrieve("c5"))
    for event in (ActionExecuted("action_session_start"), SessionStarted(), ActionExecuted("action_listen")):
        tracker.update(event)
    run(recent.save(tracker))
    turn(recent, "c5", 5, rng)
    window = run(recent.retrieve("c5"))
    assert [e.text for e in window.events if isinstance(e, UserUttered)] == ["message 5"]
    same_recent_past(run(stock.retrieve("c5")), window, states=4)


def test_a_customer_never_seen_has_no_tracker(where):
    _, recent = stores(where)
    assert run(recent.retrieve("nobody")) is None


def test_the_events_table_gets_an_index_for_the_state_queries(tmp_path):
    _, recent = stores(tmp_path)
    indexes = {i["name"] for i in sa.inspect(recent.engine).get_indexes("events")}
    assert "ix_events_sender_type_name" in indexes
    RecentTurnsSQLTrackerStore(DOMAIN, db=str(tmp_path / "tracker.db"))  # a second worker starting: fine


@pytest.mark.parametrize("keep_turns", ["0", "-3"])
def test_keep_turns_is_at_least_one(tmp_path, keep_turns):
    _, recent = stores(tmp_path, keep_turns=int(keep_turns))
    assert recent.keep_turns == 1


def test_a_read_takes_three_round_trips_however_long_the_session(where):
    """Where the session and its window start; what holds from before the window; the events:
    a turn's read does not wait for the database once per kind of state."""
    _, recent = stores(where)
    statements = []
    sa.event.listen(recent.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    start(recent, "c1")
    rng = random.Random(5)
    for number in range(3):
        turn(recent, "c1", number, rng)
    statements.clear()
    run(recent.retrieve("c1"))
    assert len(statements) == 2  # a short session: where it starts, then all of it
    for number in range(3, 20):
        turn(recent, "c1", number, rng, [SlotSet(SLOTS[0], f"value {number}"), ActiveLoop(FORM)])
    statements.clear()
    tracker = run(recent.retrieve("c1"))
    assert len(statements) == 3
    assert tracker.get_slot(SLOTS[0]) == "value 19" and tracker.active_loop_name == FORM


@pytest.mark.parametrize("data", [
    '{"event": "user", "timestamp": 1764780000.123456, "text": "₹5,000 \\u2028 \\"quoted\\"", '
    '"parse_data": {"intent": {"name": "ask_balance", "confidence": 0.9712345678901234}, "entities": []}}',
    '{"event": "slot", "timestamp": 1.5e9, "name": "amount", "value": 12345678901234567890123}',  # past 64 bits
    '{"event": "action", "confidence": NaN, "name": "a", "policy": null, "x": "\\ud800", "y": [1e400, -0.0, 1E2]}',
])
def test_events_are_decoded_as_json_decodes_them(data):
    def same(a, b):
        if isinstance(a, float) and isinstance(b, float):
            return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return type(a) is type(b) and a == b

    assert same(decode(data), json.loads(data))


def test_stored_events_read_back_equal_to_the_stock_stores(where):
    stock, ours = stores(where, keep_turns=50)
    rng = random.Random(5)
    start(ours, "919800000042")
    for number in range(6):
        turn(ours, "919800000042", number, rng, extra=[SlotSet(SLOTS[0], f"₹{number},00,000 \u2028 ok")])
    assert [e.as_dict() for e in run(ours.retrieve("919800000042")).events] == \
        [e.as_dict() for e in run(stock.retrieve("919800000042")).events]
