"""E-statements: which card, which month, then a password-protected PDF as a document."""
from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Optional, Text

from rasa_sdk import Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions.common import CustomerAction, card_label, card_system, current_customer, in_thread, money, date_or_dash
from actions.forms import latest_intent, CardFormValidation
from cardsystem import files
from cardsystem.formatting import format_month
from cardsystem.months import FutureMonth, parse_month, shift_period
from cardsystem.statement_pdf import PASSWORD_RULE, render_statement_pdf
from cardsystem.views import CardView, CustomerView

logger = logging.getLogger(__name__)
MONTH_BUTTONS = 3


def month_buttons(periods: List[Text], intent: Text = "inform") -> List[Dict[Text, Text]]:
    return [{"title": format_month(p), "payload": f'/{intent}{{"month":"{p}"}}'} for p in periods]


class ValidateStatementForm(CardFormValidation):
    form_intent = "request_statement"

    def name(self) -> Text:
        return "validate_statement_form"

    async def latest_period(self, tracker: Tracker) -> Optional[Text]:
        customer = await current_customer(tracker)
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4")) if customer else None
        statements = await in_thread(card_system().statements_of, card.id) if card else []
        return statements[0].period if statements else None

    async def extract_month(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> Dict[Text, Any]:
        entity = next(tracker.get_latest_entity_values("month"), None)
        if entity:
            return {"month": str(entity)}
        if self.answered(tracker, "month"):
            return {"month": tracker.latest_message.get("text") or ""}
        if latest_intent(tracker) == self.form_intent and tracker.get_slot("month") is None:
            return {"month": "latest"}
        return {}

    async def validate_month(self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker,
                             domain: DomainDict) -> Dict[Text, Any]:
        if value is None:
            return {"month": None}
        system = card_system()
        today = system.today()
        said = str(value)
        text = tracker.latest_message.get("text") or ""
        previous = tracker.get_slot("last_statement_month")
        step = relative_step(said + " " + text)
        try:
            if step > 0 and not previous and not re.match(r"^\d{4}-\d\d$", said) and "last" not in said.lower():
                raise FutureMonth(shift_period(f"{today.year:04d}-{today.month:02d}", 1))
            if previous and step and not re.match(r"^\d{4}-\d\d$", said):
                # "and next month's also" right after a statement: next after that one
                period = shift_period(previous, step)
                if period > f"{today.year:04d}-{today.month:02d}":
                    raise FutureMonth(period)
            else:
                # NLU may catch only part of "for last month"; the whole message then decides.
                period = parse_month(said, today) or parse_month(text, today)
        except FutureMonth as future:
            dispatcher.utter_message(response="utter_statement_future", month_label=format_month(str(future)))
            return {"month": None}
        if period and period != "latest" and upcoming_month_named(said, today):
            # "december statement" late in November: the bill due in December, or last December?
            latest = await self.latest_period(tracker)
            if latest and latest != period:
                dispatcher.utter_message(response="utter_which_month", named=format_month(period),
                                         upcoming=format_month(shift_period(period, 12)), latest=format_month(latest),
                                         buttons=month_buttons([latest, period]))
                return {"month": None}
        if period is None:
            dispatcher.utter_message(text="Sorry, I didn't get the month. Try e.g. \"October\", \"last month\" or \"Sep 2026\".")
            return {"month": None}
        return {"month": period}


_NEXT = re.compile(r"\b(?:next|agl[aei]|following|coming|after that)\b", re.I)
_PREVIOUS = re.compile(r"\b(?:previous|prev|before that|earlier|uske pehle|usse pehle|one before)\b", re.I)


def relative_step(text: Text) -> int:
    """+1 for "next month's", -1 for "the one before", 0 otherwise ("last month" is about today)."""
    if _NEXT.search(text):
        return 1
    if _PREVIOUS.search(text):
        return -1
    return 0


def upcoming_month_named(text: Text, today) -> bool:
    """A bare month name that is next month (no year): "december" on 28 November."""
    from cardsystem.months import _MONTHS

    lowered = text.lower()
    if re.search(r"\b20\d\d\b|'\d\d\b", lowered):
        return False
    names = [w for w in re.findall(r"[a-z]+", lowered) if w in _MONTHS]
    return bool(names) and _MONTHS[names[0]] == today.month % 12 + 1


class ActionAskMonth(CustomerAction):
    def name(self) -> Text:
        return "action_ask_month"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        card = await self.card(tracker, customer)
        periods: List[Text] = []
        if card is not None:
            periods = [s.period for s in await in_thread(card_system().statements_of, card.id)][:MONTH_BUTTONS]
        dispatcher.utter_message(response="utter_ask_month", buttons=month_buttons(periods))
        return []

    async def card(self, tracker: Tracker, customer: CustomerView) -> Optional[CardView]:
        return await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4"))


class ActionSendStatement(CustomerAction):
    def name(self) -> Text:
        return "action_send_statement"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        reset = [SlotSet("month", None), SlotSet("form_misses", None)]
        if tracker.get_slot("form_misses") == "gave_up":
            return reset
        system = card_system()
        card = await in_thread(system.card_of, customer.id, tracker.get_slot("card_last4"))
        period = tracker.get_slot("month")
        if card is None or not period:
            return reset
        statements = await in_thread(system.statements_of, card.id)
        if not statements:
            dispatcher.utter_message(response="utter_no_statements", card_label=card_label(card))
            return reset
        chosen = statements[0] if period == "latest" else next((s for s in statements if s.period == period), None)
        if chosen is None:
            dispatcher.utter_message(
                response="utter_statement_missing", month_label=format_month(period), card_label=card_label(card),
                available=", ".join(format_month(s.period) for s in statements),
                buttons=month_buttons([s.period for s in statements][:MONTH_BUTTONS], "request_statement"),
            )
            return reset
        transactions = await in_thread(system.statement_transactions, chosen)
        pdf = await in_thread(render_statement_pdf, customer, card, chosen, transactions)
        filename = f"Statement-{chosen.period}-{card.last4}.pdf"
        url, path = await in_thread(files.publish, system.settings.statement_dir, pdf, filename)
        dispatcher.utter_message(
            response="utter_statement_sent", month_label=format_month(chosen.period), card_label=card_label(card),
            total_due=money(chosen.closing_balance_paise), minimum_due=money(chosen.minimum_due_paise),
            due_date=date_or_dash(chosen.due_date), password_rule=PASSWORD_RULE,
        )
        dispatcher.utter_message(attachment=url)
        if tracker.get_latest_input_channel() == "cmdline":
            dispatcher.utter_message(text=f"(Saved on this machine as {path})")
        logger.info("statement %s sent for card **%s", chosen.period, card.last4)
        return reset + [SlotSet("last_statement_month", chosen.period)]
