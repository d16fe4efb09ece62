"""`python -m bench.reminders_bench` at 200 customers: the scheduler, the real WhatsApp channel
against the sandbox, statuses, payments and the report, end to end. Nothing lost, nothing sent
twice, nobody without consent written to, and the report counts every reminder WhatsApp accepted.
(No timing is asserted: the figures are the bench's business.)"""
from __future__ import annotations

import json

from bench.reminders_bench import main


def test_200_customers_reminded_once_each_and_the_report_counts_them(tmp_path):
    out = tmp_path / "reminders.json"
    code = main(["--customers", "200", "--out", str(out)])
    figures = json.loads(out.read_text())
    assert figures["customers"] == 200
    assert figures["queued"] == figures["opted_in"] == 192        # 3 % opted out, 1 % never asked: not queued
    assert figures["queued_again"] == 0                           # a second pass queues nothing
    assert (figures["lost"], figures["duplicated"], figures["duplicated_keys"], figures["unexpected"]) == (0, 0, 0, 0)
    assert figures["templates_received"] == figures["queued"]
    assert figures["outbox"] == {"sent": figures["queued"]}
    assert set(figures["notices"]) <= {"sent", "failed"} and sum(figures["notices"].values()) == figures["queued"]
    assert figures["report_sent"] == figures["sendable"] == figures["queued"], (
        f"{figures['failed_never_sent']} sends failed without a sent time")
    assert figures["failed"] == figures["undeliverable"], (
        f"{figures['failed_overwritten']} failed statuses overwritten by a concurrent sent")
    assert figures["delivered"] == figures["queued"] - figures["undeliverable"]
    assert figures["read"] == figures["reads_posted"]
    assert figures["paid_48h"] == figures["paid_in_48h"]          # the later payments are not counted
    assert code == 0
