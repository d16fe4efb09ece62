"""The bank writes first (issue 11): the template registry and its rules, the scheduler (each
offset once, none after payment, quiet hours, the weekly cap, STOP), the plan for each notice
(plain message inside the window, approved template outside), what WhatsApp said, single-use
payment links, the bank's news, and the cost report."""
from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
import yaml
from sqlalchemy import select, update

from cardsystem.db import session_scope
from cardsystem.errors import NotAllowed
from cardsystem.models import Card, Customer, CustomerNotice, MessageSend, MessagingConsent, Transaction
from cardsystem.paylinks import InvalidPaymentLink, make_payment_link
from cardsystem.reminders import run_once
from cardsystem.reminders.book import TemplateBook
from cardsystem.reminders.outreach import Outreach
from cardsystem.reminders.policy import Policy
from cardsystem.reminders.report import report
from cardsystem.reminders.templates import Registry, TemplateError, check
from cardsystem.requests.notices import NoticeBox
from tests.conftest import ONE_CARD, ROOT, TWO_CARDS

GOOD = {"name": "due_soon", "language": "en", "category": "utility",
        "body": "Card ending {{1}}: {{2}} due on {{3}}. Thank you.",
        "parameters": [{"field": "card_last4", "example": "1234"}, {"field": "total_due", "example": "₹10.00"},
                       {"field": "due_date", "example": "5 Dec 2026"}],
        "footer": "Reply STOP to stop reminders",
        "buttons": [{"type": "url", "text": "Pay", "url": "{payment_base_url}?{{1}}", "parameter": "q", "example": "t=1"},
                    {"type": "quick_reply", "text": "Pay now", "payload": '/pay_bill{"card_last4":"{card_last4}"}'},
                    {"type": "quick_reply", "text": "Talk to us", "payload": "/talk_to_human"}]}


def problems(**changes):
    entry = {**GOOD, **changes}
    try:
        Registry.from_entries([entry], {"payment_base_url": "https://pay.example.test/pay"})
        return ""
    except TemplateError as exc:
        return str(exc)


# -- the registry --------------------------------------------------------------------------------
def test_the_shipped_registry_keeps_whatsapps_rules():
    registry = Registry.load(payment_base_url="https://pay.example.test/pay")
    names = {t.name for t in registry}
    assert {"payment_due_reminder", "payment_received", "statement_ready", "request_update", "card_blocked"} <= names
    reminder = registry.get("payment_due_reminder")
    assert [b.text for b in reminder.buttons] == ["Pay bill", "Pay now", "Already paid", "Talk to us"]
    assert all(t.category == "utility" for t in registry) and all(check(t) == [] for t in registry)


@pytest.mark.parametrize("changes, expected", [
    ({"name": "Due Soon"}, "lower-case"),
    ({"language": "english"}, "language"),
    ({"category": "promo"}, "category must be"),
    ({"body": "Card {{1}} and {{3}} thanks {{2}} ok."}, ""),  # in order of number, not of place: allowed
    ({"body": "Card {{1}} and {{3}} thanks."}, "none missing"),
    ({"body": "{{1}} is due {{2}} on {{3}}."}, "start or end"),
    ({"body": "Card {{1}} due {{2}} on {{3}}"}, "start or end"),
    ({"body": "x" * 1025}, "at most 1024"),
    ({"parameters": GOOD["parameters"][:2]}, "2 are described"),
    ({"parameters": [{"field": "a", "example": ""}] + GOOD["parameters"][1:]}, "an example"),
    ({"footer": "f" * 61}, "footer is longer"),
    ({"footer": "Reply {{1}}"}, "footer may not have parameters"),
    ({"buttons": [{"type": "quick_reply", "text": f"B{i}", "payload": "/x"} for i in range(11)]}, "at most 10"),
    ({"buttons": [{"type": "url", "text": f"U{i}", "url": "https://a.example/x"} for i in range(3)]}, "at most 2 URL"),
    ({"buttons": [GOOD["buttons"][1], GOOD["buttons"][0], GOOD["buttons"][2]]}, "side by side"),
    ({"buttons": [{"type": "quick_reply", "text": "A much too long button text here", "payload": "/x"}]}, "1 to 25"),
    ({"buttons": [{"type": "url", "text": "Pay", "url": "https://a.example/{{1}}/pay", "parameter": "q", "example": "x"}]},
     "at its end"),
    ({"buttons": [{"type": "url", "text": "Pay", "url": "https://a.example/{{1}}", "parameter": "q"}]}, "an example"),
    ({"buttons": [{"type": "quick_reply", "text": "Pay", "payload": "/a"}, {"type": "quick_reply", "text": "Pay",
                                                                             "payload": "/b"}]}, "same text"),
    ({"category": "authentication"}, "one-time codes"),
])
def test_a_template_breaking_a_rule_is_refused_on_load(changes, expected):
    found = problems(**changes)
    assert (expected in found) if expected else found == ""


