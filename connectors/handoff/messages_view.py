"""The console's Messages view: what the messages the bank sends first (payment reminders and the
bank's news) did and cost, per day and category, against what the same messages would have cost as
SMS, under /webhooks/whatsapp/agents/api/messages/report?days=N.

The figures are cardsystem.reminders.report's (the same as `python -m cardsystem.reminders report`
and the desk API's /v1/messages/report), on the card system's database that the Requests view
works. They are about money, so only supervisors and grievance officers get them; an agent is
refused (403) like any other forbidden console request.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Dict

import yaml
from sanic import Blueprint
from sanic.request import Request
from sanic.response import HTTPResponse

from cardsystem.handoff import Forbidden
from connectors.handoff.requests_view import service_desk_of

if TYPE_CHECKING:
    from connectors.whatsapp.channel import WhatsAppInput

logger = logging.getLogger(__name__)
REPORT_ROLES = ("supervisor", "grievance_officer")  # the cost of the bank's messages is theirs to see
DEFAULT_DAYS, MAX_DAYS = 7, 90


def days_of(request: Request) -> int:
    """?days=N, a whole number of days from 1 to 90 (7 when not given); ValueError otherwise."""
    text = str(request.args.get("days") or "").strip()
    if not text:
        return DEFAULT_DAYS
    if not text.isdigit():
        raise ValueError(text)
    days = int(text)
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(text)
    return days


class NotConfigured(Exception):
    """reminders.yml (CARDCARE_REMINDERS_CONFIG) missing or broken: no rates to count with."""


def messages_report(channel: "WhatsAppInput", days: int) -> Dict[str, Any]:
    """The report on the card system's database, on the bank's clock (servicedesk.yml's time zone)."""
    from cardsystem.reminders.policy import Policy
    from cardsystem.reminders.report import report

    desk = service_desk_of(channel)
    try:
        policy = Policy.load(timezone=desk.rules.calendar.timezone)
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise NotConfigured(str(exc)) from exc
    return report(desk.engine, policy, days)


def add_messages_routes(bp: Blueprint, channel: "WhatsAppInput", signed_in: Callable, ok: Callable,
                        error: Callable) -> None:

    @bp.route("/agents/api/messages/report", methods=["GET"])
    @signed_in
    async def report_of_messages(request: Request, agent) -> HTTPResponse:
        if agent.role not in REPORT_ROLES:
            raise Forbidden("refused", "The messages report is for supervisors and grievance officers.")
        try:
            days = days_of(request)
        except ValueError:
            return error(400, f"days must be a whole number from 1 to {MAX_DAYS}")
        try:
            figures = await asyncio.to_thread(messages_report, channel, days)
        except NotConfigured as exc:
            logger.error("console: the messages report could not be made: %s", exc)
            return error(503, "The messages report is not available: the reminders' settings could not be read.")
        logger.info("console: %s read the messages report (%d days)", agent.username, days)
        return ok(figures)
