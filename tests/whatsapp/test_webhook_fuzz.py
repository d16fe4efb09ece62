"""Any validly signed webhook body, posted to the real Sanic route: never a 5xx, every well-formed
message recorded exactly once (redeliveries included), a malformed part skipped without holding
back the rest of its batch, and a database that is down answered with a 503 so that Meta redelivers."""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any, Dict, List, Tuple

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sanic import Sanic
from sqlalchemy import delete, select
from sqlalchemy.exc import DataError, OperationalError

from cardsystem.db import dispose_engine, session_scope
from connectors.whatsapp.channel import WhatsAppInput
from connectors.whatsapp.inbound import parse_webhook
from connectors.whatsapp.signature import sign
from connectors.whatsapp.store import InboundRecord
from tests.servers import free_port
from tests.whatsapp.test_channel import post, settle, setup, shutdown  # noqa: F401 (setup: the channel fixture)
from tests.whatsapp.test_pieces import envelope, message

pytestmark = pytest.mark.asyncio
SECRET, PHONE_ID = "app-secret", "1111"
_names = itertools.count()

# -- generated bodies ---------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=12)
           | st.sampled_from(["", "\x00", "\ud800", "wamid.x", "919800000001", "IN.1648738043044942", "text",
                              "messages", "whatsapp_business_account", PHONE_ID, "1795500000"])
           | st.integers(4097, 12000).map(lambda n: "x" * n))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