def test_a_template_is_sent_in_the_graph_apis_shape_and_filled_safely():
    template = Registry.from_entries([GOOD], {"payment_base_url": "https://pay.example.test/pay"}).get("due_soon")
    values = {"card_last4": "6392", "total_due": "₹1,234.00", "due_date": "5 Dec 2026", "q": "t=abc&s=def"}
    message = template.message(values)
    assert message["type"] == "template" and message["template"]["language"] == {"code": "en"}
    body, url, pay, talk = message["template"]["components"]
    assert [p["text"] for p in body["parameters"]] == ["6392", "₹1,234.00", "5 Dec 2026"]
    assert url == {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "t=abc&s=def"}]}
    assert pay["parameters"][0]["payload"] == '/pay_bill{"card_last4":"6392"}' and pay["index"] == "1"
    assert talk["index"] == "2"
    assert template.render(values) == "Card ending 6392: ₹1,234.00 due on 5 Dec 2026. Thank you."
    creation = template.creation_body()
    assert creation["category"] == "UTILITY" and creation["components"][0]["example"]["body_text"] == [
        ["1234", "₹10.00", "5 Dec 2026"]]
    assert creation["components"][2]["buttons"][0] == {"type": "URL", "text": "Pay", "url": "https://pay.example.test/pay?{{1}}",
                                                       "example": ["https://pay.example.test/pay?t=1"]}
    with pytest.raises(TemplateError, match="newline"):
        template.message({**values, "total_due": "₹1\n2"})
    with pytest.raises(TemplateError, match="no value"):
        template.message({**values, "due_date": ""})


# -- the scheduler and the plan ---------------------------------------------------------------------
def approve_all(system, registry=None):
    registry = registry or Registry.load(payment_base_url=system.settings.payment_base_url)
    book = TemplateBook(system.engine)
    for template in registry:
        book.record(template.name, template.language, "APPROVED", template.category, "1", None, template.content_hash)


def bill(system, phone, due, minimum=50_000, outstanding=200_000):
    """The customer's first card owes `outstanding`, `minimum` of it by `due`; their other cards nothing."""
    customer = system.find_customer(phone)
    cards = system.cards_of(customer.id)
    with session_scope(system.engine) as s:
        for index, card in enumerate(cards):
            row = s.get(Card, card.id)
            row.due_date = due if index == 0 else None
            row.minimum_due_paise = minimum if index == 0 else 0
            row.outstanding_paise = outstanding if index == 0 else 0
    return customer, cards[0]


def quiet_everyone_else(system, *keep):
    """Only the named customers have a bill due, so the figures are theirs."""
    with session_scope(system.engine) as s:
        s.execute(update(Card).where(Card.customer_id.not_in(
            select(Customer.id).where(Customer.phone.in_(keep)))).values(minimum_due_paise=0)
                  .execution_options(synchronize_session=False))


def local(policy, text):
    return policy.utc(dt.datetime.fromisoformat(text))


@pytest.fixture
def outreach(system):
    approve_all(system)
    return Outreach(system.engine, system.settings, desk_rules=system.desk_rules)


