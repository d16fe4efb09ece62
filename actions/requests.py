"""Requests the back office completes: a change of address or e-mail (with a document), a card
replacement and a card closure; and what is still pending from the customer. Each is a form that
ends with an explicit yes; the service desk (cardsystem.requests) takes it from there."""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Text

from rasa_sdk.events import EventType, SlotSet

from actions.common import CustomerAction, card_label, card_system, in_thread, money, service_desk
from actions.forms import ANSWER_INTENTS, ActiveCardSubmit, AskCardConfirm, CardFormValidation, ConfirmedSubmit, latest_intent
from actions.session import FORM_SLOTS
from cardsystem.formatting import format_datetime, redact_card_numbers

PIN_CODE = re.compile(r"(?<!\d)[1-9]\d{2}\s?\d{3}(?!\d)")
EMAIL = re.compile(r"(?!.*\.\.)[A-Za-z0-9_%+'-](?:[A-Za-z0-9._%+'-]{0,62}[A-Za-z0-9_%+'-])?"
                   r"@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}")
STOPPERS = {"cancel", "talk_to_human", "complain", "opt_out", "goodbye"}
PENDING_ATTACHMENT = "pending_attachment"  # a file sent before the request existed (actions.context)


def typed_text(tracker) -> Text:
    text = (tracker.latest_message.get("text") or "").strip()
    return "" if text.startswith("/") else text


class AccountFormValidation(CardFormValidation):
    """A form about the account, not one card: any registered customer can start it."""

    async def can_start(self, customer) -> bool:
        return True

    looks_like: "re.Pattern[str]" = re.compile(r"$^")  # what an answer to the free-text question looks like

    def free_text_answer(self, tracker, slot: Text) -> bool:
        """The reply to a question asking for free text (an address, an e-mail): an answer when it
        looks like one (a PIN code, an @) or NLU took it for one; another request ("block my card",
        "my balance?") interrupts the form instead, and a way out (cancel, a person, STOP) stops it."""
        text = typed_text(tracker)
        if tracker.get_slot("requested_slot") != slot or not text or latest_intent(tracker) in STOPPERS:
            return False
        return bool(self.looks_like.search(text)) or latest_intent(tracker) in ANSWER_INTENTS | {self.form_intent}

    def is_answer(self, tracker) -> bool:
        asked = tracker.get_slot("requested_slot")
        if asked in ("new_address", "new_email") and self.free_text_answer(tracker, asked):
            return True
        return super().is_answer(tracker)


