"""Rasa's conversation lock per message: stock RedisLockStore against cardcare's.

    python -m bench.lock_bench [--locks 2000]

Takes and releases the lock of 50 conversations in turn, uncontended as in serving (the
channel's lease already gives each customer to one worker), against the Redis at
127.0.0.1:6379 (database 15, keys under a fresh prefix, left empty). Prints wall time,
this process's CPU and round trips to Redis per lock.
"""
from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from components.lock_store import AtomicRedisLockStore
from rasa.core.lock_store import RedisLockStore


async def measure(store, locks: int) -> "tuple[float, float, int]":
    async with store.lock("warm-up"):
        pass
    calls = []
    execute = store.red.execute_command
    store.red.execute_command = lambda *args, **options: calls.append(args[0]) or execute(*args, **options)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(locks):
        async with store.lock(f"91980{i % 50:07d}"):
            pass
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return 1000 * wall / locks, 1000 * cpu / locks, len(calls) / locks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locks", type=int, default=2000)
    args = parser.parse_args(argv)
    prefix = "bench" + uuid.uuid4().hex[:8]
    for label, store in (("stock RedisLockStore", RedisLockStore(host="127.0.0.1", port=6379, db=15,
                                                                 key_prefix=prefix)),
                         ("AtomicRedisLockStore", AtomicRedisLockStore(host="127.0.0.1", port=6379, db=15,
                                                                       key_prefix=prefix))):
        wall, cpu, calls = asyncio.run(measure(store, args.locks))
        print(f"{label:22s} {wall:6.3f} ms wall, {cpu:6.3f} ms CPU (this process), {calls:4.1f} round trips to Redis per lock")


if __name__ == "__main__":
    main()