def reminded(system, outreach, *phones, at="2026-12-05T10:00"):
    """`phones` owe a bill due on 10 Dec 2026 (nobody else owes anything), the scheduler ran at `at`
    (bank time): (now in UTC, a notice box, [(customer, card)] of each phone)."""
    billed = [bill(system, phone, dt.date(2026, 12, 10)) for phone in phones]
    quiet_everyone_else(system, *phones)
    now = local(outreach.policy, at)
    run_once(system, now, outreach)
    return now, NoticeBox(engine=system.engine, outreach=outreach), billed


def reminders_of(system, card_id):
    with session_scope(system.engine) as s:
        return [(n.key.split(":")[3], n.state, n.error) for n in s.execute(
            select(CustomerNotice).where(CustomerNotice.kind == "payment_due", CustomerNotice.card_id == card_id)
            .order_by(CustomerNotice.id)).scalars()]


def deliver(system, box, now, window_open=False, sent=True):
    """What a channel would do: take due WhatsApp notices and follow each plan (and, with `sent`,
    WhatsApp accepting each at once); the plans."""
    plans = []
    for notice in box.take("whatsapp", 500, now=now):
        plan = box.plan(notice.id, window_open, now=now)
        plans.append((notice, plan))
        if plan.action == "skip":
            box.skipped(notice.id, plan.why)
        elif plan.action == "hold":
            box.held(notice.id, plan.why, plan.until)
        else:
            box.sent(notice.id)
            if sent:
                box.outcome(plan.key + ":0", "sent", f"wamid.{notice.id}", at=now)
    return plans


def test_each_offset_is_sent_once_and_a_missed_day_sends_only_the_latest(system, outreach):
    policy = outreach.policy
    customer, card = bill(system, ONE_CARD, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD)
    assert run_once(system, local(policy, "2026-12-04T10:00"), outreach)["reminders"] == 0   # 6 days before
    assert run_once(system, local(policy, "2026-12-05T10:00"), outreach)["reminders"] == 1   # 5 days before
    assert run_once(system, local(policy, "2026-12-05T15:00"), outreach)["reminders"] == 0   # the same, once
    assert run_once(system, local(policy, "2026-12-07T10:00"), outreach)["reminders"] == 0   # 3 days: no offset
    # the scheduler did not run on the 9th (1 day before): on the due date only that day's goes
    assert run_once(system, local(policy, "2026-12-10T10:00"), outreach)["reminders"] == 1
    assert [offset for offset, _, _ in reminders_of(system, card.id)] == ["5", "0"]


def test_a_reminder_goes_as_an_approved_template_with_a_single_use_link(system, outreach):
    now, box, [(customer, card)] = reminded(system, outreach, ONE_CARD)
    [(notice, plan)] = deliver(system, box, now)
    assert plan.action == "template" and plan.key.startswith(f"notice.{notice.id}-") and plan.key.endswith(".t")
    template = plan.message["template"]
    assert template["name"] == "payment_due_reminder"
    body = [p["text"] for p in template["components"][0]["parameters"]]
    assert body == [card.last4, "₹2,000.00", "₹500.00", "10 Dec 2026"]
    text = json.dumps(plan.message)
    assert ONE_CARD not in text and customer.name not in text          # no more than needed
    suffix = template["components"][1]["parameters"][0]["text"]
    link = f"{system.settings.payment_base_url}?{suffix}"
    paid = system.pay_with_link(link)
    assert paid.amount_paise == -200_000
    with pytest.raises(InvalidPaymentLink, match="used"):
        system.pay_with_link(link)
    with session_scope(system.engine) as s:
        send = s.execute(select(MessageSend)).scalar_one()
        assert (send.via, send.template, send.category, send.country, send.rate_e4, send.sms_rate_e4) == \
            ("template", "payment_due_reminder", "utility", "IN", 1150, 3500)
        assert send.state == "sent" and send.wamid == f"wamid.{notice.id}"
    actions = [e["action"] for e in system.audit_entries(customer.id)]
    assert "message_sent_first" in actions and "payment_received" in actions


