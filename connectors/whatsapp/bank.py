"""What the WhatsApp channel needs of the bank's side, and nothing more: the agents' desk (live
handoff) and the notices the bank sends first. The channel is given objects with these calls
(cardsystem.handoff.HandoffDesk, cardsystem.requests.notices.NoticeBox, or a bank's own clients),
so it never reaches into the card system's insides.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Dict, List, Optional, Protocol


class Ticket(Protocol):
    reference: str
    sender: str
    status: str


class AgentDesk(Protocol):
    """Live handoff: which chats people are answering, and what the customer says meanwhile."""

    settings: Any  # .return_word: what a waiting customer types to go back to the bot

    def open_ticket_for(self, sender: str) -> Optional[Ticket]: ...
    def customer_said(self, reference: str, text: str, attachment: Optional[Dict[str, Any]] = None) -> bool: ...
    def return_to_bot(self, reference: str) -> Any: ...
    def place(self, reference: str) -> Any: ...
    def expire_waiting(self) -> List[Ticket]: ...


class Notice(Protocol):
    id: int
    address: str          # the customer's WhatsApp number
    text: str
    document: Optional[Dict[str, Any]]  # {"link", "filename", "caption"}
    attempts: int


class BankNotices(Protocol):
    """Messages the bank writes first (a request's status changed, it is late, here is the proof)."""

    def take(self, medium: str, limit: int = 50, now: Optional[dt.datetime] = None) -> List[Notice]: ...
    def sent(self, notice_id: int) -> None: ...
    def held(self, notice_id: int, why: str, until: Optional[dt.datetime] = None) -> None: ...
    def skipped(self, notice_id: int, why: str) -> None: ...
    def failed(self, notice_id: int, error: str, attempts: int) -> None: ...
    def plan(self, notice_id: int, window_open: bool) -> "Delivery": ...
    def template_status(self, value: Dict[str, Any]) -> bool: ...
    def still_wanted(self, key: str) -> bool: ...
    def outcome(self, key: str, state: str, wamid: Optional[str] = None, code: Optional[int] = None,
                error: Optional[str] = None) -> bool: ...


class Delivery(Protocol):
    """What to do with a notice now (cardsystem.reminders.outreach.Delivery)."""

    action: str                          # text | template | hold | skip
    text: str
    buttons: Any                         # ((title, payload), ...) under the text
    document: Optional[Dict[str, Any]]
    message: Optional[Dict[str, Any]]    # the template message
    key: str                             # the outbox key
    why: str
    until: Optional[dt.datetime]
    then_hold: bool
