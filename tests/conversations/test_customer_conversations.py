"""Customers talking over WhatsApp as they do, end to end: the sandbox posts signed webhooks,
the bot answers through the sandbox's Graph API, and each conversation checks what the
customer saw and what the card system recorded.

The conversations follow tests/conversations/customer_scripts.yml, written from the README
alone by someone who never saw the training data. Where a script depends on data the README
does not give (a Swiggy charge of ₹450 on the 3rd), the test picks a real transaction of the
persona and describes it the way the script does. Each conversation starts from freshly seeded
data and a fresh conversation.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import re
import subprocess
import sys
from typing import List, Optional

import pytest
import requests

from tests.servers import MODEL, ROOT, Phone, running_whatsapp_bot

pytestmark = pytest.mark.model

ANANYA, ROHAN, PRIYA, VIKRAM, FATIMA, STRANGER = (
    "919800000001", "919800000002", "919800000003", "919800000004", "919800000005", "919800000099")
REFERENCE = re.compile(r"\b(?:DSP|BLK|LMT|CBK|RDM)\d{6}[A-Z0-9]{4}\b")
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000" "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


@pytest.fixture(scope="module")
def whatsapp(tmp_path_factory):
    if not MODEL.exists():
        pytest.fail("models/cardcare.tar.gz is missing: run `make train` (make test does it for you)")
    hours = {"CARDCARE_AGENT_HOURS": "00:00-00:00", "CARDCARE_AGENT_DAYS": "Mon-Sun"}  # agents always on duty
    with running_whatsapp_bot(tmp_path_factory.mktemp("conversations"), extra_env=hours) as running:
        yield running


def agent_console(bot_url: str) -> "tuple[requests.Session, dict]":
    """The demo agent signed in to the console, as a browser would be."""
    from cardsystem.agents import DEMO

    session = requests.Session()
    base = f"{bot_url}/webhooks/whatsapp/agents/api"
    answer = session.post(f"{base}/login", json={"username": DEMO[0], "password": DEMO[2]}, timeout=10)
    answer.raise_for_status()
    return session, {"X-CSRF-Token": answer.json()["csrf"], "base": base}


class Customer:
    """One persona on the sandbox phone, with fresh data and a fresh conversation."""

    def __init__(self, whatsapp, wa_id: str) -> None:
        sandbox_url, self.bot = whatsapp
        for command in (["cardsystem.seed"], ["cardsystem.agents", "demo"]):  # (seeding drops the agents too)
            subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=self.bot.env, check=True, capture_output=True)
        requests.post(f"{self.bot.url}/conversations/{wa_id}/tracker/events", json={"event": "restart"},
                      timeout=10).raise_for_status()
        self.phone = Phone(sandbox_url, wa_id)
        self.wa_id = wa_id
        agent_console(self.bot.url)  # a colleague is signed in, so a person can join
        self.last: list = []
        from cardsystem.config import Settings
        from cardsystem.service import CardSystem

        self.system = CardSystem(dataclasses.replace(Settings.from_env(), db_url=self.bot.env["CARDCARE_DB_URL"]))
        self.customer = self.system.find_customer(wa_id)
        self.audit_start = len(self.system.audit_entries())

    # -- talking --------------------------------------------------------------------------------
    def says(self, text: str) -> str:
        self.last = self.phone.send(text)
        return self.seen()

    def sends_photo(self, caption: str = "") -> str:
        self.last = self.phone.send(media={"data": PNG, "mime_type": "image/png", "caption": caption})
        return self.seen()

    def taps(self, title_part: str) -> str:
        choice = next((c for c in self.choices() if title_part.lower() in c["title"].lower()), None)
        assert choice, f"no button like {title_part!r} in {self.choices()}"
        self.last = self.phone.send(reply={"id": choice["id"], "title": choice["title"],
                                           "kind": choice.get("kind", "button_reply")})
        return self.seen()

    def seen(self) -> str:
        """Everything the customer can read in the bot's last messages (texts, buttons, files)."""
        parts = []
        for message in self.last:
            kind = message.get("type")
            if kind == "text":
                parts.append(message["text"]["body"])
            elif kind == "interactive":
                body = message["interactive"]
                parts.append(body.get("body", {}).get("text", ""))
                parts += [c["title"] for c in self.choices([message])]
            elif kind == "document":
                parts.append(f"[document {message['document'].get('filename', '')}]")
        return "\n".join(parts)

    def choices(self, messages: Optional[list] = None) -> List[dict]:
        found = []
        for message in messages if messages is not None else self.last:
            if message.get("type") != "interactive":
                continue
            action = message["interactive"].get("action", {})
            for button in action.get("buttons", []):
                found.append({**button["reply"], "kind": "button_reply"})
            for section in action.get("sections", []):
                for row in section.get("rows", []):
                    found.append({"id": row["id"], "title": row["title"], "kind": "list_reply"})
        return found

    # -- the bank's records -----------------------------------------------------------------------
    def card(self, last4: str):
        return self.system.card_of(self.customer.id, last4)

    def requests(self, kind: Optional[str] = None):
        return self.system.service_requests(self.customer.id, kind, False, 50)

    def ticket(self):
        from cardsystem.handoff import HandoffDesk

        return HandoffDesk(self.system).latest(self.wa_id)

    def debits(self, last4: str, limit: int = 40):
        card = self.card(last4)
        return [t for t in self.system.recent_transactions(card.id, limit, True) if t.status != "reversed"]

    def changes(self) -> List[str]:
        """What the bot changed in the bank's records since the conversation began (the audit log;
        agents signing in to the console are not changes to the customer's records)."""
        return [e["action"] for e in self.system.audit_entries()[self.audit_start:] if not e["action"].startswith("agent")]

    def points(self) -> int:
        return self.system.reward_summary(self.customer.id).balance