def test_inside_the_window_a_reminder_is_a_plain_message_with_its_quick_replies(system, outreach):
    policy = outreach.policy
    bill(system, ONE_CARD, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD)
    now = local(policy, "2026-12-09T11:00")
    run_once(system, now, outreach)
    [(_, plan)] = deliver(system, NoticeBox(engine=system.engine, outreach=outreach), now, window_open=True)
    assert plan.action == "text", plan.why
    assert "Pay securely with the link below." in plan.text and "\n\nhttps://pay.example.test/pay?t=" in plan.text
    assert "button" not in plan.text
    assert [title for title, _ in plan.buttons] == ["Pay now", "Already paid", "Talk to us"]


def test_no_reminder_once_the_minimum_is_paid(system, outreach):
    policy = outreach.policy
    customer, card = bill(system, ONE_CARD, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD)
    now = local(policy, "2026-12-05T10:00")
    run_once(system, now, outreach)
    system.record_payment(card.id, 50_000, via="upi")                   # the minimum, before the send
    plans = deliver(system, NoticeBox(engine=system.engine, outreach=outreach), now)
    reminder = [p for n, p in plans if n.key.startswith("reminder:")]
    assert [p.action for p in reminder] == ["skip"] and reminder[0].why.startswith("paid")
    assert run_once(system, local(policy, "2026-12-09T10:00"), outreach)["reminders"] == 0
    news = [p for n, p in plans if n.key.startswith("payment:")]
    assert [p.action for p in news] == ["template"]                      # the payment itself is told
    assert news[0].message["template"]["name"] == "payment_received"


def test_quiet_hours_hold_a_reminder_until_the_morning(system, outreach):
    policy = outreach.policy
    bill(system, ONE_CARD, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD)
    evening = local(policy, "2026-12-05T22:30")
    assert run_once(system, evening, outreach)["reminders"] == 1
    box = NoticeBox(engine=system.engine, outreach=outreach)
    assert deliver(system, box, evening) == []                          # not even taken before 09:00
    assert deliver(system, box, local(policy, "2026-12-06T08:59")) == []
    [(_, plan)] = deliver(system, box, local(policy, "2026-12-06T09:00"))
    assert plan.action == "template"
    # one queued by day and found at night (a slow pass) is held, not sent
    bill(system, TWO_CARDS, dt.date(2026, 12, 10))
    run_once(system, local(policy, "2026-12-06T20:59"), outreach)
    [(_, late)] = deliver(system, box, local(policy, "2026-12-06T21:01"))
    assert late.action == "hold" and late.why == "quiet hours" and late.until == local(policy, "2026-12-07T09:00")


def test_stop_stops_everything_and_start_brings_reminders_back(system, outreach):
    policy = outreach.policy
    customer, card = bill(system, ONE_CARD, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD)
    now = local(policy, "2026-12-05T10:00")
    run_once(system, now, outreach)
    system.set_consent(ONE_CARD, False, "whatsapp:STOP")                # after queueing, before sending
    [(_, plan)] = deliver(system, NoticeBox(engine=system.engine, outreach=outreach), now)
    assert plan.action == "skip" and plan.why.startswith("opted out")
    assert run_once(system, local(policy, "2026-12-09T10:00"), outreach)["reminders"] == 0
    system.set_consent(ONE_CARD, True, "whatsapp:START")
    assert run_once(system, local(policy, "2026-12-10T10:00"), outreach)["reminders"] == 1
    with session_scope(system.engine) as s:
        consent = s.get(MessagingConsent, ONE_CARD)
        assert consent.opted_in and consent.source == "whatsapp:START" and consent.changed_at is not None


def test_a_number_without_recorded_consent_gets_no_reminder(system, outreach):
    policy = outreach.policy
    bill(system, ONE_CARD, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD)
    with session_scope(system.engine) as s:
        s.delete(s.get(MessagingConsent, ONE_CARD))
    assert run_once(system, local(policy, "2026-12-05T10:00"), outreach)["reminders"] == 0