TEXTS = st.text(max_size=40) | st.integers(4097, 9000).map(lambda n: "card 4532 7781 0093 4821 " * (n // 25))
BODIES = {  # a well-formed body for each message type WhatsApp sends
    "text": st.fixed_dictionaries({"body": TEXTS}),
    "interactive": st.fixed_dictionaries({"type": st.just("button_reply"), "button_reply": st.fixed_dictionaries(
        {"id": st.text(min_size=1, max_size=40), "title": st.text(max_size=20)})}),
    "button": st.fixed_dictionaries({"payload": st.text(max_size=40), "text": st.text(max_size=20)}),
    "image": st.fixed_dictionaries({"id": st.from_regex(r"[0-9]{1,16}", fullmatch=True),
                                    "mime_type": st.just("image/jpeg")}, optional={"caption": TEXTS}),
    "document": st.fixed_dictionaries({"id": st.from_regex(r"[0-9]{1,16}", fullmatch=True),
                                       "mime_type": st.just("application/pdf"), "filename": st.text(max_size=30)}),
    "location": st.fixed_dictionaries({"latitude": st.floats(-90, 90), "longitude": st.floats(-180, 180)},
                                      optional={"name": st.text(max_size=20)}),
    "reaction": st.fixed_dictionaries({"message_id": st.just("wamid.out1"),
                                       "emoji": st.sampled_from(["\U0001F44D", "\u2764\ufe0f"])}),
    "contacts": st.just([{"name": {"formatted_name": "Ravi"}}]),
    "unsupported": st.just({}),
}


@st.composite
def well_formed_messages(draw, message_id: str) -> Dict[str, Any]:
    kind = draw(st.sampled_from(sorted(BODIES)))
    sent = {"id": message_id, "timestamp": str(draw(st.integers(1_600_000_000, 1_900_000_000))), "type": kind,
            kind: draw(BODIES[kind])}
    if draw(st.booleans()):
        sent["from"] = draw(st.from_regex(r"[1-9][0-9]{9,14}", fullmatch=True))
    else:  # a customer known by a username only: the business-scoped user id
        sent["from_user_id"] = draw(st.from_regex(r"[A-Z]{2}\.[0-9]{12,20}", fullmatch=True))
    if draw(st.booleans()):
        sent["context"] = {"from": "15550001111", "id": "wamid.menu"}
    return sent


@st.composite
def damaged(draw, value: Any) -> Any:
    """`value` with one part, at some depth, replaced by any JSON value or left out."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)):
        key, copy = draw(st.sampled_from(sorted(value))), dict(value)
        if draw(st.integers(0, 4)):
            copy[key] = draw(damaged(copy[key]))
        else:
            del copy[key]
        return copy
    if isinstance(value, list) and value and draw(st.integers(0, 3)):
        index, copy = draw(st.integers(0, len(value) - 1)), list(value)
        copy[index] = draw(damaged(copy[index]))
        return copy
    return draw(JSON)


@st.composite
def near_valid_webhooks(draw) -> Tuple[Any, Dict[str, Dict[str, Any]]]:
    """A webhook as Meta sends it (entries, changes, contacts, messages, statuses), some of its messages
    and statuses damaged, then damaged at any level; and its good messages by id."""
    good: Dict[str, Dict[str, Any]] = {}
    ids = itertools.count()
    entries = []
    for _ in range(draw(st.integers(1, 2))):
        changes = []
        for _ in range(draw(st.integers(1, 2))):
            messages = []
            for _ in range(draw(st.integers(0, 4))):
                sent = draw(well_formed_messages(f"wamid.{next(ids)}"))
                if draw(st.integers(0, 2)):
                    good[sent["id"]] = sent
                else:
                    sent = draw(damaged(sent))
                messages.append(sent)
            statuses = [{"id": "wamid.out1", "status": draw(st.sampled_from(["sent", "delivered", "read"])),
                         "recipient_id": "919800000001", "timestamp": "1795500000"}, draw(damaged({
                             "id": "wamid.out2", "status": "failed", "errors": [{"code": 131026, "title": "x"}]}))]
            contacts = [{"profile": {"name": draw(st.text(max_size=20))}, "wa_id": m.get("from")}
                        for m in messages if isinstance(m, dict)]
            changes.append({"field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550001111",
                                                              "phone_number_id": PHONE_ID},
                "contacts": draw(damaged(contacts)) if draw(st.booleans()) else contacts,
                "messages": messages, "statuses": statuses}})
        entries.append({"id": "waba", "changes": changes})
    body: Any = {"object": "whatsapp_business_account", "entry": entries}
    if draw(st.booleans()):
        body = draw(damaged(body))
    return body, good


def delivered(body: Any) -> List[Any]:
    """The messages of `body` at the end of an intact path (what a well-formed envelope delivers)."""
    if not isinstance(body, dict) or body.get("object") != "whatsapp_business_account":
        return []
    found = []
    for entry in body["entry"] if isinstance(body.get("entry"), list) else []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            value = change.get("value") if isinstance(change, dict) and change.get("field") == "messages" else None
            metadata = value.get("metadata") if isinstance(value, dict) else None
            if isinstance(metadata, dict) and metadata.get("phone_number_id") == PHONE_ID \
                    and isinstance(value.get("messages"), list):
                found += value["messages"]
    return found


def bodies():
    """(raw body, its well-formed messages by id): mostly near-valid webhooks, else any JSON value or bytes."""
    webhooks = near_valid_webhooks().map(lambda pair: (json.dumps(pair[0]).encode(), pair[1]))
    return st.one_of(webhooks, webhooks, webhooks, JSON.map(lambda value: (json.dumps(value).encode(), {})),
                     st.binary(max_size=64).map(lambda raw: (raw, {})))


# -- the channel on a real server, its turns not run ----------------------------------------------

@pytest_asyncio.fixture
async def webhook(tmp_path):
    """The channel, and a function posting a signed body to its real webhook route: (status, answer,
    senders whose answering it started). Answering itself does not run: the fuzz is about receiving."""
    store_url = f"sqlite:///{tmp_path / 'channel.db'}"
    channel = WhatsAppInput("verify", [SECRET], "token", PHONE_ID, "http://127.0.0.1:9", "v21.0",
                            store_url=store_url, sweep_seconds=0)
    started: List[Any] = []

    def drain(sender, on_new_message):
        started.append(sender)  # when the handler asks, not when a task gets round to it
        return asyncio.sleep(0)

    async def on_new_message(user_message):
        raise AssertionError("no turn runs in the fuzz")

    channel.drain = drain
    app = Sanic(f"wa_fuzz_test_{next(_names)}")
    Sanic.test_mode = True
    app.blueprint(channel.blueprint(on_new_message), url_prefix="/webhooks/whatsapp")
    port = free_port()
    server = await app.create_server(host="127.0.0.1", port=port, return_asyncio_server=True)
    await server.startup()
    await server.after_start()
    session = aiohttp.ClientSession()

    async def send(raw: bytes):
        started.clear()
        async with session.post(f"http://127.0.0.1:{port}/webhooks/whatsapp/webhook", data=raw,
                                headers={"X-Hub-Signature-256": sign(raw, SECRET)}) as answer:
            return answer.status, await answer.text(), list(started)

    yield channel, send
    await session.close()
    await shutdown(channel, server)
    dispose_engine(store_url)


def recorded(channel) -> Dict[str, str]:
    with session_scope(channel.store.engine) as s:
        return dict(s.execute(select(InboundRecord.message_id, InboundRecord.sender)).all())


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=bodies())
async def test_any_signed_body_is_answered_200_and_each_good_message_recorded_once(webhook, case):
    channel, send = webhook
    raw, good = case
    with session_scope(channel.store.engine) as s:  # each example starts from an empty channel
        s.execute(delete(InboundRecord))
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        payload = None
    status, answer, started = await send(raw)
    assert status == 200
    assert json.loads(answer) == {"status": "received" if isinstance(payload, dict) else "ignored"}
    rows = recorded(channel)
    expected = {m["id"] for m in delivered(payload) if isinstance(m, dict) and isinstance(m.get("id"), str)
                and good.get(m["id"]) == m}
    assert expected <= set(rows)  # every well-formed message in a well-formed envelope
    for message_id in expected:
        assert rows[message_id] == good[message_id].get("from", good[message_id].get("from_user_id"))
    readable = parse_webhook(payload, PHONE_ID).messages
    assert set(rows) == {m.message_id for m in readable if not (m.kind == "reaction" and not m.text)}
    assert set(started) == set(rows.values())  # what was recorded is being answered
    status, _, started = await send(raw)  # Meta's redelivery
    assert status == 200 and recorded(channel) == rows and started == []


# -- poison batches, databases that are down ------------------------------------------------------

async def test_a_malformed_message_does_not_hold_back_the_good_one_in_its_batch(setup, caplog):
    caplog.set_level(logging.INFO)
    graph, start_bot, turns = setup
    channel, server, url = await start_bot()
    poison = {"from": "919800000002", "id": "wamid.poison", "timestamp": "1795500000", "type": "text",
              "text": "block card 4532 7781 0093 4821", "context": ["wamid.menu"]}
    payload = envelope(poison, message("text", {"body": "what's my balance"}, "wamid.good"),
                       statuses=[{"id": {"wamid": 1}, "status": "read"}])
    payload["entry"].append({"id": "waba", "changes": [{"field": "messages", "value": ["not", "an", "object"]}]})
    for _ in range(2):  # the batch and Meta's redelivery of it
        assert (await post(url, payload))[0] == 200
        await settle(channel)
    assert set(recorded(channel)) == {"wamid.good"}
    assert [(t.text, t.message_id) for t in turns] == [("what's my balance", "wamid.good")]
    assert "wamid.poison" in caplog.text  # logged and skipped, without the customer's number or words
    assert not any(secret in caplog.text for secret in ("919800000001", "919800000002", "4532", "balance"))
    await shutdown(channel, server)


async def test_a_signed_body_that_is_not_a_json_object_is_acknowledged_and_ignored(webhook):
    channel, send = webhook
    for raw in (b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"null", b"[" * 100_000, b""):
        status, answer, started = await send(raw)
        assert (status, json.loads(answer), started) == (200, {"status": "ignored"}, [])
    assert recorded(channel) == {}


def database_error(kind):
    return kind("INSERT INTO wa_inbound ...", {}, Exception("database is locked"))


@pytest.mark.parametrize("error, answer", [(OperationalError, 503), (DataError, 200)])
async def test_a_database_that_is_down_gets_a_503_and_a_message_it_refuses_is_skipped(setup, monkeypatch, error,
                                                                                     answer):
    """Down: Meta redelivers, and the redelivery records what was missed (once). Refusing one message:
    that message is skipped, the batch acknowledged."""
    graph, start_bot, turns = setup
    channel, server, url = await start_bot()
    record_inbound, failures = channel.store.record_inbound, [database_error(error)]

    def failing_once(inbound, *args, **kwargs):
        if inbound.message_id == "wamid.second" and failures:
            raise failures.pop()
        return record_inbound(inbound, *args, **kwargs)

    monkeypatch.setattr(channel.store, "record_inbound", failing_once)
    payload = envelope(message("text", {"body": "first"}, "wamid.first"),
                       message("text", {"body": "second"}, "wamid.second", sender="919800000002"))
    assert (await post(url, payload))[0] == answer
    await settle(channel)
    assert set(recorded(channel)) == {"wamid.first"}  # what was recorded before the failure is answered
    assert [t.text for t in turns] == ["first"]
    assert (await post(url, payload))[0] == 200
    await settle(channel)
    assert set(recorded(channel)) == {"wamid.first", "wamid.second"}
    assert sorted(t.text for t in turns) == ["first", "second"]
    await shutdown(channel, server)


async def test_a_status_the_database_cannot_take_now_gets_a_503(setup, monkeypatch):
    graph, start_bot, turns = setup
    channel, server, url = await start_bot()

    def down(status):
        raise database_error(OperationalError)

    monkeypatch.setattr(channel.store, "record_delivery", down)
    assert (await post(url, envelope(statuses=[{"id": "wamid.out", "status": "read"}])))[0] == 503
    await shutdown(channel, server)
