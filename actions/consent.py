"""STOP and START: the customer's consent to messages the bank sends first (reminders, updates)."""
from __future__ import annotations

from typing import List, Text

from rasa_sdk import Action
from rasa_sdk.events import ActiveLoop, EventType, SlotSet

from actions.common import card_system, in_thread
from actions.forms import form_reset
from actions.session import FORM_SLOTS


class ActionOptOut(Action):
    """STOP (or "don't send me reminders"): no more proactive messages, at once, for any number.
    A form in progress stops too: "stop" in the middle of a question means stop."""

    def name(self) -> Text:
        return "action_opt_out"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        channel = tracker.get_latest_input_channel() or "chat"
        await in_thread(card_system().set_consent, tracker.sender_id, False, f"{channel}:opt_out")
        events: List[EventType] = []
        form = (tracker.active_loop or {}).get("name")
        if form:
            events = [ActiveLoop(None), SlotSet("requested_slot", None)] + form_reset(*FORM_SLOTS.get(form, ()))
        dispatcher.utter_message(response="utter_opted_out")
        return events


class ActionOptIn(Action):
    def name(self) -> Text:
        return "action_opt_in"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        channel = tracker.get_latest_input_channel() or "chat"
        system = card_system()
        if await in_thread(system.consent_of, tracker.sender_id) is True:
            dispatcher.utter_message(response="utter_already_opted_in")
            return []
        await in_thread(system.set_consent, tracker.sender_id, True, f"{channel}:opt_in")
        dispatcher.utter_message(response="utter_opted_in")
        return []
