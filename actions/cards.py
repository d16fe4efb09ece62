"""Blocking a lost or stolen card, and asking for a higher credit limit."""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Text

from rasa_sdk.events import EventType, SlotSet

from actions.common import CustomerAction, card_label, card_system, current_customer, in_thread, money
from actions.session import FORM_SLOTS
from actions.forms import DECLINED_SLOT, ActiveCardSubmit, AskCardConfirm, AskWithChoices, ConfirmedSubmit, latest_intent, CardFormValidation
from cardsystem.formatting import format_date, parse_amount_paise

BLOCK_WORDS = (
    ("stolen", ("stolen", "stole", "theft", "chori", "snatched", "pickpocket", "robbed")),
    ("suspicious", ("fraud", "suspicious", "hacked", "misuse", "unauthori", "compromised", "skimmed", "cvv", "otp",
                    "someone has my", "someone knows", "somebody has my", "details leaked", "shared my card")),
    ("lost", ("lost", "lose", "missing", "kho", "gum", "misplaced", "can't find", "cannot find", "cant find",
              "left my card", "left it", "forgot my card", "dropped", "gir gaya", "nahi mil")),
)
BLOCK_REASON_BUTTONS = (("Lost", "lost"), ("Stolen", "stolen"), ("Suspicious activity", "suspicious"))


_LEFT_SOMEWHERE = re.compile(r"\b(?:left|forgot|dropped|lost)\b.{0,30}\bcard\b|\bcard\b.{0,30}\b(?:left|fell|dropped)\b", re.I)
SURE = re.compile(r"\b(?:i'?m sure|i am sure|sure|confirm(?:ed)?|go ahead|do it|haan|ha|yes|yeah|block it|block kar(?:o|do))\b",
                  re.I)


def block_reason_from_text(text: Text):
    lowered = (text or "").lower()
    for reason, words in BLOCK_WORDS:
        if any(word in lowered for word in words):
            return reason
    return "lost" if _LEFT_SOMEWHERE.search(lowered) else None


