"""Balance, dues, credit limit and paying the bill."""
from __future__ import annotations

import secrets
from abc import abstractmethod
from typing import Any, Dict, List, Text

from rasa_sdk import Tracker
from rasa_sdk.events import EventType
from rasa_sdk.executor import CollectingDispatcher

from actions.common import CustomerAction, card_label, card_system, date_or_dash, money, pick_card
from cardsystem.formatting import format_datetime
from cardsystem.paylinks import make_payment_link
from cardsystem.views import CardView, CustomerView


def card_figures(card: CardView) -> Dict[Text, Text]:
    """The placeholders every balance-like response may use."""
    return {
        "card_label": card_label(card),
        "outstanding": money(card.outstanding_paise),
        "minimum_due": money(card.minimum_due_paise),
        # a zero minimum beside an outstanding means payments since the statement covered it
        "minimum_note": " (already paid)" if card.minimum_due_paise <= 0 < card.outstanding_paise else "",
        "due_date": date_or_dash(card.due_date),
        "credit_limit": money(card.credit_limit_paise),
        "available_limit": money(card.available_limit_paise),
        "used": money(card.credit_limit_paise - card.available_limit_paise),
    }


class CardLookup(CustomerAction):
    """Answers a question about one card; asks which card first when it is unclear."""

    intent: Text = ""

    async def act(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any],
                  customer: CustomerView) -> List[EventType]:
        card, events = await pick_card(dispatcher, tracker, customer, self.intent)
        if card is not None:
            self.answer(dispatcher, card)
            if not card.is_active:
                dispatcher.utter_message(response="utter_card_blocked_note")
        return events

    @abstractmethod
    def answer(self, dispatcher: CollectingDispatcher, card: CardView) -> None:
        """Tell the customer about `card`."""


class ActionShowBalance(CardLookup):
    intent = "check_balance"

    def name(self) -> Text:
        return "action_show_balance"

    def answer(self, dispatcher: CollectingDispatcher, card: CardView) -> None:
        dispatcher.utter_message(response="utter_balance", **card_figures(card))


class ActionShowDueDate(CardLookup):
    intent = "ask_due_date"

    def name(self) -> Text:
        return "action_show_due_date"

    def answer(self, dispatcher: CollectingDispatcher, card: CardView) -> None:
        if card.outstanding_paise <= 0 or card.due_date is None:
            dispatcher.utter_message(response="utter_no_due", **card_figures(card))
        else:
            dispatcher.utter_message(response="utter_due_date", **card_figures(card))


class ActionShowMinDue(CardLookup):
    intent = "ask_min_due"

    def name(self) -> Text:
        return "action_show_min_due"

    def answer(self, dispatcher: CollectingDispatcher, card: CardView) -> None:
        if card.outstanding_paise <= 0:
            dispatcher.utter_message(response="utter_no_due", **card_figures(card))
        elif card.minimum_due_paise <= 0:
            dispatcher.utter_message(response="utter_min_due_paid", **card_figures(card))
        else:
            dispatcher.utter_message(response="utter_min_due", **card_figures(card))


class ActionShowCreditLimit(CardLookup):
    intent = "check_credit_limit"

    def name(self) -> Text:
        return "action_show_credit_limit"

    def answer(self, dispatcher: CollectingDispatcher, card: CardView) -> None:
        dispatcher.utter_message(response="utter_credit_limit", **card_figures(card))


class ActionPayBill(CardLookup):
    """Signed, expiring links to pay the total or the minimum due."""

    intent = "pay_bill"

    def name(self) -> Text:
        return "action_pay_bill"

    def answer(self, dispatcher: CollectingDispatcher, card: CardView) -> None:
        system = card_system()
        settings = system.settings
        if card.outstanding_paise <= 0:
            dispatcher.utter_message(response="utter_nothing_to_pay", **card_figures(card))
            return
        now = system.now()

        def link(amount: int, kind: str):
            return make_payment_link(settings.payment_base_url, settings.payment_link_secret, card.id, amount,
                                     kind, now, settings.payment_link_ttl_minutes, secrets.token_urlsafe(6))

        total = link(card.outstanding_paise, "total")
        figures = {**card_figures(card), "link_total": total.url, "expires": format_datetime(total.expires_at)}
        if card.minimum_due_paise > 0 and card.minimum_due_paise < card.outstanding_paise:
            figures["link_minimum"] = link(card.minimum_due_paise, "minimum").url
            dispatcher.utter_message(response="utter_pay_bill", **figures)
        else:
            dispatcher.utter_message(response="utter_pay_bill_total_only", **figures)
