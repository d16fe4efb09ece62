"""The service desk: the working-day clock, the lifecycle's rules, documents, the delay job and its
escalation ladder, notices to customers and the figures."""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select

from cardsystem.db import session_scope
from cardsystem.errors import NotAllowed, NotFound
from cardsystem.models import CustomerNotice, DeskAlert
from cardsystem.requests import notices
from cardsystem.requests.calendar import WorkCalendar
from cardsystem.requests.rules import DeskRules, check_move
from tests.conftest import NOW, ONE_CARD, TWO_CARDS

RULES = DeskRules.load()
CAL = RULES.calendar
PHOTO = {"media_id": "1234567890", "mime_type": "image/jpeg", "filename": None, "caption": "my bill",
         "stored": "cd" * 32 + ".jpg", "sha256": "cd" * 32}


class Clock:
    def __init__(self, moment: dt.datetime) -> None:
        self.moment = moment

    def __call__(self) -> dt.datetime:
        return self.moment


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def desk(make_desk, clock):
    return make_desk(clock)


def limit_request(system):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    return customer, system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise + 5_000_000)


# -- the working-day clock ---------------------------------------------------------------------------
@pytest.mark.parametrize("day, working", [
    (dt.date(2026, 11, 23), True),    # Monday
    (dt.date(2026, 11, 24), False),   # Guru Nanak Jayanti, on the holiday list
    (dt.date(2026, 11, 29), False),   # Sunday
    (dt.date(2026, 11, 14), False),   # second Saturday
    (dt.date(2026, 11, 28), False),   # fourth Saturday
    (dt.date(2026, 11, 7), True),     # first Saturday
    (dt.date(2026, 11, 21), True),    # third Saturday
    (dt.date(2026, 12, 25), False),   # Christmas
])
def test_working_days(day, working):
    assert CAL.is_working_day(day) is working


@pytest.mark.parametrize("start, days, due", [
    (dt.datetime(2026, 11, 23, 10, 30), 0, dt.datetime(2026, 11, 23, 17, 30)),   # today, by closing
    (dt.datetime(2026, 11, 23, 10, 30), 1, dt.datetime(2026, 11, 25, 17, 30)),   # skips the holiday
    (dt.datetime(2026, 11, 23, 18, 0), 1, dt.datetime(2026, 11, 26, 17, 30)),    # after closing: counts from the 25th
    (dt.datetime(2026, 11, 27, 11, 0), 1, dt.datetime(2026, 11, 30, 17, 30)),    # over a 4th Saturday and a Sunday
    (dt.datetime(2026, 11, 29, 9, 0), 2, dt.datetime(2026, 12, 2, 17, 30)),      # raised on a Sunday
    (dt.datetime(2026, 12, 23, 12, 0), 3, dt.datetime(2026, 12, 29, 17, 30)),    # 24th, then Christmas, the 4th Saturday, a Sunday
])
def test_promises_count_working_days(start, days, due):
    assert CAL.add_working_days(start, days) == due


def test_working_days_left_before_a_promise():
    assert CAL.working_days_between(dt.datetime(2026, 11, 23, 10), dt.datetime(2026, 11, 30, 17, 30)) == 4
    assert CAL.working_days_between(dt.datetime(2026, 12, 1, 10), dt.datetime(2026, 11, 30, 17, 30)) == 0


def test_calendar_config_is_checked():
    with pytest.raises(ValueError):
        WorkCalendar.from_config({"saturdays_off": [6]})
    with pytest.raises(ValueError):
        WorkCalendar.from_config({"opens": "18:00", "closes": "09:00"})
    with pytest.raises(ValueError):
        DeskRules.from_mapping({"escalation": [{"level": 2, "role": "supervisor"}]})
    with pytest.raises(ValueError):
        DeskRules.from_mapping({"kinds": {"x": {"documents_clock": "sometimes"}}})
    local = WorkCalendar.from_config({"weekly_off": ["friday"], "saturdays_off": [], "holidays": {"2026-11-23": "Bank day"},
                                      "opens": "08:00", "closes": "16:00"})
    assert not local.is_working_day(dt.date(2026, 11, 27)) and local.is_working_day(dt.date(2026, 11, 28))
    assert local.why_closed(dt.date(2026, 11, 23)) == "Bank day"
    assert local.add_working_days(dt.datetime(2026, 11, 23, 9), 0) == dt.datetime(2026, 11, 24, 16, 0)


