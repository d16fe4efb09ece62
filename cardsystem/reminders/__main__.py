"""The bank's own messages from the command line (cron runs `run`).

    python -m cardsystem.reminders run [--now ISO-TIME]     one pass of the scheduler: the reminders
                                   (and statement news) due now queued, each once; the running WhatsApp
                                   channel sends them within seconds (a template outside the window)
    python -m cardsystem.reminders report [--days N] [--json]   per day and category: sent, delivered,
                                   read, paid within 48 h of a reminder, cost on WhatsApp against SMS
    python -m cardsystem.reminders templates check           templates.yml against WhatsApp's rules
    python -m cardsystem.reminders templates submit [NAME..] for approval (Business Management API)
    python -m cardsystem.reminders templates sync            ask Meta for their approval status
    python -m cardsystem.reminders templates list            what is recorded

--now is the bank's local time (2026-12-01T10:00) or carries its zone (2026-12-01T04:30Z); it is for
tests and replays. The WhatsApp account comes from WHATSAPP_API_BASE, WHATSAPP_BUSINESS_ACCOUNT_ID and
WHATSAPP_ACCESS_TOKEN (outside production: the local sandbox). Exit codes: 0 done, 1 a problem (on
stderr), 2 usage.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import List, Optional


def _moment(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r} (e.g. 2026-12-01T10:00 or 2026-12-01T04:30Z)")
    if not 2000 <= moment.year <= 2100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time the bank could be working in (2000-2100)")
    return moment


def _days(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 366):
        raise argparse.ArgumentTypeError(f"days is a whole number from 1 to 366, not {text!r}")
    return int(text)


def _utc(policy, moment: Optional[dt.datetime]) -> Optional[dt.datetime]:
    if moment is None:
        return None
    if moment.tzinfo is None:
        return policy.utc(moment)  # the bank's wall clock
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cardsystem.reminders", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="one pass of the scheduler")
    run.add_argument("--now", type=_moment)
    report = commands.add_parser("report", help="sent, delivered, read, paid, cost")
    report.add_argument("--days", type=_days, default=7)
    report.add_argument("--json", action="store_true")
    report.add_argument("--now", type=_moment)
    templates = commands.add_parser("templates", help="check, submit, sync, list")
    templates.add_argument("action", choices=("check", "submit", "sync", "list"))
    templates.add_argument("names", nargs="*")
    args = parser.parse_args(argv)

    from cardsystem.reminders.policy import Policy, template_problems
    from cardsystem.reminders.templates import Registry, TemplateError
    from cardsystem.requests.rules import DeskRules
    from cardsystem.service import CardSystem

    try:
        registry = Registry.load()
        policy = Policy.load(timezone=DeskRules.load().calendar.timezone)
    except (TemplateError, OSError, ValueError) as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    problems = template_problems(policy, registry)
    if problems:
        print("reminders.yml and templates.yml disagree: " + "; ".join(problems), file=sys.stderr)
        return 1
    if args.command == "templates" and args.action == "check":
        for template in registry:
            print(f"ok  {template.name} ({template.language}, {template.category}): {len(template.parameters)} "
                  f"parameters, {len(template.buttons)} buttons")
        return 0
    system = CardSystem()
    system.create_schema()  # an older database gets the new tables and columns
    if args.command == "run":
        from cardsystem.reminders import run_once
        from cardsystem.reminders.outreach import Outreach

        now = _utc(policy, args.now)
        counts = run_once(system, now, Outreach(system.engine, system.settings, policy, registry, system.desk_rules))
        print(f"queued {counts['reminders']} payment reminders and {counts['statements']} statement notices"
              + (f" (as of {args.now.isoformat()})" if args.now else ""))
        return 0
    if args.command == "report":
        from cardsystem.reminders.report import as_text, report as make_report

        figures = make_report(system.engine, policy, args.days, _utc(policy, args.now))
        print(json.dumps(figures, indent=2) if args.json else as_text(figures))
        return 0
    from cardsystem.reminders.book import GraphAccount, TemplateBook

    book = TemplateBook(system.engine)
    if args.action == "list":
        states = book.states()
        for template in registry:
            state = states.get(template.key) or {}
            changed = state and state.get("content_hash") != template.content_hash
            print(f"{template.name:<24} {template.language:<6} {template.category:<9} "
                  f"{(state.get('status') or 'NOT SUBMITTED'):<14} {'CHANGED since submitted' if changed else ''}"
                  f"{state.get('reason') or ''}")
        return 0
    unknown = sorted(set(args.names) - {t.name for t in registry})
    if args.names and args.action != "submit":
        print(f"templates {args.action} takes no names (it covers every template)", file=sys.stderr)
        return 2
    if unknown:
        print(f"no template named {', '.join(unknown)} in templates.yml", file=sys.stderr)
        return 1
    account = GraphAccount.from_env()
    results = book.submit(registry, account, args.names or None) if args.action == "submit" \
        else book.sync(registry, account)
    failed = False
    for result in results:
        print(f"{result['template']:<24} {result.get('status', ''):<10} {result.get('note', '')}")
        failed |= result.get("status") in ("ERROR", "MISSING", "CHANGED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
