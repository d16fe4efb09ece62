"""`python -m bench.scale_bench --quick`: make bench's load run, end to end on the scale-out
topology (ingress, two Rasa workers, PostgreSQL and Redis), short. Every message answered,
none twice, and the report carries what the README quotes. (No speed is asserted: figures
are the benchmark's business, and this machine is shared with the rest of the suite.)"""
from __future__ import annotations

import json

import pytest

from bench.scale_bench import main


@pytest.mark.model
def test_the_whatsapp_path_under_load_answers_every_message_once(tmp_path):
    pytest.importorskip("psycopg2")
    code = main(["--quick", "--no-stock", "--no-single", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "scale_bench.json").read_text())
    [ours] = report["systems"]
    assert ours["stores"] == "PostgreSQL + Redis" and ours["workers"] == 2
    blocks = ours["closed"] + ours["open"]
    assert [b["offered"] for b in blocks] == ["1 users", "10 users", "5 msg/s", "10 msg/s"]
    for block in blocks:
        assert block["answered"] > 0 and block["lost"] == 0 and block["duplicated"] == 0, block
        assert block["cpu_ms_per_message"] > 0 and block["ack_p99_ms"] is not None
        assert set(block["cpu_s"]) >= {"ingress", "worker1", "worker2", "actions", "postgres+redis"}
    burst = ours["burst"]  # ten customers' messages posted in the same instant
    assert (burst["offered"], burst["sent"], burst["answered"], burst["lost"], burst["duplicated"]) == \
        ("10 at once", 10, 10, 0, 0), burst
    assert burst["ack_max_ms"] is not None
    assert len(ours["conversation_ms"]) == 12 and ours["startup_s"] > 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == \
        ["scale_closed_loop.png", "scale_conversation.png", "scale_open_loop.png"]
    assert code == 0
