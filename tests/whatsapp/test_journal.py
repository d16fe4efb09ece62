"""The ingress's journal (connectors.whatsapp.journal): what the writer appends is read in order
by the reader, across segments and restarts, until it is noted as recorded; a record cut short
by a crash is cut off; one writer at a time."""
from __future__ import annotations

import os

import pytest

from connectors.whatsapp.journal import HEADER, Journal, JournalBusy, JournalReader


def bodies(entries):
    return [e.body for e in entries]


def read_all(reader: JournalReader):
    """Every whole record there is now (one read() gives at most one segment's)."""
    found = []
    while True:
        more = reader.read()
        if not more:
            return found
        found += more


def test_what_is_not_noted_as_recorded_is_read_again_after_a_restart(tmp_path):
    writer = Journal(tmp_path)
    assert writer.open() == 0
    writer.append([(1.0, b"one"), (2.0, b"two")])
    writer.append([(3.0, b"three")])
    reader = JournalReader(tmp_path)
    read = reader.read()
    assert bodies(read) == [b"one", b"two", b"three"] and [e.arrived for e in read] == [1.0, 2.0, 3.0]
    assert reader.read() == []
    reader.recorded(read[0].position)
    assert writer.unrecorded() == 2
    writer.close()  # (a crash leaves the same files: every append was forced to disk)

    writer = Journal(tmp_path)
    assert writer.open() == 2
    writer.append([(4.0, b"four")])
    again = JournalReader(tmp_path)
    left = read_all(again)
    assert bodies(left) == [b"two", b"three", b"four"]
    again.recorded(left[-1].position)
    assert writer.unrecorded() == 0
    assert JournalReader(tmp_path).read() == []
    writer.close()


def test_the_reader_follows_the_writer_as_it_writes_and_rolls_over(tmp_path):
    writer = Journal(tmp_path, segment_bytes=100)
    writer.open()
    reader = JournalReader(tmp_path)
    seen = []
    for n in range(12):
        writer.append([(float(n), f"webhook {n}".encode() * 5)])
        if n % 3 == 0:
            seen += reader.read(limit=2)
    while True:
        more = reader.read(limit=2)
        if not more:
            break
        seen += more
    assert bodies(seen) == [f"webhook {n}".encode() * 5 for n in range(12)]
    reader.recorded(seen[-1].position)
    assert len(list(tmp_path.glob("*.wal"))) <= 2  # recorded segments are deleted
    writer.close()


def written(directory, *payloads: bytes):
    """A journal holding these records, its writer gone; the segment's path."""
    writer = Journal(directory)
    writer.open()
    writer.append([(float(n), body) for n, body in enumerate(payloads, 1)])
    writer.close()
    [segment] = directory.glob("*.wal")
    return segment


def test_a_record_cut_short_by_a_crash_is_cut_off_and_the_rest_kept(tmp_path):
    segment = written(tmp_path, b"whole", b"also whole")
    size = segment.stat().st_size
    with segment.open("ab") as f:  # a crash in the middle of the next write
        f.write(HEADER.pack(100, 0) + b"half of it")
    writer = Journal(tmp_path)
    assert writer.open() == 2
    assert segment.stat().st_size == size
    writer.append([(3.0, b"after")])
    assert bodies(read_all(JournalReader(tmp_path))) == [b"whole", b"also whole", b"after"]
    writer.close()


def test_a_record_whose_checksum_fails_is_cut_off_at_the_next_start(tmp_path):
    segment = written(tmp_path, b"good", b"flipped")
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    writer = Journal(tmp_path)
    assert writer.open() == 1
    assert bodies(JournalReader(tmp_path).read()) == [b"good"]
    writer.close()


def test_one_writer_per_journal(tmp_path):
    first = Journal(tmp_path)
    first.open()
    with pytest.raises(JournalBusy):
        Journal(tmp_path).open()
    first.close()
    second = Journal(tmp_path)
    second.open()  # free again once the first is gone
    second.close()


def test_a_failed_write_keeps_nothing_of_itself(tmp_path, monkeypatch):
    writer = Journal(tmp_path)
    writer.open()
    writer.append([(1.0, b"kept")])
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        writer.append([(2.0, b"not acknowledged")])
    monkeypatch.setattr(os, "fdatasync", real)
    writer.append([(3.0, b"after")])
    assert writer.unrecorded() == 2
    assert bodies(read_all(JournalReader(tmp_path))) == [b"kept", b"after"]
    writer.close()


def test_a_body_larger_than_one_read_is_read_whole(tmp_path):
    writer = Journal(tmp_path)
    writer.open()
    big = os.urandom(900 * 1024)
    writer.append([(1.0, big), (2.0, b"small")])
    reader = JournalReader(tmp_path)
    assert bodies(reader.read(limit=1)) == [big]
    assert bodies(reader.read(limit=1)) == [b"small"]
    writer.close()


CARD = b"my card 4111 1111 1111 1111 cvv 123"


def holding(directory, needle: bytes):
    """The files under `directory` whose bytes contain `needle`."""
    return [p.name for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_what_customers_typed_leaves_the_disk_once_recorded_and_the_segment_has_moved_on(tmp_path):
    """A webhook's body holds what the customer typed, a card number and CVV included: it stays
    only until it is recorded, and a segment takes records for at most retain_seconds."""
    writer = Journal(tmp_path, retain_seconds=0)
    writer.open()
    reader = JournalReader(tmp_path)
    writer.append([(1.0, CARD)])
    assert writer.maintenance_due()  # (its first record is retain_seconds old)
    assert writer.maintain() == 0  # moved on, but nothing is recorded yet: kept
    assert holding(tmp_path, b"4111 1111 1111 1111") != []
    assert not writer.maintenance_due()

    [entry] = reader.read()
    reader.recorded(entry.position)
    assert writer.maintenance_due()
    assert writer.maintain() == 1
    assert holding(tmp_path, b"4111") == []

    writer.append([(2.0, b"after")])  # the reader goes on in the next segment
    assert bodies(read_all(reader)) == [b"after"]
    writer.close()


def test_a_segment_not_yet_old_is_kept_and_a_clean_stop_deletes_what_is_recorded(tmp_path):
    writer = Journal(tmp_path, retain_seconds=3600)
    writer.open()
    writer.append([(1.0, CARD), (2.0, b"second")])
    assert not writer.maintenance_due() and writer.maintain() == 0
    reader = JournalReader(tmp_path)
    read = reader.read()
    reader.recorded(read[0].position)  # one of two recorded
    writer.close()
    assert holding(tmp_path, b"second") != []  # not recorded: kept for the next start
    writer = Journal(tmp_path, retain_seconds=3600)
    assert writer.open() == 1
    reader = JournalReader(tmp_path)
    reader.recorded(read_all(reader)[-1].position)
    writer.close()
    assert holding(tmp_path, b"4111") == [] and list(tmp_path.glob("*.wal")) == []


def test_the_journal_is_the_owners_only(tmp_path):
    writer = Journal(tmp_path / "journal")
    writer.open()
    writer.append([(1.0, CARD)])
    assert (tmp_path / "journal").stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "journal").glob("*.wal"))
    writer.close()
