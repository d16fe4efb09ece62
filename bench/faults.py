"""Faults during a burst: is every customer message answered, once, in order?

    python -m bench.faults [--customers 20] [--messages 200] [--faults rasa_kill,actions_down,graph_outage]
                           [--store sqlite|postgres] [--workers 1]

For each fault, a fresh bot in `make serve`'s shape (the WhatsApp ingress recording webhooks,
the locked action server, `--workers` Rasa workers; with `--store sqlite` the SQLite stores of
`make run`, with `--store postgres` make serve's: conversations, card system, channel and actions
in PostgreSQL, locks in Redis, the workers woken by NOTIFY; the sandbox as the Graph API)
takes a burst of `--messages` customer messages from `--customers` seeded
customers through the real WhatsApp path (signed webhooks in, Graph API out), and one fault
strikes a few seconds in:
  rasa_kill     Rasa (with several workers, the first) is killed with SIGKILL mid-burst while
                it holds a customer with a message in flight, and started again (the ingress
                keeps taking webhooks and the other workers keep answering meanwhile);
  actions_down  the action server is killed (SIGKILL) and kept down for 10 s, then started
                again (a SIGTERM would let it serve its kept-alive connections for up to 15 s
                of graceful shutdown first, and the outage could miss the burst);
  graph_outage  the Graph API answers HTTP 503 to every send for 20 s;
  postgres_crash  (--store postgres only; asked for by name, never by default: it restarts the
                PostgreSQL server at 127.0.0.1, every database on it) one of PostgreSQL's server
                processes serving the channel database is killed with SIGKILL mid-burst, with
                customers in flight: PostgreSQL then resets the whole server and recovers from its
                write-ahead log (restart_after_crash), as after a crash of its own. Every connection
                of every process breaks; commits not yet on disk are lost.
Every reply carries its key ("<inbound message id>:<reply index>") as biz_opaque_callback_data,
so each reply the sandbox accepted is traced to the message it answers. Printed per fault:
  sent        messages answered (at least one reply accepted by the Graph API)
  lost        messages with no reply at all
  duplicated  replies accepted more than once (the same key twice)
  out of order  replies that arrived before a reply to an earlier message of the same customer
  apologised  messages answered with the give-up apology (a dead letter), not an answer
Target: 0 lost, 0 duplicated, 0 out of order for every fault.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import requests
from sqlalchemy import create_engine, text

from cardsystem.seed import FIRST_GENERATED_PHONE
from tests.servers import MODEL, Servers, postgres_stores, start_sandbox

FAULTS = ("rasa_kill", "actions_down", "graph_outage")  # the default set (tests/test_faults.py runs these)
ASKED_ONLY = ("postgres_crash",)
STORES = ("sqlite", "postgres")
SCRIPT = ("what's my balance", "when is my bill due", "how many reward points do I have", "what is the minimum due",
          "how much credit limit do I have left", "hi", "show my recent transactions", "what's my available limit",
          "when is the payment due", "thanks")
SEND_SECONDS = 20.0      # the burst is spread over this long
FAULT_AT = 5.0           # seconds into the burst
ACTIONS_DOWN_SECONDS = 10.0
GRAPH_OUTAGE_SECONDS = 20.0
SETTLE_SECONDS = 5.0     # after everything is answered, wait for late duplicates


@dataclass
class Outcome:
    fault: str
    messages: int
    sent: int
    lost: int
    duplicated: int
    out_of_order: int
    apologised: int
    seconds: float
    turns_retried: int = 0   # proof the fault struck: messages whose turn failed and ran again
    sends_retried: int = 0   # replies that needed more than one attempt
    in_flight: int = 0       # messages recorded but not yet fully answered when the fault struck
    store: str = "sqlite"
    workers: int = 1

    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.out_of_order == 0


def _send_burst(sandbox: str, customers: Sequence[str], messages: int, sent: Dict[str, List[str]],
                errors: List[str]) -> None:
    """Each customer writes their share in order; all customers at once, spread over SEND_SECONDS."""
    per_customer = max(1, messages // len(customers))
    gap = SEND_SECONDS / per_customer

    def customer(number: str, offset: float) -> None:
        time.sleep(offset)
        with requests.Session() as session:
            for n in range(per_customer):
                body = {"from": number, "name": "Bench", "text": SCRIPT[n % len(SCRIPT)]}
                try:
                    answer = session.post(f"{sandbox}/_sandbox/send", json=body, timeout=30).json()
                    sent[number].append(answer["message_id"])  # taken now, or queued for redelivery
                except (requests.RequestException, KeyError, ValueError) as exc:
                    errors.append(f"{number}: {exc}")
                time.sleep(gap)

    threads = [threading.Thread(target=customer, args=(c, i * gap / len(customers))) for i, c in enumerate(customers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _settled(channel_db: str, message_ids: List[str]) -> bool:
    engine = create_engine(channel_db)
    try:
        with engine.connect() as connection:
            done = connection.execute(text("SELECT message_id FROM wa_inbound WHERE state IN ('done', 'dead')")).scalars()
            return set(message_ids) <= set(done)
    finally:
        engine.dispose()


def _retries(channel_db: str) -> "tuple[int, int]":
    engine = create_engine(channel_db)
    try:
        with engine.connect() as connection:
            turns = connection.execute(text("SELECT count(*) FROM wa_inbound WHERE attempts > 0 "
                                            "OR (started_at IS NOT NULL AND state = 'pending')")).scalar()
            sends = connection.execute(text("SELECT count(*) FROM wa_outbox WHERE attempts > 1")).scalar()
            return int(turns or 0), int(sends or 0)
    finally:
        engine.dispose()


def _in_flight(channel_db: str, worker_pid: Optional[int] = None) -> int:
    """Messages recorded and not yet fully answered (of the customers `worker_pid` holds)."""
    engine = create_engine(channel_db)
    held = "" if worker_pid is None else \
        " AND sender IN (SELECT sender FROM wa_sender_lease WHERE owner LIKE :owner)"
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM wa_inbound WHERE state IN ('pending', 'answered')"
                                               + held), {"owner": f"%/{worker_pid}/%"}).scalar() or 0)
    finally:
        engine.dispose()


def _crash_postgres(channel_db: str) -> None:
    """SIGKILL one PostgreSQL backend of the channel database: the server resets every session and
    recovers from its log, as after a crash of its own; back when it answers again."""
    engine = create_engine(channel_db)
    try:
        with engine.connect() as connection:
            victim = connection.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend' ORDER BY pid LIMIT 1")).scalar()
        if victim is None:
            raise RuntimeError("no PostgreSQL session of the channel database to kill")
        os.kill(int(victim), signal.SIGKILL)  # (the benchmark runs as the database's own user, or as root)
        engine.dispose()  # (its pooled connection died with the server's reset)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                    return
            except Exception:
                continue
        raise RuntimeError("PostgreSQL did not come back within 60 s of the crash")
    finally:
        engine.dispose()


def analyse(fault: str, sent: Dict[str, List[str]], accepted: List[dict], seconds: float) -> Outcome:
    """Trace each accepted reply to the message it answers, by its callback key."""
    order = {mid: (number, i) for number, mids in sent.items() for i, mid in enumerate(mids)}
    keys = Counter()
    answered, apologised = set(), set()
    last_index: Dict[str, int] = defaultdict(lambda: -1)
    out_of_order = 0
    for reply in accepted:  # in the order the Graph API accepted them
        key = str((reply.get("message") or {}).get("biz_opaque_callback_data") or "")
        message_id, _, index = key.rpartition(":")
        if message_id not in order:
            continue  # not an answer to the burst (e.g. a mark-as-read has no key)
        keys[key] += 1
        if keys[key] > 1:
            continue
        answered.add(message_id)
        if index.startswith("apology"):
            apologised.add(message_id)
        number, position = order[message_id]
        if position < last_index[number]:
            out_of_order += 1
        last_index[number] = max(last_index[number], position)
    total = len(order)
    return Outcome(fault, total, len(answered), total - len(answered), sum(n - 1 for n in keys.values()),
                   out_of_order, len(apologised), seconds)


def run_fault(fault: str, customers: int, messages: int, workdir: Path, timeout: float = 600.0,
              store: str = "sqlite", workers: int = 1) -> Outcome:
    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}")
    with contextlib.ExitStack() as cleanup:
        databases = cleanup.enter_context(postgres_stores("cardcare_faults")) if store == "postgres" else None
        servers = Servers(workdir, sql_tracker=True, ingress=True, postgres=databases, workers=workers)
        outcome = _run_fault(fault, servers, customers, messages, workdir, timeout)
        outcome.store, outcome.workers = store, workers
        return outcome


def _run_fault(fault: str, servers: Servers, customers: int, messages: int, workdir: Path,
               timeout: float) -> Outcome:
    sandbox, sandbox_url = start_sandbox(workdir, servers.webhook_url)
    servers.env["WHATSAPP_API_BASE"] = sandbox_url
    numbers = [str(FIRST_GENERATED_PHONE + i) for i in range(customers)]
    sent: Dict[str, List[str]] = {n: [] for n in numbers}
    errors: List[str] = []
    try:
        servers.start_ingress()
        servers.start_actions()
        servers.start_rasa()
        started = time.monotonic()
        burst = threading.Thread(target=_send_burst, args=(sandbox_url, numbers, messages, sent, errors))
        burst.start()
        time.sleep(FAULT_AT)
        victim = servers.rasa.pid if fault == "rasa_kill" else None  # (several workers: the first)
        in_flight = _in_flight(servers.env["CARDCARE_CHANNEL_DB_URL"], victim)
        strike_by = time.monotonic() + FAULT_AT
        while fault == "rasa_kill" and not in_flight and time.monotonic() < strike_by:
            time.sleep(0.01)  # a turn takes tens of milliseconds now: kill Rasa with a message in hand
            in_flight = _in_flight(servers.env["CARDCARE_CHANNEL_DB_URL"], victim)
        if fault == "rasa_kill":
            os.kill(victim, signal.SIGKILL)
            servers.rasa.wait()
            servers.start_rasa(wait=False, worker=0)
        elif fault == "actions_down":
            servers.actions.kill()
            servers.actions.wait()
            time.sleep(ACTIONS_DOWN_SECONDS)
            servers.start_actions()
        elif fault == "graph_outage":
            requests.post(f"{sandbox_url}/_sandbox/fail", json={"outage_seconds": GRAPH_OUTAGE_SECONDS}, timeout=10)
        elif fault == "postgres_crash":
            _crash_postgres(servers.env["CARDCARE_CHANNEL_DB_URL"])
        burst.join()
        if errors:
            raise RuntimeError(f"the sandbox refused messages: {errors[:3]}")
        ids = [mid for mids in sent.values() for mid in mids]
        deadline = time.monotonic() + timeout
        while not _settled(servers.env["CARDCARE_CHANNEL_DB_URL"], ids):
            if time.monotonic() > deadline:
                break  # analysed as it stands: what is missing counts as lost
            time.sleep(1.0)
        seconds = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)
        accepted = requests.get(f"{sandbox_url}/_sandbox/messages", timeout=30).json()
        outcome = analyse(fault, sent, accepted, seconds)
        outcome.turns_retried, outcome.sends_retried = _retries(servers.env["CARDCARE_CHANNEL_DB_URL"])
        outcome.in_flight = in_flight
        return outcome
    finally:
        servers.stop()
        sandbox.terminate()
        sandbox.wait(timeout=20)


def table(outcomes: List[Outcome]) -> str:
    lines = ["| fault | stores, workers | messages | sent | lost | duplicated | out of order | apologised | in flight at the fault | "
             "turns retried | sends retried | all answered after |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.fault} | {o.store}, {o.workers} | {o.messages} | {o.sent} | {o.lost} | {o.duplicated} | {o.out_of_order} | "
                     f"{o.apologised} | {o.in_flight} | {o.turns_retried} | {o.sends_retried} | {o.seconds:.0f} s |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--store", choices=STORES, default="sqlite")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if not MODEL.exists():
        print("No trained model: run make train first.", file=sys.stderr)
        return 2
    outcomes = []
    for fault in args.faults.split(","):
        if fault not in FAULTS + ASKED_ONLY:
            parser.error(f"unknown fault {fault!r}; choose from {', '.join(FAULTS + ASKED_ONLY)}")
        if fault == "postgres_crash" and args.store != "postgres":
            parser.error("postgres_crash needs --store postgres")
        with tempfile.TemporaryDirectory(prefix=f"faults-{fault}-") as tmp:
            outcome = run_fault(fault, args.customers, args.messages, Path(tmp), store=args.store,
                                workers=args.workers)
        print(f"{fault}: {outcome}", flush=True)
        outcomes.append(outcome)
    print(f"\nFaults during a burst of {args.messages} messages from {args.customers} customers "
          f"({os.cpu_count()} cores):\n")
    print(table(outcomes))
    return 0 if all(o.ok() for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