@pytest.fixture
def customer(whatsapp):
    return lambda wa_id: Customer(whatsapp, wa_id)


def amount_words(paise: int) -> str:
    rupees = paise // 100
    return f"{rupees}"


def day_words(day: dt.date) -> str:
    suffix = "th" if 11 <= day.day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day.day % 10, "th")
    return f"{day.day}{suffix}"


def person_or_callback(c: Customer) -> bool:
    ticket = c.ticket()
    return (ticket is not None and ticket.status in ("queued", "active")) or bool(c.requests("callback"))


# -- safety first -----------------------------------------------------------------------------------

def test_c01_lost_card_without_the_word_block(customer):
    c = customer(ANANYA)
    reply = c.says("hi i think i left my credit card at the restaurant last night")
    assert "4821" in reply and "Yes, block it" in reply and c.card("4821").is_active
    reply = c.says("what happens if i block it, can i still use it if they find it?")
    assert "4821" in reply and c.card("4821").is_active  # answered, and the question is asked again
    reply = c.says("ok yes please do it")
    assert "is now blocked" in reply and REFERENCE.search(reply)
    assert not c.card("4821").is_active and len(c.requests("block_card")) == 1


def test_c18_block_change_of_mind(customer):
    c = customer(ANANYA)
    c.says("block my card")
    reply = c.says("wait, no, let me check my bag first")
    if "Block" in reply and "permanently" in reply:  # the reason was asked first; "no" answers the confirmation
        reply = c.says("no")
    assert "NOT blocked" in reply and c.card("4821").is_active
    reply = c.says("ok block it, I'm sure, it's gone. lost it in the metro")
    if "is now blocked" not in reply:
        assert "4821" in reply and "Yes, block it" in reply  # asked once more, explicitly
        reply = c.says("yes")
    assert "is now blocked" in reply and not c.card("4821").is_active


def test_haan_after_a_no_reopens_the_block(customer):
    c = customer(ANANYA)
    c.says("block my card, lost it")
    reply = c.says("no wait")
    assert "NOT blocked" in reply
    reply = c.says("haan")
    assert "4821" in reply and "Yes, block it" in reply and c.card("4821").is_active
    reply = c.taps("Yes, block it")
    assert "is now blocked" in reply and not c.card("4821").is_active


def test_c19_two_cards_hinglish_the_other_one(customer):
    c = customer(ROHAN)
    reply = c.says("mera card kho gaya")
    assert "1117" in reply and "6392" in reply
    reply = c.says("the other one... 6392 wala")
    assert "6392" in reply and "Yes, block it" in reply
    reply = c.says("haan block karo")
    assert "is now blocked" in reply and "6392" in reply
    assert not c.card("6392").is_active and c.card("1117").is_active


