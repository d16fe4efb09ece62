"""A background loop's outage is logged once with its traceback, then a line a minute, then
when it ends; the channel's loops knock on an absent database once a second, not ten times."""
from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy.exc import OperationalError

from connectors.whatsapp import channel as channel_module
from connectors.whatsapp.channel import WhatsAppInput
from connectors.whatsapp.outage import Outage

LOG = logging.getLogger("tests.outage")


def failure(text="connection refused"):
    return OperationalError("SELECT 1", {}, Exception(text))


def test_an_outage_is_one_traceback_then_a_line_a_minute_then_its_end(caplog):
    now = [100.0]
    outage = Outage("looking for work", LOG, repeat_seconds=60, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="tests.outage")
    for _ in range(61):  # a failed round a second for a minute
        outage.failed(failure())
        now[0] += 1
    assert outage.ongoing
    records = caplog.records
    assert [r.levelname for r in records] == ["ERROR", "ERROR"]
    assert records[0].exc_info is not None and "looking for work failed" in records[0].getMessage()
    assert records[1].exc_info is None and "still failing: 61 times in 60 s" in records[1].getMessage()
    assert "OperationalError" in records[1].getMessage() and "connection refused" in records[1].getMessage()
    outage.worked()
    outage.worked()  # (once only)
    assert not outage.ongoing
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR", "WARNING"]
    assert "works again after 61 s (61 failed rounds)" in caplog.records[2].getMessage()
    outage.failed(failure("again"))  # a new outage starts with its traceback again
    assert caplog.records[-1].exc_info is not None


def test_a_failure_message_without_text_is_still_one_line():
    outage = Outage("x", LOG, repeat_seconds=0, clock=lambda: 0.0)
    outage.failed(RuntimeError())
    outage.failed(RuntimeError())  # (no crash on an empty message)
    assert outage.failures == 2


@pytest.mark.asyncio
async def test_the_retry_loop_waits_a_second_between_rounds_while_the_database_is_away(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(channel_module, "DUE_SECONDS", 0.5)
    channel = WhatsAppInput("verify", ["secret"], "token", "1111", "http://127.0.0.1:9", "v21.0",
                            store_url=f"sqlite:///{tmp_path / 'channel.db'}", ingress=True)
    assert channel._poll_seconds() == channel_module.INGRESS_POLL_SECONDS  # (SQLite behind an ingress: 0.1 s)
    calls = []
    away = [True]

    def senders_due(*args):
        calls.append(1)
        if away[0]:
            raise failure()
        return []

    monkeypatch.setattr(channel.store, "senders_due", senders_due)
    caplog.set_level(logging.INFO, logger="connectors.whatsapp.channel")

    async def on_new_message(_message):
        raise AssertionError("nothing to answer")

    loop = asyncio.create_task(channel.retry_due(on_new_message))
    await asyncio.sleep(2.2)
    during = len(calls)
    away[0] = False
    await asyncio.sleep(1.2)
    after = len(calls) - during
    loop.cancel()
    assert 3 <= during <= 6  # every 0.5 s while away (at 0.1 s it would be 20)
    assert after >= 6  # back to every 0.1 s
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert any("works again" in r.getMessage() for r in caplog.records)
