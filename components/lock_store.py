"""Rasa's conversation lock in Redis, taken and released in one round trip each.

    lock_store:
      type: components.lock_store.AtomicRedisLockStore
      url: 127.0.0.1             # host, as for `type: redis`; port, db, username, password,
      port: 6379                 # use_ssl, key_prefix and socket_timeout too
      db: 1
      key_prefix: cardcare

Every message Rasa handles runs under a lock on its conversation (`agent.handle_message`, the
HTTP API's conversation routes), so that two instances never work on one tracker at once.
Stock `RedisLockStore` keeps a conversation's tickets as one JSON value that each instance
reads, changes and writes back: seven blocking Redis calls per message (issue: get, set;
acquire: get; release: get, set, get, delete), each of which stops the instance's event loop
(redis-py's blocking client inside Sanic's loop), and two instances that issue a ticket at
the same moment can both read the same value and both be given the same number, so both
"hold" the lock. Here each step is one Lua script, which Redis runs atomically:

- issue: the next number of the conversation's counter (INCR), stored with its expiry in the
  conversation's hash, and the answer whether it is already the one served (the lowest live
  number): an uncontended lock costs this one round trip;
- wait: while an earlier live ticket exists, sleep (from 5 ms, doubling, up to Rasa's
  `wait_time_in_seconds`; the instance goes on serving others) and ask again;
- release: the ticket deleted, and the keys with it once no one else holds a ticket.

The calls are blocking, as stock's: redis-py's asyncio client costs about three times the CPU
per call (0.42 against 0.16 ms per lock), and two short round trips hold the loop less than
stock's seven. `python -m bench.lock_bench` compares it with stock.

A ticket lives `ticket_heartbeat` seconds (default 10) and is renewed while its instance is
alive: by the holder every third of that while its turn runs, by a waiter at each look. So a
lock held by a killed instance is freed within 10 s (stock keeps it for Rasa's whole lock
lifetime, `TICKET_LOCK_LIFETIME`, 60 s by default: a killed worker's customers waited a
minute), while a slow turn keeps its lock. As stock, no ticket outlives the lock lifetime
counted from its issue; time is Redis's own clock, so instances whose clocks differ agree. A
ticket that expired while waiting raises `LockError`, as stock does, and so does a Redis that
cannot be reached (the turn fails and is tried again; nothing is half-written). Rasa's
semantics are kept: first come, first served per conversation.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncGenerator, Optional, Text

from rasa.core.lock import Ticket, TicketLock
from rasa.core.lock_store import (DEFAULT_REDIS_LOCK_STORE_KEY_PREFIX, DEFAULT_SOCKET_TIMEOUT_IN_SECONDS,
                                  LOCK_LIFETIME, LockError, LockStore)

logger = logging.getLogger(__name__)

FIRST_WAIT_S = 0.005
HEARTBEAT_S = 10.0  # a ticket not renewed for this long is dropped (its instance is gone)

# KEYS: tickets (hash number -> expiry in ms), counter. ARGV: lifetime in ms.
# Returns {ticket, 1 if it is served now else 0}.
_NOW = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
"""
_PRUNE = _NOW + """
local lowest = nil
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local number = tonumber(flat[i])
  if tonumber(flat[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], flat[i])
  elseif lowest == nil or number < lowest then
    lowest = number
  end
end
"""
_EXTEND = """
local function extend(ms)
  for _, key in ipairs(KEYS) do
    if redis.call('PTTL', key) < ms then
      redis.call('PEXPIRE', key, ms)
    end
  end
end
"""
ISSUE = _PRUNE + _EXTEND + """
local ticket = redis.call('INCR', KEYS[2])
local lifetime = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], ticket, now + lifetime)
extend(lifetime + 1000)
if lowest == nil then
  return {ticket, 1}
end
return {ticket, 0}
"""
# KEYS as ISSUE. ARGV: ticket, ms to renew it for (0: not renewed). Returns 1 if served now,
# 0 if still waiting, -1 if it expired.
ACQUIRE = _PRUNE + _EXTEND + """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return -1
end
local renew = tonumber(ARGV[2])
if renew > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], now + renew)
  extend(renew + 1000)
end
if lowest == tonumber(ARGV[1]) then
  return 1
end
return 0
"""
# KEYS as ISSUE. ARGV: ticket, ms to renew it for. Returns 1, or 0 if it had expired.
RENEW = _NOW + _EXTEND + """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
extend(tonumber(ARGV[2]) + 1000)
return 1
"""
# KEYS as ISSUE. ARGV: ticket. Returns how many tickets are left.
RELEASE = """
redis.call('HDEL', KEYS[1], ARGV[1])
local left = redis.call('HLEN', KEYS[1])
if left == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return left
"""