class ValidateAddressChangeForm(AccountFormValidation):
    form_intent = "change_address"
    confirm_slot = "address_confirm"
    looks_like = re.compile(r"\d{3}")  # a house number or a PIN code

    def name(self) -> Text:
        return "validate_address_change_form"

    async def extract_new_address(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        if not self.free_text_answer(tracker, "new_address"):
            return {}
        text = " ".join(redact_card_numbers(typed_text(tracker)).split())[:300]
        if len(text.split()) < 3:
            dispatcher.utter_message(response="utter_address_too_short")
            return {"new_address": None}
        if not PIN_CODE.search(text):
            dispatcher.utter_message(response="utter_address_needs_pin")
            return {"new_address": None}
        return {"new_address": text}

    async def extract_address_confirm(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        return self.yes_no(tracker, "address_confirm")


class ValidateEmailChangeForm(AccountFormValidation):
    form_intent = "change_email"
    confirm_slot = "email_confirm"
    looks_like = re.compile(r"@")

    def name(self) -> Text:
        return "validate_email_change_form"

    async def extract_new_email(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        text = tracker.latest_message.get("text") or ""
        found = EMAIL.fullmatch(text.strip()) or next((EMAIL.fullmatch(w.strip(".,;:()<>")) for w in text.split()
                                                       if EMAIL.fullmatch(w.strip(".,;:()<>"))), None)
        asked = self.free_text_answer(tracker, "new_email")
        if found and (asked or latest_intent(tracker) == self.form_intent):
            return {"new_email": found.group(0).lower()}
        if asked or (latest_intent(tracker) == self.form_intent and "@" in text):
            dispatcher.utter_message(response="utter_email_invalid")
            return {"new_email": None}
        return {}

    async def extract_email_confirm(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        return self.yes_no(tracker, "email_confirm")


class CardAndYesForm(CardFormValidation):
    """A form that asks which (active) card, then an explicit yes."""

    active_cards_only = True

    async def extract_confirm(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        return self.yes_no(tracker, self.confirm_slot)


class ValidateReplaceCardForm(CardAndYesForm):
    form_intent, confirm_slot = "replace_card", "replace_confirm"
    extract_replace_confirm = CardAndYesForm.extract_confirm

    def name(self) -> Text:
        return "validate_replace_card_form"


class ValidateCloseCardForm(CardAndYesForm):
    form_intent, confirm_slot = "close_card", "close_confirm"
    extract_close_confirm = CardAndYesForm.extract_confirm

    def name(self) -> Text:
        return "validate_close_card_form"


class ActionAskReplaceConfirm(AskCardConfirm):
    response = "utter_ask_replace_confirm"

    def name(self) -> Text:
        return "action_ask_replace_confirm"


class ActionAskCloseConfirm(CustomerAction):
    """The closure question says what closing costs the customer: what they owe, points they lose."""

    def name(self) -> Text:
        return "action_ask_close_confirm"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        system = card_system()
        card = await in_thread(system.card_of, customer.id, tracker.get_slot("card_last4"))
        warning = ""
        if card is not None and card.outstanding_paise > 0:
            warning += f"You owe {money(card.outstanding_paise)} on it, to be paid before it closes. "
        points = (await in_thread(system.reward_summary, customer.id)).balance
        if points and len([c for c in await in_thread(system.cards_of, customer.id) if c.is_active]) == 1:
            warning += f"Your {points} reward points will lapse: redeem them first if you like. "
        dispatcher.utter_message(response="utter_ask_close_confirm", card_label=card_label(card) if card else "your card",
                                 warning=warning)
        return []


class _RaiseRequest(ConfirmedSubmit):
    """Raise the request with the card system; a file the customer sent before is attached."""

    kind: Text = ""

    async def ready(self, dispatcher, tracker, customer) -> bool:
        return True

    def pending_attachment(self, tracker):
        try:
            return json.loads(tracker.get_slot(PENDING_ATTACHMENT) or "null")
        except ValueError:
            return None

    def promise_days(self) -> int:
        return card_system().desk_rules.kind(self.kind).turnaround_days


class ActionRequestAddressChange(_RaiseRequest):
    form_name, kind, confirm_slot = "address_change_form", "address_change", "address_confirm"
    form_slots = FORM_SLOTS["address_change_form"]
    declined_response = "utter_address_declined"

    def name(self) -> Text:
        return "action_request_address_change"

    async def submit(self, dispatcher, tracker, customer) -> List[EventType]:
        return await raise_with_documents(self, dispatcher, tracker, customer, "new_address", "utter_address_change_raised")


class ActionRequestEmailChange(_RaiseRequest):
    form_name, kind, confirm_slot = "email_change_form", "email_change", "email_confirm"
    form_slots = FORM_SLOTS["email_change_form"]
    declined_response = "utter_email_declined"

    def name(self) -> Text:
        return "action_request_email_change"

    async def submit(self, dispatcher, tracker, customer) -> List[EventType]:
        return await raise_with_documents(self, dispatcher, tracker, customer, "new_email", "utter_email_change_raised")


async def raise_with_documents(action: _RaiseRequest, dispatcher, tracker, customer, slot: Text,
                               response: Text) -> List[EventType]:
    """Raise a change that needs a document; a file already sent goes with it (to the desk at once)."""
    attachment = action.pending_attachment(tracker)
    request = await in_thread(card_system().raise_request, customer.id, action.kind, None,
                              {slot: tracker.get_slot(slot)}, attachment)
    events: List[EventType] = [SlotSet("reference_id", request.reference)]
    if attachment:
        events.append(SlotSet(PENDING_ATTACHMENT, None))
    if request.status == "needs_documents":
        dispatcher.utter_message(response=response, reference=request.reference, needs=request.needs,
                                 days=action.promise_days())
    else:
        dispatcher.utter_message(response="utter_request_status_short", reference=request.reference,
                                 promised=format_datetime(request.promised_by))
    return events


class _CardRequest(ActiveCardSubmit, _RaiseRequest):
    """A request about one of the customer's active cards."""

    no_card_response = "utter_no_active_card_for_request"


class ActionRequestReplacement(_CardRequest):
    form_name, kind, confirm_slot = "replace_card_form", "card_replacement", "replace_confirm"
    form_slots = FORM_SLOTS["replace_card_form"]
    declined_response = "utter_replace_declined"

    def name(self) -> Text:
        return "action_request_replacement"

    async def submit(self, dispatcher, tracker, customer) -> List[EventType]:
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4"))
        request = await in_thread(card_system().raise_request, customer.id, self.kind, card.last4)
        dispatcher.utter_message(response="utter_replacement_raised", card_label=card_label(card),
                                 reference=request.reference, promised=format_datetime(request.promised_by))
        moving = await in_thread(card_system().service_requests, customer.id, "address_change", True, 1)
        if moving:  # the card is posted to the address on record when it is dispatched
            dispatcher.utter_message(response="utter_replacement_address_pending", reference=moving[0].reference)
        return [SlotSet("reference_id", request.reference)]


class ActionRequestClosure(_CardRequest):
    form_name, kind, confirm_slot = "close_card_form", "card_closure", "close_confirm"
    form_slots = FORM_SLOTS["close_card_form"]
    declined_response = "utter_close_declined"

    def name(self) -> Text:
        return "action_request_closure"

    async def submit(self, dispatcher, tracker, customer) -> List[EventType]:
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4"))
        request = await in_thread(card_system().raise_request, customer.id, self.kind, card.last4)
        condition = (f"It closes once the {money(card.outstanding_paise)} you owe is paid. "
                     if card.outstanding_paise > 0 else "")
        dispatcher.utter_message(response="utter_closure_raised", card_label=card_label(card),
                                 reference=request.reference, condition=condition,
                                 promised=format_datetime(request.promised_by))
        return [SlotSet("reference_id", request.reference)]


class ActionPendingDocuments(CustomerAction):
    """What the bank is waiting for from the customer, request by request."""

    def name(self) -> Text:
        return "action_pending_documents"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        pending = await in_thread(service_desk().pending_from, customer.id)
        if not pending:
            dispatcher.utter_message(response="utter_nothing_pending")
            return []
        items = "\n".join(f"- {p['label']} {p['reference']}: {p['needs']}" for p in pending)
        dispatcher.utter_message(response="utter_pending_documents", items=items)
        return [SlotSet("reference_id", pending[0]["reference"])]

