"""Messages the bot gave up on: list them, and put them back in the queue once the fault is fixed.

    python -m connectors.whatsapp.deadletters list [--all]      unanswered (or all) dead letters
    python -m connectors.whatsapp.deadletters show REFERENCE     one of them, with the full number to call back
    python -m connectors.whatsapp.deadletters replay REFERENCE   answer it again (a running server picks it up)
    python -m connectors.whatsapp.deadletters replay --all

A message becomes a dead letter when its turn kept failing (action server down, no model,
a bug) for longer than WHATSAPP_GIVE_UP_MINUTES (10): the customer got an apology with the
reference, and the bank's team calls back. Uses CARDCARE_CHANNEL_DB_URL like the server.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from cardsystem.formatting import mask_phone
from connectors.whatsapp.store import ChannelStore


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="dead letters not replayed yet")
    listing.add_argument("--all", action="store_true", help="replayed ones too")
    show = commands.add_parser("show", help="one dead letter in full")
    show.add_argument("reference")
    replay = commands.add_parser("replay", help="put messages back in their customer's queue")
    replay.add_argument("reference", nargs="?")
    replay.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)
    store = ChannelStore()
    if args.command == "list":
        letters = store.dead_letters(include_replayed=args.all)
        if not letters:
            print("No dead letters.")
        for d in letters:
            replayed = f"  replayed {d.replayed_at:%Y-%m-%d %H:%M}" if d.replayed_at else ""
            print(f"{d.reference}  {mask_phone(d.sender)}  {d.dead_at:%Y-%m-%d %H:%M} UTC  "
                  f"{d.attempts} tries  {d.reason}{replayed}")
        return 0
    if args.command == "show":
        found = [d for d in store.dead_letters(include_replayed=True) if d.reference == args.reference]
        if not found:
            print(f"No dead letter {args.reference}.", file=sys.stderr)
            return 1
        d = found[0]
        lines = [f"Reference:   {d.reference}", f"Customer:    +{d.sender}", f"Message:     {d.text}",
                 f"First fault: {d.first_failed_at:%Y-%m-%d %H:%M:%S} UTC", f"Gave up:     {d.dead_at:%Y-%m-%d %H:%M:%S} UTC",
                 f"Tries:       {d.attempts}", f"Last error:  {d.reason}"]
        if d.replayed_at:
            lines.append(f"Replayed:    {d.replayed_at:%Y-%m-%d %H:%M:%S} UTC")
        print("\n".join(lines))
        return 0
    if not args.all and not args.reference:
        parser.error("replay needs a REFERENCE or --all")
    references = [d.reference for d in store.dead_letters()] if args.all else [args.reference]
    replayed = [r for r in references if store.replay(r)]
    for reference in references:
        print(f"{reference}: {'back in the queue' if reference in replayed else 'not found or already replayed'}")
    return 0 if len(replayed) == len(references) else 1


if __name__ == "__main__":
    sys.exit(main())