def test_c20_already_blocked_card_and_replacement(customer):
    c = customer(PRIYA)
    reply = c.says("someone stole my wallet, block my card 7305 immediately")
    assert "already blocked" in reply or "nothing more to block" in reply
    assert len(c.requests("block_card")) <= 1  # no new block request
    replacements = [r for r in c.requests() if r.kind in ("block_card", "card_replacement")]
    assert replacements
    reply = c.says("when will the new card come")  # her own replacement's status, then the general answer
    assert any(r.reference in reply for r in replacements) and "7305" in reply and "working days" in reply, reply
    reply = c.says("where is my new card")
    assert any(r.reference in reply for r in replacements), reply


def test_c21_unblock_is_refused_with_a_person_on_offer(customer):
    c = customer(PRIYA)
    reply = c.says("unblock my card")
    assert "can't be unblocked" in reply
    reply = c.says("but i found it!! pls unblock its urgent")
    assert "can't be unblocked" in reply or "person" in reply.lower()
    reply = c.says("status of my requests")
    assert REFERENCE.search(reply) and not c.card("7305").is_active
    assert not c.changes()  # nothing in the bank's records changed



def test_c22_stranger_reporting_a_stolen_card_gets_the_emergency_route(customer):
    c = customer(STRANGER)
    reply = c.says("my credit card got stolen please block it fast")
    assert "1800 266 0000" in reply and "block" in reply.lower() and "register" not in reply.lower()[:40]
    reply = c.says("the card ends in 4821")
    assert "₹" not in reply and "Ananya" not in reply
    reply = c.says("how do i register my number")
    assert "register" in reply.lower()
    assert not c.changes()  # nothing in the bank's records changed



def test_c23_full_card_number_is_hidden_and_warned_about(customer):
    c = customer(ANANYA)
    reply = c.says("please block card 4532 7781 0093 4821 i lost it")
    assert "hidden the card number" in reply and "4532" not in reply
    assert "Yes, block it" in reply and "4821" in reply
    reply = c.says("yes")
    assert "is now blocked" in reply and not c.card("4821").is_active
    tracker = requests.get(f"{c.bot.url}/conversations/{ANANYA}/tracker", timeout=10).json()
    assert "4532 7781" not in str(tracker)  # never stored


def test_c24_full_number_of_a_card_not_theirs(customer):
    c = customer(ROHAN)
    reply = c.says("balance for 5241 8890 1234 4821")
    assert "hidden the card number" in reply and "5241" not in reply
    reply = c.says("oh sorry, 1117")
    assert "1117" in reply and "Outstanding" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_c25_date_of_birth_typed_by_mistake(customer):
    c = customer(ANANYA)
    reply = c.says("send latest statement")
    assert "[document" in reply and "password" in reply
    reply = c.says("my dob is 14/03/1992 is that the password?")
    assert "hidden the date of birth" in reply and "14/03/1992" not in reply


# -- disputes in the customer's own words -------------------------------------------------------------
    assert not c.changes()  # nothing in the bank's records changed


def test_c12_dispute_everything_in_the_first_message(customer):
    c = customer(ROHAN)
    txn = next(t for t in c.debits("6392") if (c.system.today() - t.posted_on).days < 60)
    merchant = txn.merchant.split()[0]
    reply = c.says(f"{merchant} charged me {amount_words(txn.amount_paise)} twice on {day_words(txn.posted_on)} "
                   f"on my 6392 card, please reverse")
    assert txn.merchant in reply and "Which card" not in reply and "What's wrong" not in reply
    if "screenshot" in reply.lower():
        reply = c.says("no screenshot")
    assert "Shall I raise it" in reply and "charged twice" in reply.lower()
    reply = c.says("yes file it")
    assert REFERENCE.search(reply)
    [dispute] = c.requests("dispute")
    assert dispute.reason == "charged_twice" and dispute.transaction_merchant == txn.merchant


