"""Whole conversations over Rasa's REST channel: NLU, policies, action server and card system.

One bot (action server + Rasa) is started for the module on a freshly seeded database; each
test talks as a demo persona, the way a customer would.
"""
from __future__ import annotations

import re

import pytest
import requests

from tests.servers import MODEL, running_bot

pytestmark = pytest.mark.model

ONE_CARD, TWO_CARDS, BLOCKED, EXPIRING, DISPUTE, STRANGER = (
    "919800000001", "919800000002", "919800000003", "919800000004", "919800000005", "919800000099")
REFERENCE = re.compile(r"\b(?:DSP|BLK|LMT|CBK|RDM)\d{6}[A-Z0-9]{4}\b")


@pytest.fixture(scope="module")
def bot(tmp_path_factory):
    if not MODEL.exists():
        pytest.fail("models/cardcare.tar.gz is missing: run `make train` (make test does it for you)")
    with running_bot(tmp_path_factory.mktemp("bot")) as running:
        yield running


def texts(replies) -> str:
    return "\n".join(r.get("text") or "" for r in replies)


def payloads(replies):
    return [b["payload"] for r in replies for b in r.get("buttons") or []]


def test_unknown_number_is_told_how_to_register(bot):
    assert "can't find a credit card registered" in texts(bot.say(STRANGER, "hi"))
    reply = texts(bot.say(STRANGER, "what's my balance"))
    assert "can't find a credit card registered" in reply and "\u20b9" not in reply
    for request in ("send me my statement", "I want to dispute a transaction", "redeem my points"):
        replies = bot.say(STRANGER, request)
        assert "can't find a credit card registered" in texts(replies), request
        assert not payloads(replies), request  # no form question follows
    replies = bot.say(STRANGER, "block my card")  # a lost card: the emergency route, not a registration text
    assert "24x7 hotline" in texts(replies) and not payloads(replies)
    assert "DSP" not in texts(bot.say(STRANGER, "status of DSP261120DEMO"))


def test_balance_and_dues_in_indian_format(bot):
    reply = texts(bot.say(ONE_CARD, "what's my balance"))
    assert re.search(r"Outstanding: \u20b9[\d,]+\.\d\d", reply) and "4821" in reply
    assert "due on" in texts(bot.say(ONE_CARD, "bill kab bharna hai"))
    assert "Available to spend" in texts(bot.say(ONE_CARD, "how much limit do I have"))


def test_two_cards_are_asked_once(bot):
    replies = bot.say(TWO_CARDS, "how much do I owe")
    assert payloads(replies) == ['/check_balance{"card_last4":"1117"}', '/check_balance{"card_last4":"6392"}']
    assert "6392" in texts(bot.say(TWO_CARDS, '/check_balance{"card_last4":"6392"}'))
    replies = bot.say(TWO_CARDS, "what is the minimum due")
    assert "6392" in texts(replies) and "Which card" not in texts(replies)
    assert all('"card_last4":"6392"' in p for p in payloads(replies))  # at most "Pay minimum due" for that card


def test_statement_arrives_as_a_protected_pdf(bot):
    replies = bot.say(ONE_CARD, "send me my statement for last month")
    reply = texts(replies)
    assert "password" in reply and "first four letters of your name" in reply
    url = next(r["attachment"] for r in replies if r.get("attachment"))
    document = requests.get(url, timeout=10)
    assert document.status_code == 200 and document.headers["content-type"] == "application/pdf"
    assert document.content.startswith(b"%PDF") and b"/Encrypt" in document.content
    forged = url.replace(url.split("/")[-2], url.split("/")[-2][:-2] + "00")
    assert requests.get(forged, timeout=10).status_code == 404


def test_statement_for_a_future_month_is_refused_clearly(bot):
    reply = texts(bot.say(ONE_CARD, "statement for december 2030"))
    assert "hasn't finished yet" in reply
    assert "stopped that" in texts(bot.say(ONE_CARD, "never mind"))


