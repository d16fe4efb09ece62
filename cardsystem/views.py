"""Plain, immutable views the card system hands out (never live ORM objects)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class CustomerView:
    id: int
    phone: str
    name: str
    first_name: str
    date_of_birth: dt.date
    email: str
    language: str
    whatsapp_opt_in: bool


@dataclass(frozen=True)
class CardView:
    id: int
    customer_id: int
    last4: str
    product: str
    network: str
    status: str
    credit_limit_paise: int
    available_limit_paise: int
    outstanding_paise: int
    minimum_due_paise: int
    due_date: Optional[dt.date]
    statement_day: int
    expiry_month: int
    expiry_year: int

    @property
    def is_active(self) -> bool:
        return self.status == "active"

    @property
    def label(self) -> str:
        return f"{self.product} \u2022\u2022 {self.last4}"


@dataclass(frozen=True)
class TransactionView:
    id: int
    reference: str
    card_id: int
    posted_on: dt.date
    merchant: str
    amount_paise: int
    category: str
    status: str

    @property
    def is_debit(self) -> bool:
        return self.amount_paise > 0


@dataclass(frozen=True)
class StatementView:
    id: int
    card_id: int
    period: str
    period_start: dt.date
    period_end: dt.date
    opening_balance_paise: int
    closing_balance_paise: int
    minimum_due_paise: int
    due_date: dt.date


@dataclass(frozen=True)
class ExpiringPoints:
    expires_on: dt.date
    points: int


@dataclass(frozen=True)
class RewardSummary:
    balance: int
    expiring: Tuple[ExpiringPoints, ...]  # soonest first, only lots with points left
    redeemed_total: int


@dataclass(frozen=True)
class RewardItemView:
    code: str
    name: str
    description: str
    points_cost: int


@dataclass(frozen=True)
class RedemptionView:
    reference: str
    item: RewardItemView
    points: int
    balance_after: int


@dataclass(frozen=True)
class ServiceRequestView:
    reference: str
    kind: str
    status: str
    reason: Optional[str]
    card_last4: Optional[str]
    transaction_reference: Optional[str]
    transaction_merchant: Optional[str]
    amount_paise: Optional[int]
    promised_by: dt.datetime
    created_at: dt.datetime
    attachments: int
    history: Tuple[Tuple[str, dt.datetime, Optional[str]], ...]
    created_now: bool = False  # True when this call created it, False when it already existed
    needs: Optional[str] = None       # what the desk asked the customer to send
    resolution: Optional[str] = None  # the outcome (or the reason of a rejection)