def test_the_weekly_cap(system):
    approve_all(system)
    policy = Policy.load(timezone="Asia/Kolkata")
    capped = Outreach(system.engine, system.settings, policy=Policy(**{**policy.__dict__, "weekly_cap": 1}),
                      desk_rules=system.desk_rules)
    customer, card = bill(system, ONE_CARD, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD)
    box = NoticeBox(engine=system.engine, outreach=capped)
    first = local(policy, "2026-12-05T10:00")
    run_once(system, first, capped)
    assert [p.action for _, p in deliver(system, box, first)] == ["template"]
    second = local(policy, "2026-12-09T10:00")
    run_once(system, second, capped)
    [(_, plan)] = deliver(system, box, second)
    assert plan.action == "skip" and plan.why.startswith("weekly cap")
    assert [(o, state) for o, state, _ in reminders_of(system, card.id)] == [("5", "sent"), ("1", "skipped")]


def test_a_template_not_approved_or_changed_is_not_sent(system):
    outreach = Outreach(system.engine, system.settings, desk_rules=system.desk_rules)
    policy = outreach.policy
    bill(system, ONE_CARD, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD)
    now = local(policy, "2026-12-05T10:00")
    run_once(system, now, outreach)
    box = NoticeBox(engine=system.engine, held_recheck_seconds=0, outreach=outreach)
    [(_, plan)] = deliver(system, box, now)
    assert plan.action == "hold" and "not approved (never submitted)" in plan.why
    book = TemplateBook(system.engine)
    book.record("payment_due_reminder", "en", "APPROVED", "utility", "9", None, "an-older-text")
    [(_, plan)] = deliver(system, box, now + dt.timedelta(seconds=1))
    assert plan.action == "hold" and "changed since it was approved" in plan.why
    approve_all(system)
    [(_, plan)] = deliver(system, box, now + dt.timedelta(seconds=2))
    assert plan.action == "template"


def test_a_number_whatsapp_refuses_is_paused_not_retried_blindly(system, outreach):
    policy = outreach.policy
    now, box, [(customer, card)] = reminded(system, outreach, ONE_CARD)
    [(_, plan)] = deliver(system, box, now)
    box.outcome(plan.key + ":0", "failed", "wamid.x", 131026, "Message undeliverable", at=now)
    with session_scope(system.engine) as s:
        send = s.execute(select(MessageSend)).scalar_one()
        assert (send.state, send.error_code) == ("failed", 131026)
        assert s.get(MessagingConsent, ONE_CARD).paused_until == now + dt.timedelta(hours=720)
        notice = s.execute(select(CustomerNotice).where(CustomerNotice.kind == "payment_due")).scalar_one()
        assert (notice.state, notice.error) == ("failed", "131026: Message undeliverable")
    later = local(policy, "2026-12-09T10:00")
    run_once(system, later, outreach)
    [(_, plan)] = deliver(system, box, later)
    assert plan.action == "skip" and plan.why.startswith("paused") and "131026" in plan.why


def test_statuses_only_move_forward_and_read_implies_delivered(system, outreach):
    now, box, _ = reminded(system, outreach, ONE_CARD)
    [(_, plan)] = deliver(system, box, now)
    key = plan.key + ":0"
    assert box.outcome(key, "read", "wamid.1", at=now + dt.timedelta(minutes=2))
    assert box.outcome(key, "delivered", "wamid.1", at=now + dt.timedelta(minutes=3))   # late: changes nothing
    assert box.outcome(key, "failed", "wamid.1", 131000, "x", at=now + dt.timedelta(minutes=4))
    assert not box.outcome("notice.999999:0", "sent", "wamid.2") and not box.outcome("agent.x:0", "sent", "w")
    with session_scope(system.engine) as s:
        send = s.execute(select(MessageSend)).scalar_one()
        assert send.state == "read" and send.delivered_at == send.read_at == now + dt.timedelta(minutes=2)


def test_two_instances_queue_and_take_each_reminder_once(system, outreach):
    policy = outreach.policy
    for phone in (ONE_CARD, TWO_CARDS):
        bill(system, phone, dt.date(2026, 12, 10))
    now = local(policy, "2026-12-05T10:00")
    errors, plans = [], []

    def instance():
        try:
            mine = Outreach(system.engine, system.settings, desk_rules=system.desk_rules)
            run_once(system, now, mine)
            box = NoticeBox(engine=system.engine, outreach=mine)
            plans.extend(deliver(system, box, now))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=instance) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    keys = [n.key for n, p in plans if n.key.startswith("reminder:")]
    assert len(keys) == len(set(keys)) >= 2
    with session_scope(system.engine) as s:
        sends = s.execute(select(MessageSend.notice_key)).scalars().all()
        assert len(sends) == len(set(sends))
        assert s.execute(select(CustomerNotice).where(CustomerNotice.kind == "payment_due",
                                                      CustomerNotice.state == "pending")).first() is None


