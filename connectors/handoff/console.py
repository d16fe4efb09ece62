"""The agent console: a web page and a JSON API served by the bot, under
/webhooks/whatsapp/agents/.

Agents sign in (scrypt-hashed passwords, server-side sessions that expire, an HttpOnly
SameSite=Strict cookie, Secure in production); wrong passwords lock an account and then the
client's address for a while (the desk keeps count in the database, across instances and
restarts). Sign-in takes JSON only, and every state-changing request must be JSON (or empty) and
carry the session's CSRF token in `X-CSRF-Token`, so neither a cross-site form nor a forged
sign-in gets through. Nothing about a customer is served without a session, and an agent only
gets the chats the desk lets them read (403 otherwise); every agent action is audited by the
desk. Customers' files are always downloads, never rendered in the console's origin. Replies go
out through the WhatsApp channel, so they are recorded and retried like the bot's own.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional

import yaml
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from cardsystem.errors import CardSystemError, NotFound
from cardsystem.formatting import mask_phone
from cardsystem.accounts import AgentView, TooManyAttempts
from cardsystem.handoff import Forbidden
from connectors.handoff import wording

if TYPE_CHECKING:
    from connectors.whatsapp.channel import WhatsAppInput

logger = logging.getLogger(__name__)
HERE = Path(__file__).parent
COOKIE = "cardcare_agent"
BASE_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store"}
# the page runs only its own script and style (console.js, console.css) and talks only to its own API
PAGE_HEADERS = {**BASE_HEADERS, "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}
API_HEADERS = {**BASE_HEADERS, "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}
# a customer's file, even one that is really HTML or SVG, can run nothing and reach nothing if opened
MEDIA_HEADERS = {**BASE_HEADERS, "Content-Security-Policy": "sandbox; default-src 'none'"}
SHOWN_TYPES = ("image/jpeg", "image/png", "image/webp", "application/pdf", "video/mp4", "audio/ogg", "audio/mpeg")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")  # CORS-safelisted
LOOPBACK = ("127.0.0.1", "::1")  # nginx in front of the bot: its X-Real-IP is the client's address


def canned_replies() -> List[Dict[str, str]]:
    data = yaml.safe_load((HERE / "canned_replies.yml").read_text(encoding="utf-8")) or []
    return [{"title": str(r["title"]), "text": str(r["text"])} for r in data if isinstance(r, dict) and r.get("text")]


def client_address(request: Request) -> str:
    """The address a sign-in is counted against: the socket peer, or the address the local proxy
    forwards (X-Real-IP, else the last X-Forwarded-For hop) when the peer is that proxy. A client
    talking to the bot directly cannot choose its address by sending those headers."""
    peer = request.ip
    if peer not in LOOPBACK:
        return peer
    forwarded = request.headers.get("x-real-ip") or request.headers.get("x-forwarded-for", "").split(",")[-1]
    try:
        return str(ipaddress.ip_address(forwarded.strip()))
    except ValueError:
        return peer


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(request: Request) -> bool:
    return content_type(request) == "application/json"


def json_or_empty(request: Request) -> bool:
    """What the console's script posts: JSON, or nothing. A page on another site can post (without
    the browser asking us first) only the form types, even with an empty form, so those never pass."""
    return is_json(request) or (not request.body and content_type(request) not in FORM_TYPES)


def served_type(mime_type: Any) -> str:
    """The file's recorded type if a browser shows it harmlessly; anything else is plain bytes."""
    kind = str(mime_type or "").split(";")[0].strip().lower()
    return kind if kind in SHOWN_TYPES else "application/octet-stream"