class AtomicRedisLockStore(LockStore):
    """Redis ticket locks: one atomic script per step (see the module)."""

    def __init__(self, endpoint_config: Any = None, host: Text = "localhost", port: int = 6379, db: int = 1,
                 username: Optional[Text] = None, password: Optional[Text] = None, use_ssl: bool = False,
                 key_prefix: Optional[Text] = None,
                 socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_IN_SECONDS,
                 ticket_heartbeat: float = HEARTBEAT_S, **kwargs: Any) -> None:
        if endpoint_config is not None:  # as Rasa builds a custom store: from endpoints.yml's section
            options = dict(endpoint_config.kwargs)
            host = endpoint_config.url or host
            port = options.pop("port", port)
            db = options.pop("db", db)
            username = options.pop("username", username)
            password = options.pop("password", password)
            use_ssl = options.pop("use_ssl", use_ssl)
            key_prefix = options.pop("key_prefix", key_prefix)
            socket_timeout = options.pop("socket_timeout", socket_timeout)
            ticket_heartbeat = options.pop("ticket_heartbeat", ticket_heartbeat)
        import redis

        self.heartbeat = float(ticket_heartbeat)

        self.red = redis.Redis(host=host, port=int(port), db=int(db), username=username, password=password,
                               ssl=bool(use_ssl), socket_timeout=float(socket_timeout),
                               socket_connect_timeout=float(socket_timeout))
        self.key_prefix = DEFAULT_REDIS_LOCK_STORE_KEY_PREFIX
        if key_prefix:
            if str(key_prefix).isalnum():
                self.key_prefix = f"{key_prefix}:{DEFAULT_REDIS_LOCK_STORE_KEY_PREFIX}"
            else:
                logger.warning("lock store: key_prefix must be alphanumeric; using %r", self.key_prefix)
        self._issue = self.red.register_script(ISSUE)
        self._acquire = self.red.register_script(ACQUIRE)
        self._renew = self.red.register_script(RENEW)
        self._release = self.red.register_script(RELEASE)
        super().__init__()

    def _keys(self, conversation_id: Text) -> "list[str]":
        return [f"{self.key_prefix}t:{conversation_id}", f"{self.key_prefix}n:{conversation_id}"]

    @asynccontextmanager
    async def lock(self, conversation_id: Text, lock_lifetime: float = LOCK_LIFETIME,
                   wait_time_in_seconds: float = 1) -> AsyncGenerator[TicketLock, None]:
        keys = self._keys(conversation_id)
        deadline = time.monotonic() + lock_lifetime  # (no ticket outlives the lock lifetime, as stock)
        try:
            ticket, served = (int(v) for v in self._issue(keys=keys, args=[max(1, self._lifetime_ms(deadline))]))
        except Exception as error:  # Redis away or refusing: as stock, a LockError (the turn fails)
            raise LockError(f"Error while acquiring a conversation lock: {type(error).__name__}") from error
        keeper: Optional[asyncio.Task] = None
        try:
            wait, longest = FIRST_WAIT_S, max(min(wait_time_in_seconds, self.heartbeat / 3), FIRST_WAIT_S)
            while not served:
                await asyncio.sleep(wait)
                wait = min(wait * 2, longest)
                state = int(self._acquire(keys=keys, args=[ticket, max(0, self._lifetime_ms(deadline))]))
                if state < 0:
                    raise LockError("Could not acquire a conversation lock: its ticket expired while waiting")
                served = state == 1
            keeper = asyncio.ensure_future(self._keep(keys, ticket, deadline))
            lock = TicketLock(conversation_id)
            lock.tickets.append(Ticket(ticket, time.time() + lock_lifetime))
            yield lock
        finally:
            if keeper is not None:
                keeper.cancel()
            try:
                self._release(keys=keys, args=[ticket])
            except Exception as error:  # the ticket expires by itself after its lifetime
                logger.warning("lock store: could not release a conversation lock (%s); it expires in %.0f s",
                               type(error).__name__, lock_lifetime)

    def _lifetime_ms(self, deadline: float) -> int:
        """How long a ticket lives from now: a heartbeat, but not past its deadline (<= 0: it is past)."""
        left = deadline - time.monotonic()
        return int(min(self.heartbeat, left) * 1000) if left > 0 else 0

    async def _keep(self, keys: "list[str]", ticket: int, deadline: float) -> None:
        """Renew a held ticket every third of a heartbeat while its turn runs (cancelled at release)."""
        while True:
            await asyncio.sleep(self.heartbeat / 3)
            lifetime = self._lifetime_ms(deadline)
            if lifetime <= 0:
                return  # the lock lifetime is over: it expires, as stock's would
            try:
                if not int(self._renew(keys=keys, args=[ticket, lifetime])):
                    logger.warning("lock store: a conversation lock expired while its turn still ran "
                                   "(Redis out of reach for longer than %.0f s?)", self.heartbeat)
                    return
            except Exception as error:
                logger.warning("lock store: could not renew a conversation lock (%s)", type(error).__name__)

    # Rasa's per-step interface, for code that calls it directly (nothing in Rasa 3.6's serving
    # path does: it only enters `lock()`): not kept in this store.
    def get_lock(self, conversation_id: Text) -> Optional[TicketLock]:
        raise NotImplementedError("AtomicRedisLockStore is used through lock()")

    def delete_lock(self, conversation_id: Text) -> None:
        raise NotImplementedError("AtomicRedisLockStore is used through lock()")

    def save_lock(self, lock: TicketLock) -> None:
        raise NotImplementedError("AtomicRedisLockStore is used through lock()")