# -- payments and the bank's news -----------------------------------------------------------------
def test_a_payment_link_is_used_once_even_when_two_pay_at_once(system):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    link = make_payment_link(system.settings.payment_base_url, system.settings.payment_link_secret, card.id,
                             10_000, "part", dt.datetime.utcnow(), 30, "race-nonce").url
    results = []

    def pay():
        try:
            results.append(system.pay_with_link(link).amount_paise)
        except InvalidPaymentLink as exc:
            results.append(exc.reason)

    threads = [threading.Thread(target=pay) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, results)) == ["-10000", "used", "used"]
    with pytest.raises(InvalidPaymentLink, match="signature"):
        system.pay_with_link(link.replace("s=", "s=x"))
    old = make_payment_link(system.settings.payment_base_url, system.settings.payment_link_secret, card.id,
                            10_000, "part", dt.datetime.utcnow() - dt.timedelta(hours=1), 30, "old").url
    with pytest.raises(InvalidPaymentLink, match="expired"):
        system.pay_with_link(old)
    too_much = make_payment_link(system.settings.payment_base_url, system.settings.payment_link_secret, card.id,
                                 10 ** 12, "total", dt.datetime.utcnow(), 30, "big").url
    with pytest.raises(NotAllowed, match="is due now"):
        system.pay_with_link(too_much)


def test_a_block_by_the_bank_is_told_and_a_customers_own_is_not(system, outreach):
    customer = system.find_customer(TWO_CARDS)
    first, second = system.cards_of(customer.id)[:2]
    system.block_card(customer.id, first.last4, "lost")                          # in the chat: told there
    system.block_card(customer.id, second.last4, "bank", by="bank:fraud-desk")
    with session_scope(system.engine) as s:
        kinds = [(n.kind, n.card_id) for n in s.execute(select(CustomerNotice).where(
            CustomerNotice.kind == "card_blocked")).scalars()]
    assert kinds == [("card_blocked", second.id)]
    [(_, plan)] = deliver(system, NoticeBox(engine=system.engine, outreach=outreach), dt.datetime.utcnow())
    assert plan.action == "template" and plan.message["template"]["name"] == "card_blocked"
    params = [p["text"] for p in plan.message["template"]["components"][0]["parameters"]]
    assert params[0] == second.last4 and params[2] == "blocked by the bank's fraud checks"


def test_statement_news_is_queued_once_per_statement(system, outreach):
    customer = system.find_customer(ONE_CARD)
    [statement] = system.statements_of(system.cards_of(customer.id)[0].id)[:1]
    day_after = outreach.policy.utc(dt.datetime.combine(statement.period_end + dt.timedelta(days=1), dt.time(10)))
    first = run_once(system, day_after, outreach)["statements"]
    assert first >= 1 and run_once(system, day_after, outreach)["statements"] == 0
    with session_scope(system.engine) as s:
        row = s.execute(select(CustomerNotice).where(CustomerNotice.key == f"statement:{statement.id}:whatsapp")).scalar_one()
        assert json.loads(row.facts)["period"] == statement.period


