"""The ingress's recorder: follows the journal and records it in the channel database.

    python -m connectors.whatsapp.recorder   (the ingress starts it; it stops when the ingress goes)

A process of its own, so that parsing webhooks and talking to the database never hold up the
ingress's answers (in one process they share the interpreter's lock: acknowledgement p99 was
33 ms at 30 customers with the recorder as a thread, on a 2-core box busy with the turns). It
takes the journalled webhooks in order, up to MAX_BATCH per transaction, and notes in the
journal how far it got: at most every NOTE_SECONDS, and NOTE_SECONDS after the last note once
it has caught up (a note that lags only means a few webhooks recorded again, harmlessly, after
a crash; each note is a file replaced: noting every batch had cost a third of the recorder's
CPU, and a file-system metadata change per batch for the ingress's fdatasyncs to commit). A
database that is down gets the same batch again every RETRY_SECONDS (logged once, then once a
minute, then when it works again), so nothing is skipped or reordered. A webhook that fails for
another reason, even alone, is set aside in the journal's directory (`set-aside/`) for the
operator and logged, so that it cannot hold back the others.

The ingress wakes it with a byte on its standard input after each append; it also looks every
second. The end of its input (the ingress stopped or died) makes it finish the backlog for up to
DRAIN_SECONDS and stop: what is left is recorded by the next one, from the journal's note.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from connectors.whatsapp.journal import Entry, JournalReader, Position, owner_only
from connectors.whatsapp.outage import Outage
from connectors.whatsapp.webhook import DATABASE_DOWN, WebhookReceiver

logger = logging.getLogger(__name__)
MAX_BATCH = 200
RETRY_SECONDS = 1.0
LOOK_SECONDS = 1.0
DRAIN_SECONDS = 5.0
NOTE_SECONDS = 0.25  # while busy, how often the journal's note of what is recorded is brought up to date


class JournalRecorder:
    def __init__(self, receiver: WebhookReceiver, reader: JournalReader, max_batch: int = MAX_BATCH,
                 retry_seconds: float = RETRY_SECONDS, sleep: Callable[[float], None] = time.sleep,
                 note_seconds: float = NOTE_SECONDS) -> None:
        self.receiver, self.reader, self.max_batch = receiver, reader, max_batch
        self.retry_seconds, self.sleep, self.note_seconds = retry_seconds, sleep, note_seconds
        self._reached: Optional[Position] = None  # recorded, not yet noted in the journal
        self._noted_at = float("-inf")
        self.outage = Outage("recording journalled webhooks in the channel database", logger)
        self.batch: List[Entry] = []  # read, not yet recorded
        self.recorded = 0

    def step(self) -> bool:
        """Record the next batch: True if one was recorded, False if there was nothing to record
        or the database is down (then after a pause of retry_seconds)."""
        if not self.batch:
            self.batch = self.reader.read(self.max_batch)
            if not self.batch:
                return False
        try:
            self._record(self.batch)
        except DATABASE_DOWN as exc:  # (all of the batch is tried again: recording is idempotent)
            self.outage.failed(exc)
            self.sleep(self.retry_seconds)
            return False
        self.outage.worked()
        self._reached = self.batch[-1].position
        self.recorded += len(self.batch)
        self.batch = []
        if not self.note_due_in():
            self.note()
        return True

    @property
    def unnoted(self) -> bool:
        return self._reached is not None

    def note_due_in(self) -> float:
        """Seconds until the note may be brought up to date again (0: now)."""
        return max(0.0, self._noted_at + self.note_seconds - time.monotonic())

    def note(self) -> None:
        """Note in the journal how far recording has reached (if it moved since the last note)."""
        if self._reached is None:
            return
        self._noted_at = time.monotonic()
        try:
            self.reader.recorded(self._reached)
        except OSError:  # the note lags: these few are recorded again after a restart (harmlessly)
            logger.exception("journal: could not note what is recorded")
            return
        self._reached = None

    def drain(self, seconds: float = DRAIN_SECONDS) -> int:
        """Record all that is journalled, for at most `seconds`; returns how many were recorded."""
        deadline, before = time.monotonic() + seconds, self.recorded
        while time.monotonic() < deadline and (self.step() or (self.batch and not self.outage.ongoing)):
            pass
        self.note()
        return self.recorded - before

    def _record(self, batch: List[Entry]) -> None:
        """One batch into the database, as of its first webhook's arrival (the service window
        opens when the customer wrote, not when the database took it)."""
        self.receiver.store.ensure_schema()  # (once; the ingress may have started with the database away)
        try:
            self.receiver.record_journalled([entry.body for entry in batch], _moment(batch[0]))
        except DATABASE_DOWN:
            raise
        except Exception as exc:  # (record_journalled takes an item's own failure itself: this is a last resort)
            logger.error("journal: a batch of %d webhooks failed (%s): recorded one by one", len(batch),
                         type(exc).__name__)
            for entry in batch:
                try:
                    self.receiver.record_journalled([entry.body], _moment(entry))
                except DATABASE_DOWN:
                    raise
                except Exception as failure:
                    self._set_aside(entry, failure)

    def _set_aside(self, entry: Entry, failure: Exception) -> None:
        place = self.reader.directory / "set-aside"
        name = place / f"{entry.position[0]:012d}-{entry.position[1]:012d}.json"
        try:
            place.mkdir(mode=0o700, exist_ok=True)
            with open(name, "wb", opener=owner_only) as f:
                f.write(entry.body)  # (what a customer typed: the owner's only)
        except OSError:
            logger.exception("journal: the webhook at %s could not be set aside", entry.position)
        # only the type: the error may quote the customer's number or words
        logger.error("journal: a webhook could not be recorded (%s): kept in %s for the operator",
                     type(failure).__name__, name)


def _moment(entry: Entry) -> dt.datetime:
    return dt.datetime.fromtimestamp(entry.arrived, dt.timezone.utc).replace(tzinfo=None)


def follow(recorder: JournalRecorder, wake_fd: int, look_seconds: float = LOOK_SECONDS) -> None:
    """Record as the journal grows, until `wake_fd` ends, then drain and return."""
    while True:
        while recorder.step():
            pass
        if recorder.batch and recorder.outage.ongoing:
            recorder.note()  # (what was recorded before the database went away)
            timeout = 0.0  # (step already paused)
        elif recorder.unnoted:  # caught up: note it unless more comes meanwhile
            timeout = recorder.note_due_in()
        else:
            timeout = look_seconds
        if select.select([wake_fd], [], [], timeout)[0]:
            try:
                if not os.read(wake_fd, 65536):
                    break
            except OSError:
                break
        elif recorder.unnoted and not recorder.note_due_in():
            recorder.note()
    drained = recorder.drain()
    if recorder.batch or recorder.reader.read(1):
        logger.warning("journal: stopping with webhooks not yet recorded: the next start records them")
    elif drained:
        logger.info("journal: %d webhooks recorded before stopping", drained)


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from connectors.whatsapp.ingress import journal_dir, receiver_from_env

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (Ctrl-C reaches the ingress, which closes our input)
    directory = journal_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "recorder.lock", "ab") as lock:
        # one recorder at a time: one that outlives its ingress drains for DRAIN_SECONDS, then the next goes on
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        recorder = JournalRecorder(receiver_from_env(), JournalReader(directory))
        logger.info("recording the journal in %s", directory)
        follow(recorder, sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
