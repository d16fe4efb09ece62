"""`rasa train` with its wall time recorded in var/train_times.json (read by make bench)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "var" / "train_times.json"


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    rasa = str(Path(sys.executable).parent / "rasa")
    started = time.monotonic()
    result = subprocess.run([rasa, "train", "--fixed-model-name", "cardcare", *args], cwd=ROOT)
    seconds = round(time.monotonic() - started, 1)
    if result.returncode == 0:
        RECORD.parent.mkdir(exist_ok=True)
        history = json.loads(RECORD.read_text()) if RECORD.exists() else []
        history.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds, "args": args})
        RECORD.write_text(json.dumps(history[-20:], indent=1))
        print(f"rasa train took {seconds} s", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
