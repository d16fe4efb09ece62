"""Recent transactions, disputes on them, and the status of service requests."""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Text

from rasa_sdk import Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.common import card_entity, short_title, CustomerAction, card_label, card_system, current_customer, in_thread, money, pick_card
from actions.handoff import dispute_needs_a_person, hand_off
from actions.session import FORM_SLOTS
from actions.forms import AskWithChoices, ConfirmedSubmit, latest_intent, CardFormValidation, dumps, latest_attachment
from cardsystem.formatting import format_date, format_datetime, parse_amount_paise
from cardsystem.months import parse_day
from cardsystem.service import DISPUTE_REASONS, DISPUTE_WINDOW_DAYS, REFERENCE_RE
from cardsystem.views import CustomerView, ServiceRequestView, TransactionView

RECENT_LIMIT = 5
CHOICES_LIMIT = 8
REASON_WORDS = (
    ("charged_twice", ("twice", "double", "duplicate", "two times", "2 times", "do baar", "dobara", "2 baar",
                       "charged again", "deducted again")),
    ("refund_not_received", ("refund", "return", "cancelled", "canceled", "cancel kiya", "paisa wapas", "wapas",
                             "money back", "reversal not")),
    ("not_delivered", ("never came", "never arrived", "not delivered", "never delivered", "didn't receive",
                       "did not receive", "not received", "didn't get the", "did not get the", "no delivery",
                       "never got", "delivery nahi", "nahi mila", "nahi aaya order", "order nahi aaya")),
    ("wrong_amount", ("wrong amount", "more than", "extra", "overcharged", "zyada", "amount is wrong", "galat amount",
                      "instead of", "charged more", "higher amount")),
    ("not_recognised", ("recognise", "recognize", "not me", "didn't make", "did not make", "fraud", "unknown",
                        "nahi kiya", "never made", "unauthori", "no idea", "never used", "not mine", "don't know this",
                        "dont know this", "pata nahi", "didnt do", "didn't do", "did not do", "never heard", "not done by me",
                        "wasn't me", "wasnt me", "not by me", "maine nahi")),
)
APPROXIMATE = re.compile(r"\b(?:around|about|approx\w*|roughly|almost|nearly|lagbhag|karib|something like|~)\b|\d\s*k\b|~",
                         re.I)
REASON_BUTTONS = (("Don't recognise it", "not_recognised"), ("Charged twice", "charged_twice"),
                  ("Refund not received", "refund_not_received"), ("Wrong amount", "wrong_amount"),
                  ("Never received it", "not_delivered"))
SKIP_WORDS = ("skip", "no screenshot", "don't have", "dont have", "nahi hai", "no")
# words that name a kind of request in "status of my address change"
KIND_WORDS = (("address_change", ("address", "pata")), ("email_change", ("email", "e-mail", "mail id")),
              ("card_closure", ("closure", "closing", "close my card")), ("limit_increase", ("limit",)),
              ("card_replacement", ("replacement", "damaged", "reissue")), ("callback", ("call back", "callback")),
              ("dispute", ("dispute", "complaint", "charge")))
STATUS_LABELS = {"open": "open", "in_progress": "being worked on", "needs_documents": "waiting for a document from you",
                 "resolved": "resolved", "rejected": "closed", "closed": "closed"}


def describe(txn: TransactionView) -> Text:
    return f"{format_date(txn.posted_on)} {txn.merchant} {money(txn.amount_paise)}"


def dispute_button(txn: TransactionView, intent: Text, last4: Optional[Text] = None) -> Dict[Text, Text]:
    entities = {"transaction_id": txn.reference}
    if last4:
        entities["card_last4"] = last4
    return {"title": short_title(f"{money(txn.amount_paise)} {txn.merchant}", 24),
            "payload": f"/{intent}{dumps(entities)}"}


def reason_from_text(text: Text) -> Optional[Text]:
    lowered = (text or "").lower()
    for reason, words in REASON_WORDS:
        if any(word in lowered for word in words):
            return reason
    return None


class ActionListTransactions(CustomerAction):
    def name(self) -> Text:
        return "action_list_transactions"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        card, events = await pick_card(dispatcher, tracker, customer, "list_transactions")
        if card is None:
            return events
        txns = await in_thread(card_system().recent_transactions, card.id, RECENT_LIMIT)
        if not txns:
            dispatcher.utter_message(response="utter_no_transactions", card_label=card_label(card))
            return events
        lines = [f"Latest transactions on {card_label(card)}:"]
        for t in txns:
            sign = " CR" if t.amount_paise < 0 else ""
            flag = f" ({t.status})" if t.status != "posted" else ""
            lines.append(f"\u2022 {format_date(t.posted_on)}  {t.merchant}  {money(abs(t.amount_paise))}{sign}{flag}")
        disputable = [t for t in txns if t.is_debit and t.status != "reversed"]
        lines.append("\nTap one to report a problem with it.")
        dispatcher.utter_message(text="\n".join(lines),
                                 buttons=[dispute_button(t, "report_dispute", card.last4) for t in disputable])
        return events


