"""Agent accounts for the console.

    python -m cardsystem.agents add <username> --first-name Priya [--role supervisor]
                                   (asks for the password twice, or reads CARDCARE_AGENT_PASSWORD;
                                    the role is `agent` unless told)
    python -m cardsystem.agents list
    python -m cardsystem.agents unlock <username> [--address IP]
                                   an account locked after wrong passwords can sign in again now
                                   (and an address refused after too many failures, if given)
    python -m cardsystem.agents disable <username>
                                   the account can no longer sign in; its sessions end
    python -m cardsystem.agents demo      development only: the demo agent `asha` and the demo
                                          supervisor `meera` (make run does it)
"""
from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import sys

from cardsystem.errors import CardSystemError
from cardsystem.accounts import ROLES
from cardsystem.handoff import HandoffDesk
from cardsystem.service import CardSystem

DEMO = ("asha", "Asha", "cardcare-demo-agent")
DEMO_SUPERVISOR = ("meera", "Meera", "cardcare-demo-supervisor")


def address(text: str) -> str:
    """An IP address as the console records it (so `::1` and `0:0::1` are the same one)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create an agent account")
    add.add_argument("username")
    add.add_argument("--first-name", required=True, help="shown to customers when the agent joins a chat")
    add.add_argument("--role", choices=ROLES, default="agent",
                     help="a supervisor sees every chat and note and may transfer any chat")
    commands.add_parser("list", help="list agent accounts")
    disable = commands.add_parser("disable", help="stop an account signing in (someone who left, a demo account)")
    disable.add_argument("username")
    unlock = commands.add_parser("unlock", help="let a locked-out agent sign in again")
    unlock.add_argument("username")
    unlock.add_argument("--address", type=address, help="also forget this client address's failed sign-ins")
    commands.add_parser("demo", help="create the demo agent and supervisor (not in production)")
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
            agent = desk.accounts.create_agent(args.username, args.first_name, password, args.role)
            print(f"{agent.role.capitalize()} {agent.username} ({agent.first_name}) created.")
        elif args.command == "list":
            for agent in desk.accounts.agents():
                locked = desk.accounts.locked_until(agent.username)
                status = f"locked until {locked:%H:%M}" if locked else ("online" if agent.online else "")
                print(f"{agent.username:<20} {agent.first_name:<20} {agent.role:<11} {status}".rstrip())
        elif args.command == "disable":
            desk.accounts.disable(args.username)
            print(f"{args.username} can no longer sign in; their sessions have ended.")
        elif args.command == "unlock":
            desk.accounts.unlock(args.username, args.address)
            print(f"{args.username} can sign in again" + (f"; {args.address} is no longer refused." if args.address
                                                          else "."))
        else:
            if os.environ.get("CARDCARE_ENV", "development") == "production":
                print("No demo accounts in production: use `add`.", file=sys.stderr)
                return 1
            existing = {a.username for a in desk.accounts.agents()}
            for (username, first_name, password), role in ((DEMO, "agent"), (DEMO_SUPERVISOR, "supervisor")):
                if username not in existing:
                    desk.accounts.create_agent(username, first_name, password, role)
                print(f"Demo {role}: username {username}, password {password}")
    except CardSystemError as refused:
        print(str(refused), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
