"""The customer's side of service requests, action by action: changes of address and e-mail with
their document, a card replacement and a closure, what is pending, documents sent later, and the
status in plain words (late, waiting for the customer, resolved)."""
from __future__ import annotations

import datetime as dt

import pytest

from actions.context import ActionMediaReceived
from actions.disputes import ActionDisputeStatus
from actions.requests import (
    ActionAskCloseConfirm, ActionPendingDocuments, ActionRequestAddressChange, ActionRequestClosure,
    ActionRequestEmailChange, ActionRequestReplacement, ValidateAddressChangeForm, ValidateEmailChangeForm,
    ValidateReplaceCardForm,
)
from cardsystem.service import REFERENCE_RE
from tests.conftest import BLOCKED, ONE_CARD, STRANGER, TWO_CARDS, make_tracker, rendered, run_action, slots_of

pytestmark = pytest.mark.asyncio
PHOTO = {"media_id": "998877", "mime_type": "image/jpeg", "filename": None, "caption": "electricity bill",
         "stored": "ef" * 32 + ".jpg", "sha256": "ef" * 32, "kind": "image"}


async def test_address_change_asks_the_address_with_a_pin_then_the_proof(system, domain):
    asking = {"requested_slot": "new_address"}
    # another request is not an address: the form is interrupted and the rules answer it
    events, messages = await run_action(ValidateAddressChangeForm(), make_tracker(
        ONE_CARD, "block_card", text="block my card", slots=asking, active_loop="address_change_form"), domain)
    assert "new_address" not in slots_of(events) and messages == []
    # something that looks like an address (a number) is one, whatever NLU made of it; it needs a PIN code
    events, messages = await run_action(ValidateAddressChangeForm(), make_tracker(
        ONE_CARD, "check_balance", text="123 MG Road, Bengaluru", slots=asking, active_loop="address_change_form"), domain)
    assert slots_of(events).get("new_address") is None and messages[0]["response"] == "utter_address_needs_pin"
    events, messages = await run_action(ValidateAddressChangeForm(), make_tracker(
        ONE_CARD, "inform", text="411001", slots=asking, active_loop="address_change_form"), domain)
    assert messages[0]["response"] == "utter_address_too_short"
    events, _ = await run_action(ValidateAddressChangeForm(), make_tracker(
        ONE_CARD, "nlu_fallback", text="Flat 12, Lotus Towers, Andheri East, Mumbai 400069", slots=asking,
        active_loop="address_change_form"), domain)
    assert slots_of(events)["new_address"] == "Flat 12, Lotus Towers, Andheri East, Mumbai 400069"
    events, _ = await run_action(ValidateAddressChangeForm(), make_tracker(
        ONE_CARD, "cancel", text="cancel", slots=asking, active_loop="address_change_form"), domain)
    assert "new_address" not in slots_of(events)              # a way out is never an address

    done = {"new_address": "Flat 12, Lotus Towers, Andheri East, Mumbai 400069", "address_confirm": True}
    events, messages = await run_action(ActionRequestAddressChange(), make_tracker(ONE_CARD, "affirm", slots=done),
                                        domain)
    text = rendered(messages, domain)[0]
    reference = REFERENCE_RE.search(text).group(0)
    assert reference.startswith("ADR") and "proof of your new address" in text and "5 working days" in text
    customer = system.find_customer(ONE_CARD)
    request = system.service_request(customer.id, reference)
    assert request.status == "needs_documents" and slots_of(events)["reference_id"] == reference
    assert system.request_details(customer.id, reference)["new_address"].endswith("400069")

    _, messages = await run_action(ActionPendingDocuments(), make_tracker(ONE_CARD, "pending_documents"), domain)
    assert reference in rendered(messages, domain)[0] and "proof of your new address" in rendered(messages, domain)[0]

    events, messages = await run_action(ActionMediaReceived(), make_tracker(
        ONE_CARD, "share_media", metadata={"attachment": PHOTO}), domain)
    said = rendered(messages, domain)[0]
    assert "received your document for " + reference in said and "We'll complete it by" in said
    assert system.service_request(customer.id, reference).status == "in_progress"
    _, messages = await run_action(ActionPendingDocuments(), make_tracker(ONE_CARD, "pending_documents"), domain)
    assert messages[0]["response"] == "utter_nothing_pending"


