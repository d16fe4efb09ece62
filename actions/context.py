"""Understanding a message from what came before: a "yes" to an offer, a change of mind, a
follow-up ("and the other card?", "next month's also"), a new request in the middle of a
form, a photo sent before it was asked for, a complaint."""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional, Text

from rasa_sdk import Action, Tracker
from rasa_sdk.events import ActiveLoop, EventType, FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.common import last_bot_message, last_request, perform
from actions.forms import DECLINED_SLOT, dumps, form_reset, latest_attachment
from actions.handoff import hand_off
from actions.session import FORM_SLOTS, consecutive_fallbacks

logger = logging.getLogger(__name__)
PENDING_ATTACHMENT = "pending_attachment"
LEFT_SLOT = "left_request"  # the form left for another request, offered again once that is done
FORM_NAMES = {"statement_form": "the statement", "dispute_form": "the dispute", "block_card_form": "blocking the card",
              "redeem_form": "the redemption", "limit_increase_form": "the limit request", "rating_form": "the rating",
              "address_change_form": "the address change", "email_change_form": "the e-mail change",
              "replace_card_form": "the card replacement", "close_card_form": "closing the card"}


def payload_intent(payload: Text) -> Optional[Text]:
    """'/redeem_rewards' -> 'redeem_rewards'; '/inform{...}' -> 'inform'."""
    if not payload or not payload.startswith("/"):
        return None
    return payload[1:].split("{", 1)[0].strip() or None


class ActionAffirmInContext(Action):
    """A "yes" outside a form: to the offer the bot just made, to the request the customer
    just declined ("no" ... "haan, block it"), or, with nothing to agree to, the menu."""

    def name(self) -> Text:
        return "action_affirm_in_context"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[EventType]:
        declined = tracker.get_slot(DECLINED_SLOT)
        if declined:
            try:
                request = json.loads(declined)
            except (TypeError, ValueError):
                request = {}
            form = request.get("form")
            if form in FORM_SLOTS:
                restored = [SlotSet(slot, value) for slot, value in (request.get("slots") or {}).items()]
                return [SlotSet(DECLINED_SLOT, None)] + restored + [FollowupAction(form)]
        offers = [payload_intent(b.get("payload", "")) for b in last_bot_message(tracker).get("buttons", [])]
        offers = [o for o in offers if o and o not in ("deny", "affirm", "help")]
        if len(offers) == 1 or (offers and offers[0] == "talk_to_human"):
            return await perform(offers[0], dispatcher, tracker, domain)
        dispatcher.utter_message(response="utter_help")
        return []


class ActionFollowUp(Action):
    """A bare answer outside any form ("6392 wala", "the other one", "next month's also",
    "the swiggy one"): the customer's previous request again, with what they just said."""

    def name(self) -> Text:
        return "action_follow_up"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        previous = last_request(tracker)
        entities = {e.get("entity") for e in tracker.latest_message.get("entities") or []}
        if previous is None:
            if entities & {"merchant", "amount", "date", "transaction_id"}:
                previous = "report_dispute"  # a transaction described out of the blue
            elif "month" in entities:
                previous = "request_statement"
            elif "reference_id" in entities:
                previous = "dispute_status"
        if previous == "list_transactions" and entities & {"merchant", "amount", "date", "transaction_id"}:
            previous = "report_dispute"  # "the swiggy one" after the list: that's the one to report
        if previous is None:
            dispatcher.utter_message(response="utter_follow_up_unclear")
            dispatcher.utter_message(response="utter_help")
            return []
        return [SlotSet(DECLINED_SLOT, None)] + await perform(previous, dispatcher, tracker, domain)


class ActionSwitchForm(Action):
    """A different request in the middle of a form: that form stops (its answers forgotten)
    and the new request is answered; the customer is told what was left."""

    def name(self) -> Text:
        return "action_switch_form"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        form = (tracker.active_loop or {}).get("name")
        if not form:
            return []
        dispatcher.utter_message(response="utter_form_left", left=FORM_NAMES.get(form, "that"))
        slots = FORM_SLOTS.get(form, ()) + (("rating", "rating_comment") if form == "rating_form" else ())
        left = [SlotSet(LEFT_SLOT, form)] if form != "rating_form" else []
        return [ActiveLoop(None), SlotSet("requested_slot", None)] + form_reset(*slots) + left


class ActionMediaReceived(Action):
    """A photo or document outside the dispute questions, never dropped: the document a request
    waits for (it goes back to the desk, the clock rule applied and told), else added to the
    dispute just raised, else kept for the request the customer raises next."""

    def name(self) -> Text:
        return "action_media_received"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        from actions.common import card_system, current_customer, in_thread

        attachment = latest_attachment(tracker)
        if attachment is None:
            dispatcher.utter_message(response="utter_media_unreadable")
            return []
        customer = await current_customer(tracker)
        reference = tracker.get_slot("reference_id") or ""
        if customer is not None:
            from actions.common import service_desk

            waiting = await in_thread(service_desk().pending_from, customer.id)
            if waiting:
                got = await in_thread(service_desk().documents_received, customer.id, None, attachment)
                dispatcher.utter_message(response="utter_documents_received", message=got["message"])
                return [SlotSet("reference_id", got["reference"])]
        if customer is not None and reference.upper().startswith("DSP"):
            added = await in_thread(card_system().attach_to_request, customer.id, reference, attachment)
            if added:
                dispatcher.utter_message(response="utter_media_added", reference=reference)
                return []
        dispatcher.utter_message(response="utter_media_kept",
                                 buttons=[{"title": "Report a transaction", "payload": "/report_dispute"},
                                          {"title": "Change my address", "payload": "/change_address"},
                                          {"title": "Talk to a person", "payload": "/talk_to_human"}])
        return [SlotSet(PENDING_ATTACHMENT, dumps(attachment))]


class ActionComplaint(Action):
    """Frustration. After trouble in this chat (a miss, a repeated question) a person takes
    over at once; as a first message, the bot says sorry and offers a person or the menu
    (a vague complaint must not book a call nobody asked for)."""

    def name(self) -> Text:
        return "action_complaint"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        user_turns = [e for e in tracker.events if e.get("event") == "user"]
        troubled = any(((e.get("parse_data") or {}).get("intent") or {}).get("name") in ("nlu_fallback", "complain")
                       for e in user_turns[:-1]) or tracker.get_slot("form_misses") or consecutive_fallbacks(tracker)
        if troubled:
            return await hand_off(dispatcher, tracker, "complaint")
        dispatcher.utter_message(response="utter_complaint_sorry",
                                 buttons=[{"title": "Talk to a person", "payload": "/talk_to_human"},
                                          {"title": "Main menu", "payload": "/help"}])
        return []
