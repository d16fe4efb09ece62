"""What to do about a Graph API error: decided by its `error.code`, not by the HTTP status.

Throughput and pair-rate limits (130429, 131056, 4, 80007) arrive as HTTP 400 and must be
retried; re-engagement (131047), undeliverable (131026), bad parameters (100) and
expired tokens (190) must not.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

MEANINGS = {
    0: "authentication failed", 190: "access token expired or revoked", 10: "permission missing",
    100: "invalid parameter", 131008: "required parameter missing", 131009: "parameter value invalid",
    130429: "throughput limit reached", 131056: "pair rate limit (too many messages to this customer)",
    131048: "spam rate limit", 4: "app rate limit", 80007: "WhatsApp Business account rate limit",
    131047: "more than 24 hours since the customer's last message: template required",
    131026: "message undeliverable", 131049: "not delivered to keep the ecosystem healthy",
    131050: "customer stopped marketing messages", 131051: "unsupported message type",
    131052: "media download error", 131053: "media upload error", 131000: "unknown error",
    1: "unknown API error", 2: "service temporarily unavailable", 131016: "service unavailable",
    132000: "template parameter count mismatch", 132001: "template does not exist",
    132015: "template paused", 132016: "template disabled", 130472: "customer in an experiment",
    131031: "account locked", 368: "blocked for policy violations", 131062: "business-scoped id not supported here",
}
RETRY_SOON = {130429, 131000, 1, 2, 131016}      # seconds of back-off
RETRY_LATER = {131056, 4, 80007}                 # pair or app rate limits: longer back-off
MAX_ATTEMPTS = 5
MAX_DELAY_SECONDS = 60.0


@dataclass(frozen=True)
class Verdict:
    retry: bool
    delay_seconds: float
    meaning: str


def meaning_of(code: Optional[int]) -> str:
    return MEANINGS.get(code, "unrecognised error") if code is not None else "no error code"


def classify(code: Optional[int], http_status: int, attempt: int, rng: Optional[random.Random] = None,
             max_attempts: Optional[int] = MAX_ATTEMPTS) -> Verdict:
    """Whether to retry a failed send (attempt counts from 1), and after how long (with jitter,
    at most MAX_DELAY_SECONDS). `max_attempts=None`: no limit (the outbox stops at the 24-hour window)."""
    rng = rng or random.Random()
    if max_attempts is not None and attempt >= max_attempts:
        return Verdict(False, 0.0, meaning_of(code))
    if code in RETRY_SOON or (code is None and http_status >= 500) or (code is None and http_status == 429):
        base = 0.5 * 2 ** (attempt - 1)
    elif code in RETRY_LATER:
        base = 6.0 * 2 ** (attempt - 1)  # the pair rate allows about one message per 6 s per customer
    else:
        return Verdict(False, 0.0, meaning_of(code))
    return Verdict(True, min(base, MAX_DELAY_SECONDS) * rng.uniform(0.8, 1.2), meaning_of(code))
