"""Balance, dues, credit limit and paying the bill."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
from abc import abstractmethod
from typing import Any, Dict, List, Text

from rasa_sdk import Tracker
from rasa_sdk.events import EventType
from rasa_sdk.executor import CollectingDispatcher

from actions.common import CustomerAction, card_label, card_system, date_or_dash, in_thread, money, pick_card
from cardsystem.formatting import format_date, format_datetime, parse_amount_paise
from cardsystem.models import utcnow
from cardsystem.paylinks import issue_payment_link
from cardsystem.views import CardView, CustomerView


def card_figures(card: CardView) -> Dict[Text, Text]:
    """The placeholders every balance-like response may use."""
    due = date_or_dash(card.due_date)
    if card.due_date is not None and card.due_date < card_system().today():
        # a date gone by must not read as one to come ("is due on 23 Nov" on 3 Dec)
        due += " (past due)" if card.minimum_due_paise > 0 else " (date passed; the minimum is paid)"
    return {
        "card_label": card_label(card),
        # a card paid beyond its dues is in credit: never "-₹500"
        "outstanding": money(card.outstanding_paise) if card.outstanding_paise >= 0
        else f"nil ({money(-card.outstanding_paise)} in credit)",
        "minimum_due": money(card.minimum_due_paise),
        # a zero minimum beside an outstanding means payments since the statement covered it
        "minimum_note": " (already paid)" if card.minimum_due_paise <= 0 < card.outstanding_paise else "",
        "due_date": due,
        "credit_limit": money(card.credit_limit_paise),
        "available_limit": money(card.available_limit_paise),
        "used": money(card.credit_limit_paise - card.available_limit_paise),
    }


class CardLookup(CustomerAction):
    """Answers a question about one card; asks which card first when it is unclear."""

    intent: Text = ""

    @abstractmethod
    def name(self) -> Text:
        """action_show_<what>"""

    async def act(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any],
                  customer: CustomerView) -> List[EventType]:
        card, events = await pick_card(dispatcher, tracker, customer, self.intent, remember_card=self.remember_card)
        if card is not None:
            await self.answer_about(dispatcher, tracker, card)
            if not card.is_active:
                dispatcher.utter_message(response="utter_card_blocked_note")
        return events

    remember_card: bool = True  # a lookup may reuse the card chosen earlier in the chat

    async def answer_about(self, dispatcher: CollectingDispatcher, tracker: Tracker, card: CardView) -> None:
        self.answer(dispatcher, card)

    def answer(self, dispatcher: CollectingDispatcher, card: CardView) -> None:
        """Tell the customer about `card`."""


class ActionShowBalance(CardLookup):
    """Total outstanding (billed and unbilled) beside what the last statement billed."""

    intent = "check_balance"

    def name(self) -> Text:
        return "action_show_balance"

    async def answer_about(self, dispatcher: CollectingDispatcher, tracker: Tracker, card: CardView) -> None:
        statements = await in_thread(card_system().statements_of, card.id)
        billed = money(statements[0].closing_balance_paise) if statements else money(0)
        dispatcher.utter_message(response="utter_balance", billed=billed, **card_figures(card))


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
            dispatcher.utter_message(response="utter_min_due", **card_figures(card), buttons=[
                {"title": "Pay minimum due", "payload": f'/pay_bill{{"card_last4":"{card.last4}","pay":"minimum"}}'}])


class ActionShowCreditLimit(CardLookup):
    intent = "check_credit_limit"

    def name(self) -> Text:
        return "action_show_credit_limit"

    def answer(self, dispatcher: CollectingDispatcher, card: CardView) -> None:
        dispatcher.utter_message(response="utter_credit_limit", **card_figures(card))


_MINIMUM = re.compile(r"\b(?:min|minimum|minimal|kam se kam)\b", re.I)
_TOTAL = re.compile(r"\b(?:full|total|entire|whole|poora|pura|all of it)\b", re.I)
MIN_PAYMENT_PAISE = 10000  # ₹100: the smallest part-payment the payment page takes


class ActionPayBill(CardLookup):
    """Signed, expiring links to pay the total, the minimum due or an amount the customer names
    ("pay 5k"). Money moves: the card is asked each time unless the message names it."""

    intent = "pay_bill"
    remember_card = False

    def name(self) -> Text:
        return "action_pay_bill"

    async def answer_about(self, dispatcher: CollectingDispatcher, tracker: Tracker, card: CardView) -> None:
        system = card_system()
        settings = system.settings
        if card.outstanding_paise <= 0:
            dispatcher.utter_message(response="utter_nothing_to_pay", **card_figures(card))
            return
        now, local_now = utcnow(), system.now()

        def link(amount: int, kind: str):  # signed in UTC, its expiry told on the bank's clock
            made = issue_payment_link(settings, card.id, amount, kind, now)
            return dataclasses.replace(made, expires_at=local_now + (made.expires_at - now))

        text = tracker.latest_message.get("text") or ""
        wanted = next((e.get("value") for e in tracker.latest_message.get("entities") or [] if e.get("entity") == "pay"),
                      None) or ("minimum" if _MINIMUM.search(text) else "total" if _TOTAL.search(text) else None)
        amount_text = next(tracker.get_latest_entity_values("amount"), None)
        amount = parse_amount_paise(amount_text) if amount_text and not text.startswith("/") else None
        figures = card_figures(card)
        if wanted == "minimum" and card.minimum_due_paise > 0:
            minimum = link(card.minimum_due_paise, "minimum")
            dispatcher.utter_message(response="utter_pay_amount", amount=money(card.minimum_due_paise),
                                     what="the minimum due", link=minimum.url,
                                     expires=format_datetime(minimum.expires_at), **figures)
            return
        if wanted == "minimum":
            dispatcher.utter_message(response="utter_min_due_paid", **figures)
        if amount is not None and wanted != "minimum":
            if amount < MIN_PAYMENT_PAISE or amount >= card.outstanding_paise:
                dispatcher.utter_message(response="utter_pay_amount_adjusted", asked=money(amount),
                                         smallest=money(MIN_PAYMENT_PAISE), **figures)
            else:
                part = link(amount, "part")
                dispatcher.utter_message(response="utter_pay_amount", amount=money(amount), what="a part payment",
                                         link=part.url, expires=format_datetime(part.expires_at), **figures)
                return
        total = link(card.outstanding_paise, "total")
        figures = {**figures, "link_total": total.url, "expires": format_datetime(total.expires_at)}
        if card.minimum_due_paise > 0 and card.minimum_due_paise < card.outstanding_paise and wanted != "total":
            figures["link_minimum"] = link(card.minimum_due_paise, "minimum").url
            dispatcher.utter_message(response="utter_pay_bill", **figures)
        else:
            dispatcher.utter_message(response="utter_pay_bill_total_only", **figures)


class ActionAlreadyPaid(CardLookup):
    """"I already paid" (or a reminder's "Already paid"): what the records show since the last
    statement, said plainly; nothing seen yet gives how long payments take and the ways on."""

    intent = "already_paid"

    def name(self) -> Text:
        return "action_already_paid"

    async def answer_about(self, dispatcher: CollectingDispatcher, tracker: Tracker, card: CardView) -> None:
        system = card_system()
        statements = await in_thread(system.statements_of, card.id)
        since = statements[0].period_end + dt.timedelta(days=1) if statements else system.today() - dt.timedelta(days=30)
        payments = await in_thread(system.payments_since, card.id, since)
        figures = card_figures(card)
        if payments:
            seen = ", ".join(f"{money(-p.amount_paise)} on {format_date(p.posted_on)}" for p in payments[:3])
            said = f"your payment of {seen}" if len(payments) == 1 else f"your payments of {seen}"
            if card.outstanding_paise <= 0:
                dispatcher.utter_message(response="utter_payment_seen_all_paid", payments=said, **figures)
                return
            dispatcher.utter_message(response="utter_payment_seen", payments=said, **figures)
            if card.minimum_due_paise > 0 and card.outstanding_paise > 0:
                dispatcher.utter_message(response="utter_payment_seen_min_left", **figures)
            return
        dispatcher.utter_message(response="utter_payment_not_seen", since=format_date(since), **figures, buttons=[
            {"title": "Pay now", "payload": f'/pay_bill{{"card_last4":"{card.last4}"}}'},
            {"title": "Talk to us", "payload": "/talk_to_human"}])
