"""Agent accounts for the console.

    python -m cardsystem.agents add <username> --first-name Priya   (asks for the password twice,
                                                                   or reads CARDCARE_AGENT_PASSWORD)
    python -m cardsystem.agents list
    python -m cardsystem.agents demo      development only: the demo agent `asha` (make run does it)
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys

from cardsystem.errors import CardSystemError
from cardsystem.handoff import HandoffDesk
from cardsystem.service import CardSystem

DEMO = ("asha", "Asha", "cardcare-demo-agent")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create an agent account")
    add.add_argument("username")
    add.add_argument("--first-name", required=True, help="shown to customers when the agent joins a chat")
    commands.add_parser("list", help="list agent accounts")
    commands.add_parser("demo", help="create the demo agent (not in production)")
    args = parser.parse_args(argv)
    desk = HandoffDesk(CardSystem())
    try:
        if args.command == "add":
            password = os.environ.get("CARDCARE_AGENT_PASSWORD")
            if not password:
                password = getpass.getpass("Password (10+ characters): ")
                if getpass.getpass("Again: ") != password:
                    print("The passwords differ; nothing was created.", file=sys.stderr)
                    return 1
            agent = desk.create_agent(args.username, args.first_name, password)
            print(f"Agent {agent.username} ({agent.first_name}) created.")
        elif args.command == "list":
            for agent in desk.agents():
                print(f"{agent.username:<20} {agent.first_name:<20} {'online' if agent.online else ''}")
        else:
            if os.environ.get("CARDCARE_ENV", "development") == "production":
                print("No demo agent in production: use `add`.", file=sys.stderr)
                return 1
            if not any(a.username == DEMO[0] for a in desk.agents()):
                desk.create_agent(*DEMO)
            print(f"Demo agent: username {DEMO[0]}, password {DEMO[2]}")
    except CardSystemError as refused:
        print(str(refused), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
