"""Webhooks recorded in batches (WebhookReceiver.receive_many, the channel's own route): each
webhook answered as receive() would answer it alone, in arrival order, once; a database that is
down gets every webhook of the batch a 503 and keeps nothing of it; an item that spoils a batch
makes the rest be recorded one by one.

The ingress (connectors.whatsapp.ingress.Ingress) answers once a webhook is in its journal on
disk; its recorder (connectors.whatsapp.recorder.JournalRecorder, here in the test's process)
records the journal after: in order, in batches, through an absent database and a restart."""
from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from cardsystem.db import dispose_engine, session_scope
from connectors.whatsapp import ingress as ingress_module
from connectors.whatsapp.ingress import Ingress
from connectors.whatsapp.journal import Journal, JournalReader
from connectors.whatsapp.recorder import JournalRecorder, follow
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
    def down(messages, statuses, received_at=None):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(receiver.store, "record_webhooks", down)
    receipts = receiver.receive_many([signed(text("wamid.d", "one")), signed(text("wamid.e", "two")),
                                      (b"{}", "sha256=00")])
    assert [r.status for r in receipts] == [503, 503, 403]
    assert recorded(receiver.store) == []


def test_an_item_that_spoils_the_batch_leaves_the_others_recorded_one_by_one(receiver, monkeypatch):
    store = receiver.store
    real = store.record_inbound

    def record_inbound(item, received_at=None):
        if item.message_id == "wamid.bad":
            raise ValueError("cannot be stored")
        return real(item, received_at)

    def batch(messages, statuses, received_at=None):
        raise ValueError("cannot be stored")

    monkeypatch.setattr(store, "record_webhooks", batch)
    monkeypatch.setattr(store, "record_inbound", record_inbound)
    receipts = receiver.receive_many([signed(text("wamid.f", "kept")), signed(text("wamid.bad", "lost")),
                                      signed(text("wamid.g", "kept too"))])
    assert [r.status for r in receipts] == [200, 200, 200]
    assert recorded(store) == [("wamid.f", "kept"), ("wamid.g", "kept too")]


def test_a_status_of_the_banks_own_message_reaches_its_ledger(receiver):
    told = []
    receiver.notice_status = lambda *args: told.append(args)
    status = {"id": "wamid.n", "status": "failed", "timestamp": "1795500001", "recipient_id": "919800000001",
              "biz_opaque_callback_data": "notice.7-1", "errors": [{"code": 131047, "title": "Re-engagement"}]}
    receiver.receive_many([signed(envelope(statuses=[status]))])
    assert told == [("notice.7-1", "failed", "wamid.n", 131047, "Re-engagement")]


# -- the ingress: journal first, database after -------------------------------------------------

def database_down(receiver, monkeypatch):
    """The channel database refuses every transaction until the returned callable is called."""
    real = receiver.store.record_webhooks
    state = {"down": True}

    def record_webhooks(*args, **kwargs):
        if state["down"]:
            raise OperationalError("INSERT", {}, Exception("could not connect to server"))
        return real(*args, **kwargs)

    monkeypatch.setattr(receiver.store, "record_webhooks", record_webhooks)
    return lambda: state.update(down=False)


LOOPS = {}  # an ingress lives in one event loop, as in its process


def started(receiver, directory, **kwargs) -> Ingress:
    ingress = Ingress(receiver, Journal(directory), recorder=None, **kwargs)
    LOOPS[id(ingress)] = asyncio.new_event_loop()
    LOOPS[id(ingress)].run_until_complete(ingress.start())
    return ingress


def take_all(ingress: Ingress, *webhooks, together: bool = False):
    async def go():
        if together:
            return await asyncio.gather(*(ingress.take(*w) for w in webhooks))
        return [await ingress.take(*w) for w in webhooks]
    return LOOPS[id(ingress)].run_until_complete(go())


def stopped(ingress: Ingress) -> None:
    loop = LOOPS.pop(id(ingress))
    loop.run_until_complete(ingress.stop())
    loop.close()


