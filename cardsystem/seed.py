"""Deterministic demo data: the documented personas plus generated customers.

    python -m cardsystem.seed            # create var/cardcare.db (or CARDCARE_DB_URL) afresh
    python -m cardsystem.seed --if-empty # only when no customer exists yet

The same --seed and --today always give the same data. Six months of activity end today.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

from sqlalchemy import func, select

from cardsystem.config import Settings
from cardsystem.db import session_scope
from cardsystem.models import (
    MessagingConsent,
    AuditEntry, Card, Customer, RewardItem, RewardLot, ServiceRequest, Statement, StatusChange, Transaction,
)
from cardsystem.service import CardSystem

HISTORY_DAYS = 186
GENERATED_CUSTOMERS = 54
FIRST_GENERATED_PHONE = 919810000000


@dataclass(frozen=True)
class Persona:
    phone: str
    name: str
    story: str
    cards: Tuple[Tuple[str, str, str, int], ...]  # (last4, product, network, limit in rupees)


PERSONAS: Tuple[Persona, ...] = (
    Persona("919800000001", "Ananya Sharma", "one card", (("4821", "Platinum Rewards", "Visa", 200000),)),
    Persona("919800000002", "Rohan Mehta", "two cards",
            (("1117", "Millennia", "Mastercard", 300000), ("6392", "Travel Signature", "Visa", 500000))),
    Persona("919800000003", "Priya Nair", "a blocked card", (("7305", "Everyday Cashback", "RuPay", 100000),)),
    Persona("919800000004", "Vikram Singh", "points expiring this month",
            (("2468", "Regalia Gold", "Mastercard", 400000),)),
    Persona("919800000005", "Fatima Sheikh", "an open dispute", (("9054", "Platinum Rewards", "Visa", 150000),)),
)
NOT_A_CUSTOMER = "919800000099"

FIRST_NAMES = ("Aarav", "Vivaan", "Aditya", "Ishaan", "Kabir", "Arjun", "Sai", "Reyansh", "Diya", "Saanvi",
               "Aadhya", "Kiara", "Meera", "Pooja", "Neha", "Karan", "Rahul", "Sneha", "Deepak", "Lakshmi",
               "Harpreet", "Imran", "Joseph", "Gayatri", "Nikhil", "Tanvi", "Suresh", "Anjali")
LAST_NAMES = ("Patel", "Reddy", "Iyer", "Gupta", "Das", "Khan", "Menon", "Chopra", "Bose", "Joshi", "Kulkarni",
              "Banerjee", "Fernandes", "Rao", "Pillai", "Agarwal", "Verma", "Malhotra", "Naidu", "Gill")
PRODUCTS = (("Platinum Rewards", "Visa"), ("Millennia", "Mastercard"), ("Everyday Cashback", "RuPay"),
            ("Regalia Gold", "Mastercard"), ("Travel Signature", "Visa"))
MERCHANTS = (
    ("Swiggy", "food", 150, 1200), ("Zomato", "food", 150, 1500), ("Amazon India", "shopping", 300, 12000),
    ("Flipkart", "shopping", 300, 15000), ("BigBasket", "groceries", 500, 4000), ("Uber India", "travel", 90, 900),
    ("Ola Cabs", "travel", 80, 800), ("IRCTC", "travel", 400, 4500), ("MakeMyTrip", "travel", 2500, 28000),
    ("Myntra", "shopping", 600, 6000), ("HP Petrol Pump", "fuel", 500, 3500), ("BookMyShow", "entertainment", 250, 1800),
    ("Apollo Pharmacy", "health", 120, 2500), ("Croma", "electronics", 1500, 45000), ("Jio Recharge", "utilities", 239, 999),
    ("Tata Power", "utilities", 800, 4200), ("Netflix", "entertainment", 199, 649), ("DMart", "groceries", 400, 5000),
)
CATALOGUE = (
    ("STMT250", "Statement credit \u20b9250", "\u20b9250 off your next card bill", 1000),
    ("SWIGGY200", "Swiggy voucher \u20b9200", "E-voucher sent by SMS and e-mail", 800),
    ("AMZN500", "Amazon voucher \u20b9500", "Amazon Pay gift card by e-mail", 2000),
    ("MILES500", "500 air miles", "Transferred to your frequent-flyer account", 1500),
    ("MOVIE2", "2 movie tickets", "BookMyShow code, up to \u20b9300 each", 1800),
)


def _month_end(day: dt.date) -> dt.date:
    nxt = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return nxt - dt.timedelta(days=1)


def _statement_dates(statement_day: int, start: dt.date, today: dt.date) -> List[dt.date]:
    dates, cursor = [], start.replace(day=1)
    while cursor <= today:
        candidate = cursor.replace(day=min(statement_day, _month_end(cursor).day))
        if start < candidate < today:
            dates.append(candidate)
        cursor = _month_end(cursor) + dt.timedelta(days=1)
    return dates


class Seeder:
    def __init__(self, system: CardSystem, today: dt.date, seed: int, customers: int = GENERATED_CUSTOMERS) -> None:
        self.system = system
        self.customers = customers
        self.today = today
        self.rng = random.Random(seed)
        self.txn_counter = 0

    def _txn_ref(self) -> str:
        self.txn_counter += 1
        return f"T{self.today:%y%m}{self.txn_counter:05d}"

    def run(self, progress: bool = True) -> dict:
        counts = {"customers": 0, "cards": 0, "transactions": 0, "statements": 0}
        with session_scope(self.system.engine) as s:
            for code, name, description, cost in CATALOGUE:
                s.add(RewardItem(code=code, name=name, description=description, points_cost=cost))
            people = [(p.phone, p.name, p.cards, p.story) for p in PERSONAS]
            for index in range(self.customers):
                name = f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}"
                n_cards = 1 if self.rng.random() < 0.75 else 2
                cards = []
                for _ in range(n_cards):
                    product, network = self.rng.choice(PRODUCTS)
                    cards.append((f"{self.rng.randint(1000, 9999)}", product, network,
                                  self.rng.choice((50000, 75000, 100000, 150000, 200000, 300000))))
                if n_cards == 2 and cards[0][0] == cards[1][0]:
                    cards = cards[:1]
                people.append((str(FIRST_GENERATED_PHONE + index), name, tuple(cards), "generated"))
            for number, (phone, name, cards, story) in enumerate(people, start=1):
                customer = self._customer(s, phone, name)
                counts["customers"] += 1
                for last4, product, network, limit in cards:
                    card, n_txn, n_stmt = self._card(s, customer, last4, product, network, limit * 100)
                    counts["cards"] += 1
                    counts["transactions"] += n_txn
                    counts["statements"] += n_stmt
                self._rewards(s, customer, story)
                s.flush()
                self._persona_extras(s, customer, story)
                if progress and (number % 10 == 0 or number == len(people)):
                    print(f"seeded {number}/{len(people)} customers", file=sys.stderr, flush=True)
            s.add(AuditEntry(actor="seed", action="seed", entity="database", entity_id="all",
                             details=json.dumps({"today": self.today.isoformat(), **counts})))
        return counts

    def _customer(self, s, phone: str, name: str) -> Customer:
        dob = dt.date(self.rng.randint(1965, 2002), self.rng.randint(1, 12), self.rng.randint(1, 28))
        email = f"{name.lower().replace(' ', '.')}{phone[-3:]}@example.in"
        customer = Customer(phone=phone, name=name, date_of_birth=dob, email=email, language="en",
                            whatsapp_opt_in=self.rng.random() > 0.05)
        s.add(customer)
        s.flush()
        if customer.whatsapp_opt_in:  # agreed on the card application to reminders and updates on WhatsApp
            s.add(MessagingConsent(phone=phone, opted_in=True, source="signup:card_application",
                                   changed_at=customer.created_at))
        return customer

    def _card(self, s, customer: Customer, last4: str, product: str, network: str, limit: int):
        statement_day = self.rng.choice((3, 8, 12, 15, 18, 22, 25))
        start = self.today - dt.timedelta(days=HISTORY_DAYS)
        card = Card(customer_id=customer.id, last4=last4, product=product, network=network, status="active",
                    credit_limit_paise=limit, available_limit_paise=limit, statement_day=statement_day,
                    expiry_month=self.rng.randint(1, 12), expiry_year=self.today.year + self.rng.randint(1, 5))
        s.add(card)
        s.flush()
        txns: List[Transaction] = []
        day = start
        spend_level = self.rng.uniform(0.3, 1.0)
        while day <= self.today:
            for _ in range(self.rng.choice((0, 0, 1, 1, 2)) if self.rng.random() < spend_level else 0):
                merchant, category, low, high = self.rng.choice(MERCHANTS)
                amount = self.rng.randint(low, high) * 100 + self.rng.choice((0, 0, 50, 99))
                status = "pending" if (self.today - day).days < 2 else "posted"
                txns.append(Transaction(reference=self._txn_ref(), card_id=card.id, posted_on=day,
                                        merchant=merchant, amount_paise=amount, category=category, status=status))
                if self.rng.random() < 0.02 and day + dt.timedelta(days=5) <= self.today:
                    txns.append(Transaction(reference=self._txn_ref(), card_id=card.id,
                                            posted_on=day + dt.timedelta(days=5), merchant=f"{merchant} refund",
                                            amount_paise=-amount, category="refund", status="posted"))
            day += dt.timedelta(days=1)
        opening = self.rng.randint(0, limit // 400) * 100
        period_start = start
        statements = []
        for end in _statement_dates(statement_day, start, self.today):
            period = [t for t in txns if period_start <= t.posted_on <= end]
            closing = max(0, opening + sum(t.amount_paise for t in period))
            minimum = closing if closing <= 20000 else max(20000, closing * 5 // 100)
            due = end + dt.timedelta(days=20)
            statements.append(Statement(card_id=card.id, period=f"{end:%Y-%m}", period_start=period_start,
                                        period_end=end, opening_balance_paise=opening, closing_balance_paise=closing,
                                        minimum_due_paise=minimum, due_date=due))
            pay_day = end + dt.timedelta(days=self.rng.randint(6, 18))
            if closing > 0 and pay_day <= self.today:
                share = self.rng.choice((1.0, 1.0, 1.0, 0.5, None))
                paid = closing if share == 1.0 else (minimum if share is None else closing // 200 * 100)
                txns.append(Transaction(reference=self._txn_ref(), card_id=card.id, posted_on=pay_day,
                                        merchant="Payment received - thank you", amount_paise=-paid,
                                        category="payment", status="posted"))
            opening = closing
            period_start = end + dt.timedelta(days=1)
        s.add_all(txns)
        s.add_all(statements)
        last = statements[-1] if statements else None
        unbilled = sum(t.amount_paise for t in txns if last is None or t.posted_on > last.period_end)
        outstanding = max(0, (last.closing_balance_paise if last else opening) + unbilled)
        paid_since = -sum(t.amount_paise for t in txns if last and t.posted_on > last.period_end and t.amount_paise < 0)
        card.outstanding_paise = outstanding
        card.minimum_due_paise = max(0, (last.minimum_due_paise if last else 0) - paid_since)
        card.due_date = last.due_date if last else None
        card.available_limit_paise = max(0, limit - outstanding)
        return card, len(txns), len(statements)

    def _rewards(self, s, customer: Customer, story: str) -> None:
        end_of_month = _month_end(self.today)
        old_expiry = end_of_month if story == "points expiring this month" else \
            _month_end(self.today + dt.timedelta(days=self.rng.randint(40, 330)))
        opening_points = self.rng.randint(800, 4000) if story != "points expiring this month" else 3200
        s.add(RewardLot(customer_id=customer.id, earned_on=old_expiry.replace(year=old_expiry.year - 2),
                        expires_on=old_expiry, points=opening_points, remaining=opening_points,
                        description="Points brought forward"))
        for months_ago in range(6, 0, -1):
            earned = (self.today.replace(day=1) - dt.timedelta(days=30 * months_ago)).replace(day=1)
            points = self.rng.randint(60, 900)
            s.add(RewardLot(customer_id=customer.id, earned_on=earned,
                            expires_on=earned.replace(year=earned.year + 2), points=points, remaining=points,
                            description=f"Points earned in {earned:%B %Y}"))

    def _persona_extras(self, s, customer: Customer, story: str) -> None:
        if story == "a blocked card":
            card = s.execute(select(Card).where(Card.customer_id == customer.id)).scalars().first()
            card.status = "blocked"
            card.block_reason = "lost"
            card.blocked_at = dt.datetime.combine(self.today - dt.timedelta(days=2), dt.time(10, 15))
            self._request(s, customer, card, "block_card", "BLK", "lost", None, 5, "in_progress")
        elif story == "an open dispute":
            card = s.execute(select(Card).where(Card.customer_id == customer.id)).scalars().first()
            txn = s.execute(
                select(Transaction).where(Transaction.card_id == card.id, Transaction.amount_paise > 0)
                .order_by(Transaction.posted_on.desc()).offset(3)
            ).scalars().first()
            self._request(s, customer, card, "dispute", "DSP", "charged_twice", txn, 4, "in_progress")

    def _request(self, s, customer, card, kind, prefix, reason, txn, days_left, status) -> None:
        created = dt.datetime.combine(self.today - dt.timedelta(days=3), dt.time(11, 30))
        # promised on a working day of the bank's calendar, like every real promise
        promised = self.system.desk_rules.calendar.add_working_days(dt.datetime.combine(self.today, dt.time(9, 30)),
                                                                     days_left)
        request = ServiceRequest(
            reference=f"{prefix}{created:%y%m%d}DEMO",
            customer_id=customer.id, card_id=card.id, kind=kind, status=status, reason=reason,
            transaction_id=txn.id if txn is not None else None, amount_paise=txn.amount_paise if txn is not None else None,
            details="{}", promised_by=promised, first_promised_by=promised,
            created_at=created, updated_at=created + dt.timedelta(days=1),
        )
        s.add(request)
        s.flush()
        s.add(StatusChange(service_request_id=request.id, status="open", note="Raised via WhatsApp assistant", at=created,
                           actor="customer", event="status"))
        s.add(StatusChange(service_request_id=request.id, status=status, note="Assigned to the card operations team",
                           at=created + dt.timedelta(days=1)))


def seed(system: CardSystem, today: Optional[dt.date] = None, seed_value: int = 2026, progress: bool = True,
         customers: int = GENERATED_CUSTOMERS) -> dict:
    """Drop and recreate every table, then fill them. Returns counts of what was created."""
    system.drop_schema()
    system.create_schema()
    return Seeder(system, today or system.today(), seed_value, customers).run(progress=progress)


def is_seeded(system: CardSystem) -> bool:
    system.create_schema()
    with session_scope(system.engine) as s:
        return (s.execute(select(func.count(Customer.id))).scalar_one() or 0) > 0


def bill_due(system: CardSystem, phone: str, days: str) -> int:
    """Demo data only: the customer's active cards get a new bill due in `days` days, with the statement
    behind it (made yesterday), so "already paid" and the statement agree with the reminder."""
    customer = system.find_customer(phone)
    if customer is None or not days.isascii() or not days.isdigit() or not 0 <= int(days) <= 60:
        print("give a customer's number and 0 to 60 days, e.g. --bill-due 919800000003 5", file=sys.stderr)
        return 2
    today = system.today()
    due, made = today + dt.timedelta(days=int(days)), today - dt.timedelta(days=1)
    with session_scope(system.engine) as s:
        for card in s.execute(select(Card).where(Card.customer_id == customer.id, Card.status != "closed")).scalars():
            card.due_date = due
            card.outstanding_paise = max(card.outstanding_paise, 900000)
            card.minimum_due_paise = max(20000, card.outstanding_paise * 5 // 100)
            latest = s.execute(select(Statement).where(Statement.card_id == card.id)
                               .order_by(Statement.period_end.desc())).scalars().first()
            statement = s.execute(select(Statement).where(Statement.card_id == card.id,
                                                          Statement.period == f"{made:%Y-%m}")).scalar_one_or_none()
            if statement is None:
                start = latest.period_end + dt.timedelta(days=1) if latest and latest.period_end < made else made
                statement = Statement(card_id=card.id, period=f"{made:%Y-%m}", period_start=start, period_end=made,
                                      opening_balance_paise=latest.closing_balance_paise if latest else 0,
                                      closing_balance_paise=0, minimum_due_paise=0, due_date=due)
                s.add(statement)
            statement.period_end = max(statement.period_end, min(made, today))
            statement.closing_balance_paise = card.outstanding_paise
            statement.minimum_due_paise = card.minimum_due_paise
            statement.due_date = due
    print(f"{customer.name}'s cards now have a bill due on {due:%d %b %Y} (statement made "
          f"{made:%d %b %Y}); this replaces what they owed before", file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--if-empty", action="store_true", help="do nothing when the database has customers")
    parser.add_argument("--today", type=dt.date.fromisoformat, default=None, help="end of the history (YYYY-MM-DD)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--customers", type=int, default=GENERATED_CUSTOMERS,
                        help=f"generated customers besides the personas, numbered from {FIRST_GENERATED_PHONE} "
                             f"(default {GENERATED_CUSTOMERS}; the load benchmark asks for more)")
    parser.add_argument("--bill-due", nargs=2, metavar=("PHONE", "DAYS"),
                        help="demo: give this customer's cards a bill due in DAYS days (to try the reminders)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    system = CardSystem(settings)
    if args.bill_due:
        return bill_due(system, *args.bill_due)
    if args.if_empty and is_seeded(system):
        print("card system already seeded; nothing to do", file=sys.stderr)
        return 0
    counts = seed(system, args.today, args.seed, customers=max(0, args.customers))
    print("seeded " + ", ".join(f"{v} {k}" for k, v in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
