"""Payment-due reminders for many customers: the scheduler, the real WhatsApp channel, the report.

    python -m bench.reminders_bench [--customers 10000] [--db sqlite|postgres] [--seed 11] [--out FILE]

1. A fresh card database (SQLite in a temp dir, or a fresh PostgreSQL database on
   127.0.0.1:5432, dropped afterwards) with N customers, bulk-inserted: one active card each,
   its bill due in 5 days (today is the 5-days-before offset), minimum due > 0; a consent row
   opted in ("signup:card_application") for ~96 %, opted out (STOP) for ~3 %, none for ~1 %.
2. The sandbox (connectors.sandbox, its own process, --approve-templates) as the Graph API and
   the real WhatsAppInput (its own SQLite store) on a local Sanic server; every template of the
   registry submitted (approved at once) and recorded APPROVED with its content hash.
3. The scheduler timed: run_once at 10:00 bank time; then again (it must queue nothing).
4. Delivery timed through the channel: deliver_notices_once looped (50 notices a call) until no
   notice is left pending and every outbox row is sent; the notice box's clock is fixed at
   10:00 (no quiet hours). Sent/s is wall clock from the first take to the last send the
   sandbox accepted; CPU is this process's (time.process_time; the sandbox runs apart). The
   sandbox posts signed "sent" and "delivered" status webhooks meanwhile, or "failed" 131026
   for ~1 % of the numbers (its /_sandbox/fail per-recipient hook, set before sending).
   Lost / duplicated: the template sends the sandbox received, per customer, against the
   customers queued.
5. Outcomes: ~70 % of the customers whose message was delivered open it (the sandbox's
   /_sandbox/messages?to=...&read=1, which posts the "read" status webhooks, with the send's
   callback data); payments on ~35 % of the reminded cards within 48 h of the reminder
   (CardSystem.record_payment, posted_at moved to the send time + 1-47 h) and on ~5 % later
   (49-72 h, which must not count). Seeded: the same --seed, the same outcomes. (The sandbox
   delivers every message it does not fail: no phone stays offline, so delivered is ~99 %.)
6. The report (cardsystem.reminders.report) for that run and a summary line; the figures in
   bench/out/reminders_bench.json (or --out).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import aiohttp
from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from cardsystem.config import SANDBOX_DEFAULTS, Settings
from cardsystem.db import dispose_engine, session_scope
from cardsystem.models import Card, Customer, CustomerNotice, MessageSend, MessagingConsent, Transaction
from cardsystem.reminders import run_once
from cardsystem.reminders.book import SANDBOX_WABA, GraphAccount, TemplateBook
from cardsystem.reminders.outreach import Outreach
from cardsystem.reminders.report import as_text, report
from cardsystem.reminders.templates import Registry
from cardsystem.requests.notices import NoticeBox
from cardsystem.service import CardSystem
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
FIRST_PHONE = 917700000000          # the bench's customers: 9177xxxxxxxx (none of the seed's numbers)
OPTED_OUT, NO_CONSENT = 0.03, 0.01  # of the customers
UNDELIVERABLE = 0.01                # of the opted-in numbers: WhatsApp answers "failed" 131026
READ = 0.70                         # of the delivered messages
PAID_IN_48H, PAID_LATER = 0.35, 0.05  # of the reminded cards
APP_SECRET, PHONE_ID = SANDBOX_DEFAULTS["app_secret"], SANDBOX_DEFAULTS["phone_number_id"]
API_VERSION = "v21.0"
STALL_SECONDS = 120.0               # no progress this long: stop and report what is left
PAYMENT_BASE_URL = "https://pay.example.test/pay"
PG_ADMIN = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)

logger = logging.getLogger("bench.reminders")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- 1. the card database ----------------------------------------------------------------------------
@contextmanager
def card_database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh, empty card database's URL: a file in `workdir`, or a PostgreSQL database of its own."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'cards.db'}"
        try:
            yield url
        finally:
            dispose_engine(url)
        return
    import psycopg2

    name = f"reminders_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(**PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        yield url
    finally:
        dispose_engine(url)
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def build(system: CardSystem, customers: int, due: dt.date, rng: random.Random) -> Dict[str, Any]:
    """N customers with one card each, due on `due`, and their consent (bulk inserts, Core executemany)."""
    indices = list(range(customers))
    shuffled = indices[:]
    rng.shuffle(shuffled)
    opted_out = set(shuffled[:round(customers * OPTED_OUT)])
    no_consent = set(shuffled[len(opted_out):len(opted_out) + round(customers * NO_CONSENT)])
    created = dt.datetime(2024, 1, 1)
    people, cards, consents = [], [], []
    for i in indices:
        phone = str(FIRST_PHONE + i)
        outstanding = rng.randrange(5_000, 150_000) * 100           # ₹5,000 - ₹1,50,000 in paise
        minimum = max(20_000, outstanding // 20)                     # 5 %, at least ₹200
        limit = max(outstanding * 2, 20_000_000)
        people.append(dict(id=i + 1, phone=phone, name=f"Bench Customer {i + 1}",
                           date_of_birth=dt.date(1970, 1, 1) + dt.timedelta(days=rng.randrange(365 * 35)),
                           email=f"customer{i + 1}@bench.example", language="en", whatsapp_opt_in=True,
                           created_at=created))
        cards.append(dict(id=i + 1, customer_id=i + 1, last4=f"{(i * 7919 + 1234) % 10000:04d}",
                          product="Platinum Rewards", network="Visa", status="active", credit_limit_paise=limit,
                          available_limit_paise=limit - outstanding, outstanding_paise=outstanding,
                          minimum_due_paise=minimum, due_date=due,
                          statement_day=min(28, (due - dt.timedelta(days=20)).day),
                          expiry_month=rng.randrange(1, 13), expiry_year=due.year + rng.randrange(1, 5)))
        if i in no_consent:
            continue
        consents.append(dict(phone=phone, opted_in=i not in opted_out,
                             source="whatsapp:STOP" if i in opted_out else "signup:card_application",
                             changed_at=created))
    with system.engine.begin() as connection:
        connection.execute(insert(Customer.__table__), people)
        connection.execute(insert(Card.__table__), cards)
        connection.execute(insert(MessagingConsent.__table__), consents)
        if system.engine.dialect.name == "postgresql":  # explicit ids: move the sequences past them
            for table in ("customers", "cards"):
                connection.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                        f"(SELECT max(id) FROM {table}))"))
    opted_in = [str(FIRST_PHONE + i) for i in indices if i not in opted_out and i not in no_consent]
    return {"opted_in": opted_in, "opted_out": len(opted_out), "no_consent": len(no_consent)}


# -- 2. the sandbox and the channel ----------------------------------------------------------------------
async def start_sandbox(workdir: Path, bot_url: str) -> Tuple[subprocess.Popen, str]:
    port, log = free_port(), workdir / "sandbox.log"
    env = {**os.environ, "WHATSAPP_APP_SECRET": APP_SECRET, "WHATSAPP_PHONE_NUMBER_ID": PHONE_ID,
           "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "connectors.sandbox", "--host", "127.0.0.1", "--port", str(port),
                                "--bot-url", bot_url, "--approve-templates"],
                               cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"the sandbox exited early; see {log}:\n{log.read_text()[-2000:]}")
            try:
                async with http.get(f"{url}/_sandbox/personas") as answer:
                    if answer.status == 200:
                        return process, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the sandbox did not start; see {log}")


async def start_channel(workdir: Path, port: int, sandbox_url: str, box: NoticeBox, bot) -> Tuple[Any, Any]:
    from sanic import Sanic

    from connectors.whatsapp.channel import WhatsAppInput

    channel = WhatsAppInput("bench-verify", [APP_SECRET], "bench-token", PHONE_ID, sandbox_url, API_VERSION,
                            store_url=f"sqlite:///{workdir / 'channel.db'}", media_dir=str(workdir / "media"),
                            notices=box)
    Sanic.test_mode = True
    app = Sanic(f"reminders_bench_{uuid.uuid4().hex[:8]}", configure_logging=False)
    app.blueprint(channel.blueprint(bot), url_prefix="/webhooks/whatsapp")
    server = await app.create_server(host="127.0.0.1", port=port, return_asyncio_server=True, access_log=False)
    await server.startup()
    await server.after_start()
    return channel, server


def approve_templates(system: CardSystem, registry: Registry, sandbox_url: str) -> int:
    """Every template submitted to the sandbox (which approves it at once) and recorded APPROVED."""
    book = TemplateBook(system.engine)
    account = GraphAccount(sandbox_url, API_VERSION, SANDBOX_WABA, "bench-token")
    results = book.submit(registry, account)
    refused = [r for r in results if r["status"] not in ("APPROVED", "PENDING")]
    if refused:
        raise RuntimeError(f"templates not taken by the sandbox: {refused}")
    count = 0
    for template in registry:
        book.record(template.name, template.language, "APPROVED", template.category, None, None, template.content_hash)
        count += 1
    return count


# -- 4. delivery ----------------------------------------------------------------------------------------
def notices_left(system: CardSystem) -> Dict[str, int]:
    with session_scope(system.engine) as s:
        return dict(s.execute(select(CustomerNotice.state, func.count()).where(CustomerNotice.medium == "whatsapp")
                              .group_by(CustomerNotice.state)).all())


def outbox_states(channel: Any) -> Dict[str, int]:
    with channel.store.engine.connect() as connection:
        return dict(connection.execute(text("SELECT state, count(*) FROM wa_outbox GROUP BY state")).all())


def ledger_states(system: CardSystem) -> Dict[str, int]:
    with session_scope(system.engine) as s:
        return dict(s.execute(select(MessageSend.state, func.count()).group_by(MessageSend.state)).all())


def sendable(system: CardSystem) -> int:
    """Reminders the plan sent as a template (a ledger row each) and nothing withdrew before they went."""
    with session_scope(system.engine) as s:
        return s.execute(select(func.count()).select_from(MessageSend).where(
            MessageSend.kind == "payment_due", MessageSend.state != "withdrawn")).scalar_one()


def ledger_anomalies(system: CardSystem) -> Dict[str, int]:
    """Ledger rows the statuses left wrong (every send here was accepted by the Graph API):
    failed_never_sent  failed, without sent_at: the report does not count them sent
    failed_overwritten a failed status recorded (failed_at) but the state is not failed: the report
                       does not count them failed"""
    with session_scope(system.engine) as s:
        count = lambda *where: s.execute(select(func.count()).select_from(MessageSend).where(*where)).scalar_one()  # noqa: E731
        return {"failed_never_sent": count(MessageSend.state == "failed", MessageSend.sent_at.is_(None)),
                "failed_overwritten": count(MessageSend.failed_at.is_not(None), MessageSend.state != "failed")}


async def deliver_all(channel: Any, system: CardSystem, bot) -> Dict[str, Any]:
    """Loop deliver_notices_once until nothing is pending or sending and the outbox is empty."""
    started_wall, started_cpu, started = time.time(), time.process_time(), time.perf_counter()
    calls, last_progress, last_sent, last_print = 0, time.monotonic(), -1, time.monotonic()
    stalled = False
    while True:
        calls += 1
        queued = await channel.deliver_notices_once(bot)
        if queued and time.monotonic() - last_print < 15:
            continue
        notices = await asyncio.to_thread(notices_left, system)
        outbox = await asyncio.to_thread(outbox_states, channel)
        unsent = outbox.get("queued", 0) + outbox.get("sending", 0)
        if time.monotonic() - last_print >= 15:
            last_print = time.monotonic()
            say(f"  {time.perf_counter() - started:6.0f} s: outbox sent {outbox.get('sent', 0)}, waiting {unsent}; "
                f"notices pending {notices.get('pending', 0)}, sending {notices.get('sending', 0)}")
        if queued:
            continue
        if notices.get("pending", 0) + notices.get("sending", 0) == 0 and unsent == 0:
            break
        if outbox.get("sent", 0) != last_sent:
            last_sent, last_progress = outbox.get("sent", 0), time.monotonic()
        elif time.monotonic() - last_progress > STALL_SECONDS:
            stalled = True
            say(f"  no progress for {STALL_SECONDS:.0f} s: stopping (notices {notices}, outbox {outbox})")
            break
        await asyncio.sleep(0.05)
    return {"started_wall": started_wall, "cpu": time.process_time() - started_cpu,
            "seconds": time.perf_counter() - started, "calls": calls, "stalled": stalled}


async def sandbox_messages(http: aiohttp.ClientSession, sandbox_url: str) -> List[Dict[str, Any]]:
    async with http.get(f"{sandbox_url}/_sandbox/messages") as answer:
        return await answer.json()


async def wait_for_statuses(system: CardSystem, expected: int, quiet_seconds: float = 20.0) -> Dict[str, int]:
    """Until every send of the ledger heard its last status from the sandbox (delivered or failed),
    or the ledger stopped changing for `quiet_seconds` (a status lost: the figures will show it)."""
    states: Dict[str, int] = {}
    changed = time.monotonic()
    while time.monotonic() - changed < quiet_seconds:
        now = await asyncio.to_thread(ledger_states, system)
        if now != states:
            states, changed = now, time.monotonic()
        if states.get("delivered", 0) + states.get("read", 0) + states.get("failed", 0) >= expected:
            break
        await asyncio.sleep(0.2)
    return states


async def read_on_phones(sandbox_url: str, phones: List[str], concurrency: int = 8) -> int:
    """The customers open WhatsApp: the sandbox shows each phone its messages (read=1), and posts a
    signed "read" status webhook for each, echoing the send's callback data as WhatsApp does."""
    gate, shown = asyncio.Semaphore(concurrency), Counter()

    async def one(http: aiohttp.ClientSession, phone: str) -> None:
        async with gate:
            async with http.get(f"{sandbox_url}/_sandbox/messages", params={"to": phone, "read": "1"}) as answer:
                if answer.status == 200:
                    shown["messages"] += len(await answer.json())

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(*(one(http, phone) for phone in phones))
    return shown["messages"]


