"""The console's Requests view: the service desk's worklist, a request's documents and history,
status changes with their note, assignment, alerts and the figures, for signed-in agents (the
console's own sessions, CSRF checks and roles), under /webhooks/whatsapp/agents/api/requests.

Every change goes through cardsystem.requests.desk.ServiceDesk (the same rules, audit and
customer notices as the REST API and the command line) and then asks the WhatsApp channel to
deliver the notice now, so the customer hears of it at once.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict

from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from cardsystem.errors import NotAllowed
from cardsystem.handoff import Forbidden

if TYPE_CHECKING:
    from connectors.whatsapp.channel import WhatsAppInput

logger = logging.getLogger(__name__)
LADDER_ROLES = ("supervisor", "grievance_officer")  # may give a request to someone else


def service_desk_of(channel: "WhatsAppInput") -> Any:
    """The channel's service desk (tests give one), else one on the card system's database."""
    if getattr(channel, "service_desk", None) is None:
        from cardsystem.requests.desk import ServiceDesk

        channel.service_desk = ServiceDesk()
    return channel.service_desk


def flag(request: Request, name: str) -> bool:
    return str(request.args.get(name) or "").lower() in ("1", "true", "yes", "on")


def add_request_routes(bp: Blueprint, channel: "WhatsAppInput", on_new_message: Callable[..., Awaitable[Any]],
                       signed_in: Callable, ok: Callable, error: Callable, body_of: Callable,
                       media_headers: Dict[str, str], served_type: Callable, download_name: Callable) -> None:
    people = channel.desk  # agents' accounts: to find a colleague by name

    def deliver_now() -> None:
        """The change's notice to the customer now, not at the next poll."""
        if getattr(channel, "notices", None) is not None:
            channel._spawn(channel.deliver_notices_once(on_new_message))

    @bp.route("/agents/api/requests", methods=["GET"])
    @signed_in
    async def worklist(request: Request, agent) -> HTTPResponse:
        desk = service_desk_of(channel)
        rows = await asyncio.to_thread(
            desk.worklist, request.args.get("kind") or None, request.args.get("status") or None,
            flag(request, "overdue"), agent.username if flag(request, "mine") else None, flag(request, "closed"))
        kinds = [{"kind": k, "label": r.label} for k, r in desk.rules.kinds.items()]
        return ok({"requests": rows, "kinds": kinds,
                   "statuses": ["open", "in_progress", "needs_documents", "resolved", "rejected"]})

    @bp.route("/agents/api/requests/<reference>", methods=["GET"])
    @signed_in
    async def one(request: Request, agent, reference: str) -> HTTPResponse:
        return ok(await asyncio.to_thread(service_desk_of(channel).request, reference))

    @bp.route("/agents/api/requests/<reference>/status", methods=["POST"])
    @signed_in
    async def status(request: Request, agent, reference: str) -> HTTPResponse:
        body = body_of(request)
        done = await asyncio.to_thread(service_desk_of(channel).set_status, reference, str(body.get("status") or ""),
                                       str(body.get("note") or ""), f"agent:{agent.username}", agent.username)
        deliver_now()
        return ok(done)

    @bp.route("/agents/api/requests/<reference>/assign", methods=["POST"])
    @signed_in
    async def assign(request: Request, agent, reference: str) -> HTTPResponse:
        to = str(body_of(request).get("to") or "").strip()
        if to and to != agent.username and agent.role not in LADDER_ROLES:
            raise Forbidden("refused", "Only a supervisor gives a request to someone else; take it yourself.")
        target = None
        if to:
            target = next((a for a in await asyncio.to_thread(people.accounts.agents) if a.username == to), None)
            if target is None:
                raise NotAllowed("unknown_agent", "No such colleague.")
        return ok(await asyncio.to_thread(service_desk_of(channel).assign, reference, target.username if target else None,
                                          f"agent:{agent.username}"))

    @bp.route("/agents/api/requests/<reference>/delay-reason", methods=["POST"])
    @signed_in
    async def delay_reason(request: Request, agent, reference: str) -> HTTPResponse:
        return ok(await asyncio.to_thread(service_desk_of(channel).set_delay_reason, reference,
                                          str(body_of(request).get("reason") or ""), f"agent:{agent.username}"))

    @bp.route("/agents/api/requests/<reference>/documents/<number:int>", methods=["GET"])
    @signed_in
    async def document(request: Request, agent, reference: str, number: int) -> HTTPResponse:
        kept = await asyncio.to_thread(service_desk_of(channel).document, reference, number)
        path = channel.media.path(kept["stored"])
        if path is None:
            return error(404, "The file is no longer kept.")
        served = served_type(kept.get("mime_type"))
        disposition = f'attachment; filename="{download_name(kept, kept["stored"], served)}"'
        logger.info("console: %s downloaded document %d of %s", agent.username, number, reference[:20])
        return await response.file(str(path), mime_type=served, headers={**media_headers, "Content-Disposition": disposition})

    @bp.route("/agents/api/alerts", methods=["GET"])
    @signed_in
    async def alerts(request: Request, agent) -> HTTPResponse:
        return ok({"alerts": await asyncio.to_thread(service_desk_of(channel).alerts, agent.username, agent.role)})

    @bp.route("/agents/api/alerts/<alert_id:int>/read", methods=["POST"])
    @signed_in
    async def alert_read(request: Request, agent, alert_id: int) -> HTTPResponse:
        await asyncio.to_thread(service_desk_of(channel).alert_read, alert_id, agent.username, agent.role)
        return ok({"read": True})

    @bp.route("/agents/api/figures", methods=["GET"])
    @signed_in
    async def figures(request: Request, agent) -> HTTPResponse:
        return ok(await asyncio.to_thread(service_desk_of(channel).figures))
