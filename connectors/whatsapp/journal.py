"""The ingress's journal: a webhook is acknowledged once it is on disk, and recorded after.

Meta wants its webhook answered at once and redelivers one answered slowly or not at all; the
channel database is slower than a disk append (a transaction, and under load a queue of
them) and may be down. So the ingress appends each signed webhook to this journal, forces it
to disk (one fdatasync for all that arrived together) and acknowledges (Journal, the writer);
its recorder, a process of its own, follows the journal and writes it into the channel
database in order, retrying while the database is away (JournalReader). A webhook that was
acknowledged is on disk: a crash or a kill after the answer loses nothing, since recording
resumes where the last note says (recording is idempotent: a message's id is unique, a status
never goes back).

On disk, in one directory (CARDCARE_INGRESS_JOURNAL, default var/ingress-journal):
- segments `<sequence>.wal`, each a run of records: length (4 bytes), CRC-32 of the payload
  (4 bytes), payload = arrival time (8-byte float) + the webhook's body. The writer starts a
  new segment at each start, every SEGMENT_BYTES and once the segment's first record is
  RETAIN_SECONDS old, and never writes an older one again. A segment is deleted as soon as
  all of it is recorded (by the reader once it records past it, by the writer's `maintain()`
  otherwise, and by a clean stop). A webhook's body is what the customer typed, card number
  and CVV included (the signature is over the raw body, so nothing can be hidden before it is
  journalled; the channel hides them when it records the message): so it stays on disk only
  until it is recorded, plus at most RETAIN_SECONDS, the recorder's note (recorder.NOTE_SECONDS)
  and the ingress's next tick, unless the channel database is away. Files are the owner's only
  (0600 in a 0700 directory).
- `recorded`: where recording has reached (sequence and offset), replaced atomically by the
  reader. It may lag behind (a crash between the two): then some webhooks are recorded twice,
  harmlessly.
- `lock`: one writer per journal (flock); a second one refuses to start.
A record cut short by a crash (never acknowledged) is cut off by the writer's next start,
before it writes anything.
"""
from __future__ import annotations

import collections
import fcntl
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Deque, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)
HEADER = struct.Struct(">II")  # payload length, CRC-32 of the payload
ARRIVAL = struct.Struct(">d")
SEGMENT_BYTES = 8 * 1024 * 1024
RETAIN_SECONDS = 5.0  # a segment takes records for at most this long after its first one
SUFFIX = ".wal"
Position = Tuple[int, int]  # (segment sequence, offset just past a record)


class JournalBusy(RuntimeError):
    """Another process writes this journal."""


@dataclass(frozen=True)
class Entry:
    """One journalled webhook; `position` is where the journal stands once it is recorded."""
    arrived: float
    body: bytes
    position: Position


def segments(directory: Path) -> List[int]:
    found = []
    for path in directory.glob("*" + SUFFIX):
        try:
            found.append(int(path.stem))
        except ValueError:
            continue
    return sorted(found)


def segment_path(directory: Path, sequence: int) -> Path:
    return directory / f"{sequence:012d}{SUFFIX}"


def owner_only(path: str, flags: int) -> int:
    """An `opener` for files only their owner may read (what customers typed)."""
    return os.open(path, flags, 0o600)


def read_note(directory: Path) -> Position:
    """Where recording has reached: (0, 0) when nothing was recorded yet."""
    try:
        sequence, offset = (directory / "recorded").read_text().split()
        return int(sequence), int(offset)
    except FileNotFoundError:
        return 0, 0
    except ValueError:
        logger.error("journal: %s/recorded is unreadable: recording starts again from the oldest segment", directory)
        return 0, 0


def parse(data: bytes, start: int, sequence: int, base: int = 0) -> "tuple[List[Entry], int, bool]":
    """The whole records in `data` from `start` (`data` begins at offset `base` of the segment):
    (entries, offset in `data` after the last, whether a record whose checksum fails stopped the reading)."""
    entries, offset = [], start
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if end > len(data):
            break
        payload = data[offset + HEADER.size:end]
        if length < ARRIVAL.size or zlib.crc32(payload) != crc:
            return entries, offset, True
        entries.append(Entry(ARRIVAL.unpack_from(payload)[0], payload[ARRIVAL.size:], (sequence, base + end)))
        offset = end
    return entries, offset, False