def download_name(attachment: Dict[str, Any], key: str, served: str) -> str:
    """A file name safe in a header; bytes of an unshown type get `.bin`, so a saved page or script
    is not opened by a double click."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(attachment.get("filename") or key)).strip("._")[:100] or "file"
    return name if served != "application/octet-stream" else f"{name}.bin"


def agent_json(agent: AgentView) -> Dict[str, str]:
    return {"username": agent.username, "first_name": agent.first_name, "role": agent.role}


def add_console_routes(bp: Blueprint, channel: "WhatsAppInput", on_new_message: Callable[..., Awaitable[Any]]) -> None:
    desk = channel.desk
    secure_cookie = os.environ.get("CARDCARE_ENV", "development") == "production"

    def error(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> HTTPResponse:
        return response.json({"error": message}, status=status, headers={**API_HEADERS, **(headers or {})})

    def ok(data: Any) -> HTTPResponse:
        return response.json(data, headers=API_HEADERS, default=str)

    def signed_in(handler):
        """The agent of a valid session (401 otherwise); POSTs must be JSON or empty (415) and carry
        the CSRF token (403); a chat the agent may not read is 403 too."""

        @wraps(handler)
        async def wrapper(request: Request, *args, **kwargs):
            found = await asyncio.to_thread(desk.accounts.session, request.cookies.get(COOKIE))
            if found is None:
                return error(401, "Please sign in.")
            agent, csrf = found
            request.ctx.csrf = csrf
            if request.method != "GET":
                if not json_or_empty(request):
                    return error(415, "Send JSON (Content-Type: application/json).")
                if not hmac.compare_digest(request.headers.get("X-CSRF-Token", ""), csrf):
                    logger.warning("console: %s sent a request without a valid CSRF token", agent.username)
                    return error(403, "This request is missing its security token. Reload the page.")
            try:
                return await handler(request, agent, *args, **kwargs)
            except NotFound as exc:
                return error(404, str(exc))
            except Forbidden as exc:
                logger.warning("console: %s was refused %s", agent.username, request.path)
                return error(403, str(exc))
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
        """Send through the WhatsApp channel's outbox; False when it cannot go (24-hour window)."""
        return await channel.tell(ticket.sender, text, on_new_message)

    @bp.route("/agents", methods=["GET"])
    async def page(_: Request) -> HTTPResponse:
        return response.html((HERE / "console.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    @bp.route("/agents/console.js", methods=["GET"])
    async def script(_: Request) -> HTTPResponse:
        return response.text((HERE / "console.js").read_text(encoding="utf-8"), content_type="application/javascript",
                             headers=API_HEADERS)

    @bp.route("/agents/requests.js", methods=["GET"])
    async def requests_script(_: Request) -> HTTPResponse:
        return response.text((HERE / "requests.js").read_text(encoding="utf-8"), content_type="application/javascript",
                             headers=API_HEADERS)

    @bp.route("/agents/console.css", methods=["GET"])
    async def style(_: Request) -> HTTPResponse:
        return response.text((HERE / "console.css").read_text(encoding="utf-8"), content_type="text/css",
                             headers=API_HEADERS)

    @bp.route("/agents/api/login", methods=["POST"])
    async def login(request: Request) -> HTTPResponse:
        if not is_json(request):  # a cross-site form cannot send JSON: no signing a browser in as someone else
            return error(415, "Send JSON (Content-Type: application/json).")
        data = body_of(request)
        try:
            found = await asyncio.to_thread(desk.accounts.sign_in, str(data.get("username") or ""),
                                            str(data.get("password") or ""), client_address(request))
        except TooManyAttempts as refused:
            return error(429, str(refused), headers={"Retry-After": str(refused.retry_after)})
        if found is None:
            await asyncio.sleep(0.3)  # slow down guessing
            # the same answer for an unknown name, a wrong password and a locked account
            return error(401, "Wrong username or password, or the account is locked after too many attempts.")
        token, csrf, agent = found
        answer = ok({"agent": agent_json(agent), "csrf": csrf})
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
        return ok({"agent": agent_json(agent), "csrf": request.ctx.csrf})

    @bp.route("/agents/api/logout", methods=["POST"])
    @signed_in
    async def logout(request: Request, agent) -> HTTPResponse:
        await asyncio.to_thread(desk.accounts.sign_out, request.cookies.get(COOKIE))
        answer = ok({"signed_out": True})
        del answer.cookies[COOKIE]
        return answer

    @bp.route("/agents/api/queue", methods=["GET"])
    @signed_in
    async def queue(request: Request, agent) -> HTTPResponse:
        rows = await asyncio.to_thread(desk.queue, agent)
        agents = await asyncio.to_thread(desk.accounts.agents)
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
        return ok({"messages": await asyncio.to_thread(desk.messages_since, reference, after, agent)})

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
        await channel.inject(view.sender, "/handoff_closed", on_new_message)
        logger.info("console: %s closed %s for %s", agent.username, view.reference, mask_phone(view.sender))
        return ok({"status": view.status})

    from connectors.handoff.requests_view import add_request_routes

    add_request_routes(bp, channel, on_new_message, signed_in, ok, error, body_of, MEDIA_HEADERS, served_type,
                       download_name)

    from connectors.handoff.messages_view import add_messages_routes

    add_messages_routes(bp, channel, signed_in, ok, error)

    @bp.route("/agents/api/media/<key>", methods=["GET"])
    @signed_in
    async def media(request: Request, agent, key: str) -> HTTPResponse:
        attachment = await asyncio.to_thread(desk.attachment, key, agent)
        path = channel.media.path(key)
        if path is None:
            return error(404, "No such file.")
        served = served_type(attachment.get("mime_type"))
        disposition = f'attachment; filename="{download_name(attachment, key, served)}"'
        return await response.file(str(path), mime_type=served,
                                   headers={**MEDIA_HEADERS, "Content-Disposition": disposition})