async def wait_for_reads(system: CardSystem, expected: int, quiet_seconds: float = 20.0) -> int:
    """Until the ledger counts `expected` reads, or stopped counting for `quiet_seconds`."""
    read, changed = -1, time.monotonic()
    while time.monotonic() - changed < quiet_seconds:
        now = (await asyncio.to_thread(ledger_states, system)).get("read", 0)
        if now != read:
            read, changed = now, time.monotonic()
        if read >= expected:
            break
        await asyncio.sleep(0.2)
    return read


async def channel_phase(system: CardSystem, outreach: Outreach, registry: Registry, now: dt.datetime,
                        workdir: Path, opted_in: List[str], rng: random.Random) -> Dict[str, Any]:
    async def bot(user_message) -> None:  # no customer writes in this bench
        return None

    bot_port = free_port()
    webhook = f"http://127.0.0.1:{bot_port}/webhooks/whatsapp/webhook"
    sandbox, sandbox_url = await start_sandbox(workdir, webhook)
    figures: Dict[str, Any] = {}
    channel = server = None
    try:
        box = NoticeBox(engine=system.engine, outreach=outreach, clock=lambda: now)
        channel, server = await start_channel(workdir, bot_port, sandbox_url, box, bot)
        figures["templates_approved"] = await asyncio.to_thread(approve_templates, system, registry, sandbox_url)

        # 3. the scheduler
        started = time.perf_counter()
        counts = await asyncio.to_thread(run_once, system, now, outreach)
        figures["schedule_seconds"] = time.perf_counter() - started
        figures["queued"], figures["statements_queued"] = counts["reminders"], counts["statements"]
        started = time.perf_counter()
        again = await asyncio.to_thread(run_once, system, now, outreach)
        figures["schedule_again_seconds"] = time.perf_counter() - started
        figures["queued_again"] = again["reminders"] + again["statements"]
        say(f"scheduler: {figures['queued']} reminders queued in {figures['schedule_seconds']:.2f} s; "
            f"again: {figures['queued_again']} in {figures['schedule_again_seconds']:.2f} s")

        # 4. delivery through the channel, ~1 % of the numbers refused by WhatsApp after acceptance
        undeliverable = sorted(rng.sample(opted_in, round(len(opted_in) * UNDELIVERABLE)))
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{sandbox_url}/_sandbox/fail",
                                 json={"recipients": {phone: 131026 for phone in undeliverable}}) as answer:
                assert answer.status == 200, await answer.text()
        say(f"delivering {figures['queued']} reminders through the WhatsApp channel ...")
        delivery = await deliver_all(channel, system, bot)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            received = [m for m in await sandbox_messages(http, sandbox_url) if m["message"].get("type") == "template"]
        last_accepted = max((m["at"] for m in received), default=delivery["started_wall"])
        figures.update(
            deliver_seconds=last_accepted - delivery["started_wall"], deliver_loop_seconds=delivery["seconds"],
            deliver_calls=delivery["calls"], stalled=delivery["stalled"], cpu_seconds=delivery["cpu"],
            templates_received=len(received), undeliverable=len(undeliverable))
        cpu_before_statuses = time.process_time()
        states = await wait_for_statuses(system, len(received))
        figures["cpu_statuses_after_last_send"] = time.process_time() - cpu_before_statuses
        figures["ledger_after_statuses"] = states
        figures["notices"] = await asyncio.to_thread(notices_left, system)
        figures["outbox"] = await asyncio.to_thread(outbox_states, channel)

        # lost or twice: what the Graph API received, per customer and per notice
        per_customer = Counter(m["to"] for m in received)
        per_key = Counter(m["message"].get("biz_opaque_callback_data") for m in received)
        expected = set(opted_in)
        figures["lost"] = len(expected - set(per_customer))
        figures["duplicated"] = sum(c - 1 for c in per_customer.values() if c > 1)
        figures["duplicated_keys"] = sum(c - 1 for c in per_key.values() if c > 1)
        figures["unexpected"] = len(set(per_customer) - expected)  # no consent, opted out: never to be sent

        # 5. the phones read ~70 % of what was delivered
        refused = set(undeliverable)
        delivered = sorted({m["to"] for m in received if m["to"] not in refused})
        readers = rng.sample(delivered, round(len(delivered) * READ))
        started = time.perf_counter()
        figures["reads_posted"] = await read_on_phones(sandbox_url, readers)
        await wait_for_reads(system, figures["reads_posted"])
        figures["reads_seconds"] = time.perf_counter() - started
        figures["ledger_final"] = await asyncio.to_thread(ledger_states, system)
        figures.update(await asyncio.to_thread(ledger_anomalies, system))
        figures["sendable"] = await asyncio.to_thread(sendable, system)
    finally:
        if channel is not None:
            await channel.stop()
        if server is not None:
            await server.close()
        dispose_engine(f"sqlite:///{workdir / 'channel.db'}")
        sandbox.terminate()
        try:
            sandbox.wait(timeout=20)
        except subprocess.TimeoutExpired:
            sandbox.kill()
    return figures


