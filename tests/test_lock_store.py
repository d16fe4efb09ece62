"""components.lock_store.AtomicRedisLockStore against the real Redis (127.0.0.1:6379)."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from components.lock_store import AtomicRedisLockStore
from rasa.core.lock_store import LockError, LockStore, RedisLockStore
from rasa.utils.endpoints import EndpointConfig

REDIS_DB = 15


def store(prefix: str, **options) -> AtomicRedisLockStore:
    return AtomicRedisLockStore(host="127.0.0.1", port=6379, db=REDIS_DB, key_prefix=prefix, **options)


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


def keys_left(lock_store: AtomicRedisLockStore, conversation: str) -> list:
    return [k for k in lock_store._keys(conversation) if lock_store.red.exists(k)]


def test_rasa_builds_it_from_endpoints_yml(prefix):
    endpoint = EndpointConfig(url="127.0.0.1", type="components.lock_store.AtomicRedisLockStore", port=6379,
                              db=REDIS_DB, key_prefix=prefix, socket_timeout=3)
    made = LockStore.create(endpoint)
    assert isinstance(made, AtomicRedisLockStore)
    assert made.key_prefix == f"{prefix}:lock:"
    kwargs = made.red.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == ("127.0.0.1", 6379, REDIS_DB, 3.0)


def test_an_uncontended_lock_is_one_round_trip_each_way_and_leaves_nothing(prefix):
    async def run():
        lock_store = store(prefix)
        async with lock_store.lock("919800000000"):  # Redis learns the scripts (EVALSHA refused, SCRIPT LOAD)
            pass
        calls = []
        original = lock_store.red.execute_command

        def counted(*args, **kwargs):
            calls.append(args[0])
            return original(*args, **kwargs)

        lock_store.red.execute_command = counted
        async with lock_store.lock("919800000001") as lock:
            assert lock.conversation_id == "919800000001"
            assert len(calls) == 1  # taken: one script
            assert keys_left(lock_store, "919800000001")
            checked = len(calls)
        assert len(calls) == checked + 1  # released: one script
        assert keys_left(lock_store, "919800000001") == []

    asyncio.run(run())


def test_two_instances_never_hold_one_conversation_at_once_and_serve_in_order(prefix):
    """Two stores (two Rasa workers) and 12 turns of one conversation, each holding the lock
    across awaits: no two overlap, and they are served in the order their tickets were issued."""
    async def run():
        workers = [store(prefix), store(prefix)]
        inside, overlaps, served = [], [], []

        async def turn(number: int) -> None:
            await asyncio.sleep(0.002 * number)  # tickets issued in this order
            async with workers[number % 2].lock("919800000002", wait_time_in_seconds=0.02):
                if inside:
                    overlaps.append((inside[0], number))
                inside.append(number)
                served.append(number)
                await asyncio.sleep(0.01)
                inside.remove(number)

        await asyncio.gather(*(turn(n) for n in range(12)))
        assert overlaps == []
        assert served == list(range(12))
        assert keys_left(workers[0], "919800000002") == []

    asyncio.run(run())


def test_other_conversations_are_not_held_up(prefix):
    async def run():
        lock_store = store(prefix)
        async with lock_store.lock("919800000003"):
            started = time.perf_counter()
            async with lock_store.lock("919800000004"):
                pass
            assert time.perf_counter() - started < 0.5

    asyncio.run(run())


def test_a_killed_holders_ticket_expires_and_the_next_one_goes_on(prefix):
    async def run():
        lock_store = store(prefix)
        keys = lock_store._keys("919800000005")
        ticket, served = lock_store._issue(keys=keys, args=[400])  # a worker killed while holding it
        assert served == 1
        started = time.perf_counter()
        async with lock_store.lock("919800000005", wait_time_in_seconds=0.05):
            waited = time.perf_counter() - started
        assert 0.3 < waited < 2.0
        assert keys_left(lock_store, "919800000005") == []

    asyncio.run(run())


def test_a_ticket_that_expires_while_waiting_raises_lock_error(prefix):
    async def run():
        lock_store = store(prefix)
        keys = lock_store._keys("919800000006")
        lock_store._issue(keys=keys, args=[5000])  # held for 5 s
        with pytest.raises(LockError):
            async with lock_store.lock("919800000006", lock_lifetime=0.2, wait_time_in_seconds=0.05):
                pass
        lock_store.red.delete(*keys)

    asyncio.run(run())


def test_a_cancelled_waiter_gives_its_ticket_back(prefix):
    async def run():
        lock_store = store(prefix)
        holding = asyncio.Event()
        release = asyncio.Event()

        async def holder():
            async with lock_store.lock("919800000007"):
                holding.set()
                await release.wait()

        first = asyncio.ensure_future(holder())
        await holding.wait()
        waiter = asyncio.ensure_future(lock_store.lock("919800000007", wait_time_in_seconds=0.02).__aenter__())
        await asyncio.sleep(0.1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        await first
        started = time.perf_counter()
        async with lock_store.lock("919800000007"):  # not behind the cancelled waiter's ticket
            pass
        assert time.perf_counter() - started < 0.5
        assert keys_left(lock_store, "919800000007") == []

    asyncio.run(run())


def test_redis_away_is_a_lock_error_without_the_conversation_id(prefix):
    async def run():
        away = AtomicRedisLockStore(host="127.0.0.1", port=1, db=REDIS_DB, key_prefix=prefix, socket_timeout=1)
        with pytest.raises(LockError) as raised:
            async with away.lock("919800000008"):
                pass
        assert "919800000008" not in str(raised.value)

    asyncio.run(run())


def test_why_not_stock_two_workers_issuing_at_once_both_get_ticket_one(prefix):
    """Stock RedisLockStore.issue_ticket is get, change, set: two workers whose calls interleave
    (replayed here step by step) are both given the first ticket, so both hold the lock."""
    workers = [RedisLockStore(host="127.0.0.1", port=6379, db=REDIS_DB, key_prefix=prefix) for _ in range(2)]
    read = [w.get_or_create_lock("919800000009") for w in workers]  # both read: no lock yet
    tickets = [lock.issue_ticket(60) for lock in read]
    for worker, lock in zip(workers, read):
        worker.save_lock(lock)
    assert tickets[0] == tickets[1]
    assert not workers[0].get_lock("919800000009").is_locked(tickets[0])
    assert not workers[1].get_lock("919800000009").is_locked(tickets[1])
    workers[0].delete_lock("919800000009")


def test_a_killed_instances_lock_is_freed_within_a_heartbeat_not_the_whole_lock_lifetime(prefix):
    """A worker killed mid-turn renews nothing and releases nothing: the next turn of that
    conversation goes on once its ticket's heartbeat lapses, not after Rasa's 60 s lifetime."""
    dead_loop = asyncio.new_event_loop()
    killed = store(prefix, ticket_heartbeat=0.4)
    held = killed.lock("919800000010", lock_lifetime=60)
    dead_loop.run_until_complete(held.__aenter__())  # then its loop never runs again, as if killed

    async def run():
        started = time.perf_counter()
        async with store(prefix, ticket_heartbeat=0.4).lock("919800000010", wait_time_in_seconds=0.05):
            return time.perf_counter() - started

    waited = asyncio.run(run())
    assert 0.2 < waited < 2.0
    dead_loop.close()


def test_a_turn_longer_than_the_heartbeat_keeps_its_lock_until_it_ends(prefix):
    async def run():
        workers = [store(prefix, ticket_heartbeat=0.3), store(prefix, ticket_heartbeat=0.3)]
        events = []

        async def slow_turn():
            async with workers[0].lock("919800000011"):
                events.append("slow in")
                await asyncio.sleep(1.2)  # four heartbeats
                events.append("slow out")

        async def next_turn():
            await asyncio.sleep(0.05)
            async with workers[1].lock("919800000011", wait_time_in_seconds=0.05):
                events.append("next in")

        await asyncio.gather(slow_turn(), next_turn())
        assert events == ["slow in", "slow out", "next in"]
        assert keys_left(workers[0], "919800000011") == []

    asyncio.run(run())


def test_no_ticket_outlives_the_lock_lifetime_even_while_renewed(prefix):
    async def run():
        lock_store = store(prefix, ticket_heartbeat=0.3)
        async with lock_store.lock("919800000012", lock_lifetime=0.5):
            await asyncio.sleep(1.0)  # renewed up to 0.5 s after its issue, then left to expire
            started = time.perf_counter()
            async with store(prefix).lock("919800000012", wait_time_in_seconds=0.05):
                assert time.perf_counter() - started < 1.0

    asyncio.run(run())


def test_the_heartbeat_is_read_from_endpoints_yml(prefix):
    endpoint = EndpointConfig(url="127.0.0.1", type="components.lock_store.AtomicRedisLockStore", port=6379,
                              db=REDIS_DB, key_prefix=prefix, ticket_heartbeat=4)
    assert LockStore.create(endpoint).heartbeat == 4.0