def test_request_news_outside_the_window_is_a_template_then_the_details_wait(system, outreach, make_desk):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    request = system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise + 5_000_000)
    make_desk().set_status(request.reference, "resolved", "Your new limit is active.", "agent:asha")
    box = NoticeBox(engine=system.engine, held_recheck_seconds=0, outreach=outreach)
    now = dt.datetime.utcnow()
    plans = deliver(system, box, now)
    [(notice, plan)] = [(n, p) for n, p in plans if n.reference == request.reference]
    assert plan.action == "template" and plan.then_hold
    assert [p["text"] for p in plan.message["template"]["components"][0]["parameters"]] == \
        ["Credit limit increase", request.reference, "it is resolved"]
    box.held(notice.id, "template sent")
    [(_, again)] = [(n, p) for n, p in deliver(system, box, now + dt.timedelta(seconds=1)) if n.reference == request.reference]
    assert again.action == "hold"                                     # never a second template
    [(_, details)] = [(n, p) for n, p in deliver(system, box, now + dt.timedelta(seconds=2), window_open=True)
                      if n.reference == request.reference]
    assert details.action == "text" and "Your new limit is active." in details.text


# -- the report ----------------------------------------------------------------------------------
def test_the_report_counts_per_day_and_category_and_compares_with_sms(system, outreach):
    policy = outreach.policy
    now, box, _ = reminded(system, outreach, ONE_CARD, TWO_CARDS)
    plans = deliver(system, box, now)
    keys = {n.address: p.key for n, p in plans}
    box.outcome(keys[ONE_CARD] + ":0", "read", "w1", at=now + dt.timedelta(minutes=1))
    box.outcome(keys[TWO_CARDS] + ":0", "delivered", "w2", at=now + dt.timedelta(minutes=1))
    one = system.cards_of(system.find_customer(ONE_CARD).id)[0]
    paid = system.record_payment(one.id, 50_000, via="upi")
    with session_scope(system.engine) as s:  # paid an hour after the reminder (the card system's clock is fixed)
        s.execute(update(Transaction).where(Transaction.reference == paid.reference)
                  .values(posted_at=now + dt.timedelta(hours=1)))
    figures = report(system.engine, policy, days=3, now=now + dt.timedelta(hours=1))
    [row] = [r for r in figures["rows"] if r["category"] == "utility"]
    assert row["day"] == "2026-12-05"
    assert (row["sent"], row["delivered"], row["read"], row["reminders"], row["paid_48h"]) == (2, 2, 1, 2, 1)
    assert row["whatsapp_cost"] == "0.23" and row["sms_cost"] == "0.7"
    assert "effective 2026-01-01" in figures["rates"]


def test_statement_news_needs_consent_even_inside_the_window(system, outreach):
    customer = system.find_customer(ONE_CARD)
    [statement] = system.statements_of(system.cards_of(customer.id)[0].id)[:1]
    day_after = outreach.policy.utc(dt.datetime.combine(statement.period_end + dt.timedelta(days=1), dt.time(10)))
    system.set_consent(ONE_CARD, False, "whatsapp:STOP")
    run_once(system, day_after, outreach)
    plans = [(n, p) for n, p in deliver(system, NoticeBox(engine=system.engine, outreach=outreach), day_after,
                                        window_open=True) if n.address == ONE_CARD]
    assert [p.action for _, p in plans] == ["skip"] and plans[0][1].why.startswith("opted out")


def test_inside_the_window_a_reminder_needs_no_approved_template(system):
    outreach = Outreach(system.engine, system.settings, desk_rules=system.desk_rules)   # nothing approved
    policy = outreach.policy
    bill(system, ONE_CARD, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD)
    now = local(policy, "2026-12-09T11:00")
    run_once(system, now, outreach)
    [(_, plan)] = deliver(system, NoticeBox(engine=system.engine, outreach=outreach), now, window_open=True)
    assert plan.action == "text" and "Payment reminder" in plan.text