# -- 5. payments ----------------------------------------------------------------------------------------
def pay(system: CardSystem, rng: random.Random) -> Dict[str, int]:
    """~35 % of the reminded cards paid within 48 h of their reminder, ~5 % later; posted_at moved there."""
    with session_scope(system.engine) as s:
        reminded = s.execute(select(MessageSend.card_id, MessageSend.sent_at, Card.minimum_due_paise,
                                    Card.outstanding_paise)
                             .join(Card, Card.id == MessageSend.card_id)
                             .where(MessageSend.kind == "payment_due", MessageSend.sent_at.is_not(None))
                             .order_by(MessageSend.card_id)).all()
    chosen = rng.sample(reminded, round(len(reminded) * (PAID_IN_48H + PAID_LATER)))
    in_time = round(len(reminded) * PAID_IN_48H)
    moves = []
    collisions = 0
    for index, (card_id, sent_at, minimum, outstanding) in enumerate(chosen):
        amount = minimum if rng.random() < 0.6 else outstanding
        for _ in range(5):
            try:
                paid = system.record_payment(card_id, amount, via="upi")
                break
            except IntegrityError:  # the random 7-digit reference was taken (one transaction: nothing written)
                collisions += 1
        else:
            raise RuntimeError(f"payment on card {card_id} refused 5 times")
        hours = rng.uniform(1, 47) if index < in_time else rng.uniform(49, 72)
        moves.append({"ref": paid.reference, "at": sent_at + dt.timedelta(hours=hours)})
    if moves:
        with system.engine.begin() as connection:
            table = Transaction.__table__
            connection.execute(update(table).where(table.c.reference == bindparam("ref"))
                               .values(posted_at=bindparam("at")), moves)
    return {"paid_in_48h": in_time, "paid_later": len(chosen) - in_time, "payment_reference_collisions": collisions}


