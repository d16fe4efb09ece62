"""Every custom action against a seeded temporary card system, as the action server runs them."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re

import pytest

from actions.balance import ActionPayBill, ActionShowBalance, ActionShowCreditLimit, ActionShowDueDate, ActionShowMinDue
from actions.cards import ActionBlockCard, ActionRequestLimitIncrease, ValidateBlockCardForm, ValidateLimitIncreaseForm
from actions.disputes import (
    ActionAskTransactionId, ActionDisputeStatus, ActionFileDispute, ActionListTransactions, ValidateDisputeForm,
)
from actions.forms import ActionAskCardLast4
from actions.rewards import ActionAskRewardItem, ActionRedeemRewards, ActionShowRewards, ValidateRedeemForm
from actions.handoff import ActionBookCallback, ActionHandoff
from actions.session import ActionCancelForm, ActionFallback, ActionGreet, ActionSessionStart
from actions.statements import ActionAskMonth, ActionSendStatement, ValidateStatementForm
from cardsystem import files
from cardsystem.paylinks import verify_payment_link
from cardsystem.service import REFERENCE_RE
from tests.conftest import (
    BLOCKED, DISPUTE, EXPIRING, ONE_CARD, STRANGER, TWO_CARDS, buttons_of, make_tracker, rendered, run_action, slots_of,
)

pytestmark = pytest.mark.asyncio
RUPEES = re.compile(r"\u20b9\d{1,2}(,\d\d)*(,\d{3})?\.\d\d|\u20b9\d{1,3}\.\d\d")


def _no_placeholders(texts):
    assert not any("{MISSING" in t for t in texts), texts


# -- who is talking -----------------------------------------------------------------------
@pytest.mark.parametrize("action", [ActionShowBalance(), ActionPayBill(), ActionListTransactions(), ActionShowRewards(),
                                    ActionDisputeStatus(), ActionSendStatement()])
async def test_unknown_number_gets_no_account_data(system, domain, action):
    events, messages = await run_action(action, make_tracker(STRANGER, "check_balance"), domain)
    assert [m.get("response") for m in messages] == ["utter_not_registered"]
    assert events == []


async def test_session_start_recognises_the_customer(system, domain):
    events, _ = await run_action(ActionSessionStart(), make_tracker(ONE_CARD), domain)
    assert slots_of(events)["customer_name"] == "Ananya"
    events, _ = await run_action(ActionSessionStart(), make_tracker(STRANGER), domain)
    assert slots_of(events)["customer_name"] is None


async def test_greeting_uses_the_first_name_or_explains_registration(system, domain):
    _, messages = await run_action(ActionGreet(), make_tracker(ONE_CARD, "greet"), domain)
    assert rendered(messages, domain)[0].startswith("Hi Ananya!")
    _, messages = await run_action(ActionGreet(), make_tracker(STRANGER, "greet"), domain)
    assert [m["response"] for m in messages] == ["utter_greet_unknown", "utter_not_registered"]


# -- balance, dues, limits ----------------------------------------------------------------
async def test_balance_for_a_single_card(system, domain):
    card = system.cards_of(system.find_customer(ONE_CARD).id)[0]
    events, messages = await run_action(ActionShowBalance(), make_tracker(ONE_CARD, "check_balance"), domain)
    text = rendered(messages, domain)[0]
    _no_placeholders([text])
    assert f"\u2022\u2022 {card.last4}" in text
    assert f"Outstanding: {format_money(card.outstanding_paise)}" in text
    assert card.due_date.strftime("%d %b %Y") in text
    assert slots_of(events) == {"card_last4": card.last4}
    paid = card.minimum_due_paise <= 0 < card.outstanding_paise  # the seed's payments may cover the minimum
    assert ("(already paid)" in text) == paid and f"Minimum due: {format_money(card.minimum_due_paise)}" in text
    others = [c for c in system.cards_of(system.find_customer(TWO_CARDS).id) if c.minimum_due_paise > 0]
    for other in others:
        _, messages = await run_action(ActionShowBalance(), make_tracker(TWO_CARDS, "check_balance",
                                                                         [("card_last4", other.last4)]), domain)
        assert "(already paid)" not in rendered(messages, domain)[0]


def format_money(paise):
    from cardsystem.formatting import format_inr

    return format_inr(paise)


async def test_two_cards_asks_which_with_buttons_then_answers(system, domain):
    _, messages = await run_action(ActionShowBalance(), make_tracker(TWO_CARDS, "check_balance"), domain)
    buttons = buttons_of(messages, domain)
    assert [b["payload"] for b in buttons] == ['/check_balance{"card_last4":"1117"}', '/check_balance{"card_last4":"6392"}']
    assert all(len(b["title"]) <= 20 for b in buttons)
    events, messages = await run_action(
        ActionShowBalance(), make_tracker(TWO_CARDS, "check_balance", [("card_last4", "6392")]), domain)
    assert "6392" in rendered(messages, domain)[0] and slots_of(events)["card_last4"] == "6392"
    # chosen once: the slot answers the next question without asking again
    _, messages = await run_action(ActionShowDueDate(), make_tracker(TWO_CARDS, "ask_due_date", slots={"card_last4": "6392"}), domain)
    assert "6392" in rendered(messages, domain)[0] and not buttons_of(messages, domain)


async def test_a_card_that_is_not_theirs_is_refused_politely(system, domain):
    events, messages = await run_action(
        ActionShowBalance(), make_tracker(TWO_CARDS, "check_balance", [("card_last4", "4821")]), domain)
    texts = rendered(messages, domain)
    assert "couldn't find a card ending 4821" in texts[0]
    assert "Outstanding" not in " ".join(texts)
    assert buttons_of(messages, domain) and slots_of(events)["card_last4"] is None


async def test_blocked_card_balance_carries_a_note(system, domain):
    _, messages = await run_action(ActionShowBalance(), make_tracker(BLOCKED, "check_balance"), domain)
    assert [m["response"] for m in messages] == ["utter_balance", "utter_card_blocked_note"]


@pytest.mark.parametrize("action, needle", [(ActionShowDueDate(), "due on"), (ActionShowMinDue(), "minimum"),
                                            (ActionShowCreditLimit(), "Total credit limit")])
async def test_dues_and_limits(system, domain, action, needle):
    _, messages = await run_action(action, make_tracker(ONE_CARD, "x"), domain)
    text = " ".join(rendered(messages, domain))
    _no_placeholders([text])
    assert needle.lower() in text.lower() and RUPEES.search(text)


async def test_pay_bill_links_are_signed_for_the_right_amounts(system, domain):
    customer = system.find_customer(TWO_CARDS)
    card = system.card_of(customer.id, "6392")
    _, messages = await run_action(ActionPayBill(), make_tracker(TWO_CARDS, "pay_bill", entities=[("card_last4", "6392")]), domain)
    text = rendered(messages, domain)[0]
    _no_placeholders([text])
    links = re.findall(r"https://pay\.example\.test/pay\?\S+", text)
    assert len(links) == 2
    amounts = sorted(verify_payment_link(u, b"test-secret", system.now())["a"] for u in links)
    assert amounts == sorted([card.outstanding_paise, card.minimum_due_paise])
    assert "expire" in text


# -- statements ---------------------------------------------------------------------------
async def test_statement_month_is_understood_or_explained(system, domain):
    form = ValidateStatementForm()
    tracker = make_tracker(ONE_CARD, "request_statement", [("month", "march")], slots={"card_last4": "4821"})
    events, _ = await run_action(form, tracker, domain)
    assert slots_of(events)["month"] == "2026-03"
    tracker = make_tracker(ONE_CARD, "request_statement", slots={"card_last4": "4821"})
    events, _ = await run_action(form, tracker, domain)
    assert slots_of(events)["month"] == "latest"
    tracker = make_tracker(ONE_CARD, "inform", [("month", "january 2027")], slots={"card_last4": "4821", "requested_slot": "month"})
    events, messages = await run_action(form, tracker, domain)
    assert slots_of(events)["month"] is None and "hasn't finished" in rendered(messages, domain)[0]


async def test_statement_is_sent_as_a_protected_pdf_document(system, domain):
    tracker = make_tracker(ONE_CARD, "request_statement", slots={"card_last4": "4821", "month": "latest"})
    events, messages = await run_action(ActionSendStatement(), tracker, domain)
    texts = rendered(messages, domain)
    _no_placeholders(texts)
    assert "password" in texts[0] and "first four letters of your name" in texts[0]
    password = "ANAN"
    assert password not in texts[0]
    url = messages[1]["attachment"]
    token = url.split("/")[-2]
    path = files.resolve(system.settings.statement_dir, token)
    assert url.endswith("-4821.pdf") and path is not None and path.read_bytes().startswith(b"%PDF")
    slots = slots_of(events)
    latest = system.statements_of(system.card_of(system.find_customer(ONE_CARD).id, "4821").id)[0]
    assert slots["month"] is None and slots["last_statement_month"] == latest.period  # for "next month's also"


async def test_statement_for_a_month_without_one_lists_those_that_exist(system, domain):
    tracker = make_tracker(ONE_CARD, "request_statement", slots={"card_last4": "4821", "month": "2025-01"})
    _, messages = await run_action(ActionSendStatement(), tracker, domain)
    text = rendered(messages, domain)[0]
    assert "no statement for January 2025" in text and "October 2026" in text
    assert buttons_of(messages, domain)[0]["payload"].startswith("/request_statement{")
    _, messages = await run_action(ActionAskMonth(), make_tracker(ONE_CARD, slots={"card_last4": "4821"}), domain)
    assert len(buttons_of(messages, domain)) == 3


# -- rewards ------------------------------------------------------------------------------
async def test_rewards_warn_about_points_expiring_this_month(system, domain):
    _, messages = await run_action(ActionShowRewards(), make_tracker(EXPIRING, "check_reward_points"), domain)
    texts = rendered(messages, domain)
    _no_placeholders(texts)
    assert "3,200 points expire on 30 Nov 2026" in texts[1]


async def test_redeem_flow_checks_the_catalogue_and_deducts(system, domain):
    customer = system.find_customer(EXPIRING)
    _, messages = await run_action(ActionAskRewardItem(), make_tracker(EXPIRING, slots={"requested_slot": "reward_item"}), domain)
    assert any(b["payload"] == '/inform{"reward_item":"AMZN500"}' for b in buttons_of(messages, domain))
    # whole names: a title cut at 20 characters had shown "Statement credit ₹25" for the ₹250 credit
    assert "Statement credit ₹250" in [b["title"] for b in buttons_of(messages, domain)]
    tracker = make_tracker(EXPIRING, "inform", [("reward_item", "NOPE")], slots={"requested_slot": "reward_item"})
    events, _ = await run_action(ValidateRedeemForm(), tracker, domain)
    assert slots_of(events)["reward_item"] is None
    before = system.reward_summary(customer.id).balance
    tracker = make_tracker(EXPIRING, "affirm", slots={"reward_item": "AMZN500", "redeem_confirm": True})
    events, messages = await run_action(ActionRedeemRewards(), tracker, domain)
    text = rendered(messages, domain)[0]
    assert REFERENCE_RE.search(text) and system.reward_summary(customer.id).balance == before - 2000
    declined = make_tracker(EXPIRING, "deny", slots={"reward_item": "AMZN500", "redeem_confirm": False})
    _, messages = await run_action(ActionRedeemRewards(), declined, domain)
    assert messages[0]["response"] == "utter_redeem_declined"
    assert system.reward_summary(customer.id).balance == before - 2000


# -- transactions and disputes ------------------------------------------------------------
async def test_recent_transactions_each_with_a_dispute_button(system, domain):
    _, messages = await run_action(ActionListTransactions(), make_tracker(ONE_CARD, "list_transactions"), domain)
    text = rendered(messages, domain)[0]
    assert text.startswith("Latest transactions") and text.count("\u2022 ") >= 5
    payloads = [b["payload"] for b in buttons_of(messages, domain)]
    assert payloads and all(p.startswith('/report_dispute{"transaction_id":"T') for p in payloads)


async def test_dispute_form_from_a_tapped_transaction_to_a_reference(system, domain):
    customer = system.find_customer(TWO_CARDS)
    card = system.card_of(customer.id, "6392")
    txn = system.recent_transactions(card.id, 3, debits_only=True)[0]
    form = ValidateDisputeForm()
    start = make_tracker(TWO_CARDS, "report_dispute", [("transaction_id", txn.reference)], text="/report_dispute",
                         slots={"transaction_id": txn.reference}, set_this_turn=["transaction_id"])
    events, _ = await run_action(form, start, domain)
    slots = slots_of(events)
    assert slots["card_last4"] == "6392" and slots["transaction_id"] == txn.reference
    assert "dispute_reason" not in slots  # Rasa asks for it next
    reason = make_tracker(TWO_CARDS, "inform", text="they charged me two times", slots={
        "card_last4": "6392", "transaction_id": txn.reference, "requested_slot": "dispute_reason"})
    events, _ = await run_action(form, reason, domain)
    assert slots_of(events)["dispute_reason"] == "charged_twice"
    screenshot = make_tracker(TWO_CARDS, "inform", text="", metadata={"attachment": {"media_id": "m-1", "mime_type": "image/png"}},
                              slots={"card_last4": "6392", "transaction_id": txn.reference,
                                     "dispute_reason": "charged_twice", "requested_slot": "dispute_attachment"})
    events, _ = await run_action(form, screenshot, domain)
    assert json.loads(slots_of(events)["dispute_attachment"])["media_id"] == "m-1"
    submit = make_tracker(TWO_CARDS, "affirm", slots={
        "card_last4": "6392", "transaction_id": txn.reference, "dispute_reason": "charged_twice",
        "dispute_attachment": slots_of(events)["dispute_attachment"], "dispute_confirm": True})
    events, messages = await run_action(ActionFileDispute(), submit, domain)
    text = rendered(messages, domain)[0]
    _no_placeholders([text])
    reference = REFERENCE_RE.search(text).group(0)
    assert slots_of(events)["reference_id"] == reference and slots_of(events)["transaction_id"] is None
    request = system.service_request(customer.id, reference)
    assert request.attachments == 1 and request.transaction_reference == txn.reference
    _, messages = await run_action(ActionDisputeStatus(), make_tracker(TWO_CARDS, "dispute_status", [("reference_id", reference)]), domain)
    assert reference in rendered(messages, domain)[0]


async def test_dispute_described_by_merchant_finds_the_transaction(system, domain):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    txn = system.recent_transactions(card.id, 20, debits_only=True)[0]
    tracker = make_tracker(ONE_CARD, "report_dispute", [("merchant", txn.merchant), ("amount", str(txn.amount_paise // 100))],
                           slots={"card_last4": card.last4})
    events, _ = await run_action(ValidateDisputeForm(), tracker, domain)
    assert slots_of(events)["transaction_id"] == txn.reference
    _, messages = await run_action(ActionAskTransactionId(), make_tracker(ONE_CARD, "report_dispute", slots={"card_last4": card.last4}), domain)
    assert len(buttons_of(messages, domain)) >= 5


async def test_dispute_on_a_refund_or_someone_elses_transaction_is_refused(system, domain):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    credit = next(t for t in system.recent_transactions(card.id, 60) if t.amount_paise < 0)
    tracker = make_tracker(ONE_CARD, "inform", [("transaction_id", credit.reference)],
                           slots={"card_last4": card.last4, "transaction_id": credit.reference, "requested_slot": "transaction_id"},
                           set_this_turn=["transaction_id"])
    events, messages = await run_action(ValidateDisputeForm(), tracker, domain)
    assert slots_of(events)["transaction_id"] is None and "nothing to dispute" in rendered(messages, domain)[0]
    other = system.recent_transactions(system.cards_of(system.find_customer(TWO_CARDS).id)[0].id, 1, True)[0]
    tracker = make_tracker(ONE_CARD, "inform", [("transaction_id", other.reference)],
                           slots={"card_last4": card.last4, "transaction_id": other.reference, "requested_slot": "transaction_id"},
                           set_this_turn=["transaction_id"])
    events, messages = await run_action(ValidateDisputeForm(), tracker, domain)
    assert slots_of(events)["transaction_id"] is None and "couldn't find" in rendered(messages, domain)[0]


async def test_dispute_status_latest_unknown_and_none(system, domain):
    _, messages = await run_action(ActionDisputeStatus(), make_tracker(DISPUTE, "dispute_status"), domain)
    text = rendered(messages, domain)[0]
    assert re.search(r"DSP\d{6}DEMO", text) and "being worked on" in text
    _, messages = await run_action(ActionDisputeStatus(), make_tracker(DISPUTE, "dispute_status", [("reference_id", "DSP999999ZZZZ")]), domain)
    texts = rendered(messages, domain)
    assert "couldn't find a request DSP999999ZZZZ" in texts[0] and "DEMO" in texts[1]
    _, messages = await run_action(ActionDisputeStatus(), make_tracker(ONE_CARD, "dispute_status"), domain)
    assert messages[0]["response"] == "utter_no_requests"


# -- block card and limits ----------------------------------------------------------------
async def test_block_card_needs_a_yes_and_then_blocks(system, domain):
    customer = system.find_customer(ONE_CARD)
    tracker = make_tracker(ONE_CARD, "block_card", text="my card was stolen yesterday")
    events, _ = await run_action(ValidateBlockCardForm(), tracker, domain)
    slots = slots_of(events)
    assert slots["card_last4"] == "4821" and slots["block_reason"] == "stolen" and "block_confirm" not in slots
    no = make_tracker(ONE_CARD, "deny", slots={"card_last4": "4821", "block_reason": "stolen", "block_confirm": False})
    _, messages = await run_action(ActionBlockCard(), no, domain)
    assert messages[0]["response"] == "utter_block_declined" and system.card_of(customer.id, "4821").is_active
    yes = make_tracker(ONE_CARD, "affirm", slots={"card_last4": "4821", "block_reason": "stolen", "block_confirm": True})
    _, messages = await run_action(ActionBlockCard(), yes, domain)
    assert REFERENCE_RE.search(rendered(messages, domain)[0]).group(0).startswith("BLK")
    assert system.card_of(customer.id, "4821").status == "blocked"


async def test_block_form_offers_only_active_cards_and_stops_when_there_are_none(system, domain):
    customer = system.find_customer(TWO_CARDS)
    system.block_card(customer.id, "1117", "lost")
    events, _ = await run_action(ValidateBlockCardForm(), make_tracker(TWO_CARDS, "block_card", text="block my card"), domain)
    assert slots_of(events)["card_last4"] == "6392"
    events, _ = await run_action(ValidateBlockCardForm(), make_tracker(BLOCKED, "block_card", text="block my card"), domain)
    assert slots_of(events).get("requested_slot") is None
    _, messages = await run_action(ActionBlockCard(), make_tracker(BLOCKED, "block_card"), domain)
    assert messages[0]["response"] == "utter_no_active_cards"
    tracker = make_tracker(TWO_CARDS, slots={"requested_slot": "card_last4"}, active_loop="block_card_form")
    _, messages = await run_action(ActionAskCardLast4(), tracker, domain)
    assert [b["payload"] for b in buttons_of(messages, domain)] == ['/inform{"card_last4":"6392"}']


async def test_limit_increase_validates_the_amount_and_raises_a_request(system, domain):
    tracker = make_tracker(ONE_CARD, "inform", [("amount", "1 lakh")], slots={"card_last4": "4821", "requested_slot": "new_limit"})
    events, messages = await run_action(ValidateLimitIncreaseForm(), tracker, domain)
    assert slots_of(events)["new_limit"] is None and "not more than" in rendered(messages, domain)[0]
    tracker = make_tracker(ONE_CARD, "inform", text="3 lakh", slots={"card_last4": "4821", "requested_slot": "new_limit"})
    events, _ = await run_action(ValidateLimitIncreaseForm(), tracker, domain)
    assert slots_of(events)["new_limit"] == 30000000.0
    submit = make_tracker(ONE_CARD, "affirm", slots={"card_last4": "4821", "new_limit": 30000000.0, "limit_confirm": True})
    _, messages = await run_action(ActionRequestLimitIncrease(), submit, domain)
    assert REFERENCE_RE.search(rendered(messages, domain)[0]).group(0).startswith("LMT")


# -- people, fallback, cancelling ---------------------------------------------------------
async def test_callback_is_offered_then_booked_with_the_whole_context(system, domain):
    # over REST (no live channel for an agent's replies) a person can call back instead: offered, not imposed
    history = [{"event": "user", "text": "what's my balance", "parse_data": {"intent": {"name": "check_balance"}}},
               {"event": "bot", "text": "Outstanding: ...", "data": {}}]
    _, messages = await run_action(ActionHandoff(), make_tracker(ONE_CARD, "talk_to_human", history=history), domain)
    text = rendered(messages, domain)[0]
    assert "+91******0001" in text and "call you" in text and "CBK" not in text
    assert [b["payload"] for b in buttons_of(messages, domain)] == ["/request_callback", "/deny"]
    customer = system.find_customer(ONE_CARD)
    assert not system.service_requests(customer.id, "callback")
    events, messages = await run_action(ActionBookCallback(), make_tracker(ONE_CARD, "request_callback", history=history),
                                        domain)
    text = rendered(messages, domain)[0]
    assert "+91******0001" in text and "23 Nov 2026, 2:30 PM" in text and "CBK" in text
    [request] = system.service_requests(customer.id, "callback")
    details = system.request_details(customer.id, request.reference)
    assert "checked the balance" in details["summary"] and details["context"]["card_last4"] == "4821"
    assert details["transcript"][0] == {"who": "customer", "text": "what's my balance"}


async def test_fallback_rephrase_then_a_person(system, domain):
    miss = {"event": "user", "text": "blah", "parse_data": {"intent": {"name": "nlu_fallback"}}}
    first = make_tracker(ONE_CARD, "nlu_fallback", text="asdf qwerty")
    _, messages = await run_action(ActionFallback(), first, domain)
    assert messages[0]["response"] == "utter_rephrase"
    second = make_tracker(ONE_CARD, "nlu_fallback", text="zzz", history=[miss])
    _, messages = await run_action(ActionFallback(), second, domain)
    assert [m["response"] for m in messages] == ["utter_handoff_after_misses", "utter_callback_booked"]
    blank = {"event": "user", "text": " ", "parse_data": {"intent": {"name": "nlu_fallback"}}}
    empty_twice = make_tracker(ONE_CARD, "nlu_fallback", text="  ", history=[blank])
    _, messages = await run_action(ActionFallback(), empty_twice, domain)
    assert [m["response"] for m in messages] == ["utter_rephrase"]  # blank messages book no callback
    after_blanks = make_tracker(ONE_CARD, "nlu_fallback", text="qwerty", history=[blank, blank])
    _, messages = await run_action(ActionFallback(), after_blanks, domain)
    assert [m["response"] for m in messages] == ["utter_rephrase"]  # the first real miss
    huge = make_tracker(ONE_CARD, "nlu_fallback", text="x" * 5000)
    _, messages = await run_action(ActionFallback(), huge, domain)
    assert messages[0]["response"] == "utter_too_long"


async def test_cancel_stops_the_form_and_forgets_its_answers(system, domain):
    tracker = make_tracker(ONE_CARD, "cancel", slots={"transaction_id": "T1", "dispute_reason": "wrong_amount"},
                           active_loop="dispute_form")
    events, messages = await run_action(ActionCancelForm(), tracker, domain)
    assert messages[0]["response"] == "utter_cancelled"
    assert {"event": "active_loop", "name": None} in [{"event": e["event"], "name": e.get("name")} for e in events if e["event"] == "active_loop"]
    assert slots_of(events)["transaction_id"] is None and slots_of(events)["dispute_reason"] is None


# -- the questions forms ask ---------------------------------------------------------------
async def test_confirmation_questions_restate_what_will_happen(system, domain):
    from actions.cards import ActionAskBlockConfirm, ActionAskLimitConfirm, ActionAskNewLimit
    from actions.disputes import ActionAskDisputeConfirm
    from actions.rewards import ActionAskRedeemConfirm

    txn = system.recent_transactions(system.cards_of(system.find_customer(ONE_CARD).id)[0].id, 1, True)[0]
    cases = [
        (ActionAskBlockConfirm(), {"card_last4": "4821"}, ["\u2022\u2022 4821", "can't be unblocked"]),
        (ActionAskNewLimit(), {"card_last4": "4821"}, ["\u20b92,00,000.00", "e.g. \u20b93,10,000"]),
        (ActionAskLimitConfirm(), {"card_last4": "4821", "new_limit": 30000000.0}, ["\u20b93,00,000.00"]),
        (ActionAskDisputeConfirm(), {"transaction_id": txn.reference, "dispute_reason": "wrong_amount",
                                     "dispute_attachment": "none"}, [txn.merchant, "Wrong amount charged", "none"]),
        (ActionAskRedeemConfirm(), {"reward_item": "SWIGGY200"}, ["Swiggy voucher", "800 points"]),
    ]
    for action, slots, needles in cases:
        _, messages = await run_action(action, make_tracker(ONE_CARD, slots=slots), domain)
        text = " ".join(rendered(messages, domain))
        _no_placeholders([text])
        for needle in needles:
            assert needle in text, (action.name(), needle, text)
        assert buttons_of(messages, domain) or action.name() == "action_ask_new_limit"


def test_the_action_server_registers_every_action_of_the_domain(domain):
    from rasa_sdk.executor import ActionExecutor

    executor = ActionExecutor()
    executor.register_package("actions")  # fails like `rasa run actions` would on a nameless action
    custom = {a for a in domain["actions"] if not a.startswith("utter_")}
    assert custom <= set(executor.actions), custom - set(executor.actions)


# -- "I already paid" -------------------------------------------------------------------------
async def test_already_paid_says_what_the_records_show(system, domain):
    from actions.balance import ActionAlreadyPaid

    customer = system.find_customer(TWO_CARDS)
    card = system.card_of(customer.id, "6392")
    tracker = make_tracker(TWO_CARDS, "already_paid", entities=[("card_last4", "6392")])
    since = system.statements_of(card.id)[0].period_end + dt.timedelta(days=1)
    seen_before = system.payments_since(card.id, since)
    _, messages = await run_action(ActionAlreadyPaid(), tracker, domain)
    texts = rendered(messages, domain)
    _no_placeholders(texts)
    if not seen_before:
        assert "can't see a payment" in texts[0] and "2 working days" in texts[0]
        assert [b["title"] for b in buttons_of(messages, domain)] == ["Pay now", "Talk to us"]
        assert buttons_of(messages, domain)[0]["payload"] == '/pay_bill{"card_last4":"6392"}'
    system.record_payment(card.id, 10_000, via="upi")
    _, messages = await run_action(ActionAlreadyPaid(), tracker, domain)
    texts = rendered(messages, domain)
    _no_placeholders(texts)
    assert texts[0].startswith("Thank you: I can see your payment") and "₹100.00" in texts[0]


async def test_a_card_named_after_which_card_answers_already_paid(system, domain):
    """'maine already pay kar diya' -> which card? -> 'the 6392 one': the follow-up knows the request."""
    from actions.context import ActionFollowUp

    asked = {"event": "user", "text": "maine already pay kar diya", "parse_data": {"intent": {"name": "already_paid"}}}
    tracker = make_tracker(TWO_CARDS, "inform", entities=[("card_last4", "6392")], text="the 6392 one", history=[asked])
    _, messages = await run_action(ActionFollowUp(), tracker, domain)
    texts = rendered(messages, domain)
    _no_placeholders(texts)
    assert "6392" in texts[0] and ("I can see your payment" in texts[0] or "can't see a payment" in texts[0])


def test_a_due_date_gone_by_never_reads_as_one_to_come(system):
    from actions.balance import card_figures

    card = system.cards_of(system.find_customer(ONE_CARD).id)[0]
    today = system.today()
    gone = dataclasses.replace(card, due_date=today - dt.timedelta(days=10), minimum_due_paise=150000)
    assert card_figures(gone)["due_date"].endswith("(past due)")
    paid = dataclasses.replace(gone, minimum_due_paise=0, outstanding_paise=900000)
    assert card_figures(paid)["due_date"].endswith("(date passed; the minimum is paid)")
    coming = dataclasses.replace(paid, due_date=today + dt.timedelta(days=5))
    assert card_figures(coming)["due_date"] == coming.due_date.strftime("%d %b %Y")


@pytest.mark.parametrize("said, meant", [("ya pls block it fast", True), ("haan block karo", True),
                                         ("block it right now", True), ("ok block kar do", True),
                                         ("no don't block it", None), ("block mat karo", None),
                                         ("block my card", None)])
async def test_the_request_again_with_a_yes_in_it_confirms_a_block(system, domain, said, meant):
    """Asked "block card 4821?", the customer repeats the request: with a yes in it, that is a yes;
    with a no in it, or with neither, the question stands (a block cannot be undone here)."""
    tracker = make_tracker(ONE_CARD, "block_card", text=said,
                           slots={"card_last4": "4821", "block_reason": "stolen", "requested_slot": "block_confirm"},
                           active_loop="block_card_form")
    assert ValidateBlockCardForm().yes_no(tracker, "block_confirm").get("block_confirm") is meant