def test_stop_also_stops_the_banks_news_inside_the_window_and_what_already_waits(system, outreach):
    """STOP: not even a payment's confirmation while they chat; and a reminder queued before the STOP
    (say, waiting out an outage) is withdrawn before it goes, as is one whose minimum was paid."""
    policy = outreach.policy
    customer, card = bill(system, ONE_CARD, dt.date(2026, 12, 10))
    other, other_card = bill(system, TWO_CARDS, dt.date(2026, 12, 10))
    quiet_everyone_else(system, ONE_CARD, TWO_CARDS)
    now = local(policy, "2026-12-05T10:00")
    run_once(system, now, outreach)
    box = NoticeBox(engine=system.engine, outreach=outreach)
    plans = {n.address: p for n, p in deliver(system, box, now, sent=False)}   # both in the outbox, not yet sent
    system.set_consent(ONE_CARD, False, "whatsapp:STOP")
    system.record_payment(other_card.id, 50_000, via="upi")
    assert not box.still_wanted(plans[ONE_CARD].key + ":0")
    assert not box.still_wanted(plans[TWO_CARDS].key + ":0")
    assert box.still_wanted("agent.123:0")
    with session_scope(system.engine) as s:
        assert sorted(m.error for m in s.execute(select(MessageSend)).scalars()) == [
            "withdrawn: paid before it went", "withdrawn: the customer said STOP before it went"]
        assert {n.state for n in s.execute(select(CustomerNotice).where(CustomerNotice.kind == "payment_due"))
                .scalars()} == {"skipped"}
    system.record_payment(card.id, 10_000, via="upi")
    news = [(n, p) for n, p in deliver(system, box, now, window_open=True) if n.address == ONE_CARD]
    assert [p.action for _, p in news] == ["skip"] and news[0][1].why.startswith("opted out")


def test_a_template_the_account_no_longer_has_holds_the_rest(system, outreach):
    now, box, _ = reminded(system, outreach, ONE_CARD, TWO_CARDS)
    [notice] = box.take("whatsapp", 1, now=now)
    plan = box.plan(notice.id, False, now=now)
    box.sent(notice.id)
    box.outcome(plan.key + ":0", "failed", None, 132001, "Template name does not exist in the translation", at=now)
    [(_, after)] = deliver(system, box, now)
    assert after.action == "hold" and "not approved (UNAVAILABLE)" in after.why
    assert TemplateBook(system.engine).states()[("payment_due_reminder", "en")]["reason"].startswith("132001")


def test_statuses_in_any_order_count_a_failed_message_as_sent_and_never_undo_each_other(system, outreach):
    policy = outreach.policy
    now, box, _ = reminded(system, outreach, ONE_CARD)
    [(_, plan)] = deliver(system, box, now, sent=False)
    key = plan.key + ":0"
    # the failed status webhook overtakes the channel's own "sent"; then several arrive at once
    assert box.outcome(key, "failed", "wamid.f", 131049, "ecosystem", at=now + dt.timedelta(seconds=2))
    threads = [threading.Thread(target=box.outcome, args=(key, state, "wamid.f"),
                                kwargs={"at": now + dt.timedelta(seconds=3)}) for state in ("sent", "delivered", "sent")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with session_scope(system.engine) as s:
        send = s.execute(select(MessageSend)).scalar_one()
        assert (send.state, send.error_code, send.sent_at is not None, send.delivered_at) == ("failed", 131049, True, None)
    figures = report(system.engine, policy, days=1, now=now + dt.timedelta(minutes=1))
    assert (figures["total"]["sent"], figures["total"]["failed"], figures["total"]["delivered"]) == (1, 1, 0)


def test_a_customer_gets_the_template_in_their_language_when_the_bank_has_it(system):
    shipped = yaml.safe_load((ROOT / "templates.yml").read_text())["templates"]
    hindi = dict(next(t for t in shipped if t["name"] == "payment_due_reminder"), language="hi", body=(
        "आपके CardCare क्रेडिट कार्ड {{1}} का भुगतान: कुल बकाया {{2}}, न्यूनतम {{3}}, अंतिम तिथि {{4}}। धन्यवाद।"))
    registry = Registry.from_entries(shipped + [hindi], {"payment_base_url": system.settings.payment_base_url})
    outreach = Outreach(system.engine, system.settings, registry=registry, desk_rules=system.desk_rules)
    approve_all(system, registry)
    with session_scope(system.engine) as s:
        s.execute(update(Customer).where(Customer.phone == ONE_CARD).values(language="hi"))
    now, box, _ = reminded(system, outreach, ONE_CARD, TWO_CARDS)
    languages = {n.address: p.message["template"]["language"]["code"] for n, p in deliver(system, box, now)}
    assert languages == {ONE_CARD: "hi", TWO_CARDS: "en"}
