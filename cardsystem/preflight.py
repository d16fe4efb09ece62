"""Refuse to run in production with a missing, development or sandbox secret.

    python -m cardsystem.preflight            exit 0 when the environment is fit for production,
                                              else exit 2 naming every variable to fix

`make serve` runs this before it starts anything: a bank's bot must never come up talking to
customers with a secret from the repository (the sandbox's app secret would let anyone sign
webhooks; the development payment-link secret would let anyone mint payment links).
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Mapping, Optional
from urllib.parse import urlparse

from cardsystem.config import parse_desk_tokens

MIN_SECRET_LENGTH = 16
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _known_development_values() -> Dict[str, set]:
    """Values shipped in this repository: fine on a laptop, never in production."""
    from cardsystem.config import _DEV_PAYMENT_SECRET, SANDBOX_DEFAULTS
    from cardsystem.files import _DEV_FILES_SECRET

    known = {"", "changeme", "change-me", "secret", "test", "dev", "development", "sandbox"}
    return {
        "WHATSAPP_APP_SECRET": known | {SANDBOX_DEFAULTS["app_secret"]},
        "WHATSAPP_ACCESS_TOKEN": known | {SANDBOX_DEFAULTS["access_token"]},
        "WHATSAPP_VERIFY_TOKEN": known | {SANDBOX_DEFAULTS["verify_token"]},
        "WHATSAPP_PHONE_NUMBER_ID": known | {SANDBOX_DEFAULTS["phone_number_id"]},
        "CARDCARE_PAYMENT_LINK_SECRET": known | {_DEV_PAYMENT_SECRET},
        "CARDCARE_FILES_SECRET": known | {_DEV_FILES_SECRET},
        "CARDCARE_ACTION_SECRET": known,
        "RASA_AUTH_TOKEN": known,
    }


# Secrets the bank generates itself: long random strings (openssl rand -hex 32), each its own.
GENERATED = ("CARDCARE_PAYMENT_LINK_SECRET", "CARDCARE_FILES_SECRET", "CARDCARE_ACTION_SECRET", "RASA_AUTH_TOKEN")
# What Meta gives: the app secret is 32 hex characters, access tokens are far longer; the verify
# token is the bank's own choice.
MIN_LENGTHS = {"WHATSAPP_APP_SECRET": 32, "WHATSAPP_ACCESS_TOKEN": 32, "WHATSAPP_VERIFY_TOKEN": MIN_SECRET_LENGTH,
               **{name: MIN_SECRET_LENGTH for name in GENERATED}}
MIN_DISTINCT_CHARACTERS = 8  # "aaaaaaaaaaaaaaaa" is long and no secret


def api_enabled(env: Mapping[str, str]) -> bool:
    return env.get("RASA_ENABLE_API", "").strip().lower() in ("1", "true", "yes", "on")


def _signing_problems(env: Mapping[str, str]) -> List[str]:
    """The bank's key and certificate for signing proofs of resolution: set, readable, matching, and
    not the development pair."""
    from cardsystem.requests.proof import CERT_ENV, DEV_COMMON_NAME, KEY_ENV, PASSWORD_ENV, load_signer

    key, cert = env.get(KEY_ENV, "").strip(), env.get(CERT_ENV, "").strip()
    if not key or not cert:
        return [f"{KEY_ENV} and {CERT_ENV} must name the bank's signing key and certificate (PEM files): "
                "resolved service requests get a signed proof"]
    try:
        password = env.get(PASSWORD_ENV)
        pair = load_signer(key, cert, password.encode("utf-8") if password else None)
    except Exception as exc:  # unreadable, wrong password, key and certificate that do not match
        return [f"{KEY_ENV}/{CERT_ENV} cannot be used: {type(exc).__name__}: {str(exc)[:120]}"]
    if pair.common_name == DEV_COMMON_NAME:
        return [f"{KEY_ENV}/{CERT_ENV} are the development signing pair: use the bank's own"]
    return []


def _outbound_problems(env: Mapping[str, str]) -> List[str]:
    """What the bank sends first: its templates keep WhatsApp's rules, and their payment button
    opens the bank's own https page (the demo page is never a production payment page)."""
    from cardsystem.reminders.policy import Policy, template_problems
    from cardsystem.reminders.templates import Registry, TemplateError

    found: List[str] = []
    pay = env.get("CARDCARE_PAYMENT_BASE_URL", "").strip()
    if not pay or urlparse(pay).scheme != "https" or "/webhooks/pay/" in pay:
        found.append("CARDCARE_PAYMENT_BASE_URL must be the bank's own https:// payment page (not the demo page)")
    registry = policy = None
    try:
        registry = Registry.load(env.get("CARDCARE_TEMPLATES") or None, payment_base_url=pay)
    except (TemplateError, OSError, ValueError) as exc:
        found.append(f"templates: {exc}"[:300])
    try:
        policy = Policy.load(env.get("CARDCARE_REMINDERS_CONFIG") or None, timezone="Asia/Kolkata")
    except (OSError, ValueError, TypeError) as exc:
        found.append(f"reminders.yml: {exc}"[:300])
    if registry is not None and policy is not None:
        found += [f"reminders.yml: {problem}" for problem in template_problems(policy, registry)]
    return found


