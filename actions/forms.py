"""The base every cardcare form validator shares: who the customer is, which card, yes/no."""
from __future__ import annotations

import json
import re
from abc import abstractmethod
from typing import Any, Dict, List, Optional, Text, Tuple

from rasa_sdk import Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.forms import FormValidationAction
from rasa_sdk.types import DomainDict

from actions.common import REQUEST_ACTIONS, card_entity, card_in_words, CustomerAction, card_buttons, card_system, current_customer, in_thread
from cardsystem.errors import CardSystemError
from cardsystem.views import CardView, CustomerView

# Intents that may carry an answer to the question the form asked. Anything else (a FAQ,
# "never mind", another request) is left unextracted, so the form is interrupted and
# the rules for interruptions take over: a new request is never taken as an answer.
ANSWER_INTENTS = {"inform", "affirm", "deny", "nlu_fallback", "share_media", "rate"}
DECLINED_SLOT = "declined_request"
# The request itself, asked to confirm, with a yes in it ("ya pls block it fast", "haan block karo")
AFFIRMATIVE = re.compile(r"\b(?:i'?m sure|i am sure|sure|confirm(?:ed)?|go ahead|do it|haan|han|ha|haanji|ji|yes|yeah|yep|"
                         r"yup|ya|yah|ok|okay|okk|pls|plz|please|asap|right now|now|fast|quickly|jaldi|kar do|kardo|"
                         r"karo|kar dijiye)\b", re.I)
NEGATIVE = re.compile(r"\b(?:no|not|don'?t|dont|do not|never|wait|mat|nahi|nahin|na|mt)\b", re.I)
REPROMPTS = 2  # a question is asked again at most twice; then choices and a person are offered
MISSES_SLOT = "form_misses"
GAVE_UP = "gave_up"


def latest_intent(tracker: Tracker) -> Optional[Text]:
    """The intent NLU gave the latest message, nlu_fallback included (rasa-sdk's helper skips it)."""
    return ((tracker.latest_message or {}).get("intent") or {}).get("name")


def latest_metadata(tracker: Tracker) -> Dict[Text, Any]:
    """Metadata the channel attached to the latest user message (e.g. an attachment)."""
    metadata = tracker.latest_message.get("metadata") or {}
    if metadata:
        return metadata
    for event in reversed(tracker.events):
        if event.get("event") == "user":
            return event.get("metadata") or {}
    return {}


def latest_attachment(tracker: Tracker) -> Optional[Dict[Text, Any]]:
    """The media the customer just sent: media id, mime type, filename, caption, and where the
    channel keeps its copy ("stored", with its "sha256") when it could fetch it."""
    attachment = latest_metadata(tracker).get("attachment")
    if isinstance(attachment, dict) and attachment.get("media_id"):
        return {k: attachment.get(k) for k in ("media_id", "mime_type", "filename", "caption", "stored", "sha256")}
    return None


