"""Handing a conversation to a person, and taking it back.

`hand_off` is the one way out of the bot: the customer asked (talk_to_human), a complaint,
the second miss in a row, or a dispute the rules send to a person. On WhatsApp, during agent
hours with an agent signed in, it queues a ticket carrying the whole context (so nobody
repeats themselves); otherwise it books a callback with a promised time.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Optional, Text, Tuple

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import ActiveLoop, EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.common import card_system, current_customer, in_thread
from actions.forms import form_reset
from cardsystem.formatting import format_date, format_datetime, mask_phone
from cardsystem.handoff import HandoffDesk
from cardsystem.views import CustomerView

logger = logging.getLogger(__name__)
LIVE_CHANNELS = ("whatsapp",)  # channels that can carry an agent's replies to the customer
REASONS = {
    "customer_asked": "the customer asked for a person",
    "complaint": "the customer is unhappy with the service",
    "not_understood": "the assistant did not understand twice in a row",
    "fraud_dispute": "a transaction the customer does not recognise (possible fraud)",
    "large_dispute": "a dispute above the amount set for a person to review",
}
DOING = {  # intent -> what the customer did, for the agent's summary
    "check_balance": "checked the balance", "ask_due_date": "asked for the due date",
    "ask_min_due": "asked for the minimum due", "check_credit_limit": "asked about the credit limit",
    "request_limit_increase": "asked for a higher limit", "request_statement": "asked for a statement",
    "list_transactions": "looked at recent transactions", "check_reward_points": "checked reward points",
    "redeem_rewards": "tried to redeem points", "report_dispute": "reported a transaction",
    "dispute_status": "asked about a dispute", "block_card": "asked to block a card", "pay_bill": "asked to pay the bill",
    "already_paid": "said they had already paid",
    "faq": "asked a general question", "complain": "complained", "nlu_fallback": "wrote something the bot did not understand",
}
RATING_LABELS = {5: "Excellent", 4: "Good", 3: "Okay", 2: "Poor", 1: "Very poor"}
RATING_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "paanch": 5, "chaar": 4}
# A request of its own after the rating question is answered, not stored as a comment.
NOT_A_COMMENT_CONFIDENCE = 0.5
PRIVATE_SLOTS = {"requested_slot", "customer_name", "handoff_ticket", "rating", "rating_comment"}
TRANSCRIPT_LIMIT = 60
_desk: Optional[HandoffDesk] = None


def handoff_desk() -> HandoffDesk:
    global _desk
    if _desk is None or _desk.system is not card_system():
        _desk = HandoffDesk(card_system())
    return _desk


def use_handoff_desk(desk: Optional[HandoffDesk]) -> None:
    """Tests point actions at a desk with their own clock and settings."""
    global _desk
    _desk = desk


def transcript(tracker: Tracker) -> List[Tuple[str, str]]:
    """What was said in this conversation, customer and bot, oldest first (tapped buttons by title)."""
    said: List[Tuple[str, str]] = []
    for event in tracker.events:
        if event.get("event") == "user":
            text = event.get("text") or ""
            if text.startswith("/"):
                intent = ((event.get("parse_data") or {}).get("intent") or {}).get("name") or text[1:]
                text = f"[tapped: {intent}]"
            attachment = (event.get("metadata") or {}).get("attachment")
            if isinstance(attachment, dict) and attachment.get("kind"):
                text = f"[{attachment['kind']}] {text}".strip()
            said.append(("customer", text[:1000]))
        elif event.get("event") == "bot" and event.get("text"):
            said.append(("bot", str(event["text"])[:1000]))
    return said[-TRANSCRIPT_LIMIT:]


def intents_of(tracker: Tracker) -> List[str]:
    seen: List[str] = []
    for event in tracker.events:
        if event.get("event") == "user":
            name = ((event.get("parse_data") or {}).get("intent") or {}).get("name")
            if name and (not seen or seen[-1] != name):
                seen.append(name)
    return seen


def summary_of(customer: Optional[CustomerView], card_last4: Optional[str], reason: str, intents: List[str],
               slots: Dict[str, Any], requests: List[Dict[str, str]], last_words: str) -> str:
    who = f"{customer.first_name} (registered customer" if customer else "An unregistered number ("
    who += f", card \u2022\u2022{card_last4})" if card_last4 else ")"
    doing = [DOING[i] for i in intents if i in DOING]
    parts = [f"{who} was handed over because {REASONS.get(reason, reason)}."]
    if doing:
        parts.append(f"In this chat they {', '.join(dict.fromkeys(doing))}.")
    if slots:
        parts.append("Details given: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in slots.items()) + ".")
    if requests:
        parts.append("Open requests: " + "; ".join(f"{r['reference']} ({r['kind']}, {r['status']}, promised by "
                                                   f"{r['promised_by']})" for r in requests) + ".")
    if last_words:
        parts.append(f"Their last message: \u201c{last_words[:200]}\u201d.")
    return " ".join(parts)


def handoff_context(tracker: Tracker, customer: Optional[CustomerView], card_last4: Optional[str], reason: str,
                    requests: List[Dict[str, str]]) -> Tuple[Dict[str, Any], List[Tuple[str, str]], str]:
    """What a colleague needs to pick the conversation up: context, transcript, summary."""
    slots = {k: v for k, v in tracker.current_slot_values().items()
             if v not in (None, "", [], False) and k not in PRIVATE_SLOTS}
    said = transcript(tracker)
    last_words = next((text for who, text in reversed(said) if who == "customer" and not text.startswith("[")), "")
    intents = intents_of(tracker)
    context = {"customer_name": customer.first_name if customer else None, "card_last4": card_last4,
               "intents": intents, "slots": slots, "open_requests": requests, "reason": REASONS.get(reason, reason),
               "masked_phone": mask_phone(tracker.sender_id)}
    return context, said, summary_of(customer, card_last4, reason, intents, slots, requests, last_words)


async def open_requests(customer: Optional[CustomerView]) -> List[Dict[str, str]]:
    requests = []
    if customer:
        for request in await in_thread(card_system().service_requests, customer.id, None, True, 5):
            requests.append({"reference": request.reference, "kind": request.kind, "status": request.status,
                             "promised_by": format_date(request.promised_by.date())})
    return requests


async def card_in_question(tracker: Tracker, customer: Optional[CustomerView]) -> Optional[str]:
    cards = await in_thread(card_system().cards_of, customer.id) if customer else []
    return tracker.get_slot("card_last4") or (cards[0].last4 if len(cards) == 1 else None)


_ASKED_FOR_A_CALL = re.compile(r"\b(?:call|callback|ring|phone)\b", re.I)


async def hand_off(dispatcher: CollectingDispatcher, tracker: Tracker, reason: str) -> List[EventType]:
    """Queue the conversation for an agent; when none can take it now, explain and offer a
    callback (booked at once only when the customer asked to be called)."""
    desk = handoff_desk()
    customer = await current_customer(tracker)
    live = tracker.get_latest_input_channel() in LIVE_CHANNELS
    availability = await in_thread(desk.availability)
    if not live or not availability.open:
        return await _callback_instead(dispatcher, tracker, customer, reason, None if not live else availability.why_not)
    card_last4 = await card_in_question(tracker, customer)
    requests = await open_requests(customer)
    context, said, summary = handoff_context(tracker, customer, card_last4, reason, requests)
    ticket = await in_thread(desk.open_ticket, tracker.sender_id, customer.id if customer else None,
                             card_last4, reason, context, said, summary)
    place = await in_thread(desk.place, ticket.reference)
    dispatcher.utter_message(response="utter_handoff_queued", position=place.position,
                             wait=f"{place.wait_minutes} minute{'s' if place.wait_minutes != 1 else ''}",
                             return_word=desk.settings.return_word)
    logger.info("handed %s to the agents' queue as %s (%s)", mask_phone(tracker.sender_id), ticket.reference, reason)
    return [SlotSet("handoff_ticket", ticket.reference)]


async def _callback_instead(dispatcher: CollectingDispatcher, tracker: Tracker, customer: Optional[CustomerView],
                            reason: str, why_not: Optional[str]) -> List[EventType]:
    system = card_system()
    if why_not == "closed":
        settings = handoff_desk().settings
        dispatcher.utter_message(response="utter_handoff_closed_hours", opens=settings.opens.strftime("%I:%M %p").lstrip("0"),
                                 closes=settings.closes.strftime("%I:%M %p").lstrip("0"))
    elif why_not == "no_agents":
        dispatcher.utter_message(response="utter_handoff_no_agents")
    if customer is None:
        dispatcher.utter_message(response="utter_handoff_stranger", support_phone=system.settings.support_phone)
        return []
    if _ASKED_FOR_A_CALL.search(tracker.latest_message.get("text") or "") or reason != "customer_asked":
        return await book_callback(dispatcher, tracker, customer, reason)
    dispatcher.utter_message(response="utter_offer_callback", phone="+" + mask_phone(customer.phone),
                             support_phone=system.settings.support_phone,
                             buttons=[{"title": "Yes, call me", "payload": "/request_callback"},
                                      {"title": "No, thanks", "payload": "/deny"}])
    return []


async def book_callback(dispatcher: CollectingDispatcher, tracker: Tracker, customer: CustomerView,
                        reason: str) -> List[EventType]:
    """A callback request carrying the same context an agent would get in a live chat."""
    card_last4 = await card_in_question(tracker, customer)
    context, said, summary = handoff_context(tracker, customer, card_last4, reason, await open_requests(customer))
    details = {"summary": summary, "context": context, "transcript": [{"who": w, "text": t} for w, t in said]}
    request = await in_thread(card_system().request_callback, customer.id, REASONS.get(reason, reason), card_last4,
                              details)
    dispatcher.utter_message(response="utter_callback_booked", phone="+" + mask_phone(customer.phone),
                             promised=format_datetime(request.promised_by), reference=request.reference)
    return [SlotSet("reference_id", request.reference)]


class ActionBookCallback(Action):
    """The customer accepted (or asked for) a call back."""

    def name(self) -> Text:
        return "action_book_callback"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        customer = await current_customer(tracker)
        if customer is None:
            dispatcher.utter_message(response="utter_handoff_stranger",
                                     support_phone=card_system().settings.support_phone)
            return []
        return await book_callback(dispatcher, tracker, customer, "customer_asked")


def dispute_needs_a_person(reason: Optional[str], amount_paise: Optional[int]) -> Optional[str]:
    """The rules that send a dispute to a person: suspected fraud, or a large amount."""
    if reason == "not_recognised":
        return "fraud_dispute"
    if amount_paise is not None and amount_paise > handoff_desk().settings.dispute_paise:
        return "large_dispute"
    return None


class ActionHandoff(Action):
    """talk_to_human or a complaint: hand the conversation to a person."""

    def name(self) -> Text:
        return "action_handoff"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        from actions.session import FORM_SLOTS  # (actions.session imports this module)

        intent = (tracker.latest_message.get("intent") or {}).get("name")
        stop_form: List[EventType] = []
        form = (tracker.active_loop or {}).get("name")
        if form:  # a person was asked for in the middle of a form: it stops, its answers are forgotten
            stop_form = [ActiveLoop(None), SlotSet("requested_slot", None)] + form_reset(*FORM_SLOTS.get(form, ()))
        return stop_form + await hand_off(dispatcher, tracker, "complaint" if intent == "complain" else "customer_asked")


class ActionHandoffFromForm(ActionHandoff):
    """The same, asked for in the middle of a form (Rasa's rules need a separate name for the
    action that ends the form)."""

    def name(self) -> Text:
        return "action_handoff_from_form"


class ActionHandoffClosed(Action):
    """The agent closed the chat: the bot is back, says so, and the rating form follows."""

    def name(self) -> Text:
        return "action_handoff_closed"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        ticket = await in_thread(handoff_desk().latest, tracker.sender_id)
        agent = ticket.agent.first_name if ticket and ticket.agent else "Our colleague"
        dispatcher.utter_message(response="utter_handoff_done", agent=agent)
        return [SlotSet("handoff_ticket", None), SlotSet("rating", None), SlotSet("rating_comment", None)]


class ActionHandoffExpired(Action):
    """No agent could take the waiting chat in time: it became a callback."""

    def name(self) -> Text:
        return "action_handoff_expired"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        ticket = await in_thread(handoff_desk().latest, tracker.sender_id)
        customer = await current_customer(tracker)
        if ticket and ticket.callback_reference and customer:
            request = await in_thread(card_system().service_request, customer.id, ticket.callback_reference)
            dispatcher.utter_message(response="utter_handoff_expired_callback", reference=request.reference,
                                     promised=format_datetime(request.promised_by))
            return [SlotSet("handoff_ticket", None), SlotSet("reference_id", request.reference)]
        dispatcher.utter_message(response="utter_handoff_expired_stranger",
                                 support_phone=card_system().settings.support_phone)
        return [SlotSet("handoff_ticket", None)]


class ActionAskRating(Action):
    """The rating question with buttons 5 to 1 (built here: Rasa would read JSON payloads in a
    domain response as placeholders)."""

    def name(self) -> Text:
        return "action_ask_rating"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        buttons = [{"title": f"{value} - {label}", "payload": f'/rate{{"rating": "{value}"}}'}
                   for value, label in RATING_LABELS.items()]
        dispatcher.utter_message(response="utter_ask_rating", buttons=buttons)
        return []


class ValidateRatingForm(FormValidationAction):
    """A rating 1 to 5 (buttons or typed), then an optional comment."""

    def name(self) -> Text:
        return "validate_rating_form"

    async def extract_rating(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        if tracker.get_slot("requested_slot") != "rating":
            return {}
        entity = next(tracker.get_latest_entity_values("rating"), None)
        text = (tracker.latest_message.get("text") or "").strip().lower()
        match = re.search(r"\b([1-5])\s*(?:/\s*5|out of 5|stars?|\u2b50+)?\b", text)
        short = len(text.split()) <= 4  # "five stars", "4 out of 5", not a sentence that happens to hold a number
        word = next((value for word, value in RATING_WORDS.items() if re.search(rf"\b{word}\b", text)), None) if short else None
        stars = len(text) if text and set(text) == {"\u2b50"} and len(text) <= 5 else None
        value = entity or (match.group(1) if match and short else None) or word or stars
        return {"rating": str(value)} if value else {}

    async def extract_rating_comment(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        if tracker.get_slot("requested_slot") != "rating_comment":
            return {}
        from actions.common import REQUEST_ACTIONS

        intent = (tracker.latest_message.get("intent") or {}).get("name")
        confidence = (tracker.latest_message.get("intent") or {}).get("confidence") or 0.0
        text = (tracker.latest_message.get("text") or "").strip()
        if (intent in ("deny", "goodbye", "thank") and len(text) < 25) or text.startswith("/"):
            return {"rating_comment": "none"}
        if intent in REQUEST_ACTIONS and confidence >= NOT_A_COMMENT_CONFIDENCE:
            return {"rating_comment": "none"}  # action_store_rating then answers the request
        return {"rating_comment": text[:1000]} if text else {}

    async def validate_rating(self, value, dispatcher, tracker, domain) -> Dict[Text, Any]:
        if value is None:  # the form's own reset when it starts: nothing to check
            return {"rating": None}
        if str(value) in {"1", "2", "3", "4", "5"}:
            return {"rating": str(value)}
        dispatcher.utter_message(response="utter_rating_invalid")
        return {"rating": None}

    async def validate_rating_comment(self, value, dispatcher, tracker, domain) -> Dict[Text, Any]:
        return {"rating_comment": value}  # None (the form's reset) keeps the question open


class ActionStoreRating(Action):
    def name(self) -> Text:
        return "action_store_rating"

    async def run(self, dispatcher, tracker, domain) -> List[EventType]:
        from actions.common import REQUEST_ACTIONS, perform

        rating, comment = tracker.get_slot("rating"), tracker.get_slot("rating_comment")
        intent = (tracker.latest_message.get("intent") or {}).get("name")
        request = intent if comment == "none" and intent in REQUEST_ACTIONS and intent != "deny" else None
        if rating:
            await in_thread(handoff_desk().rate, tracker.sender_id, int(rating),
                            None if comment in (None, "none") else comment)
            dispatcher.utter_message(response="utter_rating_thanks_short" if request else "utter_rating_thanks")
        events: List[EventType] = [SlotSet("rating", None), SlotSet("rating_comment", None), SlotSet("requested_slot", None)]
        return events + (await perform(request, dispatcher, tracker, domain) if request else [])