def problems(env: Optional[Mapping[str, str]] = None) -> List[str]:
    """Everything that keeps this environment from serving customers, one line per variable."""
    env = os.environ if env is None else env
    found: List[str] = []
    if env.get("CARDCARE_ENV") != "production":
        found.append("CARDCARE_ENV must be 'production' (make serve sets it)")
    development = _known_development_values()
    required = [name for name in development if name != "RASA_AUTH_TOKEN" or api_enabled(env)]
    for name in required:
        value = env.get(name, "")
        if not value.strip():
            found.append(f"{name} is not set")
        elif value.strip().lower() in development[name] or value in development[name]:
            found.append(f"{name} is still a development or sandbox value: set the production one")
        elif name in MIN_LENGTHS and len(value) < MIN_LENGTHS[name]:
            found.append(f"{name} is too short ({len(value)} characters; use at least {MIN_LENGTHS[name]}"
                         + (", e.g. openssl rand -hex 32)" if name in GENERATED else ")"))
        elif name in MIN_LENGTHS and len(set(value)) < MIN_DISTINCT_CHARACTERS:
            found.append(f"{name} is not random enough (e.g. openssl rand -hex 32)")
    values = [env.get(name) for name in GENERATED if env.get(name)]
    if len(values) != len(set(values)):
        found.append("CARDCARE_PAYMENT_LINK_SECRET, CARDCARE_FILES_SECRET, CARDCARE_ACTION_SECRET and RASA_AUTH_TOKEN "
                     "must all differ: one leaked secret must not open the others")
    if "WHATSAPP_PHONE_NUMBER_ID" in env and env["WHATSAPP_PHONE_NUMBER_ID"].strip() \
            and not env["WHATSAPP_PHONE_NUMBER_ID"].strip().isdigit():
        found.append("WHATSAPP_PHONE_NUMBER_ID must be the number's numeric id from the WhatsApp Manager")
    found += _signing_problems(env)
    feedback = env.get("CARDCARE_FEEDBACK_BASE_URL", "").strip()
    if not feedback:
        found.append("CARDCARE_FEEDBACK_BASE_URL must be the public https:// address customers open for feedback "
                     "(e.g. https://bot.example.bank/webhooks/feedback)")
    elif urlparse(feedback).scheme != "https" and urlparse(feedback).hostname not in LOOPBACK_HOSTS:
        found.append("CARDCARE_FEEDBACK_BASE_URL must be https:// (customers open it on their phones)")
    if env.get("CARDCARE_DESK_API_TOKENS", "").strip():
        try:
            tokens = [token for _, token in parse_desk_tokens(env["CARDCARE_DESK_API_TOKENS"])]
        except ValueError as exc:
            found.append(str(exc))
        else:
            if any(len(set(t)) < MIN_DISTINCT_CHARACTERS for t in tokens) or len(tokens) != len(set(tokens)) \
                    or set(tokens) & set(values):
                found.append("CARDCARE_DESK_API_TOKENS: each client's token must be random, its own and unlike the "
                             "other secrets (e.g. openssl rand -hex 32)")
    found += _outbound_problems(env)
    base = env.get("WHATSAPP_API_BASE", "")
    if base:
        parsed = urlparse(base)
        if parsed.scheme != "https" and parsed.hostname not in LOOPBACK_HOSTS:
            found.append("WHATSAPP_API_BASE must be https:// (plain http only to a stand-in on this machine)")
    return found


def demo_accounts_usable() -> List[str]:
    """Problems for demo agent accounts (make run's, passwords in the README) that still sign in."""
    from cardsystem.agents import DEMO, DEMO_SUPERVISOR
    from cardsystem.handoff import HandoffDesk
    from cardsystem.service import CardSystem

    desk = HandoffDesk(CardSystem())
    return [f"the demo console account '{username}' exists with its published password: "
            f"python -m cardsystem.agents disable {username}"
            for username, _, password in (DEMO, DEMO_SUPERVISOR) if desk.accounts.password_is(username, password)]


def main(argv: Optional[List[str]] = None) -> int:
    found = problems()
    if not found:
        found += demo_accounts_usable()
    if not found:
        print("preflight: production settings look right.")
        return 0
    print("Refusing to start in production:", file=sys.stderr)
    for line in found:
        print(f"  - {line}", file=sys.stderr)
    print("Set them in the environment (never in git); see README, 'Running in production'.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
