"""Workers woken by the database: PostgreSQL LISTEN for the customers the ingress recorded.

The ingress records a customer's message and, in the same transaction, NOTIFYs the customer's
number on `cardcare_inbound` (store._announce; PostgreSQL delivers it at commit, never for a
rollback). Each Rasa worker listens on its own connection, in a thread, and starts on that
customer at once; the customer's lease decides which worker answers (the others' attempt
finds it held and stops). The workers still look for due work on a slow timer: a notification
is a hint, the recorded rows are the truth, so one lost while a worker reconnected costs
latency (at most a poll interval), never a message.

On SQLite there is nothing to listen to: the workers poll (channel.INGRESS_POLL_SECONDS).
"""
from __future__ import annotations

import logging
import select
import threading
import time
from typing import Callable, Optional

from sqlalchemy.engine import Engine

from connectors.whatsapp.store import INBOUND_CHANNEL

logger = logging.getLogger(__name__)
RECONNECT_SECONDS = (0.5, 1, 2, 5, 10)


def can_listen(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class InboundListener:
    """LISTEN in a daemon thread; `on_sender(number)` is called (from that thread) for each
    notification, `listening` says whether notifications are arriving now (False while
    connecting or after the connection broke: the caller polls quickly then)."""

    def __init__(self, engine: Engine, on_sender: Callable[[str], None], channel: str = INBOUND_CHANNEL) -> None:
        self.engine, self.on_sender, self.channel = engine, on_sender, channel
        self.listening = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cardcare-inbound-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _connect(self):
        import psycopg2
        import psycopg2.extensions

        args = self.engine.url.translate_connect_args(username="user", database="dbname")
        connection = psycopg2.connect(**args, **dict(self.engine.url.query), connect_timeout=5)
        connection.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with connection.cursor() as cursor:
            cursor.execute(f'LISTEN "{self.channel}"')
        return connection

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            connection = None
            try:
                connection = self._connect()
                self.listening, failures = True, 0
                logger.info("listening for recorded messages on PostgreSQL (%s)", self.channel)
                while not self._stop.is_set():
                    if select.select([connection], [], [], 1.0)[0]:
                        connection.poll()
                        while connection.notifies:
                            self._deliver(connection.notifies.pop(0).payload)
            except Exception as exc:  # the database restarting, a network cut: poll meanwhile, reconnect
                if self.listening or failures == 0:
                    logger.warning("listening for recorded messages stopped (%s); polling until it is back",
                                   type(exc).__name__)
                self.listening = False
                time.sleep(RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)])
                failures += 1
            finally:
                self.listening = False
                if connection is not None:
                    try:
                        connection.close()
                    except Exception:
                        pass

    def _deliver(self, sender: str) -> None:
        try:
            self.on_sender(sender)
        except Exception:  # (the loop is closing): the timer finds the customer anyway
            logger.debug("a wake-up could not be handed over", exc_info=True)
