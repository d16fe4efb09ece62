"""make bench: throughput, latency and CPU of cardcare's WhatsApp path against stock Rasa, one run.

    python -m bench.scale_bench [--seconds 15] [--workers 2] [--quick] [--no-stock]

What runs, on this machine, in this order (every figure of one system and the other comes
from the same run, so ratios are fair even on a busy box):

1. cardcare as `make serve` runs it, minus nginx: the WhatsApp ingress (verifies, records,
   acknowledges), `--workers` Rasa workers taking the recorded messages, the action server;
   with `--store postgres` (the default) conversations, channel, card system and the action
   server's replies in PostgreSQL (127.0.0.1:5432, databases made and dropped by the run) and
   Rasa's locks in Redis (127.0.0.1:6379); with `--store sqlite`, the embedded default (files).
   The CPU of PostgreSQL's and Redis's processes counts as cardcare's.
   Meta is played by bench.loadgen: signed webhooks in, a recording Graph API stand-in out,
   which posts "sent" and "delivered" status webhooks for every reply as Meta does.
2. Stock Rasa: `rasa init`'s default configuration trained on this bot's data
   (bench/stock_config.yml: models/stock.tar.gz, trained on first use), `rasa run` with the
   REST channel and its default in-memory tracker store, the same action server.
3. cardcare again with one worker, for one worker against two.

For each: start-up (process start to the first answered message), closed loops of 1, 10, 30
and 60 customers (each writes when the previous reply came; they start evenly over the first
second, and every message from the first is measured), for WhatsApp a burst (one message from
each of 60 customers posted in the same instant, mostly on new connections: what a synchronized
start or Meta redelivering a backlog looks like to the ingress), an open-loop sweep of 5 to 40
messages/s (Poisson; latency from the scheduled moment; a rate is not tried once the previous
one left messages unanswered or p95 above 10 s), and one customer's 200-turn conversation.
CPU per message is read from /proc (utime + stime of every server process and its children,
the load generator apart). Writes bench/out/scale_bench.json and bench/out/scale_*.png.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from bench.loadgen import (Block, GraphStandIn, RestTarget, WhatsAppTarget, burst, closed_loop, conversation, open_loop,
                           percentile)
from cardsystem.config import SANDBOX_DEFAULTS
from cardsystem.seed import FIRST_GENERATED_PHONE
from deploy.serve import TURN_THREADS, lower_priority, wait_until_up, worker_env
from tests.servers import MODEL, RASA, ROOT, Servers, free_port, pg_admin, pg_url, postgres_stores

OUT = ROOT / "bench" / "out"
STOCK_MODEL = ROOT / "models" / "stock.tar.gz"
STOCK_CONFIG = ROOT / "bench" / "stock_config.yml"
CUSTOMERS = 400
USERS = (1, 10, 30, 60)
RATES = (5, 10, 15, 20, 27, 30, 35, 40)
TURNS = 200
TICK = os.sysconf("SC_CLK_TCK")


def processes() -> Dict[int, "tuple[str, int, float]"]:
    """Every process now, from /proc: pid -> (program name, parent pid, CPU seconds used by it and
    its children that have ended)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                head, tail = (entry / "stat").read_text().rsplit(")", 1)
                fields = tail.split()
                # its own CPU and its reaped children's: a PostgreSQL backend that exits (a pool
                # closing a connection) leaves its CPU in the postmaster's, not lost from the sum
                found[int(entry.name)] = (head.split("(", 1)[1], int(fields[1]),
                                          sum(int(f) for f in fields[11:15]) / TICK)
            except (OSError, IndexError, ValueError):
                continue
    return found


def tree_cpu(snapshot: Dict[int, "tuple[str, int, float]"], pid: int) -> float:
    """CPU seconds of a process and all its descendants."""
    children: Dict[int, List[int]] = {}
    for each, (_, parent, _) in snapshot.items():
        children.setdefault(parent, []).append(each)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += snapshot.get(current, ("", 0, 0.0))[2]
        todo += children.get(current, [])
    return total


