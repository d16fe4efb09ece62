"""Feedback links: a signed, expiring, single-use link to a small page where the customer rates how
a request was handled, comments, or escalates it (which re-opens it one rung up the ladder).

A link is <reference>.<expires>.<nonce>.<signature>: HMAC-SHA256 under a key derived from
CARDCARE_FILES_SECRET for this purpose only, so a statement link's signature opens nothing here.
It is used once (the nonce is recorded with the answer) and lasts FEEDBACK_DAYS.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Optional

from cardsystem.errors import CardSystemError
from cardsystem.files import files_base_url, files_secret

FEEDBACK_DAYS = 14
TOKEN_RE = re.compile(r"^([A-Z]{3}\d{6}[A-Z0-9]{4})\.(\d{10})\.([A-Za-z0-9_-]{16})\.([0-9a-f]{32})$")


class BadLink(CardSystemError):
    """The link is forged, malformed, expired or already used (`code` says which)."""


@dataclass(frozen=True)
class FeedbackLink:
    reference: str
    expires: int
    nonce: str


def _key() -> bytes:
    return hmac.new(files_secret(), b"cardcare feedback links v1", hashlib.sha256).digest()


def _signature(reference: str, expires: int, nonce: str) -> str:
    return hmac.new(_key(), f"{reference}.{expires}.{nonce}".encode("ascii"), hashlib.sha256).hexdigest()[:32]


def make_token(reference: str, now: Optional[float] = None, days: int = FEEDBACK_DAYS) -> str:
    expires = int((now if now is not None else time.time()) + days * 86400)
    nonce = secrets.token_urlsafe(12)[:16]
    return f"{reference}.{expires}.{nonce}.{_signature(reference, expires, nonce)}"


def read_token(token: str, now: Optional[float] = None) -> FeedbackLink:
    """The link's request, or BadLink ('invalid' for anything forged or malformed, 'expired')."""
    found = TOKEN_RE.match(str(token or "")[:120])
    if not found:
        raise BadLink("invalid", "This link is not valid.")
    reference, expires, nonce, signature = found.group(1), int(found.group(2)), found.group(3), found.group(4)
    if not hmac.compare_digest(signature, _signature(reference, expires, nonce)):
        raise BadLink("invalid", "This link is not valid.")
    if (now if now is not None else time.time()) > expires:
        raise BadLink("expired", "This link has expired. Reply on WhatsApp if you still need help.")
    return FeedbackLink(reference, expires, nonce)


def feedback_base_url() -> str:
    """Where the feedback page is served (the bot's own server, as the statement links)."""
    configured = os.environ.get("CARDCARE_FEEDBACK_BASE_URL", "").rstrip("/")
    if configured:
        return configured
    return re.sub(r"/webhooks/files/statements$", "", files_base_url()) + "/webhooks/feedback"


def feedback_url(reference: str, now: Optional[float] = None) -> str:
    return f"{feedback_base_url()}/{make_token(reference, now)}"