def test_approximate_amount_and_relative_day(customer):
    c = customer(ANANYA)
    txn = next(t for t in c.debits("4821") if t.amount_paise >= 200000 and (c.system.today() - t.posted_on).days < 60)
    rough = round(txn.amount_paise / 100 / 100) / 10  # "around 4.5k"
    reply = c.says(f"there's a {txn.merchant.split()[0].lower()} charge of around {rough}k on "
                   f"{txn.posted_on.day} {txn.posted_on.strftime('%b').lower()} i dont recognise")
    assert txn.merchant in reply and f"{txn.posted_on:%d %b %Y}" in reply  # says which one it matched


def test_c13_dispute_with_screenshot(customer):
    c = customer(ANANYA)
    reply = c.says("i want to raise a dispute for a transaction from last week")
    choices = [x for x in c.choices() if x["title"].startswith("₹")]
    assert choices
    reply = c.taps(choices[0]["title"])
    assert "What's wrong" in reply
    reply = c.says("it got charged 2 times")
    assert "screenshot" in reply.lower()
    reply = c.sends_photo("see both debits here")
    assert "Screenshot: attached" in reply
    reply = c.says("yes")
    assert REFERENCE.search(reply)
    [dispute] = c.requests("dispute")
    assert dispute.reason == "charged_twice" and dispute.attachments


def test_c14_screenshot_first_then_not_recognised(customer):
    c = customer(ANANYA)
    reply = c.sends_photo()
    assert "kept it" in reply and "Report a transaction" in reply
    reply = c.says("i didnt do this, never heard of this shop, i want to report it")
    assert "Which transaction" in reply or "found" in reply
    choices = [x for x in c.choices() if x["title"].startswith("₹")]
    reply = c.taps(choices[1]["title"])
    assert "Screenshot: attached" in reply  # the photo sent first was kept
    reply = c.says("confirm")
    assert REFERENCE.search(reply)
    [dispute] = c.requests("dispute")
    assert dispute.reason == "not_recognised" and dispute.attachments
    assert person_or_callback(c) and c.card("4821").is_active


def test_c15_dispute_status_latest(customer):
    c = customer(FATIMA)
    reply = c.says("status of my dispute")
    assert re.search(r"DSP\d{6}DEMO", reply) and "complete it by" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_c16_a_mangled_reference_gets_not_found_then_the_latest(customer):
    c = customer(FATIMA)
    reply = c.says("whats happening with ref no. dsp/2026/99/demo")
    assert "couldn't find" in reply or "DEMO" in reply
    reply = c.says("just tell me the latest one")
    assert re.search(r"DSP\d{6}DEMO", reply)
    assert not c.changes()  # nothing in the bank's records changed



def test_c17_refund_dispute_then_its_status(customer):
    c = customer(ROHAN)
    txn = next(t for t in c.debits("1117") if (c.system.today() - t.posted_on).days < 90)
    reply = c.says(f"refund nahi aaya, {txn.merchant.split()[0].lower()} ka return kiya tha around "
                   f"{round(txn.amount_paise / 100000, 1)}k, on 1117")
    assert txn.merchant in reply or "Which one" in reply
    if "Which one" in reply:
        reply = c.taps(next(x["title"] for x in c.choices()
                            if txn.merchant.split()[0] in x["title"] and f"{txn.amount_paise / 100:,.2f}" in x["title"]))
    if "screenshot" in reply.lower():
        reply = c.says("no screenshot, just file")
    assert "Shall I raise it" in reply and "Refund not received" in reply
    reply = c.says("yes")
    reference = REFERENCE.search(reply).group(0)
    reply = c.says("ok and whats the status of the one you just made")
    assert reference in reply


def test_c43_dispute_from_the_transaction_list(customer):
    c = customer(ROHAN)
    reply = c.says("show last few transactions on 6392")
    assert "Latest transactions" in reply and "6392" in reply
    choices = [x for x in c.choices() if x["title"].startswith("₹")]
    reply = c.taps(choices[1]["title"])
    assert "What's wrong" in reply
    reply = c.says("they charged wrong amount")
    if "screenshot" in reply.lower():
        reply = c.says("skip")
    reply = c.says("confirm")
    assert REFERENCE.search(reply)
    [dispute] = c.requests("dispute")
    assert dispute.reason == "wrong_amount"