class ValidateBlockCardForm(CardFormValidation):
    form_intent = "block_card"
    active_cards_only = True
    confirm_slot = "block_confirm"

    def name(self) -> Text:
        return "validate_block_card_form"

    async def extract_block_reason(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        entity = next(tracker.get_latest_entity_values("block_reason"), None)
        if entity in ("lost", "stolen", "suspicious", "damaged"):
            return {"block_reason": entity}
        asked = self.answered(tracker, "block_reason")
        starting = latest_intent(tracker) == self.form_intent
        if (asked or starting) and tracker.get_slot("block_reason") is None:
            reason = block_reason_from_text(tracker.latest_message.get("text") or "")
            if reason:
                return {"block_reason": reason}
        return self.ask_again(tracker, "block_reason")

    async def validate_block_reason(self, value, dispatcher, tracker, domain) -> Dict[Text, Any]:
        if value is None:
            return {"block_reason": None}
        if value in ("lost", "stolen", "suspicious", "damaged"):
            return {"block_reason": value}
        dispatcher.utter_message(text="Please choose one of the options below.")
        return {"block_reason": None}

    async def extract_block_confirm(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        if tracker.get_slot("requested_slot") != "block_confirm" and self.changed_mind(tracker):
            return {"block_confirm": True}  # "no" a moment ago, now "ok block it, I'm sure"
        return self.yes_no(tracker, "block_confirm")

    @staticmethod
    def changed_mind(tracker) -> bool:
        try:
            declined = json.loads(tracker.get_slot(DECLINED_SLOT) or "{}")
        except ValueError:
            return False
        text = tracker.latest_message.get("text") or ""
        return declined.get("form") == "block_card_form" and latest_intent(tracker) == "block_card" and \
            bool(SURE.search(text)) and not text.startswith("/")


class ActionAskBlockReason(AskWithChoices):
    response, slot, choices = "utter_ask_block_reason", "block_reason", BLOCK_REASON_BUTTONS

    def name(self) -> Text:
        return "action_ask_block_reason"


class ActionAskBlockConfirm(AskCardConfirm):
    response = "utter_ask_block_confirm"

    def name(self) -> Text:
        return "action_ask_block_confirm"


class ActionBlockCard(ActiveCardSubmit):
    """Blocks the chosen card after an explicit yes. There is deliberately no unblock.
    A number that is not registered gets the emergency route (hotline, app), not a registration text."""

    stranger_response = "utter_lost_card_stranger"
    form_name = "block_card_form"
    form_slots = FORM_SLOTS["block_card_form"]
    confirm_slot = "block_confirm"
    declined_response = "utter_block_declined"
    no_card_response = "utter_no_active_cards"

    def name(self) -> Text:
        return "action_block_card"

    async def submit(self, dispatcher, tracker, customer) -> List[EventType]:
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4"))
        request = await in_thread(card_system().block_card, customer.id, card.last4,
                                  tracker.get_slot("block_reason") or "lost")
        dispatcher.utter_message(response="utter_card_blocked", card_label=card_label(card), reference=request.reference,
                                 promised=format_date(request.promised_by.date()))
        return [SlotSet("reference_id", request.reference)]


class ValidateLimitIncreaseForm(CardFormValidation):
    form_intent = "request_limit_increase"
    active_cards_only = True
    confirm_slot = "limit_confirm"

    def name(self) -> Text:
        return "validate_limit_increase_form"

    async def extract_new_limit(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        entity = next(tracker.get_latest_entity_values("amount"), None)
        asked = self.answered(tracker, "new_limit")
        text = entity or (tracker.latest_message.get("text") if asked else None)
        if not text:
            return {}
        paise = parse_amount_paise(str(text))
        if paise is None:
            if asked:
                dispatcher.utter_message(text="Please tell me the amount in rupees, e.g. 3,00,000 or 3 lakh.")
                return {"new_limit": None}
            return {}
        return {"new_limit": float(paise)}

    async def validate_new_limit(self, value, dispatcher, tracker, domain) -> Dict[Text, Any]:
        customer = await current_customer(tracker)
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4")) if customer else None
        if card is None or value is None:
            return {"new_limit": value}
        paise = int(value)
        if paise <= card.credit_limit_paise:
            dispatcher.utter_message(text=f"That's not more than your current limit of {money(card.credit_limit_paise)}. "
                                          "What higher limit would you like?")
            return {"new_limit": None}
        if paise > card.credit_limit_paise * 3:
            dispatcher.utter_message(text=f"I can request up to 3 times your current limit, i.e. "
                                          f"{money(card.credit_limit_paise * 3)}. Please choose an amount up to that.")
            return {"new_limit": None}
        return {"new_limit": float(paise)}

    async def extract_limit_confirm(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        return self.yes_no(tracker, "limit_confirm")


class ActionAskNewLimit(CustomerAction):
    def name(self) -> Text:
        return "action_ask_new_limit"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4"))
        limit = card.credit_limit_paise if card else 0
        example = (limit * 3 // 2 // 1000000 + 1) * 1000000  # 1.5x, rounded up to Rs 10,000
        dispatcher.utter_message(response="utter_ask_new_limit", credit_limit=money(limit),
                                 example=money(example).split(".")[0])
        return []


class ActionAskLimitConfirm(CustomerAction):
    def name(self) -> Text:
        return "action_ask_limit_confirm"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4"))
        dispatcher.utter_message(response="utter_ask_limit_confirm", card_label=card_label(card) if card else "",
                                 credit_limit=money(card.credit_limit_paise if card else 0),
                                 new_limit=money(int(tracker.get_slot("new_limit") or 0)))
        return []


class ActionRequestLimitIncrease(ConfirmedSubmit):
    form_name = "limit_increase_form"
    form_slots = FORM_SLOTS["limit_increase_form"]
    confirm_slot = "limit_confirm"
    declined_response = "utter_limit_declined"

    def name(self) -> Text:
        return "action_request_limit_increase"

    async def ready(self, dispatcher, tracker, customer) -> bool:
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4"))
        if card is None or not card.is_active:
            dispatcher.utter_message(text="A limit increase needs an active card, and I couldn't find one on your account.")
            return False
        return True

    async def submit(self, dispatcher, tracker, customer) -> List[EventType]:
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4"))
        request = await in_thread(card_system().request_limit_increase, customer.id, card.last4,
                                  int(tracker.get_slot("new_limit")))
        dispatcher.utter_message(response="utter_limit_requested", reference=request.reference,
                                 card_label=card_label(card), new_limit=money(request.amount_paise),
                                 promised=format_date(request.promised_by.date()))
        return [SlotSet("reference_id", request.reference)]
