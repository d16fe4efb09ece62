"""The card system on its own: formatting, parsing, seed data and every use case."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from cardsystem import files
from cardsystem.db import session_scope
from cardsystem.errors import NotAllowed, NotFound
from cardsystem.formatting import format_date, format_inr, mask_phone, parse_amount_paise, redact_card_numbers
from cardsystem.models import Attachment, Card, Customer, RewardLot, ServiceRequest, Statement, Transaction
from cardsystem.months import FutureMonth, parse_month
from cardsystem.paylinks import InvalidPaymentLink, make_payment_link, verify_payment_link
from cardsystem.seed import PERSONAS, seed
from cardsystem.service import REFERENCE_RE, normalise_phone
from cardsystem.statement_pdf import render_statement_pdf, statement_password
from tests.conftest import BLOCKED, DISPUTE, EXPIRING, NOW, ONE_CARD, STRANGER, TODAY, TWO_CARDS, make_system


@pytest.mark.parametrize("paise, text", [
    (0, "\u20b90.00"), (5, "\u20b90.05"), (99999, "\u20b9999.99"), (100000, "\u20b91,000.00"),
    (12345678, "\u20b91,23,456.78"), (1234567800, "\u20b91,23,45,678.00"), (-45000, "-\u20b9450.00"),
])
def test_indian_money_format(paise, text):
    assert format_inr(paise) == text


@pytest.mark.parametrize("typed, paise", [
    ("\u20b91,500", 150000), ("rs 2.5k", 250000), ("3 lakh", 30000000), ("799.50", 79950),
    ("Rs. 3,00,000", 30000000), ("INR 450", 45000), ("nothing", None), ("0", None),
])
def test_amounts_customers_type(typed, paise):
    assert parse_amount_paise(typed) == paise


@pytest.mark.parametrize("typed, period", [
    ("march", "2026-03"), ("Mar 2026", "2026-03"), ("last month", "2026-10"), ("pichle mahine", "2026-10"),
    ("december", "2025-12"), ("2026-09", "2026-09"), ("09/2026", "2026-09"), ("this month", "2026-11"),
    ("latest", "latest"), ("hello", None), ("", None), ("aug '26", "2026-08"),
])
def test_months_customers_name(typed, period):
    assert parse_month(typed, TODAY) == period


@pytest.mark.parametrize("typed", ["december 2026", "2027-01", "jan 2027"])
def test_future_month_is_refused(typed):
    with pytest.raises(FutureMonth):
        parse_month(typed, TODAY)


def test_dates_and_masks_are_unambiguous_and_safe():
    assert format_date(dt.date(2026, 12, 5)) == "05 Dec 2026"
    assert mask_phone("919800000001") == "91******0001"
    assert mask_phone("+91 98000 00001") == "91******0001"
    assert "4111111111111111" not in redact_card_numbers("my card 4111 1111 1111 1111 is lost")
    assert "1111" in redact_card_numbers("my card 4111 1111 1111 1111 is lost")


@pytest.mark.parametrize("sender, phone", [
    ("919800000001", "919800000001"), ("+91 98000-00001", "919800000001"), ("whatsapp:+919800000001", "919800000001"),
    ("abc", None), ("", None), (None, None), ("1234", None), ("9" * 40, None),
])
def test_sender_ids_become_phone_numbers(sender, phone):
    assert normalise_phone(sender) == phone


def test_seed_is_deterministic_and_has_the_personas(tmp_path, system):
    other = make_system(tmp_path / "again")
    seed(other, TODAY, progress=False)

    def snapshot(s):
        with session_scope(s.engine) as session:
            cards = session.execute(select(Card.last4, Card.outstanding_paise, Card.due_date).order_by(Card.id)).all()
            txns = session.execute(select(func.count(Transaction.id), func.sum(Transaction.amount_paise))).one()
            return cards, tuple(txns)

    assert snapshot(system) == snapshot(other)
    with session_scope(system.engine) as s:
        assert s.execute(select(func.count(Customer.id))).scalar_one() >= 50
        first, last = s.execute(select(func.min(Transaction.posted_on), func.max(Transaction.posted_on))).one()
        assert (last - first).days >= 175
        assert s.execute(select(func.count(Statement.id))).scalar_one() >= 50 * 5
    assert system.find_customer(STRANGER) is None
    assert len(system.cards_of(system.find_customer(ONE_CARD).id)) == 1
    assert len(system.cards_of(system.find_customer(TWO_CARDS).id)) == 2
    assert [c.status for c in system.cards_of(system.find_customer(BLOCKED).id)] == ["blocked"]
    summary = system.reward_summary(system.find_customer(EXPIRING).id)
    assert summary.expiring[0].expires_on == dt.date(2026, 11, 30) and summary.expiring[0].points == 3200
    disputes = system.service_requests(system.find_customer(DISPUTE).id, "dispute", open_only=True)
    assert len(disputes) == 1 and REFERENCE_RE.fullmatch(disputes[0].reference)
    assert {p.phone for p in PERSONAS} == {ONE_CARD, TWO_CARDS, BLOCKED, EXPIRING, DISPUTE}


def test_card_figures_are_consistent(system):
    with session_scope(system.engine) as s:
        for card in s.execute(select(Card)).scalars():
            assert card.available_limit_paise == max(0, card.credit_limit_paise - card.outstanding_paise)
            assert 0 <= card.minimum_due_paise <= max(card.outstanding_paise, card.minimum_due_paise)
            assert isinstance(card.outstanding_paise, int)
        for st in s.execute(select(Statement)).scalars():
            assert st.due_date > st.period_end and st.period_start <= st.period_end


def test_redeem_consumes_soonest_expiring_points_first(system):
    customer = system.find_customer(EXPIRING)
    before = system.reward_summary(customer.id)
    result = system.redeem(customer.id, "AMZN500")
    after = system.reward_summary(customer.id)
    assert result.points == 2000 and after.balance == before.balance - 2000 == result.balance_after
    assert after.expiring[0].points == 1200  # the lot expiring this month was used first
    assert REFERENCE_RE.fullmatch(result.reference)
    assert system.audit_entries(customer.id)[-1]["action"] == "redeem_rewards"


def test_redeem_refuses_unknown_items_and_too_few_points_and_writes_nothing(system):
    customer = system.find_customer(ONE_CARD)
    with pytest.raises(NotFound):
        system.redeem(customer.id, "NOPE")
    with session_scope(system.engine) as s:
        for lot in s.execute(select(RewardLot).where(RewardLot.customer_id == customer.id)).scalars():
            lot.remaining = 0
    with pytest.raises(NotAllowed) as refused:
        system.redeem(customer.id, "SWIGGY200")
    assert refused.value.code == "insufficient_points"
    assert not [a for a in system.audit_entries(customer.id) if a["action"] == "redeem_rewards"]


def test_dispute_is_filed_once_with_history_attachment_and_audit(system):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    txn = system.recent_transactions(card.id, 5, debits_only=True)[0]
    attachment = {"media_id": "wamid-media-1", "mime_type": "image/jpeg", "filename": None, "caption": "receipt",
                  "stored": "ab" * 32 + ".jpg", "sha256": "ab" * 32}
    first = system.file_dispute(customer.id, txn.reference, "charged_twice", attachment)
    again = system.file_dispute(customer.id, txn.reference, "charged_twice")
    assert first.created_now and not again.created_now and again.reference == first.reference
    assert first.attachments == 1 and first.history[0][0] == "open"
    # 7 working days from Monday 23 Nov 2026: not the 24th (Guru Nanak Jayanti), the 28th (fourth
    # Saturday) or the 29th (Sunday), by closing time
    assert first.promised_by == dt.datetime(2026, 12, 3, 17, 30)
    assert system.service_request(customer.id, first.reference.lower()).reference == first.reference
    audit = [a for a in system.audit_entries(customer.id) if a["action"] == "file_dispute"]
    assert len(audit) == 1 and audit[0]["details"]["transaction"] == txn.reference
    with session_scope(system.engine) as s:
        kept = s.execute(select(Attachment)).scalars().one()
        assert (kept.media_id, kept.stored_as, kept.sha256) == ("wamid-media-1", "ab" * 32 + ".jpg", "ab" * 32)


def test_an_older_database_gains_the_columns_added_since(tmp_path):
    from sqlalchemy import create_engine, inspect, text
    from cardsystem.db import create_schema, dispose_engine, get_engine
    from cardsystem.models import Base

    url = f"sqlite:///{tmp_path / 'old.db'}"
    with create_engine(url).begin() as connection:  # the attachments table as the first release made it
        connection.execute(text("CREATE TABLE service_request_attachments (id INTEGER PRIMARY KEY, "
                                "service_request_id INTEGER NOT NULL, media_id VARCHAR(128) NOT NULL, "
                                "mime_type VARCHAR(80), filename VARCHAR(200), caption VARCHAR(500))"))
        connection.execute(text("INSERT INTO service_request_attachments VALUES (1, 1, 'm-1', NULL, NULL, NULL)"))
    create_schema(get_engine(url), Base.metadata)
    columns = {c["name"] for c in inspect(get_engine(url)).get_columns("service_request_attachments")}
    assert {"stored_as", "sha256"} <= columns
    with get_engine(url).connect() as connection:
        assert connection.execute(text("SELECT media_id FROM service_request_attachments")).scalar() == "m-1"
    dispose_engine(url)


def test_dispute_refusals_leave_nothing_behind(system):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    credit = next(t for t in system.recent_transactions(card.id, 60) if t.amount_paise < 0)
    other = system.find_customer(TWO_CARDS)
    foreign = system.recent_transactions(system.cards_of(other.id)[0].id, 1, True)[0]
    with session_scope(system.engine) as s:
        before = s.execute(select(func.count(ServiceRequest.id))).scalar_one()
    with pytest.raises(NotAllowed):
        system.file_dispute(customer.id, credit.reference, "wrong_amount")
    with pytest.raises(NotFound):
        system.file_dispute(customer.id, foreign.reference, "wrong_amount")  # not their transaction
    with pytest.raises(NotAllowed):
        system.file_dispute(customer.id, foreign.reference, "because")
    with session_scope(system.engine) as s:
        assert s.execute(select(func.count(ServiceRequest.id))).scalar_one() == before


def test_block_card_blocks_once_and_never_unblocks(system):
    customer = system.find_customer(TWO_CARDS)
    card = system.cards_of(customer.id)[1]
    request = system.block_card(customer.id, card.last4, "stolen")
    assert request.kind == "block_card" and request.card_last4 == card.last4 and request.created_now
    assert system.card_of(customer.id, card.last4).status == "blocked"
    with pytest.raises(NotAllowed):
        system.block_card(customer.id, card.last4, "lost")
    with pytest.raises(NotFound):
        system.block_card(customer.id, "0000", "lost")
    assert not hasattr(system, "unblock_card")
    assert system.audit_entries(customer.id)[-1]["entity_id"] == f"**{card.last4}"


def test_limit_increase_rules(system):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    with pytest.raises(NotAllowed):
        system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise)
    with pytest.raises(NotAllowed):
        system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise * 4)
    request = system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise * 2)
    assert request.amount_paise == card.credit_limit_paise * 2 and request.kind == "limit_increase"
    assert system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise * 2).reference == request.reference


def test_callback_is_promised_within_working_hours(system):
    customer = system.find_customer(ONE_CARD)
    request = system.request_callback(customer.id)
    assert request.promised_by == dt.datetime(2026, 11, 23, 14, 30)
    late = make_system(system.settings.statement_dir.parent)
    late._now = lambda: dt.datetime(2026, 11, 21, 20, 0)  # Saturday evening
    assert late._callback_time() == dt.datetime(2026, 11, 23, 13, 0)  # Monday 9:00 + 4 h


def test_payment_links_are_signed_and_expire(system):
    link = make_payment_link("https://pay.example.test/pay", b"s3cret", 7, 150000, "total", NOW, 30, "n1")
    fields = verify_payment_link(link.url, b"s3cret", NOW)
    assert fields["a"] == 150000 and fields["c"] == 7
    with pytest.raises(InvalidPaymentLink):
        verify_payment_link(link.url, b"other", NOW)
    with pytest.raises(InvalidPaymentLink):
        verify_payment_link(link.url.replace("t=", "t=x"), b"s3cret", NOW)
    with pytest.raises(InvalidPaymentLink):
        verify_payment_link(link.url, b"s3cret", NOW + dt.timedelta(minutes=31))
    assert "4821" not in link.url


def test_statement_pdf_is_encrypted_and_password_follows_the_rule(system):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    statement = system.statements_of(card.id)[0]
    pdf = render_statement_pdf(customer, card, statement, system.statement_transactions(statement))
    assert pdf.startswith(b"%PDF") and b"/Encrypt" in pdf and b"/AESV2" in pdf
    assert customer.name.encode() not in pdf  # content is not readable without the password
    password = statement_password(customer)
    assert password[:4] == "ANAN" and password[4:] == customer.date_of_birth.strftime("%d%m")


def test_published_files_need_a_valid_unexpired_token(tmp_path):
    url, path = files.publish(tmp_path, b"%PDF-1.7 test", "Statement-2026-10-4821.pdf", ttl_seconds=60, now=1000.0)
    token = url.split("/")[-2]
    assert url.endswith("/Statement-2026-10-4821.pdf")
    assert files.resolve(tmp_path, token, now=1010.0) == path
    assert files.resolve(tmp_path, token, now=1061.0) is None
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert files.resolve(tmp_path, forged, now=1010.0) is None
    assert files.resolve(tmp_path, "../../etc/passwd", now=1010.0) is None


@pytest.mark.parametrize("now, promised", [
    (dt.datetime(2026, 11, 23, 10, 30), dt.datetime(2026, 11, 23, 14, 30)),   # Monday morning
    (dt.datetime(2026, 11, 23, 16, 10), dt.datetime(2026, 11, 24, 11, 30)),   # 1 h 50 today, rest tomorrow
    (dt.datetime(2026, 11, 21, 20, 0), dt.datetime(2026, 11, 23, 13, 0)),     # Saturday night -> Monday
    (dt.datetime(2026, 11, 22, 11, 0), dt.datetime(2026, 11, 23, 13, 0)),     # Sunday -> Monday
    (dt.datetime(2026, 11, 23, 6, 45), dt.datetime(2026, 11, 23, 13, 0)),     # before opening
])
def test_callback_promise_counts_working_hours_only(system, now, promised):
    system._now = lambda: now
    assert system._callback_time() == promised


def test_a_photo_sent_after_a_dispute_is_attached_to_it(system):
    customer = system.find_customer("919800000001")
    card = system.cards_of(customer.id)[0]
    txn = next(t for t in system.recent_transactions(card.id, 20, debits_only=True) if t.status != "reversed")
    dispute = system.file_dispute(customer.id, txn.reference, "charged_twice")
    photo = {"media_id": "media-77", "mime_type": "image/png", "stored": "ab" * 32, "sha256": "cd" * 32}
    assert system.attach_to_request(customer.id, dispute.reference.lower(), photo)
    assert system.service_request(customer.id, dispute.reference).attachments == 1
    other = system.find_customer("919800000002")
    assert not system.attach_to_request(other.id, dispute.reference, photo)  # not theirs: nothing written
    assert not system.attach_to_request(customer.id, "DSP000000ZZZZ", photo)
    assert system.service_request(customer.id, dispute.reference).attachments == 1