def program_cpu(snapshot: Dict[int, "tuple[str, int, float]"], names=("postgres", "redis-server")) -> float:
    """CPU seconds of every process of these programs (the databases' share)."""
    return sum(cpu for name, _, cpu in snapshot.values() if name in names)


class Stack:
    """One system under test: its processes, started and stopped."""

    def __init__(self, workdir: Path, servers: Servers, kind: str, workers: int = 1,
                 graph_url: Optional[str] = None, postgres: Optional[Dict[str, str]] = None) -> None:
        self.workdir, self.servers, self.kind, self.workers = workdir, servers, kind, workers
        self.postgres = postgres  # database names (tracker, ...) when the stores are PostgreSQL
        self.env = {**servers.env, **TURN_THREADS} if kind == "whatsapp" else dict(servers.env)
        if graph_url:
            self.env["WHATSAPP_API_BASE"] = graph_url
        self.processes: Dict[str, subprocess.Popen] = {}
        self.all_up = threading.Event()  # every worker answers (they start one after another)
        self.rasa_ports: List[int] = [free_port() for _ in range(workers)]

    def _spawn(self, name: str, args: List[str], env: Dict[str, str], priority=None) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("a")
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=priority)
        self.processes[name] = process
        return process

    def start_support(self) -> None:
        """The action server (and for WhatsApp the ingress): up before the clock starts."""
        self.servers.start_actions()
        self.processes["actions"] = self.servers.actions
        if self.kind == "whatsapp":
            self.servers.start_ingress()
            self.processes["ingress"] = self.servers.ingress

    def start_rasa(self) -> None:
        if self.kind == "whatsapp":
            endpoints = self.servers.endpoints  # the SQL tracker store (PostgreSQL + Redis locks, or SQLite)
            credentials = self.workdir / "credentials.bench.yml"
            credentials.write_text("connectors.whatsapp.WhatsAppInput:\n  ingress: true\n")
            def spawn(number: int, port: int) -> subprocess.Popen:
                return self._spawn(f"worker{number + 1}", [RASA, "run", "-i", "127.0.0.1", "--port", str(port), "-m",
                                                           str(MODEL), "--endpoints", str(endpoints),
                                                           "--credentials", str(credentials)],
                                   worker_env(self.env, number, len(self.rasa_ports)), lower_priority)

            def one_after_another() -> None:  # (as make serve starts them: each when the one before answers)
                for number, port in enumerate(self.rasa_ports):
                    process = spawn(number, port)
                    if not wait_until_up(f"http://127.0.0.1:{port}/webhooks/whatsapp/", process, 600):
                        return
                self.all_up.set()

            threading.Thread(target=one_after_another, daemon=True).start()
        else:
            endpoints = self.workdir / "endpoints.stock.yml"
            endpoints.write_text(f'action_endpoint:\n  url: "http://127.0.0.1:{self.servers.action_port}/webhook"\n')
            credentials = self.workdir / "credentials.stock.yml"
            credentials.write_text("rest:\n")
            self.all_up.set()
            self._spawn("stock", [RASA, "run", "-i", "127.0.0.1", "--port", str(self.rasa_ports[0]), "-m", str(STOCK_MODEL),
                                  "--endpoints", str(endpoints), "--credentials", str(credentials)], self.env)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rasa_ports[0]}"

    def cpu(self) -> Dict[str, float]:
        snapshot = processes()
        used = {name: tree_cpu(snapshot, process.pid) for name, process in list(self.processes.items())}
        if self.postgres:
            used["postgres+redis"] = program_cpu(snapshot)
        return used

    def check_alive(self) -> None:
        for name, process in list(self.processes.items()):
            if process.poll() is not None:
                log = self.workdir / f"{name}.log"
                tail = log.read_text()[-3000:] if log.exists() else ""
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{tail}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.servers.stop()


async def measured(stack: Stack, load) -> Block:
    before = stack.cpu()
    load_before = time.process_time()
    block = await load
    after = stack.cpu()
    block.cpu_s = {name: after[name] - before.get(name, 0.0) for name in after}
    block.cpu_s["load generator"] = time.process_time() - load_before
    stack.check_alive()
    return block


