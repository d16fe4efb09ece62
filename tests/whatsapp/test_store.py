"""The channel's durable state, shared by every instance through the database."""
import datetime as dt
import os

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from cardsystem.db import dispose_engine, get_engine
from connectors.whatsapp.inbound import Inbound, Status
from connectors.whatsapp.store import Base, ChannelStore, TurnChoice


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


def test_taking_a_customer_claims_in_the_same_read_what_starts_now(url):
    """take() reads the queue and, in that one transaction, marks the message due next started,
    takes its numbered menu and checks its button; finish_turn() does the same for the next one."""
    store, sender = ChannelStore(url), "919800000001"
    store.record_inbound(inbound("wamid.1", text="2"))
    store.record_inbound(Inbound(message_id="wamid.2", sender=sender, reply_by="to", kind="button", text="/a",
                                 timestamp=1))
    store.save_choices(sender, {"1": "/a", "2": "/b"}, ["/a", "/b"])
    queue = store.take(sender, "a")
    assert queue.choice == TurnChoice("wamid.1", {"1": "/a", "2": "/b"}, False)
    assert not queue.pending[0].started                          # as it was before this read ...
    assert store.pending(sender)[0].started                      # ... and marked now
    assert store.take_menu(sender) == {}                         # the menu was for this message only
    after = store.finish_turn("wamid.1", sender, "to", [{"type": "text", "text": {"body": f"r{n}"}} for n in range(2)])
    assert [(r.state, r.attempts) for r in after.replies] == [("queued", 0), ("queued", 0)]  # in flight only when sent
    assert after.choice == TurnChoice("wamid.2", {}, True)       # a button the bot showed: an intent


def test_a_message_waiting_out_its_back_off_is_not_claimed(url):
    store, sender = ChannelStore(url), "919800000001"
    store.record_inbound(inbound("wamid.1", text="1"))
    store.save_menu(sender, {"1": "/a"})
    store.turn_failed("wamid.1", "TurnAborted: no model loaded", dt.timedelta(minutes=5))
    queue = store.take(sender, "a")
    assert queue.choice is None and not store.pending(sender)[0].started
    assert store.take_menu(sender) == {"1": "/a"}                 # left for when the message is answered


def test_choices_sent_are_kept_in_one_transaction(url):
    store, sender = ChannelStore(url), "919800000001"
    store.save_choices(sender, {"1": "/a", "2": "/b"}, ["/a", "/b", "/a", ""])
    store.save_choices(sender, None, ["/b", "/c"])               # a template's quick replies: the menu stays
    assert all(store.was_offered(sender, p) for p in ("/a", "/b", "/c")) and not store.was_offered(sender, "/d")
    assert store.take_menu(sender) == {"1": "/a", "2": "/b"}
    store.save_choices(sender, {"1": "/x"}, ["/x"])
    store.save_choices(sender, {}, ["/y"])                       # buttons without a menu: the old menu goes
    assert store.take_menu(sender) == {}


def test_only_a_workers_bookkeeping_commits_without_waiting_for_the_disk(url):
    """On PostgreSQL a worker's bookkeeping (leases, turns started and answered, replies settled,
    menus) commits asynchronously; what the recorder records, and the "sending" mark a reply gets
    before it leaves, wait for the disk (and so put the bookkeeping before them on disk too). On
    SQLite every commit is as before."""
    from sqlalchemy import event, text

    store, sender = ChannelStore(url), "919800000001"
    statements = []
    event.listen(store.engine, "before_cursor_execute", lambda _c, _cur, statement, *_: statements.append(statement))

    def relaxed(call) -> bool:
        statements.clear()
        call()
        return any("synchronous_commit TO OFF" in s for s in statements)

    postgres = url.startswith("postgresql")
    assert not relaxed(lambda: store.record_webhooks([inbound("wamid.1")], []))
    assert relaxed(lambda: store.take(sender, "a")) == postgres
    assert relaxed(lambda: store.begin_turn("wamid.1")) == postgres
    assert relaxed(lambda: store.finish_turn("wamid.1", sender, "to", [{"type": "text", "text": {"body": "r"}}])) \
        == postgres
    [reply] = store.queued_replies(sender)
    assert not relaxed(lambda: store.reply_sending(reply.id))
    assert relaxed(lambda: store.reply_sent(reply.id, sender, reply.body, "wamid.out", 1)) == postgres
    assert relaxed(lambda: store.save_choices(sender, {"1": "/a"}, ["/a"])) == postgres
    assert relaxed(lambda: store.release_if_done(sender, "a")) == postgres
    assert relaxed(lambda: store.acquire(sender, "a")) == postgres
    assert not relaxed(lambda: store.turn_failed("wamid.1", "x", dt.timedelta(seconds=1)))
    if postgres:  # the setting lasts one transaction: the next commit waits for the disk again
        with store.engine.connect() as connection:
            assert connection.execute(text("SHOW synchronous_commit")).scalar() == "on"
    assert [s["wamid"] for s in store.sends()] == ["wamid.out"] and store.pending(sender) == []