def recorder_of(receiver, directory, **kwargs) -> JournalRecorder:
    return JournalRecorder(receiver, JournalReader(directory), retry_seconds=0, **kwargs)


def test_webhooks_arriving_together_are_journalled_then_recorded_in_few_batches_in_arrival_order(receiver, tmp_path,
                                                                                              monkeypatch):
    ingress = started(receiver, tmp_path / "journal")
    appends, batches = [], []
    real_append, real_record = ingress.journal.append, receiver.record_journalled
    monkeypatch.setattr(ingress.journal, "append", lambda items: appends.append(len(items)) or real_append(items))
    monkeypatch.setattr(receiver, "record_journalled",
                        lambda bodies, at=None: batches.append(len(bodies)) or real_record(bodies, at))
    receipts = take_all(ingress, *(signed(text(f"wamid.{n}", f"message {n}")) for n in range(40)), together=True)
    assert [r.status for r in receipts] == [200] * 40
    assert sum(appends) == 40 and len(appends) < 40  # one disk flush for what arrived together
    assert recorded(receiver.store) == []  # (answered before any database work)
    assert ingress.health()["backlog"] == 40

    recorder = recorder_of(receiver, tmp_path / "journal", max_batch=16)
    assert recorder.drain() == 40
    assert recorded(receiver.store) == [(f"wamid.{n}", f"message {n}") for n in range(40)]
    assert batches == [16, 16, 8]
    assert ingress.health()["backlog"] == 0
    stopped(ingress)


def test_refused_webhooks_are_answered_at_once_and_never_journalled(receiver, tmp_path):
    ingress = started(receiver, tmp_path / "journal")
    forged, unsigned, not_json = take_all(ingress, (b'{"entry": []}', "sha256=" + "0" * 64), (b'{"entry": []}', None),
                                          (b"\xff\xfe garbage", sign(b"\xff\xfe garbage", SECRET)))
    assert (forged.status, unsigned.status, not_json.status) == (403, 403, 200)
    assert not_json.answer == {"status": "ignored"}
    assert JournalReader(tmp_path / "journal").read() == []  # nothing of them on disk
    stopped(ingress)


def test_a_database_that_is_down_does_not_hold_the_answers_and_loses_nothing(receiver, tmp_path, monkeypatch):
    come_back = database_down(receiver, monkeypatch)
    monkeypatch.setattr(ingress_module, "STALLED_SECONDS", 0.0)
    ingress = started(receiver, tmp_path / "journal")
    recorder = recorder_of(receiver, tmp_path / "journal")
    receipts = take_all(ingress, *(signed(text(f"wamid.{n}", f"message {n}")) for n in range(5)))
    assert [r.status for r in receipts] == [200] * 5
    assert recorder.step() is False and recorder.step() is False  # tried, the database refused, tried again
    assert recorder.outage.ongoing and recorded(receiver.store) == []
    assert ingress.health()["backlog"] == 5 and ingress.health()["recording"].startswith("stalled")
    come_back()
    assert recorder.drain() == 5
    assert not recorder.outage.ongoing
    assert ingress.health() == {"status": "ok", "backlog": 0, "recorder": "none", "recording": "ok"}
    assert recorded(receiver.store) == [(f"wamid.{n}", f"message {n}") for n in range(5)]
    stopped(ingress)


