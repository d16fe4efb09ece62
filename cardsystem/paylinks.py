"""Signed, expiring, single-use payment links: HMAC-SHA256 over the link's fields, secret from the env.

Times are UTC (a naive datetime is taken as UTC). The link carries a nonce; the card system records
it when the link is used (CardSystem.pay_with_link), so a second use is refused.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qs, urlencode, urlparse


class InvalidPaymentLink(ValueError):
    """The link was altered, signed with another secret, has expired, or was used already."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # signature | unreadable | expired | used


def _epoch(moment: dt.datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


@dataclass(frozen=True)
class PaymentLink:
    url: str
    amount_paise: int
    expires_at: dt.datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, token: str) -> str:
    return _b64(hmac.new(secret, token.encode("ascii"), hashlib.sha256).digest())


def make_payment_link(
    base_url: str, secret: bytes, card_id: int, amount_paise: int, kind: str,
    now: dt.datetime, ttl_minutes: int, nonce: str,
) -> PaymentLink:
    """A link to pay `amount_paise` on a card; it carries no card number, only an opaque id.
    `now` is UTC; the link's `expires_at` is on the same clock."""
    expires = now + dt.timedelta(minutes=ttl_minutes)
    payload = {"c": card_id, "a": int(amount_paise), "k": kind, "e": int(_epoch(expires)), "n": nonce}
    token = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    url = f"{base_url}?{urlencode({'t': token, 's': _sign(secret, token)})}"
    return PaymentLink(url=url, amount_paise=int(amount_paise), expires_at=expires)


def issue_payment_link(settings, card_id: int, amount_paise: int, kind: str, now: dt.datetime,
                       ttl_minutes: Optional[int] = None) -> PaymentLink:
    """A new link with the settings' page and secret and a fresh nonce (chat links: the settings' TTL)."""
    return make_payment_link(settings.payment_base_url, settings.payment_link_secret, card_id, amount_paise, kind, now,
                             settings.payment_link_ttl_minutes if ttl_minutes is None else ttl_minutes,
                             secrets.token_urlsafe(8))


def verify_payment_link(url: str, secret: bytes, now: Optional[dt.datetime] = None) -> dict:
    """Return the link's fields if its signature holds and it has not expired."""
    query = parse_qs(urlparse(url).query)
    token = (query.get("t") or [""])[0]
    signature = (query.get("s") or [""])[0]
    if not token or not signature or not token.isascii() or not signature.isascii() or len(token) > 2000 \
            or not hmac.compare_digest(_sign(secret, token), signature):
        raise InvalidPaymentLink("signature")
    try:
        payload = json.loads(_unb64(token))
    except (ValueError, json.JSONDecodeError) as exc:
        raise InvalidPaymentLink("unreadable") from exc
    if not isinstance(payload, dict) or not {"c", "a", "e", "n"} <= set(payload):
        raise InvalidPaymentLink("unreadable")
    moment = now or dt.datetime.now(dt.timezone.utc)
    if _epoch(moment) > payload["e"]:
        raise InvalidPaymentLink("expired")
    return payload
