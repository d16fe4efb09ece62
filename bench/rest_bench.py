"""make bench: reply latency and throughput over Rasa's REST channel, and training time.

Starts the action server and Rasa (SQLite tracker store, as `make run` does) on a freshly
seeded card system, then sends card-support questions as 1 user and as 10 concurrent users
(each a different customer, each message sent after the previous reply). Prints p50/p95
latency and messages per second, writes bench/out/rest_bench.json and a latency plot.

    python -m bench.rest_bench [--messages 60] [--users 10] [--per-user 30]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import requests

from tests.servers import MODEL, ROOT, running_bot

OUT = ROOT / "bench" / "out"
SCRIPT = (
    "hi", "what's my balance", "when is my bill due", "what is the minimum due",
    "how many reward points do I have", "show my recent transactions", "what is the interest rate",
    "how much limit do I have", "dispute status", "thanks",
)
WARMUP = 10


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def converse(url: str, sender: str, count: int, latencies: List[float], errors: List[str]) -> None:
    session = requests.Session()
    for i in range(count):
        text = SCRIPT[i % len(SCRIPT)]
        started = time.perf_counter()
        try:
            response = session.post(f"{url}/webhooks/rest/webhook", json={"sender": sender, "message": text}, timeout=60)
            ok = response.status_code == 200 and response.json()
        except requests.RequestException as exc:
            ok, response = False, exc
        latencies.append((time.perf_counter() - started) * 1000)
        if not ok:
            errors.append(f"{sender} {text!r}: {response}")


def run_load(url: str, users: int, per_user: int, first_sender: int) -> Dict[str, float]:
    latencies: List[float] = []
    errors: List[str] = []
    threads = [threading.Thread(target=converse, args=(url, str(first_sender + u), per_user, latencies, errors))
               for u in range(users)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "users": users, "messages": len(latencies), "errors": len(errors),
        "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
        "max_ms": round(max(latencies), 1), "messages_per_s": round(len(latencies) / elapsed, 2),
        "latencies_ms": [round(v, 1) for v in latencies],
    }


def training_figures() -> Dict[str, object]:
    record = ROOT / "var" / "train_times.json"
    history = json.loads(record.read_text()) if record.exists() else []
    started = time.monotonic()
    subprocess.run([str(Path(sys.executable).parent / "rasa"), "train", "--fixed-model-name", "cardcare"],
                   cwd=ROOT, capture_output=True, check=True)
    return {"recorded_trainings": history[-5:], "unchanged_retrain_s": round(time.monotonic() - started, 1)}


def plot(results: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for result in results:
        values = sorted(result["latencies_ms"])
        ax.plot(values, [i / len(values) for i in range(1, len(values) + 1)], label=f"{result['users']} user(s)")
    ax.set_xlabel("reply latency (ms)")
    ax.set_ylabel("fraction of messages")
    ax.set_title("cardcare over REST: latency CDF")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=60, help="messages sent by the single user")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--per-user", type=int, default=30)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    if not MODEL.exists():
        print("no model: run make train first", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print("starting the action server and Rasa ...", file=sys.stderr, flush=True)
        with running_bot(Path(tmp), sql_tracker=True) as bot:
            print("warming up ...", file=sys.stderr, flush=True)
            run_load(bot.url, 1, WARMUP, 919810000050)
            print(f"1 user, {args.messages} messages ...", file=sys.stderr, flush=True)
            single = run_load(bot.url, 1, args.messages, 919810000000)
            print(f"{args.users} users x {args.per_user} messages ...", file=sys.stderr, flush=True)
            many = run_load(bot.url, args.users, args.per_user, 919810000010)
    training = {} if args.skip_training else training_figures()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores", "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                                     capture_output=True, text=True).stdout.strip(),
        "results": [single, many], "training": training,
    }
    (OUT / "rest_bench.json").write_text(json.dumps(report, indent=1))
    plot([single, many], OUT / "rest_latency.png")
    print(f"\n{'users':>5} {'msgs':>5} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'msg/s':>7}")
    for r in (single, many):
        print(f"{r['users']:>5} {r['messages']:>5} {r['errors']:>6} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['max_ms']:>8} "
              f"{r['messages_per_s']:>7}")
    if training:
        last = training["recorded_trainings"][-1]["seconds"] if training["recorded_trainings"] else "not recorded"
        print(f"\nlast recorded `rasa train`: {last} s; unchanged retrain (cache): {training['unchanged_retrain_s']} s")
    print(f"details: {OUT / 'rest_bench.json'}, plot: {OUT / 'rest_latency.png'}")
    return 0 if not single["errors"] and not many["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