def test_every_kind_a_customer_can_raise_has_a_turnaround():
    for kind in ("dispute", "block_card", "limit_increase", "callback", "address_change", "email_change",
                 "card_replacement", "card_closure"):
        rule = RULES.kind(kind)
        assert rule.label and rule.turnaround_days >= 0 and rule.documents_clock in ("pause", "restart")
    assert RULES.kind("dispute").days_for("charged_twice") == 7 and RULES.kind("dispute").days_for("wrong_amount") == 10
    assert [l.role for l in RULES.ladder] == ["executive", "supervisor", "grievance_officer", "ombudsman"]


# -- the lifecycle's rules --------------------------------------------------------------------------
@pytest.mark.parametrize("current, new, note, error", [
    ("open", "in_progress", "", None),
    ("open", "needs_documents", "", "note_needed"),
    ("open", "needs_documents", "address proof", None),
    ("in_progress", "resolved", "  ", "note_needed"),
    ("in_progress", "rejected", "", "note_needed"),
    ("in_progress", "open", "", "bad_move"),
    ("needs_documents", "in_progress", "", None),
    ("resolved", "in_progress", "", "closed"),
    ("rejected", "resolved", "done", "closed"),
    ("open", "open", "", "same_status"),
    ("open", "done", "", "bad_status"),
    ("open", "resolved", "x" * 501, "note_too_long"),
])
def test_moves_and_their_notes(current, new, note, error):
    if error is None:
        assert check_move(current, new, note) == note.strip()
    else:
        with pytest.raises(NotAllowed) as refused:
            check_move(current, new, note)
        assert refused.value.code == error


def test_a_status_change_is_recorded_audited_and_told_once(system, desk):
    customer, request = limit_request(system)
    desk.set_status(request.reference, "in_progress", "", "agent:asha")
    done = desk.set_status(request.reference.lower(), "resolved", "Limit raised to Rs 3,50,000", "agent:asha")
    assert done["status"] == "resolved" and done["resolution"] == "Limit raised to Rs 3,50,000" and done["closed"]
    assert [(h["status"], h["actor"]) for h in done["history"]] == \
        [("open", "customer"), ("in_progress", "agent:asha"), ("resolved", "agent:asha")]
    told = notices.NoticeBox(engine=system.engine).of(request.reference)
    assert [n["medium"] for n in told] == ["whatsapp", "whatsapp"]
    assert "working on it" in told[0]["text"] and request.reference in told[0]["text"]
    assert told[1]["text"].startswith("Your credit limit request has been decided. Reference " + request.reference)
    audit = [a for a in system.audit_entries(customer.id) if a["action"] == "request_status"]
    assert [(a["actor"], a["details"]["to"]) for a in audit] == [("agent:asha", "in_progress"), ("agent:asha", "resolved")]
    with pytest.raises(NotAllowed):
        desk.set_status(request.reference, "in_progress", "", "agent:asha")
    with pytest.raises(NotFound):
        desk.set_status("LMT000000XXXX", "resolved", "x", "agent:asha")


def test_a_refused_move_writes_nothing(system, desk):
    _, request = limit_request(system)
    with pytest.raises(NotAllowed):
        desk.set_status(request.reference, "resolved", "", "agent:asha")
    assert desk.request(request.reference)["status"] == "open"
    assert len(desk.request(request.reference)["history"]) == 1 and desk.request(request.reference)["notices"] == []


def test_e_mail_notices_only_where_the_customer_has_an_address_and_smtp_is_set(system, make_desk, clock):
    desk = make_desk(clock, email=True)
    _, request = limit_request(system)
    desk.set_status(request.reference, "in_progress", "", "api:core")
    told = desk.request(request.reference)["notices"]
    assert sorted(n["medium"] for n in told) == ["email", "whatsapp"]
    assert next(n for n in told if n["medium"] == "email")["subject"] == f"Update on your request {request.reference}"


