"""Settings of the card system, read from the environment once.

Every secret and URL comes from an environment variable; the defaults suit a developer's
machine (embedded SQLite, a local payment page) and are never secrets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB_PATH = PROJECT_ROOT / "var" / "cardcare.db"

# Promised turnaround, in calendar days, per kind of service request.
DEFAULT_TURNAROUND_DAYS: Dict[str, int] = {
    "dispute:not_recognised": 10,
    "dispute:charged_twice": 7,
    "dispute:refund_not_received": 14,
    "dispute:wrong_amount": 10,
    "dispute:not_delivered": 14,
    "block_card": 7,  # replacement card delivery
    "limit_increase": 3,
    "redemption": 7,
}
CALLBACK_WITHIN_HOURS = 4
# How long the developer default payment-link secret may be used: only outside production.
_DEV_PAYMENT_SECRET = "dev-only-payment-link-secret-change-me"
# The local WhatsApp sandbox's credentials (python -m connectors.sandbox): used outside production
# only; cardsystem.preflight refuses them in production.
SANDBOX_DEFAULTS = {
    "verify_token": "sandbox-verify-token", "app_secret": "sandbox-app-secret", "access_token": "sandbox-token",
    "phone_number_id": "100000000000001", "api_base": "http://localhost:5006", "api_version": "v21.0",
}


@dataclass(frozen=True)
class Settings:
    """Runtime settings; build with `Settings.from_env()`."""

    db_url: str
    payment_base_url: str
    payment_link_secret: bytes
    payment_link_ttl_minutes: int
    statement_dir: Path
    support_phone: str
    turnaround_days: Dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TURNAROUND_DAYS))
    callback_within_hours: int = CALLBACK_WITHIN_HOURS

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        secret = env.get("CARDCARE_PAYMENT_LINK_SECRET", "")
        if env.get("CARDCARE_ENV", "development") == "production":
            if secret in ("", _DEV_PAYMENT_SECRET):
                raise RuntimeError("CARDCARE_PAYMENT_LINK_SECRET must be set to a production secret")
        elif not secret:
            secret = _DEV_PAYMENT_SECRET
        return cls(
            db_url=env.get("CARDCARE_DB_URL") or f"sqlite:///{DEFAULT_DB_PATH}",
            payment_base_url=env.get("CARDCARE_PAYMENT_BASE_URL", "https://pay.cardcare.example/card"),
            payment_link_secret=secret.encode("utf-8"),
            payment_link_ttl_minutes=int(env.get("CARDCARE_PAYMENT_LINK_TTL_MINUTES", "30")),
            statement_dir=Path(env.get("CARDCARE_STATEMENT_DIR", str(PROJECT_ROOT / "var" / "statements"))),
            support_phone=env.get("CARDCARE_SUPPORT_PHONE", "1800 266 0000"),
        )
