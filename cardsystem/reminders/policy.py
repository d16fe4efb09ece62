"""reminders.yml: when the bank may write first, how often, and what each message costs."""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Mapping, Optional, Tuple

import yaml

from cardsystem.config import PROJECT_ROOT
from cardsystem.requests.calendar import _time

try:
    from zoneinfo import ZoneInfo
except ImportError:  # pragma: no cover
    ZoneInfo = None  # type: ignore

KINDS = ("payment_due", "payment_received", "statement_ready", "request_update", "card_blocked")
# calling code -> country, longest prefix first (what a number's rate is looked up by)
CALLING_CODES = {"91": "IN", "1": "US", "44": "GB", "971": "AE", "65": "SG", "61": "AU", "966": "SA", "974": "QA",
                 "977": "NP", "880": "BD", "94": "LK", "60": "MY", "49": "DE", "33": "FR", "81": "JP"}


def country_of(phone: str) -> str:
    digits = "".join(ch for ch in str(phone or "") if ch.isdigit())
    for length in (3, 2, 1):
        country = CALLING_CODES.get(digits[:length])
        if country:
            return country
    return "other"


def _e4(value: object) -> int:
    """Rupees (a decimal) in 1/10000 of a rupee, exactly: 0.1150 -> 1150."""
    return int((Decimal(str(value)) * 10000).to_integral_value())