# -- documents --------------------------------------------------------------------------------------
def test_needs_documents_pauses_the_clock_and_the_upload_resumes_it(system, desk, clock):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    txn = system.recent_transactions(card.id, 5, debits_only=True)[0]
    dispute = system.file_dispute(customer.id, txn.reference, "wrong_amount")   # 10 working days, clock: pause
    assert dispute.promised_by == dt.datetime(2026, 12, 7, 17, 30)              # Sat 5 Dec (1st) is a working day
    clock.moment = dt.datetime(2026, 11, 27, 11, 0)                               # 3 working days used
    asked = desk.set_status(dispute.reference, "needs_documents", "a copy of the charge slip", "agent:asha")
    assert asked["waiting_for_customer"] and asked["needs"] == "a copy of the charge slip"
    text = asked["notices"][-1]["text"]
    assert "a copy of the charge slip" in text and "paused" in text and "7 working days" in text
    assert desk.pending_from(customer.id) == [{"reference": dispute.reference, "kind": "dispute",
                                               "label": "Transaction dispute", "needs": "a copy of the charge slip"}]
    clock.moment = dt.datetime(2026, 12, 7, 10, 0)                                # a week later, the slip arrives
    got = desk.documents_received(customer.id, None, PHOTO)
    assert got["back_to_desk"] and got["reference"] == dispute.reference and got["status"] == "in_progress"
    assert got["promised_by"] == CAL.add_working_days(clock.moment, 7)        # the 7 days left run from now
    after = desk.request(dispute.reference)
    assert after["documents"][-1]["mime_type"] == "image/jpeg" and after["history"][-1]["event"] == "documents"
    assert desk.pending_from(customer.id) == []
    assert desk.document(dispute.reference, 1)["stored"] == PHOTO["stored"]
    with pytest.raises(NotFound):
        desk.document(dispute.reference, 2)


def test_restart_rule_gives_the_whole_turnaround_again(system, desk, clock):
    customer, request = limit_request(system)                                    # 3 working days, clock: restart
    desk.set_status(request.reference, "needs_documents", "last 3 salary slips", "agent:asha")
    assert "within 3 working days" in desk.request(request.reference)["notices"][-1]["text"]
    clock.moment = dt.datetime(2026, 12, 2, 12, 0)
    got = desk.documents_received(customer.id, request.reference, PHOTO)
    assert got["promised_by"] == dt.datetime(2026, 12, 5, 17, 30)                # Wed + 3 working days (Sat 5th is first)


def test_documents_without_a_waiting_request_join_the_latest_and_none_is_lost(system, desk):
    customer, request = limit_request(system)
    got = desk.documents_received(customer.id, None, PHOTO)
    assert not got["back_to_desk"] and got["reference"] == request.reference and got["status"] == "open"
    other = system.find_customer(TWO_CARDS)
    assert desk.documents_received(other.id, None, PHOTO) is None or \
        desk.documents_received(other.id, None, PHOTO)["reference"] != request.reference
    assert desk.documents_received(customer.id, None, {"media_id": ""}) is None