class CardFormValidation(FormValidationAction):
    """Validates a form whose first slot is the card it is about.

    Subclasses set `form_intent` (the intent that starts the form) and may narrow
    `eligible_cards` (e.g. only active cards can be blocked).
    """

    form_intent: Text = ""
    active_cards_only: bool = False
    confirm_slot: Text = ""  # the final yes/no; a "no" to an earlier question also answers it
    skippable: Tuple[Text, ...] = ()  # questions where "no" means "skip" (no screenshot), not "stop"

    @abstractmethod
    def name(self) -> Text:
        """validate_<form name>"""

    def is_answer(self, tracker: Tracker) -> bool:
        if latest_attachment(tracker) is not None:
            return True  # a photo is an answer, whatever its caption says
        return latest_intent(tracker) in ANSWER_INTENTS | {self.form_intent}

    async def get_extraction_events(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                                    domain: DomainDict) -> List[EventType]:
        if not self.is_answer(tracker):
            return []  # another request: the form is interrupted, the rules answer it
        return await super().get_extraction_events(dispatcher, tracker, domain)

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        asked = tracker.get_slot("requested_slot")
        answering = bool(asked) and self.is_answer(tracker) and latest_intent(tracker) != self.form_intent
        if answering and latest_intent(tracker) == "deny" and self.confirm_slot and asked != self.confirm_slot \
                and asked not in self.skippable:
            # "no" (or "wait, no") to an earlier question: the request is declined, not asked again
            return [SlotSet(self.confirm_slot, False), SlotSet("requested_slot", None)]
        events = await super().run(dispatcher, tracker, domain)
        if asked and latest_intent(tracker) == self.form_intent and tracker.slots.get(asked) is None:
            return events + [SlotSet(asked, None)]  # asked for the same thing again: ask the question again
        if not answering:
            return events
        if tracker.slots.get(asked) is not None:
            return events + [SlotSet(MISSES_SLOT, None)]
        misses = self.misses(tracker, asked) + 1
        if misses > REPROMPTS:
            dispatcher.utter_message(response="utter_form_gave_up", buttons=self.way_out_buttons())
            return events + [SlotSet(MISSES_SLOT, GAVE_UP), SlotSet("requested_slot", None)]
        if misses == REPROMPTS:
            dispatcher.utter_message(response="utter_form_reprompt_hint")
        return events + [SlotSet(MISSES_SLOT, f"{asked}:{misses}")]

    @staticmethod
    def misses(tracker: Tracker, slot: Text) -> int:
        value = tracker.get_slot(MISSES_SLOT) or ""
        name, _, count = str(value).partition(":")
        return int(count) if name == slot and count.isdigit() else 0

    def way_out_buttons(self) -> List[Dict[Text, Text]]:
        return [{"title": "Talk to a person", "payload": "/talk_to_human"},
                {"title": "Start again", "payload": f"/{self.form_intent}"},
                {"title": "Main menu", "payload": "/help"}]

    def answered(self, tracker: Tracker, slot: Text) -> bool:
        """The customer replied to the question for `slot` (not a question of their own)."""
        return tracker.get_slot("requested_slot") == slot and self.is_answer(tracker)

    def ask_again(self, tracker: Tracker, slot: Text) -> Dict[Text, Any]:
        """An answer we couldn't use: clear the slot so the form asks again, instead of
        being rejected (which would end in the generic fallback)."""
        return {slot: None} if self.answered(tracker, slot) else {}

    async def eligible_cards(self, customer: CustomerView) -> List[CardView]:
        cards = await in_thread(card_system().cards_of, customer.id)
        return [c for c in cards if c.is_active] if self.active_cards_only else cards

    async def required_slots(self, domain_slots: List[Text], dispatcher: CollectingDispatcher,
                             tracker: Tracker, domain: DomainDict) -> List[Text]:
        customer = await current_customer(tracker)
        if customer is None or not await self.can_start(customer):
            return []  # the submit action explains why nothing was asked
        return domain_slots

    async def can_start(self, customer: CustomerView) -> bool:
        """Whether the form has anything to ask this customer (e.g. a card it applies to)."""
        return bool(await self.eligible_cards(customer))

    async def extract_card_last4(self, dispatcher: CollectingDispatcher, tracker: Tracker,
                                 domain: DomainDict) -> Dict[Text, Any]:
        named = card_entity(tracker)
        if named:
            return {"card_last4": named}  # checked in validate_card_last4
        customer = await current_customer(tracker)
        if customer is None:
            return {}
        said = card_in_words(tracker, await in_thread(card_system().cards_of, customer.id))
        if said is not None:
            return {"card_last4": said.last4}
        if tracker.get_slot("card_last4"):
            return {}
        cards = await self.eligible_cards(customer)
        if len(cards) == 1:
            return {"card_last4": cards[0].last4}
        return self.ask_again(tracker, "card_last4")

    async def validate_card_last4(self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker,
                                  domain: DomainDict) -> Dict[Text, Any]:
        if value is None:
            return {"card_last4": None}
        customer = await current_customer(tracker)
        if customer is None:
            return {"card_last4": None}
        cards = await self.eligible_cards(customer)
        if any(c.last4 == str(value) for c in cards):
            return {"card_last4": str(value)}
        owned = await in_thread(card_system().card_of, customer.id, str(value))
        if owned is not None and not owned.is_active:
            dispatcher.utter_message(text=f"Your card ending {owned.last4} is already blocked.")
        else:
            dispatcher.utter_message(text=f"I couldn't find a card ending {str(value)[:4]} on your account.")
        return {"card_last4": None}

    def yes_no(self, tracker: Tracker, slot: Text) -> Dict[Text, Any]:
        """Fill a confirmation slot from affirm/deny, only when that slot was asked ("haan block
        karo", the request itself with a yes in it, counts as yes)."""
        if tracker.get_slot("requested_slot") != slot:
            return {}
        intent = latest_intent(tracker)
        text = tracker.latest_message.get("text") or ""
        if intent == "affirm" or (intent == self.form_intent and AFFIRMATIVE.search(text) and not NEGATIVE.search(text)
                                   and not text.startswith("/")):
            return {slot: True}
        if intent == "deny":
            return {slot: False}
        return {slot: None} if intent in ANSWER_INTENTS else {}


