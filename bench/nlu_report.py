"""make nlu-report: intent accuracy on our held-out split and on the CLINC150 card benchmark.

Serves the trained model with Rasa's HTTP API on a free port, scores tests/nlu/heldout.yml
through /model/parse (accuracy, macro-F1, per-intent table, confusion plot) and runs the
benchmark's own evaluator on shared/benchmarks/clinc150-cards/test.yml with our intent map.

    python -m bench.nlu_report [--clinc-limit N]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import requests
import yaml

from tests.servers import MODEL, RASA, ROOT, free_port, wait_for

OUT = ROOT / "bench" / "out"
HELDOUT = ROOT / "tests" / "nlu" / "heldout.yml"
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
    return {"examples": len(pairs), "accuracy": round(accuracy, 3),
            "macro_f1": round(sum(v["f1"] for v in per_intent.values()) / len(per_intent), 3), "per_intent": per_intent}


def plot_confusion(pairs: List[Tuple[str, str]], path: Path) -> None:
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
    ax.set_title("cardcare held-out NLU split: confusion")
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
            examples = load_examples(HELDOUT)
            pairs = []
            for i, (text, gold) in enumerate(examples, 1):
                parsed = requests.post(f"{url}/model/parse", json={"text": text}, timeout=30).json()
                pairs.append((gold, (parsed.get("intent") or {}).get("name") or "none"))
                if i % 50 == 0:
                    print(f"held-out: {i}/{len(examples)}", file=sys.stderr, flush=True)
            heldout = score(pairs)
            plot_confusion(pairs, OUT / "nlu_heldout_confusion.png")
            clinc_cmd = [sys.executable, str(CLINC / "evaluate.py"), "--url", url, "--intent-map", str(INTENT_MAP),
                         "--labels", str(CLINC / "labels.csv"), "--json", str(OUT / "clinc150_cards.json")]
            if args.clinc_limit:
                clinc_cmd += ["--limit", str(args.clinc_limit)]
            clinc = subprocess.run(clinc_cmd, cwd=ROOT, capture_output=True, text=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    (OUT / "nlu_heldout.json").write_text(json.dumps(heldout, indent=1))
    print(f"\nHeld-out split ({heldout['examples']} examples): accuracy {heldout['accuracy']}, "
          f"macro-F1 {heldout['macro_f1']}")
    weak = sorted(heldout["per_intent"].items(), key=lambda kv: kv[1]["f1"])[:5]
    for name, row in weak:
        print(f"  {name:24} f1 {row['f1']:.3f}  recall {row['recall']:.3f}  confused with {row['top_confusion'] or '-'}")
    print("\nCLINC150 card benchmark (shared/benchmarks/clinc150-cards/evaluate.py):")
    print(clinc.stdout[-3500:] or clinc.stderr[-2000:])
    print(f"details: {OUT}/nlu_heldout.json, {OUT}/clinc150_cards.json, plot {OUT}/nlu_heldout_confusion.png")
    return clinc.returncode


if __name__ == "__main__":
    sys.exit(main())