class Journal:
    """The writer (the ingress): append, force to disk, and count what is not yet recorded."""

    def __init__(self, directory: os.PathLike, segment_bytes: int = SEGMENT_BYTES,
                 retain_seconds: float = RETAIN_SECONDS) -> None:
        self.directory = Path(directory)
        self.segment_bytes, self.retain_seconds = segment_bytes, retain_seconds
        self._lock: Optional[BinaryIO] = None
        self._file: Optional[BinaryIO] = None
        self._sequence = 0
        self._size = 0
        self._first_at: Optional[float] = None  # (monotonic) when the current segment took its first record
        self._done: List[Position] = []  # segments no longer written (sequence, size), not yet deleted
        self._unrecorded: Deque[Position] = collections.deque()  # positions appended, not yet recorded

    def open(self) -> int:
        """Take the journal, cut off a torn tail, start a fresh segment; returns how many
        webhooks journalled before wait to be recorded."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.chmod(self.directory, 0o700)  # (webhooks hold what customers typed)
        except OSError:
            logger.warning("journal: %s could not be made owner-only", self.directory)
        self._lock = open(self.directory / "lock", "ab", opener=owner_only)
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise JournalBusy(f"another ingress is using the journal in {self.directory}") from None
        note = read_note(self.directory)
        found = segments(self.directory)
        for sequence in found:
            if sequence < note[0]:
                continue  # recorded (the reader deletes it)
            path = segment_path(self.directory, sequence)
            data = path.read_bytes()
            entries, end, _ = parse(data, note[1] if sequence == note[0] else 0, sequence)
            self._unrecorded.extend(e.position for e in entries)
            if end < len(data):
                logger.warning("journal: segment %d ends in %d bytes of a record cut short (never acknowledged): "
                               "cut off", sequence, len(data) - end)
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
        self._done = [(sequence, os.path.getsize(segment_path(self.directory, sequence))) for sequence in found]
        self._sequence = max(found, default=note[0])
        self._start_segment()
        return len(self._unrecorded)

    def append(self, items: Sequence[Tuple[float, bytes]]) -> List[Position]:
        """Write these webhooks (arrival time, body) and force them to disk (one fdatasync): once
        this returns, they survive a crash. Raises OSError (disk full, I/O error) having kept none."""
        if self._lock is None:
            raise OSError("journal is not open")
        if self._file is None:
            self._start_segment()  # (after a failed write; raises while the disk refuses)
        chunks, positions, offset = [], [], self._size
        for arrived, body in items:
            payload = ARRIVAL.pack(arrived) + body
            chunks.append(HEADER.pack(len(payload), zlib.crc32(payload)))
            chunks.append(payload)
            offset += HEADER.size + len(payload)
            positions.append((self._sequence, offset))
        try:
            self._file.write(b"".join(chunks))
            self._file.flush()
            os.fdatasync(self._file.fileno())
        except OSError:
            self._rewind()
            raise
        self._size = offset
        self._unrecorded.extend(positions)
        if self._first_at is None:
            self._first_at = time.monotonic()
        if self._size >= self.segment_bytes:
            self._start_segment()
        return positions

    def maintenance_due(self) -> bool:
        """Whether `maintain()` has something to do: the current segment's first record is
        `retain_seconds` old, or a segment no longer written is recorded whole."""
        if self._aged():
            return True
        return bool(self._done) and (not self._done[0][1] or self._done[0] <= read_note(self.directory))

    def maintain(self) -> int:
        """Move on from a segment whose first record is `retain_seconds` old, and delete the
        segments recorded whole; returns how many were deleted. (Only with no append running.)"""
        if self._aged():
            self._start_segment()
        return self._delete_recorded()

    def _aged(self) -> bool:
        """Whether the current segment's first record is `retain_seconds` old."""
        return self._first_at is not None and time.monotonic() - self._first_at >= self.retain_seconds

    def _delete_recorded(self) -> int:
        note, kept, deleted = read_note(self.directory), [], 0
        for sequence, size in self._done:
            if not size or (sequence, size) <= note:  # empty, or every record of it is in the database
                try:
                    segment_path(self.directory, sequence).unlink()
                    deleted += 1
                except FileNotFoundError:
                    pass  # (the reader deleted it)
            else:
                kept.append((sequence, size))
        self._done = kept
        return deleted

    def unrecorded(self) -> int:
        """How many acknowledged webhooks the recorder has not yet noted as recorded."""
        note = read_note(self.directory)
        while self._unrecorded and self._unrecorded[0] <= note:
            self._unrecorded.popleft()
        return len(self._unrecorded)

    def _rewind(self) -> None:
        """After a failed write: cut the segment back to what was acknowledged, and go on in a
        fresh one (the old file's buffer may still hold part of the failed write)."""
        path = segment_path(self.directory, self._sequence)
        try:
            self._file.close()
        except (OSError, ValueError):
            pass
        self._file = None
        self._done.append((self._sequence, self._size))
        try:
            with open(path, "r+b") as f:
                f.truncate(self._size)
                os.fsync(f.fileno())
        except OSError:
            logger.exception("journal: a failed write could not be cut off (the recorder skips a torn record)")
        try:
            self._start_segment()
        except OSError:
            logger.exception("journal: no fresh segment could be started")

    def _start_segment(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._done.append((self._sequence, self._size))
        self._sequence += 1
        self._first_at = None
        self._file = open(segment_path(self.directory, self._sequence), "ab", opener=owner_only)
        self._size = 0
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # the new file's name is on disk too
        finally:
            os.close(directory)

    def close(self) -> None:
        """Stop writing; the segments recorded whole, the last one included, are deleted."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._done.append((self._sequence, self._size))
        if self._lock is not None:
            try:
                self._delete_recorded()
            except OSError:
                logger.exception("journal: recorded segments could not be deleted")
            self._lock.close()  # (closing releases the flock)
            self._lock = None


class JournalReader:
    """The recorder's side: what was journalled after the note, in order, as it is written."""

    def __init__(self, directory: os.PathLike) -> None:
        self.directory = Path(directory)
        self._sequence, self._offset = read_note(self.directory)
        self._bad_logged: Optional[Position] = None

    def read(self, limit: int = 200) -> List[Entry]:
        """Up to `limit` whole records after those already read; [] when there are none yet."""
        while True:
            found = segments(self.directory)
            if self._sequence not in found:
                later = [s for s in found if s > self._sequence]
                if not later:
                    return []
                self._sequence, self._offset = later[0], 0
            try:
                data = self._tail(max(limit, 1) * 4096)
                entries, _, bad = parse(data, 0, self._sequence, self._offset)
                if not entries and not bad and len(data) >= HEADER.size:  # one record longer than the read
                    data = self._tail(HEADER.size + HEADER.unpack_from(data)[0])
                    entries, _, bad = parse(data, 0, self._sequence, self._offset)
                if entries:
                    entries = entries[:limit]
                    self._offset = entries[-1].position[1]
                    return entries
                newer = [s for s in segments(self.directory) if s > self._sequence]
                if not newer:
                    if bad and self._bad_logged != (self._sequence, self._offset):
                        self._bad_logged = (self._sequence, self._offset)
                        logger.error("journal: the record at %s fails its checksum; waiting for the writer to move on",
                                     (self._sequence, self._offset))
                    return []  # (the writer is still on this segment: more may come)
                # the writer has moved on, so this segment is complete: read its end once more, then go on
                rest = self._tail()
            except FileNotFoundError:
                continue
            if parse(rest, 0, self._sequence)[0]:
                continue
            if rest:
                logger.error("journal: segment %d ends in %d bytes that are not a whole record: skipped",
                             self._sequence, len(rest))
            self._sequence, self._offset = newer[0], 0

    def _tail(self, size: int = -1) -> bytes:
        """Up to `size` bytes (-1: all) of the current segment from the current offset."""
        with open(segment_path(self.directory, self._sequence), "rb") as f:
            f.seek(self._offset)
            return f.read(size)

    def recorded(self, position: Position) -> None:
        """Everything up to `position` is in the database: note it, and delete the segments
        wholly before it (the writer never writes them again)."""
        sequence, offset = position
        note = self.directory / "recorded.tmp"
        note.write_text(f"{sequence} {offset}\n")
        os.replace(note, self.directory / "recorded")
        for old in segments(self.directory):
            if old >= sequence:
                break
            try:
                segment_path(self.directory, old).unlink()
            except FileNotFoundError:
                pass
