"""WhatsApp webhook acknowledgement latency under concurrent senders (`make bench` runs it too).

Starts the sandbox (Graph API stand-in), the action server and Rasa with the WhatsApp channel,
then has N customers (default 20) write at once, each message a signed webhook as Meta sends
it. Measured:
  * ack: from posting the webhook to its HTTP 200 (Meta wants this fast; the turn runs after);
  * turn: from the message being recorded to its Rasa turn being done (replies sent), read
    from the channel's own store (received_at / handled_at).
Two loads: "conversation" (each customer sends the next message once the previous one is
answered, as people do) and "burst" (every customer sends all messages at once, so turns
queue up behind each other while acks must stay fast).

    python -m bench.webhook_bench [--senders 20] [--messages 8] [--burst 5]
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import requests
from sqlalchemy import create_engine, text

from bench.rest_bench import OUT, percentile
from connectors.sandbox.server import message_value, webhook_body
from cardsystem.config import SANDBOX_DEFAULTS
from connectors.whatsapp.signature import sign
from tests.servers import MODEL, ROOT, free_port, running_bot, wait_for

SCRIPT = ("hi", "what's my balance", "when is my bill due", "how many reward points do I have",
          "what is the minimum due", "show my recent transactions", "how much limit do I have", "thanks")
FIRST_CUSTOMER = 919810000000  # the seed's generated customers
_ids = itertools.count(1)


class Load:
    def __init__(self, webhook: str, channel_db: str) -> None:
        self.webhook = webhook
        self.engine = create_engine(channel_db)
        self.acks: List[float] = []
        self.errors: List[str] = []
        self.lock = threading.Lock()

    def post(self, session: requests.Session, sender: str, body_text: str) -> str:
        message_id = f"wamid.bench.{time.time_ns()}.{next(_ids)}"
        value = message_value(sender, "Bench", {"type": "text", "text": {"body": body_text}})
        value["messages"][0]["id"] = message_id
        raw = json.dumps(webhook_body(SANDBOX_DEFAULTS["phone_number_id"], value)).encode()
        headers = {"Content-Type": "application/json",
                   "X-Hub-Signature-256": sign(raw, SANDBOX_DEFAULTS["app_secret"])}
        started = time.perf_counter()
        try:
            answer = session.post(self.webhook, data=raw, headers=headers, timeout=30)
            ok = answer.status_code == 200
        except requests.RequestException as exc:
            ok, answer = False, exc
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:
            self.acks.append(elapsed)
            if not ok:
                self.errors.append(f"{message_id}: {answer}")
        return message_id

    def answered(self, message_ids: List[str]) -> bool:
        with self.engine.connect() as connection:
            rows = connection.execute(text("SELECT count(*) FROM wa_inbound WHERE state IN ('done', 'dead') AND message_id IN "
                                           f"({','.join(':m%d' % i for i in range(len(message_ids)))})"),
                                      {f"m{i}": m for i, m in enumerate(message_ids)}).scalar()
        return rows == len(message_ids)

    def wait_answered(self, message_ids: List[str], timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.answered(message_ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(message_ids)} messages not answered in {timeout} s")
            time.sleep(0.05)

    def turn_times(self, message_ids: List[str]) -> List[float]:
        with self.engine.connect() as connection:
            rows = connection.execute(text("SELECT received_at, handled_at FROM wa_inbound WHERE message_id IN "
                                           f"({','.join(':m%d' % i for i in range(len(message_ids)))})"),
                                      {f"m{i}": m for i, m in enumerate(message_ids)}).all()
        return [(_parse(h) - _parse(r)) * 1000 for r, h in rows if h]


def _parse(value) -> float:
    import datetime as dt

    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return moment.timestamp()


def conversation(load: Load, senders: List[str], messages: int) -> List[str]:
    sent: List[str] = []

    def customer(sender: str) -> None:
        session = requests.Session()
        for i in range(messages):
            message_id = load.post(session, sender, SCRIPT[i % len(SCRIPT)])
            sent.append(message_id)
            load.wait_answered([message_id])

    threads = [threading.Thread(target=customer, args=(s,)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent


def burst(load: Load, senders: List[str], messages: int) -> List[str]:
    sent: List[str] = []
    start = threading.Barrier(len(senders))

    def customer(sender: str) -> None:
        session = requests.Session()
        start.wait()
        for i in range(messages):
            sent.append(load.post(session, sender, SCRIPT[(i + 1) % len(SCRIPT)]))

    threads = [threading.Thread(target=customer, args=(s,)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.wait_answered(sent)
    return sent


def summary(name: str, load: Load, message_ids: List[str], elapsed: float) -> Dict[str, object]:
    turns = load.turn_times(message_ids)
    return {"load": name, "messages": len(message_ids), "errors": len(load.errors),
            "ack_p50_ms": round(percentile(load.acks, 50), 1), "ack_p99_ms": round(percentile(load.acks, 99), 1),
            "ack_max_ms": round(max(load.acks), 1), "turn_p50_ms": round(percentile(turns, 50), 1),
            "turn_p99_ms": round(percentile(turns, 99), 1), "messages_per_s": round(len(message_ids) / elapsed, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--messages", type=int, default=8, help="messages per sender in the conversation load")
    parser.add_argument("--burst", type=int, default=5, help="messages per sender sent at once in the burst load")
    args = parser.parse_args(argv)
    if not MODEL.exists():
        print("no model: run make train first", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sandbox_port, rasa_port = free_port(), free_port()
        log = workdir / "sandbox.log"
        sandbox = subprocess.Popen([sys.executable, "-m", "connectors.sandbox", "--port", str(sandbox_port),
                                    "--bot-url", f"http://127.0.0.1:{rasa_port}/webhooks/whatsapp/webhook"],
                                   cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        try:
            wait_for(f"{sandbox_url}/_sandbox/personas", 60, sandbox, log)
            print("starting the action server and Rasa with the WhatsApp channel ...", file=sys.stderr, flush=True)
            with running_bot(workdir, rasa_port=rasa_port, sql_tracker=True,
                             extra_env={"WHATSAPP_API_BASE": sandbox_url}) as bot:
                webhook = f"{bot.url}/webhooks/whatsapp/webhook"
                channel_db = bot.env["CARDCARE_CHANNEL_DB_URL"]
                warm = Load(webhook, channel_db)
                conversation(warm, [str(FIRST_CUSTOMER + 40)], 4)
                senders = [str(FIRST_CUSTOMER + i) for i in range(args.senders)]
                for name, run, count in (("conversation", conversation, args.messages), ("burst", burst, args.burst)):
                    print(f"{name}: {args.senders} senders x {count} messages ...", file=sys.stderr, flush=True)
                    load = Load(webhook, channel_db)
                    started = time.perf_counter()
                    sent = run(load, senders, count)
                    results.append(summary(name, load, sent, time.perf_counter() - started))
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=20)
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "senders": args.senders, "results": results,
              "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()}
    (OUT / "webhook_bench.json").write_text(json.dumps(report, indent=1))
    print(f"\nWhatsApp webhook, {args.senders} concurrent senders")
    print(f"{'load':>12} {'msgs':>5} {'errors':>6} {'ack p50':>8} {'ack p99':>8} {'ack max':>8} {'turn p50':>9} "
          f"{'turn p99':>9} {'msg/s':>6}")
    for r in results:
        print(f"{r['load']:>12} {r['messages']:>5} {r['errors']:>6} {r['ack_p50_ms']:>8} {r['ack_p99_ms']:>8} "
              f"{r['ack_max_ms']:>8} {r['turn_p50_ms']:>9} {r['turn_p99_ms']:>9} {r['messages_per_s']:>6}")
    print(f"(milliseconds) details: {OUT / 'webhook_bench.json'}")
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
