"""The fault runs of `python -m bench.faults` as tests: a burst of 200 messages from 20
customers through the real WhatsApp path, with Rasa killed (SIGKILL) mid-burst, the action
server down for 10 s, or the Graph API failing for 20 s. Any message lost, any reply sent
twice, any reply out of its customer's order fails. Each fault twice: on make run's embedded
SQLite stores with one Rasa, and on make serve's scale-out stores (PostgreSQL conversations,
card system, channel and actions, Redis locks, workers woken by NOTIFY) with two Rasa workers,
one of which is the one killed."""
from __future__ import annotations

import pytest

from bench.faults import FAULTS, run_fault, table
from tests.servers import MODEL

pytestmark = pytest.mark.model


@pytest.mark.parametrize("store,workers", [("sqlite", 1), ("postgres", 2)], ids=["sqlite-1", "postgres-2"])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_mid_burst_loses_nothing_and_sends_nothing_twice(fault, store, workers, tmp_path):
    if not MODEL.exists():
        pytest.fail("models/cardcare.tar.gz is missing: run `make train` (make test does it for you)")
    outcome = run_fault(fault, customers=20, messages=200, workdir=tmp_path, store=store, workers=workers)
    print(table([outcome]))
    assert outcome.messages == 200
    assert (outcome.lost, outcome.duplicated, outcome.out_of_order) == (0, 0, 0), outcome
    assert outcome.apologised == 0  # every one got its real answer, not the give-up apology
    if fault == "actions_down":
        assert outcome.turns_retried > 0  # the fault really hit turns
    if fault == "graph_outage":
        assert outcome.sends_retried > 0
    if fault == "rasa_kill":
        assert outcome.in_flight > 0  # killed with work in hand (with two workers: customers it held)
