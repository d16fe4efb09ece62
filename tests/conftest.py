"""Shared fixtures: a seeded temporary card system with a fixed clock, and action runners."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import pytest
import yaml
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher

from actions.common import use_card_system
from cardsystem.config import Settings
from cardsystem.db import dispose_engine
from cardsystem.seed import seed
from cardsystem.service import CardSystem

ROOT = Path(__file__).resolve().parent.parent
TODAY = dt.date(2026, 11, 23)
NOW = dt.datetime(2026, 11, 23, 10, 30)
ONE_CARD = "919800000001"
TWO_CARDS = "919800000002"
BLOCKED = "919800000003"
EXPIRING = "919800000004"
DISPUTE = "919800000005"
STRANGER = "919800000099"


def make_system(tmp_path: Path) -> CardSystem:
    settings = Settings.from_env()
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'cards.db'}",
        payment_base_url="https://pay.example.test/pay",
        payment_link_secret=b"test-secret",
        payment_link_ttl_minutes=30,
        statement_dir=tmp_path / "statements",
        support_phone=settings.support_phone,
    )
    return CardSystem(settings, today=lambda: TODAY, now=lambda: NOW)


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory) -> Path:
    """Seed once per test session; each test gets its own copy of the file."""
    folder = tmp_path_factory.mktemp("template")
    system = make_system(folder)
    seed(system, TODAY, progress=False)
    dispose_engine(system.settings.db_url)
    return folder / "cards.db"


@pytest.fixture
def system(tmp_path, seeded_template) -> CardSystem:
    (tmp_path / "cards.db").write_bytes(seeded_template.read_bytes())
    system = make_system(tmp_path)
    use_card_system(system)
    yield system
    use_card_system(None)
    dispose_engine(system.settings.db_url)


@pytest.fixture(scope="session")
def domain() -> Dict[str, Any]:
    return yaml.safe_load((ROOT / "domain.yml").read_text())


def make_tracker(
    sender: str,
    intent: Optional[str] = None,
    entities: Iterable[Tuple[str, str]] = (),
    text: str = "",
    slots: Optional[Dict[str, Any]] = None,
    active_loop: Optional[str] = None,
    metadata: Optional[Dict[str, Any]] = None,
    channel: str = "rest",
    history: Iterable[Dict[str, Any]] = (),
    set_this_turn: Iterable[str] = (),
) -> Tracker:
    """A tracker as the action server receives it, after the customer's latest message."""
    message = {
        "intent": {"name": intent, "confidence": 1.0} if intent else {},
        "intent_ranking": [{"name": intent, "confidence": 1.0}] if intent else [],
        "entities": [{"entity": e, "value": v} for e, v in entities],
        "text": text or (f"/{intent}" if intent else ""),
        "metadata": metadata or {},
    }
    slots = dict(slots or {})
    events: List[Dict[str, Any]] = list(history)
    events.append({"event": "user", "text": message["text"], "parse_data": message, "metadata": metadata or {},
                   "input_channel": channel})
    for name in set_this_turn:
        events.append({"event": "slot", "name": name, "value": slots.get(name)})
    return Tracker(
        sender_id=sender, slots=slots, latest_message=message, events=events, paused=False,
        followup_action=None, active_loop={"name": active_loop} if active_loop else {},
        latest_action_name="action_listen",
    )


async def run_action(action, tracker: Tracker, domain: Dict[str, Any]):
    """Run one action; return (events, messages the customer would see)."""
    dispatcher = CollectingDispatcher()
    events = await action.run(dispatcher, tracker, domain)
    return events, dispatcher.messages


def slots_of(events) -> Dict[str, Any]:
    return {e["name"]: e["value"] for e in events if e.get("event") == "slot"}


class _Missing(dict):
    def __missing__(self, key):  # a placeholder the action forgot to fill shows up loudly
        return "{MISSING:" + key + "}"


def rendered(messages: List[Dict[str, Any]], domain: Dict[str, Any]) -> List[str]:
    """The texts the customer would read: responses filled as Rasa fills them."""
    texts = []
    for message in messages:
        text = message.get("text") or ""
        name = message.get("response")
        if name:
            variants = domain["responses"][name]
            text = variants[0]["text"].format_map(_Missing(message))
        if message.get("attachment"):
            text = (text + "\n" if text else "") + f"[attachment] {message['attachment']}"
        texts.append(text)
    return texts


def buttons_of(messages: List[Dict[str, Any]], domain: Dict[str, Any]) -> List[Dict[str, str]]:
    found = []
    for message in messages:
        found += message.get("buttons") or []
        if message.get("response") and not message.get("buttons"):
            found += domain["responses"][message["response"]][0].get("buttons") or []
    return found


@pytest.fixture(scope="session")
def signing_pair(tmp_path_factory):
    """A development signing pair of the tests' own, (key path, cert path): proofs signed in tests
    never touch var/signing."""
    from cardsystem.requests.proof import ensure_dev_pair

    return ensure_dev_pair(tmp_path_factory.mktemp("signing") / "pair")


@pytest.fixture
def make_desk(system, signing_pair, tmp_path):
    """A service desk on the test's card system with a given clock, its proofs in tmp_path."""
    from cardsystem.requests.desk import ServiceDesk
    from cardsystem.requests.proof import load_signer
    from cardsystem.requests.rules import DeskRules

    signer = load_signer(*signing_pair)

    def make(now=lambda: NOW, email=False):
        return ServiceDesk(engine=system.engine, rules=DeskRules.load(), now=now, email=email,
                           proof_dir=tmp_path / "proofs", signer=signer)
    return make