class ActionAskCardLast4(CustomerAction):
    """Asks which card, with one button per card the active form accepts."""

    def name(self) -> Text:
        return "action_ask_card_last4"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        cards = await in_thread(card_system().cards_of, customer.id)
        if (tracker.active_loop or {}).get("name") in ("block_card_form", "limit_increase_form", "replace_card_form",
                                                         "close_card_form"):
            cards = [c for c in cards if c.is_active]
        dispatcher.utter_message(response="utter_ask_card_last4", buttons=card_buttons(cards, "inform"))
        return []


def form_reset(*slots: Text) -> List[EventType]:
    """Forget a form's answers once it is done, so the next request starts afresh."""
    return [SlotSet(slot, None) for slot in slots + (MISSES_SLOT,)]


def gave_up(tracker: Tracker) -> bool:
    """The form stopped because its question was not understood three times (see run)."""
    return tracker.get_slot(MISSES_SLOT) == GAVE_UP


def dumps(value: Any) -> Text:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class ConfirmedSubmit(CustomerAction):
    """A form's last step: make the request only after an explicit yes, and forget the
    form's answers whatever happens (declined, refused by the card system, or done)."""

    form_slots: Tuple[Text, ...] = ()
    confirm_slot: Text = ""
    declined_response: Text = ""

    form_name: Text = ""

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        reset = form_reset(*self.form_slots)
        if gave_up(tracker):
            return reset
        declined = tracker.get_slot(self.confirm_slot) is False
        if not declined and not await self.ready(dispatcher, tracker, customer):
            return reset
        if tracker.get_slot(self.confirm_slot) is not True:
            dispatcher.utter_message(response=self.declined_response)
            # "no", then "ok do it, I'm sure": the answers are kept for one change of mind
            kept = {slot: tracker.get_slot(slot) for slot in ("card_last4",) + self.form_slots
                    if slot != self.confirm_slot and tracker.get_slot(slot) is not None}
            return reset + [SlotSet(DECLINED_SLOT, dumps({"form": self.form_name, "slots": kept}))]
        try:
            done = await self.submit(dispatcher, tracker, customer)
        except CardSystemError as refused:
            dispatcher.utter_message(text=str(refused))
            return reset
        return reset + done + self.back_to_left(dispatcher, tracker)

    def back_to_left(self, dispatcher: CollectingDispatcher, tracker: Tracker) -> List[EventType]:
        """The customer left a form for this one ("block my card first"): offer to go back."""
        left = tracker.get_slot("left_request")
        if not left or left == self.form_name:
            return []
        intent = next((i for i, action in REQUEST_ACTIONS.items() if action == left), None)
        if intent:
            dispatcher.utter_message(response="utter_back_to_left", buttons=[
                {"title": "Yes, continue", "payload": f"/{intent}"}, {"title": "No, thanks", "payload": "/deny"}])
        return [SlotSet("left_request", None)]

    @abstractmethod
    async def ready(self, dispatcher: CollectingDispatcher, tracker: Tracker, customer: CustomerView) -> bool:
        """Whether the form gathered something to submit; explains to the customer when not."""

    @abstractmethod
    async def submit(self, dispatcher: CollectingDispatcher, tracker: Tracker, customer: CustomerView) -> List[EventType]:
        """Make the request, tell the customer, return extra events."""


class ActiveCardSubmit(ConfirmedSubmit):
    """A request about one of the customer's active cards (block, replace, close): nothing is
    submitted for a card that is not active, and a customer with none is told so."""

    no_card_response: Text = ""

    async def ready(self, dispatcher, tracker, customer) -> bool:
        system = card_system()
        card = await in_thread(system.card_of, customer.id, tracker.get_slot("card_last4"))
        if card is not None and card.is_active:
            return True
        if not any(c.is_active for c in await in_thread(system.cards_of, customer.id)):
            dispatcher.utter_message(response=self.no_card_response)
        return False


class AskCardConfirm(CustomerAction):
    """A form's final yes/no about the chosen card ("Block Platinum •• 4821 permanently?")."""

    response: Text = ""

    @abstractmethod
    def name(self) -> Text:
        """action_ask_<confirm slot>"""

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4"))
        dispatcher.utter_message(response=self.response, card_label=card.label if card else "your card")
        return []


class AskWithChoices(CustomerAction):
    """A form's question with one button per choice, each answering `/inform{"<slot>": value}`.
    Built here, not in domain.yml: JSON in a domain button payload is read by Rasa as placeholders."""

    response: Text = ""
    slot: Text = ""
    choices: Tuple[Tuple[Text, Text], ...] = ()  # (button title, slot value)

    @abstractmethod
    def name(self) -> Text:
        """action_ask_<slot>"""

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        buttons = [{"title": title, "payload": "/inform" + dumps({self.slot: value})} for title, value in self.choices]
        dispatcher.utter_message(response=self.response, buttons=buttons)
        return []