@dataclass(frozen=True)
class Policy:
    timezone: str = "Asia/Kolkata"
    reminder_template: str = "payment_due_reminder"
    offsets_days: Tuple[int, ...] = (5, 1, 0)
    link_ttl_hours: int = 72
    update_templates: Mapping[str, str] = field(default_factory=lambda: {
        "payment_received": "payment_received", "statement_ready": "statement_ready",
        "request_update": "request_update", "card_blocked": "card_blocked"})
    statement_within_days: int = 3
    quiet_start: dt.time = dt.time(21, 0)
    quiet_end: dt.time = dt.time(9, 0)
    weekly_cap: int = 3
    pause_hours: Mapping[int, int] = field(default_factory=lambda: {131026: 720, 131049: 24, 131050: 8760, 131048: 168})
    rates_source: str = ""
    currency: str = "INR"
    whatsapp_rates: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    sms_rates: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Optional[Path] = None, timezone: Optional[str] = None) -> "Policy":
        """reminders.yml (CARDCARE_REMINDERS_CONFIG); a wrong value stops the load with a ValueError
        saying which."""
        path = Path(path or os.environ.get("CARDCARE_REMINDERS_CONFIG") or PROJECT_ROOT / "reminders.yml")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping (payment_due, updates, consent, rates)")
        try:
            return cls.from_mapping(data, timezone)
        except (ValueError, TypeError, AttributeError, ArithmeticError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def from_mapping(cls, data: Mapping, timezone: Optional[str] = None) -> "Policy":
        due = data.get("payment_due") or {}
        updates = data.get("updates") or {}
        consent = data.get("consent") or {}
        quiet = consent.get("quiet_hours") or {}
        rates = data.get("rates") or {}
        offsets = tuple(sorted({int(d) for d in due.get("offsets_days", (5, 1, 0))}, reverse=True))
        if any(d < 0 for d in offsets):
            raise ValueError("payment_due.offsets_days: days before the due date, 0 or more")
        whatsapp = {country: {category: _e4(rate) for category, rate in (row or {}).items()}
                    for country, row in (rates.get("whatsapp") or {}).items()}
        sms = {country: _e4(rate) for country, rate in (rates.get("sms") or {}).items()}
        if any(v < 0 for row in whatsapp.values() for v in row.values()) or any(v < 0 for v in sms.values()):
            raise ValueError("rates: a rate cannot be negative")
        cap = int(consent.get("weekly_cap", 3))
        if cap < 0:
            raise ValueError("consent.weekly_cap: 0 or more reminders in 7 days")
        if int(due.get("link_ttl_hours", 72)) <= 0:
            raise ValueError("payment_due.link_ttl_hours: a link must live for an hour or more")
        for name in ("start", "end"):
            value = quiet.get(name)
            if value is not None and not re.fullmatch(r"(?:[01]?\d|2[0-3]):[0-5]\d", str(value)) and not isinstance(value, int):
                raise ValueError(f"consent.quiet_hours.{name}: a time HH:MM, got {value!r}")
        if timezone is None:
            from cardsystem.requests.rules import DeskRules

            timezone = DeskRules.load().calendar.timezone
        return cls(
            timezone=timezone, reminder_template=str(due.get("template", "payment_due_reminder")),
            offsets_days=offsets, link_ttl_hours=int(due.get("link_ttl_hours", 72)),
            update_templates={kind: str((updates.get(kind) or {}).get("template", kind))
                              for kind in KINDS if kind != "payment_due"},
            statement_within_days=int((updates.get("statement_ready") or {}).get("within_days", 3)),
            quiet_start=_time(quiet.get("start"), dt.time(21, 0)), quiet_end=_time(quiet.get("end"), dt.time(9, 0)),
            weekly_cap=int(consent.get("weekly_cap", 3)),
            pause_hours={int(code): int(hours) for code, hours in (consent.get("pause_after_error") or {}).items()},
            rates_source=str(rates.get("source", "")), currency=str(rates.get("currency", "INR")),
            whatsapp_rates=whatsapp, sms_rates=sms)

    # -- the bank's clock -----------------------------------------------------------------------
    def local(self, utc: dt.datetime) -> dt.datetime:
        """A naive UTC moment on the bank's wall clock (naive)."""
        if ZoneInfo is None:
            return utc
        return utc.replace(tzinfo=dt.timezone.utc).astimezone(ZoneInfo(self.timezone)).replace(tzinfo=None)

    def utc(self, local: dt.datetime) -> dt.datetime:
        if ZoneInfo is None:
            return local
        return local.replace(tzinfo=ZoneInfo(self.timezone)).astimezone(dt.timezone.utc).replace(tzinfo=None)

    def quiet(self, utc: dt.datetime) -> bool:
        """Within quiet hours (no reminders), on the bank's clock."""
        at = self.local(utc).time()
        if self.quiet_start > self.quiet_end:  # across midnight: 21:00-09:00
            return at >= self.quiet_start or at < self.quiet_end
        return self.quiet_start <= at < self.quiet_end

    def quiet_ends(self, utc: dt.datetime) -> dt.datetime:
        """When the quiet hours around `utc` end (UTC)."""
        local = self.local(utc)
        end = dt.datetime.combine(local.date(), self.quiet_end)
        if end <= local:
            end += dt.timedelta(days=1)
        return self.utc(end)

    # -- money ------------------------------------------------------------------------------
    def rate(self, category: str, phone: str) -> Tuple[str, int, int]:
        """(country, WhatsApp rate, SMS rate) in 1/10000 INR for one message of `category` to `phone`."""
        country = country_of(phone)
        row = self.whatsapp_rates.get(country) or self.whatsapp_rates.get("other") or {}
        sms = self.sms_rates.get(country, self.sms_rates.get("other", 0))
        return country, int(row.get(category, 0)), int(sms)

    def pause_for(self, code: Optional[int]) -> Optional[dt.timedelta]:
        hours = self.pause_hours.get(int(code)) if code is not None else None
        return dt.timedelta(hours=hours) if hours else None


def template_problems(policy: Policy, registry) -> list:
    """The templates reminders.yml names: in the registry, and of the utility category (a reminder or an
    account update sent as marketing would be charged as marketing and need marketing consent)."""
    problems = []
    for kind, name in [("payment_due", policy.reminder_template)] + sorted(policy.update_templates.items()):
        found = [t for t in registry if t.name == name]
        if not found:
            problems.append(f"{kind}: template {name} is not in templates.yml")
        elif any(t.category != "utility" for t in found):
            problems.append(f"{kind}: template {name} must be a utility template (it is about the customer's account)")
    return problems