def test_reason_in_the_customers_words(customer):
    c = customer(ANANYA)
    c.says("i want to dispute a transaction")
    choices = [x for x in c.choices() if x["title"].startswith("₹")]
    c.taps(choices[0]["title"])
    reply = c.says("the order never came")
    assert "screenshot" in reply.lower()  # understood: the next question
    reply = c.says("no")
    assert "Goods or service not received" in reply


def test_a_dispute_question_is_asked_at_most_twice_more(customer):
    c = customer(ANANYA)
    c.says("i want to dispute a transaction")
    choices = [x for x in c.choices() if x["title"].startswith("₹")]
    c.taps(choices[0]["title"])
    c.says("hmm")
    c.says("blah")
    reply = c.says("idk")
    assert "Talk to a person" in reply and "What's wrong" not in reply
    assert not c.requests("dispute")


def test_c46_unrecognised_charge_offers_to_block_first(customer):
    c = customer(ROHAN)
    reply = c.says("someone used my 1117 card for 65,000 at some electronics store yesterday, not me!!")
    assert "Block card 1117" in reply and c.card("1117").is_active
    reply = c.taps("Block card 1117")
    assert "left the dispute" in reply and "Yes, block it" in reply and "1117" in reply
    reply = c.says("yes block it")
    assert "is now blocked" in reply and not c.card("1117").is_active and c.card("6392").is_active
    assert "go back" in reply  # to the dispute it left for the block
    reply = c.says("yes")
    assert "transaction" in reply.lower() and not c.requests("dispute")


# -- two cards --------------------------------------------------------------------------------------

def test_c03_two_cards_which_one_then_the_other(customer):
    c = customer(ROHAN)
    reply = c.says("how much do I owe")
    assert "Which card" in reply and "₹" not in reply
    reply = c.says("6392 wala")
    assert "6392" in reply and "Outstanding" in reply and "1117" not in reply
    reply = c.says("and the other one?")
    assert "1117" in reply and "Outstanding" in reply and "Which card" not in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_c04_limit_left_on_a_named_card(customer):
    c = customer(ROHAN)
    reply = c.says("how much limit left on 1117")
    assert "1117" in reply and "Available to spend" in reply and "6392" not in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_pay_now_asks_which_card_again(customer):
    c = customer(ROHAN)
    c.says("balance on 6392")
    reply = c.says("pay my bill")
    assert "Which card" in reply  # money moves: the card discussed earlier is not assumed


# -- statements --------------------------------------------------------------------------------------
    assert not c.changes()  # nothing in the bank's records changed


def test_c05_statement_month_correction(customer):
    c = customer(ANANYA)
    reply = c.says("send me statement for september")
    assert "September 2026" in reply or "Sep 2026" in reply
    reply = c.says("sorry I meant october")
    assert "Oct" in reply and "[document" in reply
    assert not c.changes()  # nothing in the bank's records changed



def months_from_today(system, step: int) -> str:
    """The month `step` months from the bank's today, as the bot writes it ("October 2026")."""
    from cardsystem.formatting import format_month
    from cardsystem.months import shift_period

    today = system.today()
    return format_month(shift_period(f"{today.year:04d}-{today.month:02d}", step))


def test_c06_last_month_then_next_months_also(customer):
    c = customer(ROHAN)
    reply = c.says("last month ka statement bhejo")
    assert "Which card" in reply
    reply = c.says("1117")
    assert months_from_today(c.system, -1) in reply
    reply = c.says("next month's also")
    assert months_from_today(c.system, 0) in reply  # the one after last month: sent, or said not to be over
    assert "Sorry, I didn't" not in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_c07_future_month_then_the_latest(customer):
    c = customer(ANANYA)
    reply = c.says("statement for march 2027")
    assert "hasn't finished yet" in reply
    reply = c.says("ok the latest one then")
    assert "[document" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_c08_statement_with_typos(customer):
    c = customer(ANANYA)
    reply = c.says("need my statment for agust plz")
    assert "Aug" in reply
    reply = c.says("thnx. also wen is the due dt")
    assert re.search(r"\d\d [A-Z][a-z]{2} 2026", reply)
    assert not c.changes()  # nothing in the bank's records changed