# -- the run ----------------------------------------------------------------------------------------------
def run(customers: int, db: str, seed: int, workdir: Path) -> Dict[str, Any]:
    rng = random.Random(seed)
    with card_database(db, workdir) as url:
        settings = Settings(db_url=url, payment_base_url=PAYMENT_BASE_URL, payment_link_secret=b"bench-secret",
                            payment_link_ttl_minutes=30, statement_dir=workdir / "statements",
                            support_phone="1800 266 0000", proof_dir=workdir / "proofs")
        probe = CardSystem(settings)
        policy = Outreach(probe.engine, settings, desk_rules=probe.desk_rules).policy
        day = policy.local(dt.datetime.utcnow()).date()
        now = policy.utc(dt.datetime.combine(day, dt.time(10, 0)))  # 10:00 at the bank, UTC
        system = CardSystem(settings, today=lambda: day, now=lambda: policy.local(now))
        system.create_schema()
        registry = Registry.load(payment_base_url=PAYMENT_BASE_URL)
        outreach = Outreach(system.engine, settings, policy=policy, registry=registry, desk_rules=system.desk_rules)

        started = time.perf_counter()
        people = build(system, customers, day + dt.timedelta(days=5), rng)
        figures: Dict[str, Any] = {"customers": customers, "db": db, "day": day.isoformat(),
                                   "build_seconds": time.perf_counter() - started,
                                   "opted_in": len(people["opted_in"]), "opted_out": people["opted_out"],
                                   "no_consent": people["no_consent"]}
        say(f"built {customers} customers ({db}) in {figures['build_seconds']:.1f} s: {figures['opted_in']} opted in, "
            f"{figures['opted_out']} opted out, {figures['no_consent']} without consent")

        figures.update(asyncio.run(channel_phase(system, outreach, registry, now, workdir, people["opted_in"], rng)))
        say(f"delivered: {figures['templates_received']} templates accepted in {figures['deliver_seconds']:.1f} s, "
            f"CPU {figures['cpu_seconds']:.1f} s; lost {figures['lost']}, duplicated {figures['duplicated']}; "
            f"ledger {figures['ledger_final']}")

        started = time.perf_counter()
        figures.update(pay(system, rng))
        figures["pay_seconds"] = time.perf_counter() - started

        # 6. the report, three days on (every 48-hour window closed)
        figures["report"] = report(system.engine, policy, days=7, now=now + dt.timedelta(days=3))
        figures["report_text"] = as_text(figures["report"])
        figures["now"] = now.isoformat()
    return figures


