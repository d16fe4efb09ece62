"""Card FAQs: the classifier picks the topic, domain.yml holds each answer (`utter_faq/<topic>`).

This is what Rasa's own `utter_faq` sends, with one difference: where the customer's own
records answer the question better than the general text, they get their own answer. A
customer asking when their new card comes, while a replacement is on its way (a blocked card's
or a replaced one's), is told where that request is (the request status's wording), then the
general facts, instead of the general text alone.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Dict, List, Optional, Text

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType
from rasa_sdk.executor import CollectingDispatcher

from actions.common import card_system, current_customer, in_thread
from actions.disputes import ActionDisputeStatus
from cardsystem.service import OPEN_STATUSES
from cardsystem.views import ServiceRequestView

logger = logging.getLogger(__name__)

REPLACEMENT_TOPIC = "faq/replacement_card"
REPLACEMENT_KINDS = ("block_card", "card_replacement")
RECENT = dt.timedelta(days=30)  # a replacement sent this recently may still be in the post


def faq_topic(tracker: Tracker) -> Optional[Text]:
    """The FAQ the classifier chose for the latest message ("faq/fees"), as `utter_faq` reads it."""
    selector = (tracker.latest_message or {}).get("response_selector") or {}
    chosen = ((selector.get("faq") or selector.get("default") or {}).get("response") or {})
    return chosen.get("intent_response_key") or None


def replacements_under_way(customer_id: int) -> List[ServiceRequestView]:
    """The customer's replacement cards still to arrive: requests open, or done (dispatched) lately."""
    system = card_system()
    since = system.now() - RECENT
    found = []
    for kind in REPLACEMENT_KINDS:
        for request in system.service_requests(customer_id, kind, False, 3):
            if request.status in OPEN_STATUSES or request.created_at >= since:
                found.append(request)
    return sorted(found, key=lambda r: r.created_at, reverse=True)[:2]


class ActionAnswerFaq(Action):
    def name(self) -> Text:
        return "action_answer_faq"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[EventType]:
        topic = faq_topic(tracker)
        if topic is None:  # (no topic chosen: as Rasa's utter_faq, which then says nothing, but asked again)
            logger.warning("action_answer_faq: no FAQ topic in the latest message")
            dispatcher.utter_message(response="utter_rephrase")
            return []
        if topic == REPLACEMENT_TOPIC:
            customer = await current_customer(tracker)
            requests = await in_thread(replacements_under_way, customer.id) if customer else []
            for request in requests:
                ActionDisputeStatus.tell(dispatcher, request)
        dispatcher.utter_message(response=f"utter_{topic}")
        return []