async def first_reply(stack: Stack, target, sender: str, started: float, timeout: float = 600) -> float:
    """Seconds from `started` (the processes' start) to the first answered message."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        stack.check_alive()
        _, reply = await target.send(sender, "hi")
        try:
            await asyncio.wait_for(asyncio.shield(reply), 5 if target.kind == "rest" else timeout)
            return time.perf_counter() - started
        except asyncio.TimeoutError:
            await asyncio.sleep(0.5)
    raise RuntimeError("no reply before the timeout")


def phones(start: int, count: int) -> List[str]:
    return [str(FIRST_GENERATED_PHONE + start + i) for i in range(count)]


async def exercise(stack: Stack, target, seconds: float, rates, users, turns: int, label: str) -> Dict[str, object]:
    """Start-up, warm-up, closed loops, open-loop sweep, long conversation: one system."""
    result: Dict[str, object] = {"system": label}
    started = time.perf_counter()
    stack.start_rasa()
    result["startup_s"] = round(await first_reply(stack, target, phones(CUSTOMERS - 1, 1)[0], started), 1)
    print(f"  [{label}] first reply {result['startup_s']} s after start", file=sys.stderr, flush=True)
    await asyncio.to_thread(stack.all_up.wait, 600)
    result["all_up_s"] = round(time.perf_counter() - started, 1)
    await closed_loop(target, phones(0, 10), min(seconds, 8), "warm-up")
    closed = []
    for count in users:
        block = await measured(stack, closed_loop(target, phones(0, count), seconds, f"closed {count}"))
        closed.append(block.summary())
        print(f"  [{label}] {count} users: {closed[-1]['messages_per_s']} msg/s, p95 {closed[-1]['reply_p95_ms']} ms",
              file=sys.stderr, flush=True)
    result["closed"] = closed
    if target.kind == "whatsapp" and users:  # (stock's REST answers with the reply: no acknowledgement to measure)
        block = await measured(stack, burst(target, phones(0, users[-1]), f"burst {users[-1]}"))
        result["burst"] = block.summary()
        print(f"  [{label}] {users[-1]} at once: ack p50 {result['burst']['ack_p50_ms']} ms, max "
              f"{result['burst']['ack_max_ms']} ms, lost {block.lost}", file=sys.stderr, flush=True)
        await asyncio.sleep(2)
    sweep = []
    for number, rate in enumerate(rates):
        block = await measured(stack, open_loop(target, phones(100, 250), rate, seconds, f"open {rate}", seed=number))
        sweep.append(block.summary())
        print(f"  [{label}] {rate} msg/s offered: p95 {sweep[-1]['reply_p95_ms']} ms, lost {block.lost}",
              file=sys.stderr, flush=True)
        if block.lost or (sweep[-1]["reply_p95_ms"] or 0) > 10000:
            break  # saturated: higher rates only grow the backlog
        await asyncio.sleep(2)
    result["open"] = sweep
    if turns:
        latencies = await conversation(target, phones(360, 1)[0], turns)
        result["conversation_ms"] = [round(v, 1) for v in latencies]
        result["turn_ms"] = {str(t): turn_latency(latencies, t) for t in (5, 50, 200) if t <= turns}
    return result


def turn_latency(latencies: List[float], turn: int, around: int = 2) -> Optional[float]:
    """Median latency of the turns around `turn` (1-based), so one slow turn does not decide."""
    window = [v for v in latencies[max(0, turn - 1 - around):turn + around] if v == v]
    return round(statistics.median(window), 1) if window else None


def train_stock() -> None:
    print("training stock Rasa (bench/stock_config.yml) once: a few minutes ...", file=sys.stderr, flush=True)
    subprocess.run([RASA, "train", "--config", str(STOCK_CONFIG), "--domain", "domain.yml", "--data", "data",
                    "--out", "models", "--fixed-model-name", "stock"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})


def seed_postgres(workdir: Path, name: str) -> None:
    pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg_admin(f"CREATE DATABASE {name}")
    seeddir = workdir / "seed-postgres"
    seeddir.mkdir()
    Servers(seeddir, customers=CUSTOMERS, extra_env={"CARDCARE_DB_URL": pg_url(name)})


async def run_system(workdir: Path, kind: str, workers: int, seconds: float, seeded: Path, label: str,
                     users=USERS, rates=RATES, turns=TURNS, postgres_seed: Optional[str] = None) -> Dict[str, object]:
    systemdir = workdir / label.replace(" ", "-").replace(",", "")
    systemdir.mkdir()
    with contextlib.ExitStack() as cleanup:
        databases = None  # PostgreSQL's database names by part, or SQLite files in systemdir
        if postgres_seed and kind == "whatsapp":
            databases = cleanup.enter_context(postgres_stores(f"cardcare_bench_{os.getpid()}", postgres_seed))
        servers = Servers(systemdir, ingress=kind == "whatsapp", seed=False, postgres=databases,
                          sql_tracker=kind == "whatsapp")
        if databases is None:
            shutil.copy(seeded, systemdir / "cards.db")  # the same seeded card system for every system
        return await run_stack(systemdir, servers, kind, workers, seconds, label, users, rates, turns, databases)


async def run_stack(systemdir: Path, servers: Servers, kind: str, workers: int, seconds: float, label: str,
                    users, rates, turns, databases: Optional[Dict[str, str]]) -> Dict[str, object]:
    graph = GraphStandIn(SANDBOX_DEFAULTS["app_secret"], SANDBOX_DEFAULTS["phone_number_id"])
    graph_url = await graph.start() if kind == "whatsapp" else None
    stack = Stack(systemdir, servers, kind, workers, graph_url, databases)
    target = None
    try:
        stack.start_support()
        if kind == "whatsapp":
            graph.webhook_url = servers.webhook_url
            target = WhatsAppTarget(servers.webhook_url, graph, SANDBOX_DEFAULTS["app_secret"],
                                    SANDBOX_DEFAULTS["phone_number_id"])
        else:
            target = RestTarget(stack.rest_url)
        result = await exercise(stack, target, seconds, rates, users, turns, label)
        result["workers"] = workers
        result["stores"] = "PostgreSQL + Redis" if databases else "SQLite"
        if kind == "whatsapp":
            result["status_ack_p99_ms"] = percentile(graph.status_ack_ms, 99)
        return result
    finally:
        if target is not None:
            await target.close()
        await graph.stop()
        stack.stop()


def best_rate(result: Dict[str, object], p95_ms: float = 1000.0) -> Optional[float]:
    """The highest offered rate answered in full with reply p95 within `p95_ms`."""
    rates = [float(b["offered"].split()[0]) for b in result.get("open", [])
             if not b["lost"] and b["reply_p95_ms"] is not None and b["reply_p95_ms"] <= p95_ms]
    return max(rates) if rates else None


def block_at(result: Dict[str, object], kind: str, offered: str) -> Optional[Dict[str, object]]:
    return next((b for b in result.get(kind, []) if b["offered"] == offered), None)


def ratios(ours: Dict[str, object], stock: Dict[str, object]) -> Dict[str, object]:
    found: Dict[str, object] = {}
    for users in ("30 users", "60 users"):
        a, b = block_at(ours, "closed", users), block_at(stock, "closed", users)
        if a and b and b["messages_per_s"] and b["cpu_ms_per_message"]:
            found[f"closed {users}: messages/s, cardcare / stock"] = round(a["messages_per_s"] / b["messages_per_s"], 2)
            found[f"closed {users}: CPU per message, cardcare / stock"] = round(
                a["cpu_ms_per_message"] / b["cpu_ms_per_message"], 2)
    a, b = best_rate(ours), best_rate(stock)
    found["open loop: highest rate at p95 <= 1 s, cardcare / stock"] = round(a / b, 2) if a and b else None
    return found


def plots(report: Dict[str, object], out: Path) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in report["systems"] if s]
    made = []
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for s in systems:
        users = [int(b["offered"].split()[0]) for b in s["closed"]]
        left.plot(users, [b["messages_per_s"] for b in s["closed"]], marker="o", label=s["system"])
        right.plot(users, [b["reply_p95_ms"] for b in s["closed"]], marker="o", label=s["system"])
    left.set(xlabel="customers (closed loop)", ylabel="messages/s", title="throughput")
    right.set(xlabel="customers (closed loop)", ylabel="reply p95 (ms)", title="reply latency p95", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scale_closed_loop.png", dpi=100)
    made.append("scale_closed_loop.png")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for s in systems:
        rates = [float(b["offered"].split()[0]) for b in s["open"]]
        left.plot(rates, [b["messages_per_s"] for b in s["open"]], marker="o", label=s["system"])
        right.plot(rates, [b["reply_p95_ms"] for b in s["open"]], marker="o", label=f"{s['system']} reply p95")
        if any(b["ack_p99_ms"] for b in s["open"]):
            right.plot(rates, [b["ack_p99_ms"] for b in s["open"]], marker="x", linestyle="--",
                       label=f"{s['system']} webhook ack p99")
    left.plot([0, 40], [0, 40], color="grey", linewidth=0.8, linestyle=":")
    right.axhline(1000, color="red", linewidth=0.8, linestyle=":")
    left.set(xlabel="offered messages/s (open loop)", ylabel="answered messages/s", title="open-loop sweep")
    right.set(xlabel="offered messages/s (open loop)", ylabel="ms", title="latency", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scale_open_loop.png", dpi=100)
    made.append("scale_open_loop.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in systems:
        if s.get("conversation_ms"):
            ax.plot(range(1, len(s["conversation_ms"]) + 1), s["conversation_ms"], linewidth=0.8, label=s["system"])
    ax.set(xlabel="turn of the conversation", ylabel="reply latency (ms)", title="latency against conversation length")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scale_conversation.png", dpi=100)
    made.append("scale_conversation.png")
    plt.close("all")
    return made


def print_report(report: Dict[str, object]) -> None:
    print(f"\ncardcare scale benchmark, {report['when']}, git {report['git']}, {report['machine']}")
    for s in report["systems"]:
        if not s:
            continue
        up = f", every worker up in {s['all_up_s']} s" if s.get('workers', 1) > 1 and s.get('all_up_s') else ""
        print(f"\n== {s['system']} (started and first reply in {s['startup_s']} s{up})")
        print(f"{'load':>14} {'msg/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'ack p99':>8} {'lost':>5} "
              f"{'dup':>4} {'CPU ms/msg':>10}")
        for b in s["closed"] + s["open"]:
            print(f"{b['offered']:>14} "
                  f"{b['messages_per_s']!s:>7} {b['reply_p50_ms']!s:>8} {b['reply_p95_ms']!s:>8} "
                  f"{b['reply_p99_ms']!s:>8} {b['ack_p99_ms']!s:>8} {b['lost']:>5} {b['duplicated']:>4} "
                  f"{b['cpu_ms_per_message']!s:>10}")
        if s.get("turn_ms"):
            turns = s["turn_ms"]
            ratio = round(turns["200"] / turns["5"], 2) if turns.get("200") and turns.get("5") else None
            print(f"conversation: turn 5 {turns.get('5')} ms, turn 50 {turns.get('50')} ms, turn 200 "
                  f"{turns.get('200')} ms (200th / 5th = {ratio})")
        if s.get("status_ack_p99_ms") is not None:
            print(f"status webhooks: ack p99 {round(s['status_ack_p99_ms'], 1)} ms")
        if s.get("burst"):
            b = s["burst"]
            print(f"burst ({b['offered']}, the same instant, mostly new connections): ack p50 {b['ack_p50_ms']} ms, "
                  f"max {b['ack_max_ms']} ms; reply p50 {b['reply_p50_ms']} ms, p99 {b['reply_p99_ms']} ms; "
                  f"lost {b['lost']}, duplicated {b['duplicated']}")
    if report.get("ratios"):
        print("\nratios, same run:")
        for name, value in report["ratios"].items():
            print(f"  {name}: {value}")
    if report.get("workers"):
        print("\none worker against two (closed loop):")
        for name, value in report["workers"].items():
            print(f"  {name}: {value}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured block")
    parser.add_argument("--workers", type=int, default=2, help="Rasa workers behind the ingress")
    parser.add_argument("--store", choices=("postgres", "sqlite"), default="postgres",
                        help="cardcare's stores: PostgreSQL + Redis (make serve's scale-out) or SQLite files")
    parser.add_argument("--no-stock", action="store_true", help="skip stock Rasa (no ratios)")
    parser.add_argument("--no-single", action="store_true", help="skip the one-worker comparison")
    parser.add_argument("--quick", action="store_true", help="a smoke run: short blocks, few loads")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the JSON and plots go (default {OUT})")
    args = parser.parse_args(argv)
    if not MODEL.exists():
        print("no model: run make train first", file=sys.stderr)
        return 1
    users, rates, turns, seconds = USERS, RATES, TURNS, args.seconds
    if args.quick:
        users, rates, turns, seconds = (1, 10), (5, 10), 12, min(seconds, 4.0)
    if not args.no_stock and not STOCK_MODEL.exists():
        train_stock()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: Dict[str, object] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average at start "
                   f"{os.getloadavg()[0]:.2f}",
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip(),
        "command": "python -m bench.scale_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds_per_block": seconds, "systems": [],
    }
    with tempfile.TemporaryDirectory(prefix="cardcare-bench-") as tmp:
        workdir = Path(tmp)
        seeddir = workdir / "seed"
        seeddir.mkdir()
        print(f"seeding {CUSTOMERS} customers ...", file=sys.stderr, flush=True)
        Servers(seeddir, customers=CUSTOMERS)
        seeded = seeddir / "cards.db"
        postgres_seed = None
        if args.store == "postgres":
            postgres_seed = f"cardcare_bench_seed_{os.getpid()}"
            seed_postgres(workdir, postgres_seed)
        stores = "PostgreSQL+Redis" if postgres_seed else "SQLite"
        label = f"cardcare WhatsApp, {args.workers} worker{'s' if args.workers > 1 else ''}, {stores}"
        try:
            ours = asyncio.run(run_system(workdir, "whatsapp", args.workers, seconds, seeded, label, users, rates, turns,
                                          postgres_seed))
            report["systems"].append(ours)
            stock = None
            if not args.no_stock:
                stock = asyncio.run(run_system(workdir, "rest", 1, seconds, seeded, "stock Rasa REST", users, rates,
                                               turns))
                report["systems"].append(stock)
                report["ratios"] = ratios(ours, stock)
            if not args.no_single and args.workers > 1:
                single = asyncio.run(run_system(workdir, "whatsapp", 1, seconds, seeded,
                                                f"cardcare WhatsApp, 1 worker, {stores}", users[-2:], (), 0,
                                                postgres_seed))
                report["workers"] = {
                    f"{b['offered']}: messages/s, {args.workers} workers / 1": round(
                        a["messages_per_s"] / b["messages_per_s"], 2)
                    for a in ours["closed"] for b in single["closed"]
                    if a["offered"] == b["offered"] and b["messages_per_s"]}
                report["single_worker"] = single
        finally:
            if postgres_seed:
                pg_admin(f"DROP DATABASE IF EXISTS {postgres_seed} WITH (FORCE)")
    (out / "scale_bench.json").write_text(json.dumps(report, indent=1))
    report["plots"] = plots(report, out)
    print_report(report)
    print(f"\ndetails: {out / 'scale_bench.json'}; plots: " + ", ".join(str(out / p) for p in report["plots"]))
    lost = sum(b["lost"] + b["duplicated"] for s in report["systems"] if s and s["system"].startswith("cardcare")
               for b in s["closed"] + s["open"] + ([s["burst"]] if s.get("burst") else []))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
