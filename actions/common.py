"""Helpers every action shares: the card system, who the customer is, which card they mean."""
from __future__ import annotations

import asyncio
import functools
import re
from abc import ABC, abstractmethod
import logging
from typing import Any, Callable, Dict, List, Optional, Text, TypeVar

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from cardsystem.formatting import format_date, format_inr, mask_phone
from cardsystem.service import CardSystem
from cardsystem.views import CardView, CustomerView

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_MESSAGE_CHARS = 1000  # longer texts get a polite request to shorten (see action_fallback)


_system: Optional[CardSystem] = None


def card_system() -> CardSystem:
    """The process-wide card system (settings from the environment, read once)."""
    global _system
    if _system is None:
        system = CardSystem()
        system.create_schema()
        _system = system
    return _system


def use_card_system(system: Optional[CardSystem]) -> None:
    """Point every action at `system` (tests use a seeded temporary database)."""
    global _system, _desk
    _system, _desk = system, None


_desk = None


def service_desk():
    """The service desk on the card system's database and clock (cardsystem.requests.desk)."""
    global _desk
    if _desk is None:
        from cardsystem.requests.desk import ServiceDesk

        system = card_system()
        _desk = ServiceDesk(engine=system.engine, rules=system.desk_rules, now=system.now)
    return _desk


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking card-system call off the action server's event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def current_customer(tracker: Tracker) -> Optional[CustomerView]:
    return await in_thread(card_system().find_customer, tracker.sender_id)


def card_label(card: CardView) -> str:
    return card.label


def money(paise: Optional[int]) -> str:
    return format_inr(paise or 0)


def date_or_dash(day) -> str:
    return format_date(day) if day else "-"


BUTTON_TITLE_CHARS = 20  # WhatsApp's reply-button limit; channels with more room still read well


def short_title(text: Text, limit: int = BUTTON_TITLE_CHARS) -> Text:
    """Cut a button title to `limit` characters at a word boundary where possible."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut.rsplit(" ", 1)[0] if " " in cut[limit // 2:] else cut


def card_buttons(cards: List[CardView], intent: Text, extra: Optional[Dict[Text, Any]] = None) -> List[Dict[Text, Text]]:
    """One button per card that repeats the request with the card chosen (no NLU needed)."""
    buttons = []
    for card in cards:
        entities = {"card_last4": card.last4, **(extra or {})}
        payload = "/" + intent + "{" + ",".join(f'"{k}":"{v}"' for k, v in entities.items()) + "}"
        buttons.append({"title": f"Card ending {card.last4}", "payload": payload})
    return buttons


_YEAR_RE = re.compile(r"^20\d\d$")


def card_entity(tracker: Tracker) -> Optional[Text]:
    """The last 4 digits the customer named in this message, if any.

    NLU can mistake the year in "statement for december 2030" for a card number; a
    year-like value next to a month entity is not taken as a card.
    """
    value = next(tracker.get_latest_entity_values("card_last4"), None)
    if value is None:
        return None
    value = str(value).strip()
    months = " ".join(str(m) for m in tracker.get_latest_entity_values("month"))
    if _YEAR_RE.match(value) and (value in months or re.search(r"[a-z]{3,}\s+" + value, (tracker.latest_message.get("text") or "").lower())):
        return None
    return value


def mentioned_last4(tracker: Tracker) -> Optional[Text]:
    """The card the customer named in this message (entity), else the one chosen earlier."""
    return card_entity(tracker) or tracker.get_slot("card_last4")


_OTHER_CARD = re.compile(r"\b(?:other|another|dusr[aei]|doosr[aei]|second|2nd|baaki|baki)\b", re.I)
_FIRST_CARD = re.compile(r"\b(?:first|1st|pehl[aei]|pahl[aei])\b", re.I)
_FOUR_DIGITS = re.compile(r"(?<![\d,.])(\d{4})(?![\d,])")


def card_in_words(tracker: Tracker, cards: List[CardView]) -> Optional[CardView]:
    """The card a message means without an entity: its last 4 digits anywhere in the text,
    "the other one" (the card not chosen before), "the first/second one" (in listed order)."""
    text = tracker.latest_message.get("text") or ""
    if text.startswith("/"):
        return None
    by_last4 = {c.last4: c for c in cards}
    for digits in _FOUR_DIGITS.findall(text):
        if digits in by_last4:
            return by_last4[digits]
    if len(cards) < 2:
        return None
    current = tracker.get_slot("card_last4")
    if _OTHER_CARD.search(text) and current in by_last4:
        others = [c for c in cards if c.last4 != current]
        return others[0] if len(others) == 1 else None
    if _OTHER_CARD.search(text) and re.search(r"\b(?:second|2nd)\b", text, re.I):
        return cards[1]
    if _FIRST_CARD.search(text):
        return cards[0]
    return None


async def pick_card(
    dispatcher: CollectingDispatcher,
    tracker: Tracker,
    customer: CustomerView,
    intent: Text,
    active_only: bool = False,
    remember_card: bool = True,
) -> "tuple[Optional[CardView], List[EventType]]":
    """Find the card this request is about, or ask which one (buttons) and return None.

    The choice is kept in the `card_last4` slot, so a customer with two cards is asked once
    per conversation; requests that move money pass `remember_card=False` and are asked
    unless this message names the card.
    """
    cards = await in_thread(card_system().cards_of, customer.id)
    eligible = [c for c in cards if c.is_active] if active_only else cards
    said = card_in_words(tracker, cards)
    wanted = card_entity(tracker) or (said.last4 if said else None) or (
        tracker.get_slot("card_last4") if remember_card else None)
    if wanted:
        match = next((c for c in eligible if c.last4 == str(wanted)), None)
        if match:
            return match, [SlotSet("card_last4", match.last4)]
        if not any(c.last4 == str(wanted) for c in cards):
            dispatcher.utter_message(text=f"I couldn't find a card ending {str(wanted)[:4]} on your account.")
    if not eligible:
        return None, [SlotSet("card_last4", None)]
    if len(eligible) == 1:
        return eligible[0], [SlotSet("card_last4", eligible[0].last4)]
    dispatcher.utter_message(response="utter_ask_card_last4", buttons=card_buttons(eligible, intent))
    return None, [SlotSet("card_last4", None)]


class CustomerAction(Action, ABC):
    """An action that needs a registered customer; unknown numbers get no account data."""

    stranger_response: Text = "utter_not_registered"  # what an unknown number is told instead

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[EventType]:
        customer = await current_customer(tracker)
        if customer is None:
            logger.info("%s: sender %s is not a customer", self.name(), mask_phone(tracker.sender_id))
            dispatcher.utter_message(response=self.stranger_response)
            return []
        return await self.act(dispatcher, tracker, domain, customer)

    @abstractmethod
    async def act(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any], customer: CustomerView
    ) -> List[EventType]:
        """The action's work, for a recognised customer."""