class ValidateDisputeForm(CardFormValidation):
    form_intent = "report_dispute"
    confirm_slot = "dispute_confirm"
    skippable = ("dispute_attachment",)

    def name(self) -> Text:
        return "validate_dispute_form"

    async def extract_card_last4(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        reference = next(tracker.get_latest_entity_values("transaction_id"), None)
        if reference and not card_entity(tracker):
            customer = await current_customer(tracker)
            txn = await in_thread(card_system().transaction_of, customer.id, reference) if customer else None
            if txn is not None:
                cards = await self.eligible_cards(customer)
                card = next((c for c in cards if c.id == txn.card_id), None)
                if card is not None:
                    return {"card_last4": card.last4}
        return await super().extract_card_last4(dispatcher, tracker, domain)

    async def matching_transactions(self, tracker: Tracker, customer: CustomerView) -> List[TransactionView]:
        """Debits matching the merchant, amount and day the customer described, newest first.

        The customer's words are matched against their own transactions: any merchant of
        theirs named in the message, an amount ("around 4.5k" is taken as within 10%) and a
        day ("on 3rd", "last week"). When everything together matches nothing, the closest
        description that does match is used (amount and day loosened, then merchant alone)."""
        system = card_system()
        card = await in_thread(system.card_of, customer.id, tracker.get_slot("card_last4"))
        if card is None:
            return []
        text = tracker.latest_message.get("text") or ""
        if text.startswith("/"):
            text = ""  # a button: only its entities count
        recent = await in_thread(system.recent_transactions, card.id, 60, True)
        merchant = next(tracker.get_latest_entity_values("merchant"), None)
        lowered = text.lower()
        named = next((t.merchant for t in recent if t.merchant.lower().split()[0] in lowered), None)
        merchant = named or merchant
        amount_text = next(tracker.get_latest_entity_values("amount"), None)
        amount = parse_amount_paise(amount_text) if amount_text else None
        if amount is None and tracker.get_slot("requested_slot") == "transaction_id":
            amount = parse_amount_paise(re.sub(r"\b\d{1,2}(?:st|nd|rd|th)\b|\d{1,2}[/.-]\d{1,2}(?:[/.-]\d{2,4})?", " ", lowered))
        approximate = bool(APPROXIMATE.search(amount_text or lowered))
        day = parse_day(next(tracker.get_latest_entity_values("date"), None) or lowered, system.today())
        on, window = day if day else (None, 1)
        if not merchant and not amount and not on:
            return []
        find = system.find_transactions
        attempts = [(merchant, amount, on, approximate, window), (merchant, amount, on, True, max(window, 3)),
                    (merchant, amount, None, True, 1), (merchant, None, on, False, max(window, 3))]
        if merchant:
            attempts.append((merchant, None, None, False, 1))
        for name, paise, when, approx, days in attempts:
            if not (name or paise or when):
                continue
            found = await in_thread(find, card.id, name, paise, when, CHOICES_LIMIT, approx, days)
            if found:
                return found
        return []

    async def extract_transaction_id(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        reference = next(tracker.get_latest_entity_values("transaction_id"), None)
        if reference:
            return {"transaction_id": str(reference)}
        asked = self.answered(tracker, "transaction_id")
        if not asked and tracker.get_slot("transaction_id"):
            return {}
        customer = await current_customer(tracker)
        if customer is None or not tracker.get_slot("card_last4"):
            return {}
        matches = await self.matching_transactions(tracker, customer)
        if len(matches) == 1:
            dispatcher.utter_message(response="utter_dispute_matched", transaction=describe(matches[0]))
            return {"transaction_id": matches[0].reference}
        if not matches and asked:
            dispatcher.utter_message(text="I couldn't find a transaction like that on this card.")
        # several (or no) matches: ask again; the question lists what matched
        return self.ask_again(tracker, "transaction_id")

    async def validate_transaction_id(self, value, dispatcher, tracker, domain) -> Dict[Text, Any]:
        if value is None:
            return {"transaction_id": None}
        customer = await current_customer(tracker)
        txn = await in_thread(card_system().transaction_of, customer.id, value) if customer and value else None
        if txn is None:
            dispatcher.utter_message(text="I couldn't find that transaction on your cards.")
            return {"transaction_id": None}
        if not txn.is_debit or txn.status == "reversed":
            dispatcher.utter_message(text=f"{describe(txn)} is a payment, refund or reversal, so there's nothing to dispute.")
            return {"transaction_id": None}
        age = (card_system().today() - txn.posted_on).days
        if age > DISPUTE_WINDOW_DAYS:  # said before any more questions, not after the confirmation
            dispatcher.utter_message(response="utter_dispute_too_old", transaction=describe(txn),
                                     days=str(DISPUTE_WINDOW_DAYS), support_phone=card_system().settings.support_phone)
            return {"transaction_id": None}
        return {"transaction_id": txn.reference}

    async def extract_dispute_reason(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        entity = next(tracker.get_latest_entity_values("dispute_reason"), None)
        if entity:
            return {"dispute_reason": str(entity)}
        if tracker.get_slot("dispute_reason") is None or self.answered(tracker, "dispute_reason"):
            # the reason may come in the first message ("charged twice"), or as the answer
            reason = reason_from_text(tracker.latest_message.get("text") or "")
            if reason == "not_recognised":
                await self.offer_block_first(dispatcher, tracker)
            if reason:
                return {"dispute_reason": reason}
        return self.ask_again(tracker, "dispute_reason")

    async def offer_block_first(self, dispatcher, tracker) -> None:
        """A transaction the customer didn't make: the card may be compromised, so blocking it
        comes first (one tap), before the dispute's questions."""
        customer = await current_customer(tracker)
        card = await in_thread(card_system().card_of, customer.id, tracker.get_slot("card_last4")) if customer else None
        if card is not None and card.is_active:
            dispatcher.utter_message(response="utter_dispute_block_first", card_label=card_label(card), buttons=[
                {"title": f"Block card {card.last4}",
                 "payload": f'/block_card{{"card_last4":"{card.last4}","block_reason":"suspicious"}}'}])

    async def validate_dispute_reason(self, value, dispatcher, tracker, domain) -> Dict[Text, Any]:
        if value is None:
            return {"dispute_reason": None}
        if value in DISPUTE_REASONS:
            return {"dispute_reason": value}
        dispatcher.utter_message(text="Please choose one of the reasons below.")
        return {"dispute_reason": None}

    async def extract_dispute_attachment(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        # A screenshot is welcome at any point of the dispute (or just before it): never dropped.
        attachment = latest_attachment(tracker)
        if attachment and not tracker.get_slot("dispute_attachment"):
            return {"dispute_attachment": dumps(attachment), "pending_attachment": None}
        pending = tracker.get_slot("pending_attachment")
        if pending and not tracker.get_slot("dispute_attachment"):
            return {"dispute_attachment": pending, "pending_attachment": None}
        if tracker.get_slot("requested_slot") != "dispute_attachment":
            return {}
        text = (tracker.latest_message.get("text") or "").lower().strip()
        if latest_intent(tracker) == "deny" or any(w == text or w in text.split() for w in SKIP_WORDS):
            return {"dispute_attachment": "none"}
        return self.ask_again(tracker, "dispute_attachment")

    async def extract_dispute_confirm(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        return self.yes_no(tracker, "dispute_confirm")


class ActionAskTransactionId(CustomerAction):
    """Offers matching or recent debits as buttons; the customer can also describe it."""

    def name(self) -> Text:
        return "action_ask_transaction_id"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        system = card_system()
        card = await in_thread(system.card_of, customer.id, tracker.get_slot("card_last4"))
        if card is None:
            return []
        matches = await ValidateDisputeForm().matching_transactions(tracker, customer)
        if matches:
            intro = "I found several transactions like that. Which one is it?"
        else:
            matches = await in_thread(system.recent_transactions, card.id, CHOICES_LIMIT, True)
            intro = (f"Which transaction on {card_label(card)} is it? Pick a recent one, or tell me the merchant, "
                     "amount and date (e.g. \"Swiggy 450 on 3 Nov\").")
        lines = [intro] + [f"\u2022 {describe(t)}" for t in matches]
        dispatcher.utter_message(text="\n".join(lines), buttons=[dispute_button(t, "inform") for t in matches])
        return []


class ActionAskDisputeReason(AskWithChoices):
    response, slot, choices = "utter_ask_dispute_reason", "dispute_reason", REASON_BUTTONS

    def name(self) -> Text:
        return "action_ask_dispute_reason"


class ActionAskDisputeConfirm(CustomerAction):
    def name(self) -> Text:
        return "action_ask_dispute_confirm"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        txn = await in_thread(card_system().transaction_of, customer.id, tracker.get_slot("transaction_id"))
        reason = DISPUTE_REASONS.get(tracker.get_slot("dispute_reason") or "", "")
        attached = tracker.get_slot("dispute_attachment") not in (None, "none")
        text = (f"Please confirm the dispute:\n\u2022 {describe(txn) if txn else '-'}\n\u2022 Reason: {reason}\n"
                f"\u2022 Screenshot: {'attached' if attached else 'none'}\nShall I raise it?")
        dispatcher.utter_message(text=text, buttons=[{"title": "Yes, raise it", "payload": "/affirm"},
                                                     {"title": "No", "payload": "/deny"}])
        return []


class ActionFileDispute(ConfirmedSubmit):
    form_name = "dispute_form"
    form_slots = FORM_SLOTS["dispute_form"]
    confirm_slot = "dispute_confirm"
    declined_response = "utter_dispute_declined"

    def name(self) -> Text:
        return "action_file_dispute"

    async def ready(self, dispatcher, tracker, customer) -> bool:
        if tracker.get_slot("transaction_id"):
            return True
        if not await in_thread(card_system().cards_of, customer.id):
            dispatcher.utter_message(text="You don't have a card with transactions to dispute.")
        return False

    async def submit(self, dispatcher, tracker, customer) -> List[EventType]:
        raw = tracker.get_slot("dispute_attachment")
        attachment = json.loads(raw) if raw and raw != "none" else None
        request = await in_thread(card_system().file_dispute, customer.id, tracker.get_slot("transaction_id"),
                                  tracker.get_slot("dispute_reason"), attachment)
        fields = {"reference": request.reference, "merchant": request.transaction_merchant or "",
                  "amount": money(request.amount_paise), "promised": format_date(request.promised_by.date())}
        if not request.created_now:
            dispatcher.utter_message(response="utter_dispute_exists", **fields)
            return []
        txn = await in_thread(card_system().transaction_of, customer.id, request.transaction_reference)
        dispatcher.utter_message(response="utter_dispute_filed", txn_date=format_date(txn.posted_on), **fields)
        if request.reason == "not_recognised":
            dispatcher.utter_message(response="utter_dispute_fraud_advice")
        events: List[EventType] = [SlotSet("reference_id", request.reference)]
        person = dispute_needs_a_person(request.reason, request.amount_paise)
        if person:
            dispatcher.utter_message(response="utter_dispute_to_person")
            events += await hand_off(dispatcher, tracker, person)
        return events


class ActionDisputeStatus(CustomerAction):
    """Status of a request by its reference, or of the latest dispute (or request)."""

    def name(self) -> Text:
        return "action_dispute_status"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        system = card_system()
        reference = next(tracker.get_latest_entity_values("reference_id"), None)
        if not reference:
            found = REFERENCE_RE.search(tracker.latest_message.get("text") or "")
            reference = found.group(0) if found else None
        if reference:
            request = await in_thread(system.service_request, customer.id, reference)
            if request is None:
                dispatcher.utter_message(response="utter_unknown_reference", reference=str(reference)[:20].upper())
                others = await in_thread(system.service_requests, customer.id, None, True)
                if others:
                    dispatcher.utter_message(text="Your open requests: " + ", ".join(r.reference for r in others))
                return [SlotSet("reference_id", None)]
            self.tell(dispatcher, request)
            return [SlotSet("reference_id", request.reference)]
        text = (tracker.latest_message.get("text") or "").lower()
        kind = next((k for k, words in KIND_WORDS if any(w in text for w in words)), None)
        if kind:  # "what's happening with my address change"
            requests = await in_thread(system.service_requests, customer.id, kind, False, 1)
        else:  # every request still open, else the latest one
            requests = await in_thread(system.service_requests, customer.id, None, True, 5) or \
                await in_thread(system.service_requests, customer.id, None, False, 1)
        if not requests:
            dispatcher.utter_message(response="utter_no_requests")
            return []
        for request in requests:
            self.tell(dispatcher, request)
        return [SlotSet("reference_id", requests[0].reference)]

    @staticmethod
    def tell(dispatcher: CollectingDispatcher, request: ServiceRequestView) -> None:
        if request.transaction_merchant:
            detail = f" ({request.transaction_merchant}, {money(request.amount_paise)})"
        elif request.card_last4:
            detail = f" (card ending {request.card_last4})"
        else:
            detail = ""
        system = card_system()
        if request.status == "needs_documents":
            promise = f"please send {request.needs or 'the document we asked for'} here as a photo or PDF"
        elif request.status in ("open", "in_progress") and request.promised_by < system.now():
            promise = (f"it is taking longer than the {format_date(request.promised_by.date())} we promised, "
                       "sorry: our team has been alerted and will tell you the new date")
        elif request.status in ("open", "in_progress"):
            promise = f"we'll complete it by {format_datetime(request.promised_by)}"
        else:
            done = f"last updated {format_datetime(request.history[-1][1]) if request.history else '-'}"
            promise = f"{done}: {request.resolution}" if request.resolution else done
        dispatcher.utter_message(
            response="utter_request_status", kind=system.desk_rules.kind(request.kind).label,
            reference=request.reference, detail=detail, status=STATUS_LABELS.get(request.status, request.status),
            created=format_date(request.created_at.date()), promise=promise,
        )
