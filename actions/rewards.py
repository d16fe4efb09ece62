"""Reward points: balance, what expires when, and redeeming from the catalogue."""
from __future__ import annotations

import datetime as dt
from typing import Any, Dict, List, Text

from rasa_sdk.events import EventType, SlotSet

from actions.common import CustomerAction, card_system, current_customer, in_thread
from actions.session import FORM_SLOTS
from actions.forms import CardFormValidation, ConfirmedSubmit
from cardsystem.formatting import format_date, format_inr
from cardsystem.views import CustomerView

PAISE_PER_POINT = 25  # 1 point = Rs 0.25
EXPIRY_HORIZON_DAYS = 90
FULFILMENT = "Vouchers arrive by SMS and e-mail within 7 days; statement credits show on your next bill"


def points(n: int) -> Text:
    return f"{n:,}"


class ActionShowRewards(CustomerAction):
    def name(self) -> Text:
        return "action_show_rewards"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        system = card_system()
        summary = await in_thread(system.reward_summary, customer.id)
        dispatcher.utter_message(response="utter_rewards", balance=points(summary.balance),
                                 value=format_inr(summary.balance * PAISE_PER_POINT).split(".")[0])
        today = system.today()
        this_month = [e for e in summary.expiring if (e.expires_on.year, e.expires_on.month) == (today.year, today.month)]
        soon = [e for e in summary.expiring if e.expires_on <= today + dt.timedelta(days=EXPIRY_HORIZON_DAYS)]
        if this_month:
            dispatcher.utter_message(response="utter_rewards_expiring_this_month",
                                     points=points(sum(e.points for e in this_month)),
                                     date=format_date(this_month[-1].expires_on))
        elif soon:
            dispatcher.utter_message(response="utter_rewards_expiring", expiring="; ".join(
                f"{points(e.points)} on {format_date(e.expires_on)}" for e in soon))
        elif summary.expiring:
            first = summary.expiring[0]
            dispatcher.utter_message(text=f"Nothing expires in the next 3 months; the next {points(first.points)} "
                                          f"points expire on {format_date(first.expires_on)}.")
        if summary.balance:
            dispatcher.utter_message(text="Want to use them?", buttons=[{"title": "Redeem points", "payload": "/redeem_rewards"}])
        return []


class ValidateRedeemForm(CardFormValidation):
    form_intent = "redeem_rewards"
    confirm_slot = "redeem_confirm"

    def name(self) -> Text:
        return "validate_redeem_form"

    async def can_start(self, customer: CustomerView) -> bool:
        system = card_system()
        summary = await in_thread(system.reward_summary, customer.id)
        catalogue = await in_thread(system.catalogue)
        return any(item.points_cost <= summary.balance for item in catalogue)

    async def extract_reward_item(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        entity = next(tracker.get_latest_entity_values("reward_item"), None)
        if entity:
            return {"reward_item": str(entity).upper()}
        if not self.answered(tracker, "reward_item"):
            return {}
        text = (tracker.latest_message.get("text") or "").lower()
        catalogue = await in_thread(card_system().catalogue)
        for item in catalogue:
            if item.code.lower() in text or item.name.lower().split()[0] in text:
                return {"reward_item": item.code}
        return {"reward_item": None}

    async def validate_reward_item(self, value, dispatcher, tracker, domain) -> Dict[Text, Any]:
        if value is None:
            return {"reward_item": None}
        system = card_system()
        customer = await current_customer(tracker)
        catalogue = {item.code: item for item in await in_thread(system.catalogue)}
        item = catalogue.get(str(value).upper())
        if item is None:
            dispatcher.utter_message(text="That isn't in our rewards catalogue. Please pick one of the options.")
            return {"reward_item": None}
        summary = await in_thread(system.reward_summary, customer.id)
        if item.points_cost > summary.balance:
            dispatcher.utter_message(text=f"{item.name} needs {points(item.points_cost)} points and you have "
                                          f"{points(summary.balance)}. Please pick another.")
            return {"reward_item": None}
        return {"reward_item": item.code}

    async def extract_redeem_confirm(self, dispatcher, tracker, domain) -> Dict[Text, Any]:
        return self.yes_no(tracker, "redeem_confirm")


class ActionAskRewardItem(CustomerAction):
    def name(self) -> Text:
        return "action_ask_reward_item"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        system = card_system()
        summary = await in_thread(system.reward_summary, customer.id)
        items = [i for i in await in_thread(system.catalogue) if i.points_cost <= summary.balance]
        lines = [f"\u2022 {i.name}: {points(i.points_cost)} points ({i.description})" for i in items]
        dispatcher.utter_message(
            text=f"What would you like to redeem? You have {points(summary.balance)} points.\n" + "\n".join(lines),
            buttons=[{"title": i.name, "payload": f'/inform{{"reward_item":"{i.code}"}}'} for i in items],
        )
        return []


class ActionAskRedeemConfirm(CustomerAction):
    def name(self) -> Text:
        return "action_ask_redeem_confirm"

    async def act(self, dispatcher, tracker, domain, customer) -> List[EventType]:
        system = card_system()
        catalogue = {item.code: item for item in await in_thread(system.catalogue)}
        item = catalogue.get(tracker.get_slot("reward_item") or "")
        summary = await in_thread(system.reward_summary, customer.id)
        if item is None:
            return [SlotSet("reward_item", None)]
        dispatcher.utter_message(response="utter_ask_redeem_confirm", item=item.name, points=points(item.points_cost),
                                 after=points(summary.balance - item.points_cost))
        return []


class ActionRedeemRewards(ConfirmedSubmit):
    form_name = "redeem_form"
    form_slots = FORM_SLOTS["redeem_form"]
    confirm_slot = "redeem_confirm"
    declined_response = "utter_redeem_declined"

    def name(self) -> Text:
        return "action_redeem_rewards"

    async def ready(self, dispatcher, tracker, customer) -> bool:
        if tracker.get_slot("reward_item"):
            return True
        system = card_system()
        summary = await in_thread(system.reward_summary, customer.id)
        catalogue = await in_thread(system.catalogue)
        dispatcher.utter_message(response="utter_not_enough_points", balance=points(summary.balance),
                                 cheapest=points(min(i.points_cost for i in catalogue)) if catalogue else "-")
        return False

    async def submit(self, dispatcher, tracker, customer) -> List[EventType]:
        redemption = await in_thread(card_system().redeem, customer.id, tracker.get_slot("reward_item"))
        dispatcher.utter_message(response="utter_redeemed", item=redemption.item.name, points=points(redemption.points),
                                 reference=redemption.reference, balance=points(redemption.balance_after),
                                 fulfilment=FULFILMENT)
        return []