# What answers each request: the action, or the form that asks its questions. Used to act on
# a "yes" to an offer, on a follow-up ("and for the other card?"), and after a switch of form.
REQUEST_ACTIONS: Dict[Text, Text] = {
    "check_balance": "action_show_balance",
    "ask_due_date": "action_show_due_date",
    "ask_min_due": "action_show_min_due",
    "check_credit_limit": "action_show_credit_limit",
    "pay_bill": "action_pay_bill",
    "already_paid": "action_already_paid",
    "list_transactions": "action_list_transactions",
    "check_reward_points": "action_show_rewards",
    "dispute_status": "action_dispute_status",
    "request_statement": "statement_form",
    "report_dispute": "dispute_form",
    "block_card": "block_card_form",
    "redeem_rewards": "redeem_form",
    "request_limit_increase": "limit_increase_form",
    "change_address": "address_change_form",
    "change_email": "email_change_form",
    "replace_card": "replace_card_form",
    "close_card": "close_card_form",
    "pending_documents": "action_pending_documents",
    "talk_to_human": "action_handoff",
    "request_callback": "action_book_callback",
    "help": "utter_help",
}


def last_request(tracker: Tracker, skip_latest: bool = True) -> Optional[Text]:
    """The latest request intent the customer made (a lookup or a form), for follow-ups."""
    seen_latest = False
    for event in reversed(tracker.events):
        if event.get("event") != "user":
            continue
        if skip_latest and not seen_latest:
            seen_latest = True
            continue
        name = ((event.get("parse_data") or {}).get("intent") or {}).get("name")
        if name in REQUEST_ACTIONS and name not in ("help", "talk_to_human", "request_callback"):
            return name
    return None


def last_bot_message(tracker: Tracker) -> Dict[Text, Any]:
    """The bot's latest message in this conversation (text, buttons, response name)."""
    for event in reversed(tracker.events):
        if event.get("event") == "bot":
            data = event.get("data") or {}
            return {"text": event.get("text") or "", "buttons": data.get("buttons") or [],
                    "response": (event.get("metadata") or {}).get("utter_action")}
    return {}


@functools.lru_cache(maxsize=1)
def _action_classes() -> Dict[Text, type]:
    """Every action class of the server by its name (built once: the set is fixed at import)."""
    classes: Dict[Text, type] = {}
    pending = list(Action.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        try:
            classes[cls().name()] = cls
        except Exception:  # abstract helpers have no name
            continue
    return classes


async def perform(intent: Text, dispatcher: CollectingDispatcher, tracker: Tracker,
                  domain: Dict[Text, Any]) -> List[EventType]:
    """Answer `intent` now, as if the customer had just asked: a lookup runs here, a form is
    started next (FollowupAction), a response is sent."""
    name = REQUEST_ACTIONS.get(intent)
    if name is None:
        return []
    if name.endswith("_form"):
        return [FollowupAction(name)]
    if name.startswith("utter_"):
        dispatcher.utter_message(response=name)
        return []
    action = _action_classes().get(name)
    return await action().run(dispatcher, tracker, domain) if action else [FollowupAction(name)]