async def test_a_file_sent_before_the_request_goes_with_it(system, domain):
    events, _ = await run_action(ActionMediaReceived(), make_tracker(
        TWO_CARDS, "share_media", metadata={"attachment": PHOTO}), domain)
    kept = slots_of(events)["pending_attachment"]
    done = {"new_address": "House 7, Civil Lines, Jaipur 302006", "address_confirm": True, "pending_attachment": kept}
    events, messages = await run_action(ActionRequestAddressChange(), make_tracker(TWO_CARDS, "affirm", slots=done),
                                        domain)
    reference = slots_of(events)["reference_id"]
    customer = system.find_customer(TWO_CARDS)
    request = system.service_request(customer.id, reference)
    assert request.status == "open" and request.attachments == 1 and slots_of(events)["pending_attachment"] is None
    assert "We'll complete it by" in rendered(messages, domain)[0]


async def test_email_change_checks_the_address_and_can_be_declined(system, domain):
    asking = {"requested_slot": "new_email"}
    events, messages = await run_action(ValidateEmailChangeForm(), make_tracker(
        ONE_CARD, "inform", text="my new one is priya at gmail", slots=asking, active_loop="email_change_form"), domain)
    assert slots_of(events)["new_email"] is None and messages[0]["response"] == "utter_email_invalid"
    events, _ = await run_action(ValidateEmailChangeForm(), make_tracker(
        ONE_CARD, "change_email", text="change my email to Priya.New@Example.com"), domain)
    assert slots_of(events)["new_email"] == "priya.new@example.com"
    events, messages = await run_action(ValidateEmailChangeForm(), make_tracker(
        ONE_CARD, "change_email", text="change email to ananya..sharma@@gmail.com"), domain)
    assert messages[0]["response"] == "utter_email_invalid" and not slots_of(events).get("new_email")
    events, messages = await run_action(ValidateEmailChangeForm(), make_tracker(
        ONE_CARD, "check_balance", text="what is my balance", slots=asking, active_loop="email_change_form"), domain)
    assert "new_email" not in slots_of(events) and messages == []
    _, messages = await run_action(ActionRequestEmailChange(), make_tracker(
        ONE_CARD, "deny", slots={"new_email": "priya.new@example.com", "email_confirm": False}), domain)
    assert messages[0]["response"] == "utter_email_declined"
    assert system.service_requests(system.find_customer(ONE_CARD).id, "email_change") == []


async def test_replacement_and_closure_of_a_card(system, domain):
    customer = system.find_customer(TWO_CARDS)
    events, _ = await run_action(ValidateReplaceCardForm(), make_tracker(
        TWO_CARDS, "replace_card", text="my card ending 1117 is damaged"), domain)
    assert slots_of(events)["card_last4"] == "1117"
    _, messages = await run_action(ActionRequestReplacement(), make_tracker(
        TWO_CARDS, "affirm", slots={"card_last4": "1117", "replace_confirm": True}), domain)
    text = rendered(messages, domain)[0]
    assert REFERENCE_RE.search(text).group(0).startswith("RPL") and "keeps working" not in text
    assert system.card_of(customer.id, "1117").is_active                  # a replacement blocks nothing

    card = next(c for c in system.cards_of(customer.id) if c.outstanding_paise > 0)
    _, messages = await run_action(ActionAskCloseConfirm(), make_tracker(
        TWO_CARDS, "close_card", slots={"card_last4": card.last4, "requested_slot": "close_confirm"}), domain)
    assert "You owe" in rendered(messages, domain)[0]
    _, messages = await run_action(ActionRequestClosure(), make_tracker(
        TWO_CARDS, "affirm", slots={"card_last4": card.last4, "close_confirm": True}), domain)
    text = rendered(messages, domain)[0]
    assert REFERENCE_RE.search(text).group(0).startswith("CLS") and "once the" in text and "you owe is paid" in text
    _, again = await run_action(ActionRequestClosure(), make_tracker(
        TWO_CARDS, "affirm", slots={"card_last4": card.last4, "close_confirm": True}), domain)
    assert REFERENCE_RE.search(rendered(again, domain)[0]).group(0) == REFERENCE_RE.search(text).group(0)


async def test_strangers_get_no_requests(system, domain):
    _, messages = await run_action(ActionPendingDocuments(), make_tracker(STRANGER, "pending_documents"), domain)
    assert messages[0]["response"] == "utter_not_registered"


