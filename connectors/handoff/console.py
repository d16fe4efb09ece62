"""The agent console: a web page and a JSON API served by the bot, under
/webhooks/whatsapp/agents/.

Agents sign in (scrypt-hashed passwords, server-side sessions that expire, an HttpOnly
SameSite=Strict cookie); every state-changing request must carry the session's CSRF token in
`X-CSRF-Token`. Nothing about a customer is served without a session; every agent action is
audited by the desk. Replies go out through the WhatsApp channel, so they are recorded and
retried like the bot's own.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional

import yaml
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from cardsystem.errors import CardSystemError, NotFound
from cardsystem.formatting import mask_phone
from connectors.handoff import wording

if TYPE_CHECKING:
    from connectors.whatsapp.channel import WhatsAppInput

logger = logging.getLogger(__name__)
HERE = Path(__file__).parent
COOKIE = "cardcare_agent"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}


def canned_replies() -> List[Dict[str, str]]:
    data = yaml.safe_load((HERE / "canned_replies.yml").read_text(encoding="utf-8")) or []
    return [{"title": str(r["title"]), "text": str(r["text"])} for r in data if isinstance(r, dict) and r.get("text")]


def add_console_routes(bp: Blueprint, channel: "WhatsAppInput", on_new_message: Callable[..., Awaitable[Any]]) -> None:
    desk = channel.desk
    secure_cookie = os.environ.get("CARDCARE_ENV", "development") == "production"

    def error(status: int, message: str) -> HTTPResponse:
        return response.json({"error": message}, status=status, headers=SECURITY_HEADERS)

    def ok(data: Any) -> HTTPResponse:
        return response.json(data, headers=SECURITY_HEADERS, default=str)

    def signed_in(handler):
        """The agent of a valid session (401 otherwise); POSTs also need the CSRF token (403)."""

        @wraps(handler)
        async def wrapper(request: Request, *args, **kwargs):
            found = await asyncio.to_thread(desk.session, request.cookies.get(COOKIE))
            if found is None:
                return error(401, "Please sign in.")
            agent, csrf = found
            request.ctx.csrf = csrf
            if request.method != "GET" and not hmac.compare_digest(request.headers.get("X-CSRF-Token", ""), csrf):
                logger.warning("console: %s sent a request without a valid CSRF token", agent.username)
                return error(403, "This request is missing its security token. Reload the page.")
            try:
                return await handler(request, agent, *args, **kwargs)
            except NotFound as exc:
                return error(404, str(exc))
            except CardSystemError as exc:
                return error(409, str(exc))
        return wrapper

    def body_of(request: Request) -> Dict[str, Any]:
        try:
            data = request.json
        except Exception:  # sanic raises InvalidUsage on a malformed body
            return {}
        return data if isinstance(data, dict) else {}

    async def tell_customer(ticket, text: str) -> bool:
        """Send through the WhatsApp channel; False when it could not be delivered (24-hour window)."""
        from connectors.whatsapp.channel import WhatsAppOutput

        output = WhatsAppOutput(channel.client, ticket.reply_by, channel.upload_documents)
        await output.send_text_message(ticket.sender, text)
        return output.refused == 0

    @bp.route("/agents", methods=["GET"])
    async def page(_: Request) -> HTTPResponse:
        return response.html((HERE / "console.html").read_text(encoding="utf-8"), headers=SECURITY_HEADERS)

    @bp.route("/agents/console.js", methods=["GET"])
    async def script(_: Request) -> HTTPResponse:
        return response.text((HERE / "console.js").read_text(encoding="utf-8"), content_type="application/javascript",
                             headers=SECURITY_HEADERS)

    @bp.route("/agents/console.css", methods=["GET"])
    async def style(_: Request) -> HTTPResponse:
        return response.text((HERE / "console.css").read_text(encoding="utf-8"), content_type="text/css",
                             headers=SECURITY_HEADERS)

    @bp.route("/agents/api/login", methods=["POST"])
    async def login(request: Request) -> HTTPResponse:
        data = body_of(request)
        found = await asyncio.to_thread(desk.sign_in, str(data.get("username") or ""), str(data.get("password") or ""))
        if found is None:
            await asyncio.sleep(0.3)  # slow down guessing
            return error(401, "Wrong username or password.")
        token, csrf, agent = found
        answer = ok({"agent": {"username": agent.username, "first_name": agent.first_name}, "csrf": csrf})
        answer.cookies[COOKIE] = token
        cookie = answer.cookies[COOKIE]
        cookie["httponly"] = True
        cookie["samesite"] = "Strict"
        cookie["path"] = "/webhooks/whatsapp/agents"
        cookie["max-age"] = desk.settings.session_hours * 3600
        if secure_cookie:
            cookie["secure"] = True
        return answer

    @bp.route("/agents/api/me", methods=["GET"])
    @signed_in
    async def me(request: Request, agent) -> HTTPResponse:
        return ok({"agent": {"username": agent.username, "first_name": agent.first_name}, "csrf": request.ctx.csrf})

    @bp.route("/agents/api/logout", methods=["POST"])
    @signed_in
    async def logout(request: Request, agent) -> HTTPResponse:
        await asyncio.to_thread(desk.sign_out, request.cookies.get(COOKIE))
        answer = ok({"signed_out": True})
        del answer.cookies[COOKIE]
        return answer

    @bp.route("/agents/api/queue", methods=["GET"])
    @signed_in
    async def queue(request: Request, agent) -> HTTPResponse:
        rows = await asyncio.to_thread(desk.queue)
        agents = await asyncio.to_thread(desk.agents)
        for row in rows:
            row["mine"] = row.pop("agent_id") == agent.id
        return ok({"queue": rows, "agents": [{"username": a.username, "first_name": a.first_name, "online": a.online}
                                             for a in agents if a.id != agent.id]})

    @bp.route("/agents/api/canned", methods=["GET"])
    @signed_in
    async def canned(request: Request, agent) -> HTTPResponse:
        return ok({"replies": canned_replies()})

    @bp.route("/agents/api/tickets/<reference>", methods=["GET"])
    @signed_in
    async def ticket(request: Request, agent, reference: str) -> HTTPResponse:
        return ok(await asyncio.to_thread(desk.ticket, reference, agent))

    @bp.route("/agents/api/tickets/<reference>/messages", methods=["GET"])
    @signed_in
    async def messages(request: Request, agent, reference: str) -> HTTPResponse:
        try:
            after = int(request.args.get("after") or 0)
        except ValueError:
            return error(400, "after must be a number")
        return ok({"messages": await asyncio.to_thread(desk.messages_since, reference, after)})

    @bp.route("/agents/api/tickets/<reference>/claim", methods=["POST"])
    @signed_in
    async def claim(request: Request, agent, reference: str) -> HTTPResponse:
        view = await asyncio.to_thread(desk.claim, reference, agent)
        delivered = await tell_customer(view, wording.AGENT_JOINED.format(agent=agent.first_name))
        return ok({"status": view.status, "delivered": delivered})

    @bp.route("/agents/api/tickets/<reference>/reply", methods=["POST"])
    @signed_in
    async def reply(request: Request, agent, reference: str) -> HTTPResponse:
        text = str(body_of(request).get("text") or "").strip()
        view = await asyncio.to_thread(desk.agent_said, reference, agent, text)
        delivered = await tell_customer(view, text)
        if not delivered:
            await asyncio.to_thread(desk.bot_said, reference, "Not delivered: the customer last wrote more than 24 hours "
                                                              "ago, so only a template message can reach them.")
        return ok({"delivered": delivered})

    @bp.route("/agents/api/tickets/<reference>/note", methods=["POST"])
    @signed_in
    async def note(request: Request, agent, reference: str) -> HTTPResponse:
        await asyncio.to_thread(desk.note, reference, agent, str(body_of(request).get("text") or ""))
        return ok({"saved": True})

    @bp.route("/agents/api/tickets/<reference>/transfer", methods=["POST"])
    @signed_in
    async def transfer(request: Request, agent, reference: str) -> HTTPResponse:
        view, colleague = await asyncio.to_thread(desk.transfer, reference, agent, str(body_of(request).get("to") or ""))
        await tell_customer(view, wording.TRANSFERRED.format(agent=agent.first_name, colleague=colleague.first_name))
        return ok({"agent": colleague.first_name})

    @bp.route("/agents/api/tickets/<reference>/close", methods=["POST"])
    @signed_in
    async def close(request: Request, agent, reference: str) -> HTTPResponse:
        view = await asyncio.to_thread(desk.close, reference, agent, str(body_of(request).get("resolution") or ""))
        # the bot takes over in order with the customer's own messages: it says so and asks for a rating
        await channel.inject(view.sender, view.reply_by, "/handoff_closed", on_new_message)
        logger.info("console: %s closed %s for %s", agent.username, view.reference, mask_phone(view.sender))
        return ok({"status": view.status})

    @bp.route("/agents/api/media/<key>", methods=["GET"])
    @signed_in
    async def media(request: Request, agent, key: str) -> HTTPResponse:
        path = channel.media.path(key)
        if path is None:
            return error(404, "No such file.")
        return await response.file(str(path), headers={**SECURITY_HEADERS, "Content-Disposition": "inline"})