def test_what_was_acknowledged_but_not_recorded_is_recorded_after_a_restart(receiver, tmp_path, monkeypatch):
    """A stop (or a crash) while the database is away: the journal keeps the webhooks, and the
    next ingress's recorder records them, in order, once."""
    come_back = database_down(receiver, monkeypatch)
    first = started(receiver, tmp_path / "journal")
    assert [r.status for r in take_all(first, *(signed(text(f"wamid.{n}", f"message {n}")) for n in range(3)))] == [200] * 3
    recorder_of(receiver, tmp_path / "journal").drain()
    stopped(first)
    assert recorded(receiver.store) == []
    come_back()

    second = started(receiver, tmp_path / "journal")
    assert second.health()["backlog"] == 3  # (counted from the journal at the start)
    take_all(second, signed(text("wamid.3", "message 3")))
    assert recorder_of(receiver, tmp_path / "journal").drain() == 4
    assert recorded(receiver.store) == [(f"wamid.{n}", f"message {n}") for n in range(4)]
    assert second.health()["backlog"] == 0
    assert len(list((tmp_path / "journal").glob("*.wal"))) == 1  # the recorded segment is deleted
    stopped(second)


def test_the_arrival_time_is_recorded_not_the_time_the_database_took_it(receiver, tmp_path, monkeypatch):
    import datetime as dt
    import time as clock

    ingress = started(receiver, tmp_path / "journal")
    arrived = clock.time()
    take_all(ingress, signed(text("wamid.t", "hello")))
    clock.sleep(1.2)
    recorder_of(receiver, tmp_path / "journal").drain()
    stopped(ingress)
    with session_scope(receiver.store.engine) as s:
        received_at = s.execute(select(InboundRecord.received_at)).scalar_one()
    assert abs(received_at.replace(tzinfo=dt.timezone.utc).timestamp() - arrived) < 0.5


def test_a_full_backlog_is_answered_503_so_that_meta_redelivers(receiver, tmp_path):
    ingress = started(receiver, tmp_path / "journal", max_backlog=3)
    receipts = take_all(ingress, *(signed(text(f"wamid.{n}", "hi")) for n in range(5)))
    assert [r.status for r in receipts] == [200, 200, 200, 503, 503]
    recorder_of(receiver, tmp_path / "journal").drain()
    time.sleep(0.06)  # (the ingress reads the recorder's note at most every 50 ms)
    assert take_all(ingress, signed(text("wamid.3", "hi")))[0].status == 200  # room again
    stopped(ingress)


def test_a_journal_that_cannot_be_written_answers_503_and_keeps_going(receiver, tmp_path, monkeypatch):
    ingress = started(receiver, tmp_path / "journal")
    real = os.fdatasync
    failures = {"left": 1}

    def fdatasync(fd):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    first, second = take_all(ingress, signed(text("wamid.x", "lost to a full disk")), signed(text("wamid.y", "kept")))
    assert (first.status, second.status) == (503, 200)
    recorder_of(receiver, tmp_path / "journal").drain()
    assert recorded(receiver.store) == [("wamid.y", "kept")]  # (the refused one is Meta's to redeliver)
    stopped(ingress)


def test_a_webhook_that_cannot_be_recorded_is_set_aside_and_holds_back_nothing(receiver, tmp_path, monkeypatch):
    real = receiver.record_journalled

    def record_journalled(bodies, at=None):
        if any(b"poison" in body for body in bodies):
            raise RuntimeError("a bug")
        return real(bodies, at)

    monkeypatch.setattr(receiver, "record_journalled", record_journalled)
    ingress = started(receiver, tmp_path / "journal")
    take_all(ingress, *(signed(text(f"wamid.{n}", "poison" if n == 1 else f"m{n}")) for n in range(3)), together=True)
    recorder_of(receiver, tmp_path / "journal").drain()
    stopped(ingress)
    assert recorded(receiver.store) == [("wamid.0", "m0"), ("wamid.2", "m2")]
    [aside] = (tmp_path / "journal" / "set-aside").iterdir()
    assert b"poison" in aside.read_bytes()  # kept for the operator, not lost


