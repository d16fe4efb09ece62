"""make nlu-report: intent accuracy on our held-out split and on the CLINC150 card benchmark.

Serves the trained model with Rasa's HTTP API on a free port, scores our held-out sets through
/model/parse and runs the benchmark's own evaluator on shared/benchmarks/clinc150-cards/test.yml
with our intent map.

Held-out sets: tests/nlu/customers.yml (written by someone who never saw the training data:
Indian English, Hinglish, typos, the bank's other products) and tests/nlu/heldout.yml (the
first, older split). FAQ sub-intents count as such (faq/fees mistaken for faq/travel is an
error). A message the bot declines (out_of_scope, or nlu_fallback: "please rephrase") counts as
out of scope, as the benchmark's evaluator does.

    python -m bench.nlu_report [--clinc-limit N]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import requests
import yaml

from tests.servers import MODEL, RASA, ROOT, free_port, wait_for

OUT = ROOT / "bench" / "out"
HELDOUT_SETS = (("customers", ROOT / "tests" / "nlu" / "customers.yml"), ("heldout", ROOT / "tests" / "nlu" / "heldout.yml"),
                ("requests", ROOT / "tests" / "nlu" / "heldout_requests.yml"))
DECLINED = {"out_of_scope", "nlu_fallback"}
CLINC = ROOT.parent / "shared" / "benchmarks" / "clinc150-cards"
INTENT_MAP = ROOT / "bench" / "clinc_intent_map.yml"
MARKUP = re.compile(r"\[(?P<text>[^\]]+)\]\([^)]+\)")


def load_examples(path: Path) -> List[Tuple[str, str]]:
    doc = yaml.safe_load(path.read_text())
    examples = []
    for block in doc.get("nlu", []):
        if "intent" not in block:
            continue
        for line in block["examples"].splitlines():
            line = line.strip()
            if line.startswith("- "):
                examples.append((MARKUP.sub(lambda m: m.group("text"), line[2:].strip()), block["intent"]))
    return examples


def score(pairs: List[Tuple[str, str]]) -> Dict[str, object]:
    labels = sorted({gold for gold, _ in pairs})
    per_intent = {}
    for label in labels:
        tp = sum(1 for g, p in pairs if g == label and p == label)
        fp = sum(1 for g, p in pairs if g != label and p == label)
        fn = sum(1 for g, p in pairs if g == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        confusions = Counter(p for g, p in pairs if g == label and p != label)
        per_intent[label] = {"n": tp + fn, "precision": round(precision, 3), "recall": round(recall, 3),
                             "f1": round(f1, 3), "top_confusion": confusions.most_common(1)[0][0] if confusions else ""}
    accuracy = sum(1 for g, p in pairs if g == p) / len(pairs)
    in_scope = [(g, p) for g, p in pairs if g != "out_of_scope"]
    oos_gold = [(g, p) for g, p in pairs if g == "out_of_scope"]
    oos_predicted = [(g, p) for g, p in pairs if p == "out_of_scope"]
    return {"examples": len(pairs), "accuracy": round(accuracy, 3),
            "in_scope_accuracy": round(sum(1 for g, p in in_scope if g == p) / max(len(in_scope), 1), 3),
            "oos_examples": len(oos_gold),
            "oos_recall": round(sum(1 for g, p in oos_gold if p == g) / max(len(oos_gold), 1), 3),
            "oos_precision": round(sum(1 for g, p in oos_predicted if p == g) / max(len(oos_predicted), 1), 3),
            "macro_f1": round(sum(v["f1"] for v in per_intent.values()) / len(per_intent), 3), "per_intent": per_intent}


def predicted_label(parsed: dict) -> str:
    """The bot's answer as a label: a FAQ by its sub-intent; declining as out_of_scope."""
    name = (parsed.get("intent") or {}).get("name") or "none"
    if name in DECLINED:
        return "out_of_scope"
    if name == "faq":
        response = ((parsed.get("response_selector") or {}).get("faq") or {}).get("response") or {}
        return response.get("intent_response_key") or "faq"
    return name


def plot_confusion(pairs: List[Tuple[str, str]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({g for g, _ in pairs} | {p for _, p in pairs})
    index = {label: i for i, label in enumerate(labels)}
    grid = [[0] * len(labels) for _ in labels]
    for gold, predicted in pairs:
        grid[index[gold]][index[predicted]] += 1
    fig, ax = plt.subplots(figsize=(11, 10))
    ax.imshow(grid, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"cardcare held-out NLU set '{title}': confusion")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=6,
                        color="white" if value > max(map(max, grid)) / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clinc-limit", type=int, default=0, help="score only the first N CLINC examples")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "rasa.log"
        server = subprocess.Popen([RASA, "run", "--enable-api", "-i", "127.0.0.1", "--port", str(port), "-m", str(MODEL)],
                                  cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            print("loading the model ...", file=sys.stderr, flush=True)
            wait_for(f"{url}/status", 300, server, log)
            results = {}
            latencies = []
            for set_name, path in HELDOUT_SETS:
                if not path.exists():
                    continue
                examples = load_examples(path)
                pairs = []
                for i, (text, gold) in enumerate(examples, 1):
                    started = time.perf_counter()
                    parsed = requests.post(f"{url}/model/parse", json={"text": text}, timeout=30).json()
                    latencies.append(time.perf_counter() - started)
                    pairs.append((gold, predicted_label(parsed)))
                    if i % 100 == 0:
                        print(f"{set_name}: {i}/{len(examples)}", file=sys.stderr, flush=True)
                results[set_name] = score(pairs)
                results[set_name]["errors"] = [{"text": t, "gold": g, "predicted": p}
                                               for (t, _), (g, p) in zip(examples, pairs) if g != p]
                plot_confusion(pairs, OUT / f"nlu_{set_name}_confusion.png", set_name)
            clinc_cmd = [sys.executable, str(CLINC / "evaluate.py"), "--url", url, "--intent-map", str(INTENT_MAP),
                         "--labels", str(CLINC / "labels.csv"), "--json", str(OUT / "clinc150_cards.json")]
            if args.clinc_limit:
                clinc_cmd += ["--limit", str(args.clinc_limit)]
            clinc = subprocess.run(clinc_cmd, cwd=ROOT, capture_output=True, text=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    (OUT / "nlu_heldout.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    for set_name, result in results.items():
        print(f"\nHeld-out set '{set_name}' ({result['examples']} examples, {result['oos_examples']} out of scope): "
              f"accuracy {result['accuracy']}, in-scope {result['in_scope_accuracy']}, macro-F1 {result['macro_f1']}, "
              f"out-of-scope recall {result['oos_recall']} / precision {result['oos_precision']}")
        weak = sorted(result["per_intent"].items(), key=lambda kv: kv[1]["f1"])[:6]
        for name, row in weak:
            print(f"  {name:26} f1 {row['f1']:.3f}  recall {row['recall']:.3f}  confused with {row['top_confusion'] or '-'}")
    if latencies:
        ordered = sorted(latencies)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
        print(f"\n/model/parse over HTTP ({len(ordered)} calls): p50 {pick(0.5):.0f} ms, p90 {pick(0.9):.0f} ms, "
              f"p99 {pick(0.99):.0f} ms")
    print("\nCLINC150 card benchmark (shared/benchmarks/clinc150-cards/evaluate.py):")
    print(clinc.stdout[-3500:] or clinc.stderr[-2000:])
    print(f"details: {OUT}/nlu_heldout.json (with every error), {OUT}/clinc150_cards.json, plots {OUT}/nlu_*_confusion.png")
    return clinc.returncode


if __name__ == "__main__":
    sys.exit(main())
