"""Settings of the card system, read from the environment once.

Every secret and URL comes from an environment variable; the defaults suit a developer's
machine (embedded SQLite, a local payment page) and are never secrets.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple


PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB_PATH = PROJECT_ROOT / "var" / "cardcare.db"

# Promised turnaround per kind of request: servicedesk.yml (cardsystem.requests.rules), in working days.
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
    callback_within_hours: int = CALLBACK_WITHIN_HOURS
    # e-mail to customers (service request references and updates): smtp://[user:password@]host:port,
    # smtps:// for TLS from the start, smtp+starttls:// to upgrade; unset: no e-mail
    proof_dir: Path = PROJECT_ROOT / "var" / "proofs"  # signed proofs of resolution, kept as records
    smtp_url: str = ""
    mail_from: str = "CardCare Bank <noreply@cardcare.example>"

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
            proof_dir=Path(env.get("CARDCARE_PROOF_DIR", str(PROJECT_ROOT / "var" / "proofs"))),
            smtp_url=env.get("CARDCARE_SMTP_URL", ""),
            mail_from=env.get("CARDCARE_MAIL_FROM", "CardCare Bank <noreply@cardcare.example>"),
        )


DESK_API_MIN_TOKEN = 32


def parse_desk_tokens(text: Optional[str]) -> List[Tuple[str, str]]:
    """The service desk API's clients, [(name, token)], from CARDCARE_DESK_API_TOKENS
    ("core-banking:<token>,crm:<token>"); a malformed entry or a short token is refused loudly."""
    clients = []
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, _, token = entry.partition(":")
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", name) or len(token) < DESK_API_MIN_TOKEN:
            raise ValueError("CARDCARE_DESK_API_TOKENS: each entry is name:token, a lower-case name and a token of "
                             f"at least {DESK_API_MIN_TOKEN} characters")
        clients.append((name, token))
    return clients
