"""What a service request may do: its statuses, the moves between them and what each move needs,
and the bank's configured promises (servicedesk.yml): turnaround per kind in working days, the
clock rule while documents are awaited, and the escalation ladder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Tuple

import yaml

from cardsystem.config import PROJECT_ROOT
from cardsystem.errors import NotAllowed
from cardsystem.requests.calendar import WorkCalendar

DEFAULT_CONFIG = PROJECT_ROOT / "servicedesk.yml"

OPEN, IN_PROGRESS, NEEDS_DOCUMENTS, RESOLVED, REJECTED = "open", "in_progress", "needs_documents", "resolved", "rejected"
STATUSES = (OPEN, IN_PROGRESS, NEEDS_DOCUMENTS, RESOLVED, REJECTED)
ACTIVE = (OPEN, IN_PROGRESS, NEEDS_DOCUMENTS)        # the desk still owes the customer something
CLOSED = (RESOLVED, REJECTED)
# the clock that makes a request late runs in these (while documents are awaited it follows the kind's rule)
CLOCK_RUNS = (OPEN, IN_PROGRESS)

# Moves the desk (console, REST API, command) may make. A closed request is re-opened only by the
# customer escalating through the feedback link (ServiceDesk.escalate_from_feedback).
MOVES: Dict[str, Tuple[str, ...]] = {
    OPEN: (IN_PROGRESS, NEEDS_DOCUMENTS, RESOLVED, REJECTED),
    IN_PROGRESS: (NEEDS_DOCUMENTS, RESOLVED, REJECTED),
    NEEDS_DOCUMENTS: (IN_PROGRESS, RESOLVED, REJECTED),
    RESOLVED: (),
    REJECTED: (),
}
# what the note of a move must say, when one is required
NOTE_NEEDED = {
    NEEDS_DOCUMENTS: "what documents are needed",
    RESOLVED: "the resolution",
    REJECTED: "the reason",
}
MAX_NOTE = 500
CLOCK_RULES = ("pause", "restart")


@dataclass(frozen=True)
class KindRule:
    kind: str
    label: str
    done: str
    turnaround_days: int
    by_reason: Dict[str, int] = field(default_factory=dict)
    documents_clock: str = "pause"

    def days_for(self, reason: Optional[str]) -> int:
        return int(self.by_reason.get(reason or "", self.turnaround_days))


@dataclass(frozen=True)
class Level:
    level: int
    role: str
    name: str
    days: int
    contact: Optional[str] = None


@dataclass(frozen=True)
class DeskRules:
    calendar: WorkCalendar
    kinds: Dict[str, KindRule]
    ladder: Tuple[Level, ...]
    delay_days: int = 3

    def kind(self, kind: str) -> KindRule:
        rule = self.kinds.get(kind)
        if rule is None:  # a kind the file does not know: a week, clock paused
            return KindRule(kind, kind.replace("_", " ").capitalize(), "Your request is done", 7)
        return rule

    def level(self, number: int) -> Optional[Level]:
        return next((l for l in self.ladder if l.level == number), None)

    @property
    def top(self) -> int:
        return max((l.level for l in self.ladder), default=0)

    @classmethod
    def from_mapping(cls, data: dict) -> "DeskRules":
        calendar = WorkCalendar.from_config(data.get("working_days"))
        kinds: Dict[str, KindRule] = {}
        for name, spec in (data.get("kinds") or {}).items():
            spec = spec or {}
            days = int(spec.get("turnaround_days", 7))
            clock = str(spec.get("documents_clock", "pause"))
            if days < 0 or clock not in CLOCK_RULES:
                raise ValueError(f"servicedesk kind {name}: turnaround_days >= 0, documents_clock one of {CLOCK_RULES}")
            kinds[str(name)] = KindRule(
                kind=str(name), label=str(spec.get("label") or name), done=str(spec.get("done") or "Your request is done"),
                turnaround_days=days, by_reason={str(k): int(v) for k, v in (spec.get("by_reason") or {}).items()},
                documents_clock=clock)
        ladder = tuple(sorted((Level(level=int(l["level"]), role=str(l["role"]), name=str(l.get("name") or l["role"]),
                                     days=int(l.get("days", 3)), contact=l.get("contact"))
                               for l in (data.get("escalation") or [])), key=lambda l: l.level))
        if [l.level for l in ladder] != list(range(1, len(ladder) + 1)):
            raise ValueError("servicedesk escalation: levels must be 1, 2, 3 ... in order")
        return cls(calendar=calendar, kinds=kinds, ladder=ladder, delay_days=int(data.get("delay_days", 3)))

    @classmethod
    def load(cls, path: Optional[Path] = None) -> "DeskRules":
        path = Path(path or os.environ.get("CARDCARE_SERVICEDESK_CONFIG") or DEFAULT_CONFIG)
        return _load(str(path.resolve()), path.stat().st_mtime)


@lru_cache(maxsize=4)
def _load(path: str, _mtime: float) -> DeskRules:
    with open(path, encoding="utf-8") as handle:
        return DeskRules.from_mapping(yaml.safe_load(handle) or {})


def check_move(current: str, new: str, note: Optional[str]) -> str:
    """The cleaned note of a move the rules allow; NotAllowed (with a reason a person can act on) else."""
    if new not in STATUSES:
        raise NotAllowed("bad_status", f"Unknown status {new!r}; use one of: {', '.join(STATUSES)}.")
    if new == current:
        raise NotAllowed("same_status", f"The request is already {current}.")
    if new not in MOVES.get(current, ()):
        if current in CLOSED:
            raise NotAllowed("closed", f"The request is {current}; only the customer's escalation re-opens it.")
        raise NotAllowed("bad_move", f"A request that is {current} cannot become {new}.")
    text = " ".join((note or "").split())
    if new in NOTE_NEEDED and not text:
        raise NotAllowed("note_needed", f"Say {NOTE_NEEDED[new]} in the note.")
    if len(text) > MAX_NOTE:
        raise NotAllowed("note_too_long", f"Keep the note under {MAX_NOTE} characters.")
    return text