# -- the delay job and the ladder -----------------------------------------------------------------------
def test_the_delay_job_tells_the_delay_then_escalates_a_level_each_breach(system, desk, clock):
    customer, request = limit_request(system)
    assert request.promised_by == dt.datetime(2026, 11, 27, 17, 30)
    desk.set_delay_reason(request.reference, "Our credit team is waiting for the bureau report.", "agent:asha")
    clock.moment = dt.datetime(2026, 11, 27, 17, 0)
    assert desk.run_sla().late == []                                               # not late yet
    clock.moment = dt.datetime(2026, 11, 30, 9, 45)
    report = desk.run_sla()
    assert request.reference in report.late and report.escalated == []           # (the seed's demo requests too)
    assert desk.run_sla().late == []                                               # once per breach
    late = desk.request(request.reference)
    assert late["promised_by"] == "2026-12-03T17:30:00" and late["escalation_level"] == 1 and not late["overdue"]
    told = late["notices"][-1]["text"]
    assert "taking longer than we promised" in told and "bureau report" in told and "3 Dec 2026" in told
    with session_scope(system.engine) as s:
        alerts = s.execute(select(DeskAlert).order_by(DeskAlert.id)).scalars().all()
        mine = [(a.role, a.username) for a in alerts if a.reference == request.reference]
        assert mine == [("agent", None), ("supervisor", None)]

    levels = []
    for moment in (dt.datetime(2026, 12, 4, 10), dt.datetime(2026, 12, 12, 10), dt.datetime(2026, 12, 31, 10),
                   dt.datetime(2027, 3, 1, 10)):
        clock.moment = moment
        assert request.reference in desk.run_sla().escalated
        levels.append(desk.request(request.reference)["escalation_level"])
    assert levels == [2, 3, 4, 4]                                                 # the ladder's top is kept
    shown = desk.request(request.reference)
    events = [h["event"] for h in shown["history"]]
    assert events.count("delay") == 1 and events.count("escalation") == 4
    texts = [n["text"] for n in shown["notices"]]
    assert any("Service desk supervisor" in t for t in texts)
    assert any("RBI Integrated Ombudsman" in t and "cms.rbi.org.in" in t for t in texts)
    with session_scope(system.engine) as s:
        roles = [a.role for a in s.execute(select(DeskAlert).where(DeskAlert.reference == request.reference)
                                           .order_by(DeskAlert.id)).scalars()]
    assert roles[2:] == ["supervisor", "grievance_officer", "grievance_officer", "grievance_officer"]
    assert [a["action"] for a in system.audit_entries(customer.id)].count("request_escalated") == 4


def test_the_clock_stops_while_waiting_for_the_customer_and_when_closed(system, desk, clock):
    _, first = limit_request(system)
    desk.set_status(first.reference, "needs_documents", "salary slips", "agent:asha")
    clock.moment = dt.datetime(2027, 1, 15, 10)
    report = desk.run_sla()
    assert first.reference not in report.late + report.escalated
    assert first.reference not in [r["reference"] for r in desk.worklist(overdue=True)]