def test_dispute_from_recent_transactions_to_status(bot):
    replies = bot.say(DISPUTE, "show my recent transactions")
    disputable = [p for p in payloads(replies) if p.startswith("/report_dispute")]
    assert disputable
    assert "What's wrong" in texts(bot.say(DISPUTE, disputable[0]))
    assert "screenshot" in texts(bot.say(DISPUTE, '/inform{"dispute_reason":"wrong_amount"}'))
    screenshot = {"attachment": {"media_id": "media-123", "mime_type": "image/jpeg", "caption": "bill"}}
    reply = texts(bot.say(DISPUTE, "", metadata=screenshot))
    assert "Shall I raise it?" in reply and "Screenshot: attached" in reply
    reply = texts(bot.say(DISPUTE, "/affirm"))
    reference = REFERENCE.search(reply).group(0)
    assert reference.startswith("DSP") and "resolve it by" in reply
    assert reference in texts(bot.say(DISPUTE, f"status of {reference}"))
    assert "couldn't find a request" in texts(bot.say(DISPUTE, "status of DSP000000ZZZZ"))


def test_block_card_needs_confirmation_and_cannot_be_undone(bot):
    replies = bot.say(EXPIRING, "I lost my credit card")
    assert "/affirm" in payloads(replies)
    reply = texts(bot.say(EXPIRING, "/affirm"))
    assert "is now blocked" in reply and REFERENCE.search(reply).group(0).startswith("BLK")
    assert "can't be unblocked" in texts(bot.say(EXPIRING, "unblock my card"))
    assert "already blocked" in texts(bot.say(EXPIRING, "block my card"))


def test_rewards_and_redemption(bot):
    reply = texts(bot.say(BLOCKED, "how many reward points do I have"))
    assert re.search(r"You have [\d,]+ reward points", reply)
    replies = bot.say(BLOCKED, "/redeem_rewards")
    assert '/inform{"reward_item":"STMT250"}' in payloads(replies)
    assert "Redeem Statement credit" in texts(bot.say(BLOCKED, '/inform{"reward_item":"STMT250"}'))
    assert REFERENCE.search(texts(bot.say(BLOCKED, "/affirm"))).group(0).startswith("RDM")


def test_pay_bill_sends_signed_links(bot):
    from cardsystem.paylinks import verify_payment_link

    reply = texts(bot.say(ONE_CARD, "pay my bill"))
    links = re.findall(r"https://\S+", reply)
    assert links and "expire" in reply
    for link in links:
        assert verify_payment_link(link, b"e2e-payment-secret")["a"] > 0


def test_interrupted_form_resumes_and_can_be_cancelled(bot):
    bot.say(TWO_CARDS, "increase my credit limit")
    reply = texts(bot.say(TWO_CARDS, "what is the interest rate"))
    assert "3.6%" in reply and "What total limit would you like" in reply
    assert "stopped that" in texts(bot.say(TWO_CARDS, "never mind"))


def test_fallback_then_a_person(bot):
    first = texts(bot.say(ONE_CARD, ""))
    assert "didn't quite get that" in first
    second = texts(bot.say(ONE_CARD, "x" * 5000))
    assert "shorter" in second
    replies = bot.say(ONE_CARD, "/talk_to_human")  # REST cannot carry an agent: a call is offered
    assert "+91******0001" in texts(replies) and "/request_callback" in payloads(replies)
    reply = texts(bot.say(ONE_CARD, "/request_callback"))
    assert "+91******0001" in reply and REFERENCE.search(reply).group(0).startswith("CBK")


def test_odd_text_gets_an_answer(bot):
    for text in ["\u0000\u202e\U0001F600\U0001F600", "\u0939\u093f\u0902\u0926\u0940 \u092e\u0947\u0902 \u092c\u093e\u0924", "'; DROP TABLE cards; --"]:
        assert bot.say(ONE_CARD, text), text
