"""The channel's durable state, shared by every instance through the database."""
import datetime as dt
import os

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from cardsystem.db import dispose_engine, get_engine
from connectors.whatsapp.inbound import Inbound, Status
from connectors.whatsapp.store import Base, ChannelStore


POSTGRES = os.environ.get("CARDCARE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def require_postgres(url: str) -> None:
    """Skip the test when no PostgreSQL answers at `url`."""
    try:
        with create_engine(url).connect():
            pass
    except OperationalError:
        pytest.skip(f"no PostgreSQL at {url}")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """The embedded default and PostgreSQL (what several instances share in production)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'channel.db'}"
    else:
        url = POSTGRES
        require_postgres(url)
        Base.metadata.drop_all(get_engine(url))
    yield url
    if request.param == "postgresql":
        Base.metadata.drop_all(get_engine(url))
    dispose_engine(url)


def inbound(mid, sender="919800000001", text="hi"):
    return Inbound(message_id=mid, sender=sender, reply_by="to", kind="text", text=text, timestamp=0)


def test_a_redelivered_message_is_recorded_once_even_by_another_instance(url):
    first, second = ChannelStore(url), ChannelStore(url)
    assert first.record_inbound(inbound("wamid.1"))
    assert not second.record_inbound(inbound("wamid.1"))
    assert [p.message_id for p in second.pending()] == ["wamid.1"]


def test_unanswered_messages_survive_a_restart_in_order(url):
    store = ChannelStore(url)
    base = dt.datetime(2026, 11, 23, 10, 0)
    for i, text in enumerate(["balance", "statement", "thanks"]):
        store.record_inbound(inbound(f"wamid.{i}", text=text), base + dt.timedelta(seconds=i))
    store.finish("wamid.0")
    restarted = ChannelStore(url)
    pending = restarted.pending("919800000001")
    assert [p.text for p in pending] == ["statement", "thanks"]
    assert pending[0].metadata["whatsapp"]["message_id"] == "wamid.1"


def test_service_window_is_24_hours_from_the_last_customer_message(url):
    store = ChannelStore(url)
    at = dt.datetime(2026, 11, 22, 9, 0)
    store.record_inbound(inbound("wamid.a"), at)
    assert store.window_open("919800000001", at + dt.timedelta(hours=23, minutes=59))
    assert not store.window_open("919800000001", at + dt.timedelta(hours=24))
    assert not store.window_open("919899999999", at)
    store.record_inbound(inbound("wamid.b"), at + dt.timedelta(hours=30))
    assert store.window_open("919800000001", at + dt.timedelta(hours=40))


def test_sends_and_their_later_statuses(url):
    store = ChannelStore(url)
    store.record_send("919800000001", {"type": "text", "text": {"body": "hi"}}, "sent", wamid="wamid.out")
    assert store.record_status(Status("wamid.out", "delivered", "919800000001", 0))
    assert store.record_status(Status("wamid.out", "failed", "919800000001", 0, [{"code": 131026, "title": "Undeliverable"}]))
    assert not store.record_status(Status("wamid.unknown", "read", None, 0))
    [send] = store.sends("919800000001")
    assert send["status"] == "failed" and send["error_code"] == 131026
    store.record_send("919800000001", {"type": "text", "text": {"body": "again"}}, "sent", wamid="wamid.two")
    for late in ("read", "delivered", "sent", "read"):  # receipts arrive out of order and twice
        assert store.record_status(Status("wamid.two", late, "919800000001", 0))
    assert store.sends("919800000001")[-1]["status"] == "read"


def test_messages_are_answered_in_the_order_the_customer_sent_them(url):
    store = ChannelStore(url)
    later = Inbound(message_id="wamid.b", sender="919800000001", reply_by="to", kind="text", text="second",
                    timestamp=1795500010)
    earlier = Inbound(message_id="wamid.a", sender="919800000001", reply_by="to", kind="text", text="first",
                      timestamp=1795500005)
    store.record_inbound(later)    # webhooks may arrive out of order
    store.record_inbound(earlier)
    assert [p.text for p in store.pending("919800000001")] == ["first", "second"]


def test_a_sender_lease_is_held_by_one_instance_until_released_or_expired(url):
    store, other = ChannelStore(url), ChannelStore(url)
    assert store.acquire("919800000001", "a")
    assert store.acquire("919800000001", "a")          # renewing one's own lease
    assert not other.acquire("919800000001", "b")      # held by a live instance
    assert other.acquire("919800000002", "b")          # other customers are independent
    store.release("919800000001", "a")
    assert other.acquire("919800000001", "b")
    store.release("919800000001", "a")                 # releasing someone else's lease does nothing
    assert not store.acquire("919800000001", "a")
    assert store.acquire("919800000003", "a", ttl=dt.timedelta(seconds=-1))  # an instance that died
    assert other.acquire("919800000003", "b")


def test_a_numbered_menu_is_valid_for_the_next_message_only(url):
    store = ChannelStore(url)
    assert store.take_menu("919800000001") == {}
    store.save_menu("919800000001", {"1": "/a", "2": "/b"})
    assert store.take_menu("919800000001") == {"1": "/a", "2": "/b"}
    assert store.take_menu("919800000001") == {}
    store.save_menu("919800000001", {"1": "/a"})
    store.save_menu("919800000001", {})                # a later message without a menu replaces it
    assert store.take_menu("919800000001") == {}
