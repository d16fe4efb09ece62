"""The ingress records webhooks in batches (connectors.whatsapp.ingress.Recorder and
WebhookReceiver.receive_many): each webhook answered as receive() would answer it alone, in
arrival order, once; a database that is down gets every webhook of the batch a 503 and keeps
nothing of it; an item that spoils a batch makes the rest be recorded one by one."""
from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from cardsystem.db import dispose_engine, session_scope
from connectors.whatsapp.ingress import Recorder
from connectors.whatsapp.signature import sign
from connectors.whatsapp.store import ChannelStore, InboundRecord, OutboxRecord
from connectors.whatsapp.webhook import WebhookReceiver
from tests.whatsapp.test_pieces import envelope, message

SECRET, PHONE_ID = "app-secret", "1111"


@pytest.fixture
def receiver(tmp_path):
    url = f"sqlite:///{tmp_path / 'channel.db'}"
    yield WebhookReceiver(ChannelStore(url), [SECRET], PHONE_ID, "token")
    dispose_engine(url)


def signed(payload) -> "tuple[bytes, str]":
    raw = json.dumps(payload).encode()
    return raw, sign(raw, SECRET)


def recorded(store: ChannelStore):
    with session_scope(store.engine) as s:
        return [(r.message_id, r.text) for r in s.execute(select(InboundRecord).order_by(InboundRecord.id)).scalars()]


def text(mid: str, body: str, sender: str = "919800000001"):
    return envelope(message("text", {"body": body}, mid, sender))


def test_a_batch_is_answered_webhook_by_webhook_and_recorded_once_in_order(receiver):
    bodies = [signed(text("wamid.a", "first")), (b'{"forged": true}', "sha256=00"), signed(text("wamid.b", "second")),
              signed(text("wamid.a", "first")), (b"not json", sign(b"not json", SECRET)),
              signed(text("wamid.c", "third", "919800000002"))]
    receipts = receiver.receive_many(bodies)
    assert [r.status for r in receipts] == [200, 403, 200, 200, 200, 200]
    assert [r.senders for r in receipts] == [["919800000001"], [], ["919800000001"], [], [], ["919800000002"]]
    assert recorded(receiver.store) == [("wamid.a", "first"), ("wamid.b", "second"), ("wamid.c", "third")]
    assert receiver.receive_many([signed(text("wamid.b", "second"))])[0].senders == []  # a redelivery later


def test_statuses_in_a_batch_settle_the_replies_they_echo(receiver):
    store = receiver.store
    receiver.receive_many([signed(text("wamid.q", "balance"))])
    store.commit_turn("wamid.q", "919800000001", "to", [{"type": "text", "text": {"body": "Rs 1,000"}}])
    [reply] = store.queued_replies("919800000001")
    store.reply_sending(reply.id)  # in flight when a crash came
    status = {"id": "wamid.out", "status": "delivered", "timestamp": "1795500001", "recipient_id": "919800000001",
              "biz_opaque_callback_data": "wamid.q:0"}
    [receipt] = receiver.receive_many([signed(envelope(statuses=[status]))])
    assert receipt.status == 200
    with session_scope(store.engine) as s:
        assert s.execute(select(OutboxRecord.state, OutboxRecord.wamid)).one() == ("sent", "wamid.out")
        assert s.execute(select(InboundRecord.state)).scalar_one() == "done"


def test_a_database_that_is_down_gets_the_whole_batch_a_503_and_keeps_nothing(receiver, monkeypatch):
    def down(messages, statuses):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(receiver.store, "record_webhooks", down)
    receipts = receiver.receive_many([signed(text("wamid.d", "one")), signed(text("wamid.e", "two")),
                                      (b"{}", "sha256=00")])
    assert [r.status for r in receipts] == [503, 503, 403]
    assert recorded(receiver.store) == []


def test_an_item_that_spoils_the_batch_leaves_the_others_recorded_one_by_one(receiver, monkeypatch):
    store = receiver.store
    real = store.record_inbound

    def record_inbound(item):
        if item.message_id == "wamid.bad":
            raise ValueError("cannot be stored")
        return real(item)

    def batch(messages, statuses):
        raise ValueError("cannot be stored")

    monkeypatch.setattr(store, "record_webhooks", batch)
    monkeypatch.setattr(store, "record_inbound", record_inbound)
    receipts = receiver.receive_many([signed(text("wamid.f", "kept")), signed(text("wamid.bad", "lost")),
                                      signed(text("wamid.g", "kept too"))])
    assert [r.status for r in receipts] == [200, 200, 200]
    assert recorded(store) == [("wamid.f", "kept"), ("wamid.g", "kept too")]


def test_webhooks_arriving_together_are_written_in_few_batches_in_arrival_order(receiver, monkeypatch):
    batches = []
    real = receiver.receive_many

    def counting(bodies):
        batches.append(len(bodies))
        return real(bodies)

    monkeypatch.setattr(receiver, "receive_many", counting)

    async def burst():
        recorder = Recorder(receiver)
        return await asyncio.gather(*(recorder.record(*signed(text(f"wamid.{n}", f"message {n}")))
                                      for n in range(40)))

    receipts = asyncio.run(burst())
    assert all(r.status == 200 for r in receipts)
    assert recorded(receiver.store) == [(f"wamid.{n}", f"message {n}") for n in range(40)]
    assert sum(batches) == 40 and len(batches) < 40


def test_a_status_of_the_banks_own_message_reaches_its_ledger(receiver):
    told = []
    receiver.notice_status = lambda *args: told.append(args)
    status = {"id": "wamid.n", "status": "failed", "timestamp": "1795500001", "recipient_id": "919800000001",
              "biz_opaque_callback_data": "notice.7-1", "errors": [{"code": 131047, "title": "Re-engagement"}]}
    receiver.receive_many([signed(envelope(statuses=[status]))])
    assert told == [("notice.7-1", "failed", "wamid.n", 131047, "Re-engagement")]