def test_the_delay_job_on_two_instances_acts_once_per_breach(system, make_desk, clock):
    customers = [system.find_customer(ONE_CARD), system.find_customer(TWO_CARDS)]
    references = []
    for customer in customers:
        for card in system.cards_of(customer.id):
            references.append(system.request_limit_increase(customer.id, card.last4,
                                                            card.credit_limit_paise + 1_000_000).reference)
    clock.moment = dt.datetime(2026, 12, 15, 10)
    desks = [make_desk(clock) for _ in range(2)]
    reports, start = [], threading.Barrier(2)

    def run(d):
        start.wait()
        reports.append(d.run_sla())

    threads = [threading.Thread(target=run, args=(d,)) for d in desks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    late = sum((r.late for r in reports), [])
    assert len(late) == len(set(late)) and set(references) <= set(late)
    with session_scope(system.engine) as s:
        told = s.execute(select(CustomerNotice.key)).scalars().all()
    assert len(told) == len(set(told)) == len(late)


# -- the worklist and the figures -------------------------------------------------------------------------
def test_worklist_sorted_by_due_time_with_filters(system, desk, clock):
    customer, request = limit_request(system)
    card = system.cards_of(customer.id)[0]
    txn = system.recent_transactions(card.id, 5, debits_only=True)[0]
    dispute = system.file_dispute(customer.id, txn.reference, "not_delivered")
    rows = desk.worklist()
    mine = [r["reference"] for r in rows if r["reference"] in (request.reference, dispute.reference)]
    assert mine == [request.reference, dispute.reference]                       # 3 days before 14
    assert all(rows[i]["promised_by"] <= rows[i + 1]["promised_by"] for i in range(len(rows) - 1))
    assert [r["reference"] for r in desk.worklist(kind="limit_increase")] == [request.reference]
    assert all(r["customer_phone"].count("*") >= 4 for r in rows)               # masked
    desk.assign(request.reference, "asha", "agent:meena")
    assert [r["reference"] for r in desk.worklist(assigned_to="asha")] == [request.reference]
    assert desk.worklist(assigned_to="nobody") == []
    with pytest.raises(NotAllowed):
        desk.assign(request.reference, "Robert'); DROP TABLE", "agent:meena")
    desk.assign(request.reference, None, "agent:meena")
    assert desk.worklist(assigned_to="asha") == []
    with pytest.raises(NotAllowed):
        desk.worklist(status="later")
    clock.moment = dt.datetime(2026, 11, 30, 9)
    assert request.reference in [r["reference"] for r in desk.worklist(overdue=True)]


def test_figures_per_kind(system, desk, clock):
    customer, request = limit_request(system)
    clock.moment = dt.datetime(2026, 11, 25, 12)
    desk.set_status(request.reference, "resolved", "Raised", "agent:asha")
    figures = {f["kind"]: f for f in desk.figures()["kinds"]}
    limit = figures["limit_increase"]
    assert limit["opened"] >= 1 and limit["resolved_in_time"] >= 1 and limit["median_hours_to_resolve"] == 49.5


# -- the signed proof and the feedback link ----------------------------------------------------------------
def test_resolving_signs_a_proof_and_sends_it_with_a_feedback_link(system, desk, signing_pair, tmp_path):
    from cardsystem.requests.proof import verify_proof

    _, request = limit_request(system)
    desk.set_status(request.reference, "resolved", "Limit raised to Rs 3,50,000 from 1 December", "agent:asha")
    pdf = desk.proof(request.reference)
    checked = verify_proof(pdf, signing_pair[1].read_bytes())
    assert checked["intact"] and checked["valid"] and checked["trusted"] and checked["coverage"] == "ENTIRE_FILE"
    told = desk.request(request.reference)["notices"][-1]
    assert told["document"]["proof"] == f"{request.reference}.pdf" and "/webhooks/feedback/" in told["text"]
    box = notices.NoticeBox(engine=system.engine, proof_dir=tmp_path / "proofs", files_dir=tmp_path / "files")
    taken = [n for n in box.take("whatsapp") if n.reference == request.reference]
    assert taken[0].document["link"].split("/")[-1] == f"CardCare-{request.reference}-proof.pdf"
    from cardsystem import files
    token = taken[0].document["link"].split("/")[-2]
    assert files.resolve(tmp_path / "files", token).read_bytes() == pdf
    with pytest.raises(NotFound):
        desk.proof(limit_request(system)[1].reference)


def feedback_token(desk, reference):
    shown = desk.request(reference)["notices"][-1]["text"]
    assert "/webhooks/feedback/<customer's link>" in shown          # the desk never sees the customer's link
    text = notices.NoticeBox(engine=desk.engine).of(reference)[-1]["text"]
    return text.rsplit("/webhooks/feedback/", 1)[1].split()[0]


def test_feedback_link_is_signed_expires_and_is_used_once(system, desk, clock):
    from cardsystem.requests import feedback

    _, request = limit_request(system)
    desk.set_status(request.reference, "rejected", "Income below the policy", "agent:asha")
    token = feedback_token(desk, request.reference)
    assert desk.feedback_page(token)["closed"]
    reference, expires, nonce, signature = token.split(".")
    for forged in (f"{reference}.{int(expires) + 86400}.{nonce}.{signature}",
                   f"LMT000000ABCD.{expires}.{nonce}.{signature}", token[:-1] + ("0" if token[-1] != "0" else "1"),
                   "", "../../etc/passwd", token + "x" * 200):
        with pytest.raises(feedback.BadLink) as refused:
            desk.give_feedback(forged, 5, "", False)
        assert refused.value.code == "invalid"
    with pytest.raises(feedback.BadLink) as late:
        feedback.read_token(token, now=int(expires) + 1)
    assert late.value.code == "expired"
    with pytest.raises(NotAllowed):
        desk.give_feedback(token, 9, "", False)
    done = desk.give_feedback(token, 2, "Slow, and card 4111 1111 1111 1111 was in the letter", False)
    assert done["reference"] == request.reference and not done["escalated"]
    shown = desk.request(request.reference)
    assert shown["status"] == "rejected" and shown["history"][-1]["event"] == "feedback"
    assert "4111 1111 1111 1111" not in shown["history"][-1]["note"] and "rated 2/5" in shown["history"][-1]["note"]
    for again in (lambda: desk.give_feedback(token, 5, "", False), lambda: desk.feedback_page(token)):
        with pytest.raises(feedback.BadLink) as used:
            again()
        assert used.value.code == "used"


def test_escalating_from_the_feedback_page_reopens_one_level_up(system, desk, clock):
    _, request = limit_request(system)
    desk.set_status(request.reference, "resolved", "Limit unchanged after review", "agent:asha")
    clock.moment = dt.datetime(2026, 11, 25, 11, 0)
    desk.give_feedback(feedback_token(desk, request.reference), 1, "Nobody reviewed my salary slips", True)
    shown = desk.request(request.reference)
    assert shown["status"] == "in_progress" and shown["escalation_level"] == 2 and not shown["closed"]
    assert shown["promised_by"] == CAL.add_working_days(clock.moment, 5).isoformat()
    assert "Service desk supervisor" in shown["notices"][-1]["text"]
    with session_scope(system.engine) as s:
        alert = s.execute(select(DeskAlert).where(DeskAlert.reference == request.reference)).scalars().one()
    assert alert.role == "supervisor" and "Nobody reviewed my salary slips" in alert.text
    assert desk.set_status(request.reference, "resolved", "Limit raised after review", "agent:meena")["closed"]


def test_the_reference_is_e_mailed_when_raised_where_smtp_is_set(system):
    import dataclasses

    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    quiet = system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise + 1_000_000)
    assert notices.NoticeBox(engine=system.engine).of(quiet.reference) == []       # no SMTP: no e-mail
    system.settings = dataclasses.replace(system.settings, smtp_url="smtp://127.0.0.1:2525")
    raised = system.raise_request(customer.id, "card_replacement", card.last4)
    [mail] = notices.NoticeBox(engine=system.engine).of(raised.reference)
    assert mail["medium"] == "email" and mail["subject"] == f"Your Card replacement request {raised.reference}"
    assert raised.reference in mail["text"] and "We'll complete it by" in mail["text"]


