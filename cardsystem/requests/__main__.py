"""The service desk from the command line, beside the console (same rules, audit and notices).

    python -m cardsystem.requests list [--overdue] [--kind K] [--status S] [--all] [--json]
    python -m cardsystem.requests show REFERENCE
    python -m cardsystem.requests set-status REFERENCE STATUS --note TEXT [--as NAME]
    python -m cardsystem.requests run-sla [--now ISO-TIME] [--dry-run]   (the delay job once; cron runs this;
                                  it tells real customers: --dry-run lists what it would do)
    python -m cardsystem.requests figures [--json]

Statuses: open, in_progress, needs_documents (the note says what is needed), resolved (the note is
the resolution), rejected (the note is the reason). Exit codes: 0 done, 1 refused by the rules or
not found (the reason on stderr), 2 usage.
"""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from typing import List, Optional

from cardsystem.errors import CardSystemError


def _desk():
    from cardsystem.requests.desk import ServiceDesk
    from cardsystem.service import CardSystem

    CardSystem().create_schema()  # an older database gets the desk's columns and tables
    return ServiceDesk()


def _moment(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r} (e.g. 2026-12-01T10:00 or 2026-12-01T10:00+05:30)")


def _print_list(rows: List[dict]) -> None:
    if not rows:
        print("No requests.")
        return
    print(f"{'reference':<14} {'kind':<16} {'status':<16} {'due by':<17} {'late':<5} {'lvl':<3} {'customer':<14} assigned")
    for r in rows:
        print(f"{r['reference']:<14} {r['kind']:<16} {r['status']:<16} {r['promised_by'][:16].replace('T', ' '):<17} "
              f"{'LATE' if r['overdue'] else '':<5} {r['escalation_level']:<3} {r['customer_phone']:<14} "
              f"{r['assigned_to'] or '-'}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cardsystem.requests", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the worklist, soonest due first")
    listing.add_argument("--overdue", action="store_true", help="only requests past their promised time")
    listing.add_argument("--kind")
    listing.add_argument("--status")
    listing.add_argument("--all", action="store_true", help="closed ones too")
    listing.add_argument("--json", action="store_true")
    show = commands.add_parser("show", help="one request with its documents and history")
    show.add_argument("reference")
    status = commands.add_parser("set-status", help="move a request; the customer is told")
    status.add_argument("reference")
    status.add_argument("status")
    status.add_argument("--note", default="", help="required for needs_documents, resolved and rejected")
    status.add_argument("--as", dest="actor", default=None, help="who is acting (audit); default: your login")
    sla = commands.add_parser("run-sla", help="the delay job once: late requests told and escalated")
    sla.add_argument("--now", type=_moment, default=None, help="the moment to judge lateness at (tests, replays)")
    sla.add_argument("--dry-run", action="store_true", help="list what would be done; change nothing, tell no one")
    figures = commands.add_parser("figures", help="per kind: opened, resolved in time, overdue, escalated, median")
    figures.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    desk = _desk()
    try:
        if args.command == "list":
            rows = desk.worklist(kind=args.kind, status=args.status, overdue=args.overdue, include_closed=args.all)
            print(json.dumps(rows, indent=2)) if args.json else _print_list(rows)
        elif args.command == "show":
            print(json.dumps(desk.request(args.reference), indent=2, default=str))
        elif args.command == "set-status":
            actor = f"cli:{args.actor or getpass.getuser()}"
            done = desk.set_status(args.reference, args.status, args.note, actor)
            print(f"{done['reference']} is now {done['status']}; the customer will be told.")
        elif args.command == "run-sla":
            now = desk.rules.calendar.localise(args.now) if args.now else None
            if args.dry_run:
                late = desk.late_requests(now)
                print(f"Dry run: {len(late)} request(s) past their promise; nothing was changed and nobody told.")
                for row in late:
                    print(f"  {row['reference']:<14} promised {row['promised_by'][:16].replace('T', ' ')}  "
                          f"would {row['would']} (level {row['level']})")
                return 0
            report = desk.run_sla(now)
            print(f"Delay job at {report.now:%Y-%m-%d %H:%M}: {len(report.late)} late (customer told the new date), "
                  f"{len(report.escalated)} escalated, {report.skipped} taken by another instance.")
            for reference in report.late:
                print(f"  late       {reference}")
            for reference in report.escalated:
                print(f"  escalated  {reference}")
        elif args.command == "figures":
            data = desk.figures()
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                print(f"{'kind':<16} {'opened':>6} {'active':>6} {'in time':>7} {'late':>5} {'rejected':>8} "
                      f"{'overdue':>7} {'escalated':>9} {'median h':>8}")
                for f in data["kinds"]:
                    median = "-" if f["median_hours_to_resolve"] is None else f["median_hours_to_resolve"]
                    print(f"{f['kind']:<16} {f['opened']:>6} {f['active']:>6} {f['resolved_in_time']:>7} "
                          f"{f['resolved_late']:>5} {f['rejected']:>8} {f['overdue']:>7} {f['escalated']:>9} {median:>8}")
    except CardSystemError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