def derived(f: Dict[str, Any]) -> Dict[str, Any]:
    total = f["report"]["total"]
    sent = f["templates_received"]
    return {
        "queued_per_s": f["queued"] / f["schedule_seconds"] if f["schedule_seconds"] else 0.0,
        "sent_per_s": sent / f["deliver_seconds"] if f["deliver_seconds"] > 0 else 0.0,
        "cpu_per_1k": 1000 * f["cpu_seconds"] / sent if sent else 0.0,
        "skipped": f["customers"] - f["queued"],
        "sendable": f["sendable"],
        "report_sent": total["sent"], "delivered": total["delivered"], "read": total["read"],
        "failed": total["failed"], "paid_48h": total["paid_48h"], "reminders": total["reminders"],
        "whatsapp_cost": total["whatsapp_cost"], "sms_cost": total["sms_cost"],
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=OUT / "reminders_bench.json", help="the figures as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = "python -m bench.reminders_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="reminders-bench-") as tmp:
        f = run(args.customers, args.db, args.seed, Path(tmp))
    d = derived(f)
    ok = (f["lost"], f["duplicated"], f["duplicated_keys"], f["unexpected"]) == (0, 0, 0, 0) and \
        d["report_sent"] == d["sendable"] and d["failed"] == f["undeliverable"] and f["queued_again"] == 0 and \
        not f["stalled"]
    figures = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command.strip(), "cores": os.cpu_count(),
               "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip(),
               "ok": ok, **{k: v for k, v in f.items() if k != "report_text"}, **d}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1, default=str))

    print(f"\nPayment-due reminders for {f['customers']} customers: {command.strip()} ({os.cpu_count()} cores, "
          f"card database {f['db']}, channel store SQLite, the sandbox as the Graph API)")
    print(f"build      {f['customers']} customers, cards, consents in {f['build_seconds']:.1f} s")
    print(f"schedule   {f['queued']} reminders queued in {f['schedule_seconds']:.2f} s = {d['queued_per_s']:.0f}/s; "
          f"not queued {d['skipped']} ({f['opted_out']} opted out, {f['no_consent']} no consent); "
          f"second pass queued {f['queued_again']} in {f['schedule_again_seconds']:.2f} s")
    print(f"deliver    {f['templates_received']} templates accepted by the Graph API in {f['deliver_seconds']:.1f} s "
          f"= {d['sent_per_s']:.1f}/s ({f['deliver_calls']} deliver_notices_once calls); "
          f"CPU {f['cpu_seconds']:.1f} s = {d['cpu_per_1k']:.1f} CPU s per 1,000; "
          f"statuses after the last send {f['cpu_statuses_after_last_send']:.1f} CPU s more")
    print(f"check      lost={f['lost']} duplicated={f['duplicated']} (same notice twice: {f['duplicated_keys']}) "
          f"sent without consent={f['unexpected']}; notices {f['notices']}; outbox {f['outbox']}")
    if f["failed_never_sent"] or f["failed_overwritten"]:
        print(f"ledger     {f['failed_never_sent']} rows failed without sent_at (the failed status came before the "
              f"channel's own sent: not counted sent); {f['failed_overwritten']} rows with failed_at whose state is "
              "not failed (a concurrent sent overwrote it: not counted failed)")
    print(f"outcomes   {f['undeliverable']} numbers failed 131026 by WhatsApp; {f['reads_posted']} messages shown "
          f"read on the phones in {f['reads_seconds']:.1f} s; ledger {f['ledger_final']}; payments {f['paid_in_48h']} within "
          f"48 h and {f['paid_later']} later ({f['pay_seconds']:.1f} s; payment references that collided and were "
          f"retried: {f['payment_reference_collisions']})")
    print()
    print(f["report_text"])
    print()
    print(f"summary: customers {f['customers']}, reminders queued {f['queued']}, skipped {d['skipped']} "
          f"(no consent {f['no_consent']}, opted out {f['opted_out']}), sent/s {d['sent_per_s']:.1f}, "
          f"CPU per 1k {d['cpu_per_1k']:.1f} s, delivered {d['delivered']}, read {d['read']}, "
          f"paid within 48 h {d['paid_48h']}, WhatsApp cost {d['whatsapp_cost']} vs SMS {d['sms_cost']} "
          f"{f['report']['currency']}; lost {f['lost']}, duplicated {f['duplicated']}"
          + ("" if ok else "  << NOT OK"))
    print(f"details: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