def test_resolving_carries_the_change_out_in_the_card_system(system, desk):
    customer = system.find_customer(ONE_CARD)
    address = system.raise_request(customer.id, "address_change", details={"new_address": "Flat 12, Mumbai 400069"},
                                   attachment=PHOTO)
    email = system.raise_request(customer.id, "email_change", details={"new_email": "asha.new@example.com"},
                                 attachment=PHOTO)
    assert desk.request(address.reference)["asked"] == {"new_address": "Flat 12, Mumbai 400069"}
    desk.set_status(address.reference, "resolved", "Address updated", "agent:asha")
    desk.set_status(email.reference, "resolved", "E-mail updated", "agent:asha")
    with session_scope(system.engine) as s:
        from cardsystem.models import Customer
        row = s.get(Customer, customer.id)
        assert row.address == "Flat 12, Mumbai 400069" and row.email == "asha.new@example.com"
    card = next(c for c in system.cards_of(customer.id))
    closure = system.raise_request(customer.id, "card_closure", card.last4)
    if card.outstanding_paise:
        with pytest.raises(NotAllowed) as owed:
            desk.set_status(closure.reference, "resolved", "Closed", "agent:asha")
        assert owed.value.code == "still_owed" and desk.request(closure.reference)["status"] == "open"


def test_a_silent_customer_gets_the_latest_news_once(system, desk, clock):
    _, request = limit_request(system)
    desk.set_status(request.reference, "in_progress", "", "agent:asha")
    clock.moment = dt.datetime(2026, 12, 15, 10)
    desk.run_sla()
    clock.moment = dt.datetime(2027, 1, 15, 10)
    desk.run_sla()
    states = [n["state"] for n in notices.NoticeBox(engine=system.engine).of(request.reference)]
    assert states == ["superseded", "superseded", "pending"]                # only the escalation goes out
    assert len(desk.late_requests(dt.datetime(2027, 6, 1))) >= 1             # the dry run lists, changes nothing
    assert [n["state"] for n in notices.NoticeBox(engine=system.engine).of(request.reference)] == states