def test_next_months_name_asks_which_is_meant(customer):
    """"december statement" in November (whatever the date, the coming month's name): the latest
    bill, or last year's December? The month the bot offers is the past one, a year back."""
    from cardsystem.formatting import format_month
    from cardsystem.months import parse_month

    c = customer(ANANYA)
    today = c.system.today()
    coming = dt.date(today.year + today.month // 12, today.month % 12 + 1, 1)
    reply = c.says(f"{coming:%B} statement".lower())
    assert "isn't over yet" in reply and format_month(parse_month(f"{coming:%B}".lower(), today)) in reply


# -- rewards -----------------------------------------------------------------------------------------
    assert not c.changes()  # nothing in the bank's records changed


def test_c09_points_and_what_expires(customer):
    c = customer(VIKRAM)
    reply = c.says("my points")
    assert "3,200" in reply and "this month" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_c10_redeem_change_of_mind(customer):
    c = customer(VIKRAM)
    before = c.points()
    reply = c.says("redeem my points")
    items = c.choices()
    assert len(items) >= 2
    reply = c.taps(items[0]["title"])
    assert "Redeem" in reply
    reply = c.says("wait, no. not that")
    assert "haven't redeemed" in reply and c.points() == before
    reply = c.says("redeem points")
    reply = c.taps(items[1]["title"])
    reply = c.says("yes confirm")
    assert REFERENCE.search(reply) and c.points() < before


def test_c45_never_mind_while_redeeming(customer):
    c = customer(VIKRAM)
    before = c.points()
    c.says("i want to use my points")
    reply = c.says("never mind")
    assert "stopped that" in reply
    reply = c.says("how much do i owe on my card")
    assert "Outstanding" in reply and c.points() == before
    assert not c.changes()  # nothing in the bank's records changed



def test_c48_photo_while_redeeming_is_not_lost(customer):
    c = customer(VIKRAM)
    before = c.points()
    c.says("redeem points")
    reply = c.sends_photo("can i get this phone with points?")
    assert reply  # answered, not silence
    reply = c.says("ok no leave it")
    assert c.points() == before


# -- paying ------------------------------------------------------------------------------------------
    assert not c.changes()  # nothing in the bank's records changed


def test_c26_pay_the_full_amount(customer):
    c = customer(ANANYA)
    reply = c.says("pay my bill")
    assert "pay.cardcare.example" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_c27_pay_the_minimum_in_hinglish(customer):
    c = customer(ROHAN)
    reply = c.says("1117 ka minimum due bhar deta hu, link bhejo")
    card = c.card("1117")
    if card.minimum_due_paise > 0:
        assert "minimum due" in reply and reply.count("pay.cardcare.example") == 1
    else:
        assert "already paid the minimum" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_c28_pay_a_given_amount(customer):
    c = customer(ANANYA)
    card = c.card("4821")
    reply = c.says("i want to pay 1k now")
    if card.outstanding_paise > 100000:
        assert "₹1,000.00" in reply and "pay.cardcare.example" in reply
    else:
        assert "pay.cardcare.example" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_c29_due_date_in_the_middle_of_paying(customer):
    c = customer(ROHAN)
    reply = c.says("i want to pay my credit card bill")
    assert "Which card" in reply
    reply = c.says("wait whats the due date first")
    assert "Which card" in reply or "due" in reply
    reply = c.says("6392")
    assert "6392" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_min_due_answer_offers_a_link(customer):
    c = customer(ROHAN)
    reply = c.says("min due on 1117?")
    if c.card("1117").minimum_due_paise > 0:
        assert "Pay minimum due" in reply
        reply = c.taps("Pay minimum due")
        assert "pay.cardcare.example" in reply


# -- limits --------------------------------------------------------------------------------------------
    assert not c.changes()  # nothing in the bank's records changed


def test_c30_limit_increase(customer):
    c = customer(ANANYA)
    limit = c.card("4821").credit_limit_paise
    reply = c.says("can u increase my credit limit")
    assert "current limit" in reply
    reply = c.says(f"{limit * 2 // 100}")
    assert "Request a credit limit increase" in reply
    reply = c.says("yes")
    assert REFERENCE.search(reply) and len(c.requests("limit_increase")) == 1


def test_c31_limit_far_too_high_is_explained(customer):
    c = customer(ROHAN)
    reply = c.says("increase limit on 6392 to 1 crore")
    assert "3 times" in reply and not c.requests("limit_increase")


# -- questions ------------------------------------------------------------------------------------------
    assert not c.changes()  # nothing in the bank's records changed


def test_c32_interest_then_late_fee_then_own_due_date(customer):
    c = customer(ANANYA)
    assert "interest" in c.says("if i pay only minimum due what interest will be charged").lower()
    assert "late payment fee" in c.says("and late payment fee?").lower()
    assert re.search(r"due on \d\d [A-Z][a-z]{2} 2026|Nothing is due", c.says("when is mine due btw"))
    assert not c.changes()  # nothing in the bank's records changed



def test_c33_declined_abroad_then_available_limit(customer):
    c = customer(ROHAN)
    assert "declined" in c.says("card got declined at a shop in dubai, what do i do").lower()
    reply = c.says("do i need to tell you before travelling")
    assert "abroad" in reply or "international" in reply
    reply = c.says("ok how much is available on 6392")
    assert "6392" in reply and "Available" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_c34_pin_and_expiry(customer):
    c = customer(ANANYA)
    assert "PIN" in c.says("how to chnage pin")
    assert "new card" in c.says("also my card expires next month will i get a new one automatically")
    assert not c.changes()  # nothing in the bank's records changed



def test_c35_stranger_asks_general_questions(customer):
    c = customer(STRANGER)
    assert "apply" in c.says("how do i apply for a credit card").lower()
    assert "application" in c.says("I applied last week, what's the status").lower()
    reply = c.says("whats my balance")
    assert "₹" not in reply and "register" in reply.lower()


# -- a person -----------------------------------------------------------------------------------------
    assert not c.changes()  # nothing in the bank's records changed


def test_c36_vague_first_then_clear(customer):
    c = customer(ANANYA)
    reply = c.says("this is not really helping")
    assert "Talk to a person" in reply and not person_or_callback(c)  # offered, not imposed
    reply = c.says("can i talk to someone")
    assert "queue" in reply and person_or_callback(c)


def test_yes_connect_me_after_an_offer(customer):
    c = customer(PRIYA)
    c.says("unblock my card")
    reply = c.says("yes connect me")
    assert "queue" in reply and person_or_callback(c)


def test_c37_person_in_the_middle_of_a_dispute(customer):
    c = customer(ROHAN)
    c.says("i want to dispute a charge on 1117")
    reply = c.says("actually connect me to an agent, this is complicated")
    assert "queue" in reply and not c.requests("dispute")
    assert c.ticket().card_last4 == "1117"


def test_c38_complaint_after_trouble_goes_to_a_person(customer):
    c = customer(FATIMA)
    reply = c.says("I have asked three times about my dispute and nobody answers, this is useless")
    assert "Talk to a person" in reply or "queue" in reply
    if "queue" not in reply:
        reply = c.taps("Talk to a person")
    assert "queue" in reply and person_or_callback(c)


def test_c44_two_misses_bring_a_person(customer):
    c = customer(ANANYA)
    reply = c.says("asdfgh jkl")
    assert "Talk to a person" in reply
    reply = c.says("qwrty zzzz ??")
    assert "queue" in reply and person_or_callback(c)


def test_c39_rating_after_an_agent_then_a_real_question(customer):
    c = customer(VIKRAM)
    reply = c.says("talk to a person about my expiring points")
    assert "queue" in reply
    session, auth = agent_console(c.bot.url)
    base, headers = auth.pop("base"), auth
    reference = c.ticket().reference
    assert session.post(f"{base}/tickets/{reference}/claim", headers=headers, timeout=10).ok
    c.phone.send("thanks, got it", quiet=1.0)  # goes to the agent, not the bot
    closed = session.post(f"{base}/tickets/{reference}/close", json={"resolution": "explained expiry"},
                          headers=headers, timeout=10)
    assert closed.ok
    import time

    time.sleep(3)
    c.last = c.phone.send("5")
    reply = c.seen()
    if "Anything you'd like to add" not in reply:  # the close message and rating question came first
        reply = c.says("5")
    assert "Anything you'd like to add" in reply
    reply = c.says("what is my balance")
    assert "Outstanding" in reply  # answered, not stored as the comment
    from sqlalchemy import select

    from cardsystem.db import session_scope
    from cardsystem.models import HandoffTicket

    with session_scope(c.system.engine) as s:
        rating, comment = s.execute(select(HandoffTicket.rating, HandoffTicket.rating_comment)
                                    .where(HandoffTicket.reference == reference)).one()
    assert rating == 5 and not comment


# -- consent and off-topic -------------------------------------------------------------------------------

def test_c40_stop_and_start(customer):
    c = customer(ANANYA)
    reply = c.says("STOP")
    assert "won't get reminders" in reply and c.system.consent_of(ANANYA) is False
    reply = c.says("START")
    assert "Welcome back" in reply and c.system.consent_of(ANANYA) is True
    assert "Outstanding" in c.says("whats my balance") and c.card("4821").is_active
    assert c.changes() == ["opt_out", "opt_in"]


def test_c41_other_bank_products(customer):
    c = customer(ANANYA)
    assert "loans" in c.says("can i get a personal loan on my credit card")
    assert "deposits" in c.says("what are fd rates right now")
    assert re.search(r"due on|Nothing is due", c.says("ok whats my due date"))
    assert not c.changes()  # nothing in the bank's records changed



def test_c42_cricket_then_limit_in_hinglish(customer):
    c = customer(ROHAN)
    assert "only help with your credit card" in c.says("who won the match yesterday? kohli ne kitne banaye")
    reply = c.says("haha ok. kitna limit bacha hai 1117 pe")
    assert "1117" in reply and "Available" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_bot_question_is_not_a_complaint(customer):
    c = customer(ANANYA)
    reply = c.says("are you a bot?")
    assert "virtual assistant" in reply and not person_or_callback(c)
    assert not c.changes()  # nothing in the bank's records changed



def test_c02_balance_then_dues_in_hinglish(customer):
    c = customer(ANANYA)
    reply = c.says("mera balance kitna hai")
    assert "4821" in reply and re.search(r"Outstanding: ₹[\d,]+\.\d\d", reply) and "Which card" not in reply
    reply = c.says("aur minimum kitna dena hai")
    assert "minimum" in reply.lower() and "Which card" not in reply
    assert re.search(r"\d\d [A-Z][a-z]{2} 2026|Nothing is due", c.says("bill kab bharna hai"))
    reply = c.says("thik hai thanks")
    assert "welcome" in reply.lower() and not c.choices()
    assert not c.changes()  # nothing in the bank's records changed



def test_c11_points_expiring_and_a_transfer_to_a_spouse(customer):
    c = customer(VIKRAM)
    before = c.points()
    reply = c.says("mere points expire ho rahe hai kya")
    assert "3,200" in reply and "this month" in reply
    reply = c.says("kya main ye points wife ke card pe transfer kar sakta hu")
    assert "can't be moved to another person's card" in reply
    c.says("ok rehne do")
    assert c.points() == before
    assert not c.changes()  # nothing in the bank's records changed



def test_c47_requests_replacement_and_an_address_change(customer):
    c = customer(PRIYA)
    reply = c.says("status of my requests")
    assert REFERENCE.search(reply)
    reply = c.says("kab tak aayega naya card")
    assert "working days" in reply or "complete it by" in reply or "replacement" in reply.lower()
    reply = c.says("can you send it to my office address instead")
    assert "type your new address" in reply          # the address change starts; nothing is changed yet
    reply = c.says("and how much do i owe on the old card")
    assert "7305" in reply and "Outstanding" in reply and "blocked" in reply
    assert not c.changes()  # nothing in the bank's records changed



def test_a_photo_after_the_dispute_is_added_to_it(customer):
    c = customer(ANANYA)
    c.says("i want to dispute a transaction")
    c.taps(next(x["title"] for x in c.choices() if x["title"].startswith("₹")))
    c.says("charged twice")
    c.says("skip")
    reference = REFERENCE.search(c.says("yes")).group(0)
    reply = c.sends_photo()
    assert f"added it to your dispute {reference}" in reply
    assert c.system.service_request(c.customer.id, reference).attachments == 1