async def test_status_says_late_waiting_or_the_outcome(system, domain, make_desk):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    request = system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise + 5_000_000)
    ask = make_tracker(ONE_CARD, "dispute_status", entities=[("reference_id", request.reference)])
    system._now = lambda: dt.datetime(2026, 12, 10, 10, 0)               # past the promise, before the job ran
    _, messages = await run_action(ActionDisputeStatus(), ask, domain)
    assert "taking longer than the 27 Nov 2026 we promised" in rendered(messages, domain)[0]
    desk = make_desk()
    desk.set_status(request.reference, "needs_documents", "your last 3 salary slips", "agent:asha")
    _, messages = await run_action(ActionDisputeStatus(), ask, domain)
    assert "waiting for a document from you" in rendered(messages, domain)[0] and "salary slips" in rendered(messages, domain)[0]
    desk.set_status(request.reference, "resolved", "Limit raised to Rs 3,50,000", "agent:asha")
    _, messages = await run_action(ActionDisputeStatus(), ask, domain)
    assert "Credit limit increase" in rendered(messages, domain)[0] and "Limit raised to Rs 3,50,000" in rendered(messages, domain)[0]


async def test_a_customer_without_an_active_card_is_told_not_crashed(system, domain):
    customer = system.find_customer(ONE_CARD)
    system.block_card(customer.id, "4821", "lost")
    events, messages = await run_action(ActionRequestReplacement(), make_tracker(
        ONE_CARD, "affirm", slots={"card_last4": None, "replace_confirm": True}), domain)
    assert messages[0]["response"] == "utter_no_active_card_for_request"
    _, messages = await run_action(ActionRequestClosure(), make_tracker(
        ONE_CARD, "affirm", slots={"card_last4": "4821", "close_confirm": True}), domain)
    assert messages[0]["response"] == "utter_no_active_card_for_request"


def _faq(sender, topic):
    tracker = make_tracker(sender, "faq", text="when will my new card come")
    if topic:
        tracker.latest_message["response_selector"] = {"all_retrieval_intents": ["faq"], "faq": {
            "response": {"intent_response_key": topic, "utter_action": f"utter_{topic}", "confidence": 0.9},
            "ranking": []}}
    return tracker


async def test_asking_when_the_new_card_comes_shows_ones_own_replacement(system, domain):
    from actions.faq import ActionAnswerFaq

    priya = system.find_customer(BLOCKED)
    hers = [r for r in system.service_requests(priya.id, None, False, 10) if r.kind in ("block_card", "card_replacement")]
    assert hers
    events, messages = await run_action(ActionAnswerFaq(), _faq(BLOCKED, "faq/replacement_card"), domain)
    assert events == [] and [m["response"] for m in messages] == ["utter_request_status", "utter_faq/replacement_card"]
    status = rendered(messages, domain)[0]
    assert hers[0].reference in status and "7305" in status
    # no replacement under way, or not a customer: the general answer alone
    for sender in (ONE_CARD, STRANGER):
        _, messages = await run_action(ActionAnswerFaq(), _faq(sender, "faq/replacement_card"), domain)
        assert [m["response"] for m in messages] == ["utter_faq/replacement_card"]
    # another topic: its answer, whoever asks
    _, messages = await run_action(ActionAnswerFaq(), _faq(BLOCKED, "faq/fees"), domain)
    assert [m["response"] for m in messages] == ["utter_faq/fees"] and rendered(messages, domain)[0]
    # no topic chosen (Rasa's utter_faq would say nothing): asked to rephrase
    _, messages = await run_action(ActionAnswerFaq(), _faq(BLOCKED, None), domain)
    assert [m["response"] for m in messages] == ["utter_rephrase"]
    # a replacement asked for in this chat shows up at once
    _, messages = await run_action(ActionRequestReplacement(), make_tracker(
        TWO_CARDS, "affirm", slots={"card_last4": "1117", "replace_confirm": True}), domain)
    reference = REFERENCE_RE.search(rendered(messages, domain)[0]).group(0)
    _, messages = await run_action(ActionAnswerFaq(), _faq(TWO_CARDS, "faq/replacement_card"), domain)
    assert reference in rendered(messages, domain)[0] and messages[-1]["response"] == "utter_faq/replacement_card"


async def test_a_replacement_delivered_long_ago_is_not_brought_up(system, domain, monkeypatch):
    import dataclasses

    from actions import faq

    now = system.now()
    priya = system.find_customer(BLOCKED)
    seeded = system.service_requests(priya.id, "block_card", False, 3)[0]
    long_done = dataclasses.replace(seeded, status="resolved", created_at=now - dt.timedelta(days=45))
    lately_done = dataclasses.replace(seeded, status="resolved", created_at=now - dt.timedelta(days=5))
    still_open = dataclasses.replace(seeded, status="in_progress", created_at=now - dt.timedelta(days=90))

    class System:
        def now(self):
            return now

        def service_requests(self, customer_id, kind, open_only, limit):
            return {"block_card": [lately_done, long_done], "card_replacement": [still_open]}[kind]

    monkeypatch.setattr(faq, "card_system", System)
    assert faq.replacements_under_way(priya.id) == [lately_done, still_open]