def test_a_card_number_typed_by_a_customer_is_gone_from_the_journal_seconds_after_it_is_recorded(receiver, tmp_path):
    """The journal keeps webhooks as they came (signed bytes: a card number cannot be hidden
    before it is journalled); the ingress's tick moves on from a segment and deletes it once
    the recorder has recorded it, and the channel stores the number hidden."""
    ingress = Ingress(receiver, Journal(tmp_path / "journal", retain_seconds=0.1), recorder=None, tick_seconds=0.05)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(ingress.start())
    take = ingress.take(*signed(text("wamid.card", "block 4111 1111 1111 1111 cvv 123")))
    assert loop.run_until_complete(take).status == 200
    on_disk = lambda: [p for p in (tmp_path / "journal").rglob("*") if p.is_file() and b"4111 1111" in p.read_bytes()]
    assert on_disk()
    loop.run_until_complete(asyncio.sleep(0.3))
    assert on_disk()  # (not yet recorded: kept, whatever its age)
    recorder_of(receiver, tmp_path / "journal").drain()
    deadline = time.monotonic() + 5
    while on_disk() and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.05))
    assert on_disk() == []
    [(mid, stored)] = recorded(receiver.store)
    assert mid == "wamid.card" and "4111 1111 1111 1111" not in stored and "1111" in stored
    take = ingress.take(*signed(text("wamid.next", "and then")))  # the ingress goes on in a new segment
    assert loop.run_until_complete(take).status == 200
    recorder_of(receiver, tmp_path / "journal").drain()
    assert [m for m, _ in recorded(receiver.store)] == ["wamid.card", "wamid.next"]
    loop.run_until_complete(ingress.stop())
    loop.close()


def test_the_recorder_notes_how_far_it_got_at_most_every_note_seconds_and_once_it_caught_up(receiver, tmp_path):
    """Each note replaces a file: while batches follow one another it is brought up to date at
    most every note_seconds; draining ends with it up to date (a lagging note only means a few
    webhooks recorded again after a crash)."""
    ingress = started(receiver, tmp_path / "journal")
    take_all(ingress, *(signed(text(f"wamid.{n}", f"message {n}")) for n in range(30)))
    recorder = recorder_of(receiver, tmp_path / "journal", max_batch=1, note_seconds=60)
    notes = []
    real = recorder.reader.recorded
    recorder.reader.recorded = lambda position: notes.append(position) or real(position)
    while recorder.step():
        pass
    assert recorder.recorded == 30 and len(notes) == 1  # the first batch's; then not again within 60 s
    assert ingress.health()["backlog"] == 29 and recorder.unnoted
    assert recorder.drain() == 0 and len(notes) == 2 and not recorder.unnoted
    assert ingress.health()["backlog"] == 0
    assert recorded(receiver.store) == [(f"wamid.{n}", f"message {n}") for n in range(30)]
    stopped(ingress)


def test_a_following_recorder_notes_what_it_recorded_soon_after_catching_up(receiver, tmp_path):
    ingress = started(receiver, tmp_path / "journal")
    recorder = recorder_of(receiver, tmp_path / "journal", note_seconds=0.3)
    notes = []
    real = recorder.reader.recorded
    recorder.reader.recorded = lambda position: notes.append((time.monotonic(), position)) or real(position)
    wake_read, wake_write = os.pipe()
    follower = threading.Thread(target=follow, args=(recorder, wake_read, 5.0), daemon=True)
    follower.start()
    try:
        for n in range(5):  # one after another, each waking the recorder, within a note's interval
            take_all(ingress, signed(text(f"wamid.{n}", f"message {n}")))
            os.write(wake_write, b".")
            time.sleep(0.03)
        deadline = time.monotonic() + 5
        while ingress.health()["backlog"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ingress.health()["backlog"] == 0  # noted within a note's interval (not the 5 s look)
        assert recorded(receiver.store) == [(f"wamid.{n}", f"message {n}") for n in range(5)]
        assert 1 <= len(notes) <= 3  # not once per webhook
        assert all(b - a >= 0.29 for (a, _), (b, _) in zip(notes, notes[1:]))
    finally:
        os.close(wake_write)
        follower.join(10)
        os.close(wake_read)
    assert not follower.is_alive()
    stopped(ingress)
