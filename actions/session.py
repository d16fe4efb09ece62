"""Conversation plumbing: session start, greeting, fallback, cancelling, reaching a person."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Text, Tuple

import yaml

from rasa_sdk import Action, Tracker
from rasa_sdk.events import ActionExecuted, ActiveLoop, EventType, SessionStarted, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.common import MAX_MESSAGE_CHARS, current_customer
from actions.forms import form_reset
from actions.handoff import hand_off
from cardsystem.config import PROJECT_ROOT

logger = logging.getLogger(__name__)


def _form_slots() -> Dict[Text, Tuple[Text, ...]]:
    """Each form's own answers, from domain.yml (the one place forms are declared); the card is
    shared by many requests and stays known after a form ends."""
    domain = yaml.safe_load((PROJECT_ROOT / "domain.yml").read_text(encoding="utf-8"))
    return {name: tuple(slot for slot in (form or {}).get("required_slots", []) if slot != "card_last4")
            for name, form in (domain.get("forms") or {}).items() if name != "rating_form"}


FORM_SLOTS = _form_slots()


class ActionSessionStart(Action):
    """Starts a session and recognises the customer from the sender id (their WhatsApp number)."""

    def name(self) -> Text:
        return "action_session_start"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[EventType]:
        customer = await current_customer(tracker)
        return [
            SessionStarted(),
            SlotSet("customer_name", customer.first_name if customer else None),
            ActionExecuted("action_listen"),
        ]


class ActionGreet(Action):
    def name(self) -> Text:
        return "action_greet"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        customer = await current_customer(tracker)
        if customer is None:
            dispatcher.utter_message(response="utter_greet_unknown")
            dispatcher.utter_message(response="utter_not_registered")
        else:
            dispatcher.utter_message(response="utter_greet_known", first_name=customer.first_name)
        return []


def consecutive_fallbacks(tracker: Tracker) -> int:
    """How many of the latest user messages in a row were not understood (a blank one, which
    says nothing, neither counts nor ends the run)."""
    count = 0
    for event in reversed(tracker.events):
        if event.get("event") != "user" or not (event.get("text") or "").strip():
            continue
        intent = ((event.get("parse_data") or {}).get("intent") or {}).get("name")
        if intent != "nlu_fallback":
            break
        count += 1
    return count


class ActionFallback(Action):
    """First miss: ask to rephrase with the main options. Second miss in a row: hand to a person."""

    def name(self) -> Text:
        return "action_fallback"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        text = tracker.latest_message.get("text") or ""
        if len(text) > MAX_MESSAGE_CHARS:
            dispatcher.utter_message(response="utter_too_long", limit=f"{MAX_MESSAGE_CHARS:,}")
            return []
        if text.strip() and consecutive_fallbacks(tracker) >= 2:  # no bot loop: a person takes over
            dispatcher.utter_message(response="utter_handoff_after_misses")
            return await hand_off(dispatcher, tracker, "not_understood")
        else:
            dispatcher.utter_message(response="utter_rephrase")
        return []


class ActionCancelForm(Action):
    """'Never mind' during a form: stop it, forget its answers, change nothing."""

    def name(self) -> Text:
        return "action_cancel_form"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        form = (tracker.active_loop or {}).get("name")
        if not form:
            dispatcher.utter_message(response="utter_nothing_to_cancel")
            return []
        dispatcher.utter_message(response="utter_cancelled")
        return [ActiveLoop(None), SlotSet("requested_slot", None)] + form_reset(*FORM_SLOTS.get(form, ()))
