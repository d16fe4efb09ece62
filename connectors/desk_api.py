"""The service desk's REST API for the bank's core systems: list requests, read one, set its status
(the same rules, audit and customer notices as the console and `python -m cardsystem.requests`),
and the figures per kind. Its OpenAPI document is served with it.

Configured in credentials.yml as `connectors.desk_api.ServiceDeskAPI`; served under
/webhooks/desk/v1/. Each client has its own bearer token, from the environment:
CARDCARE_DESK_API_TOKENS="core-banking:<token>,crm:<token>" (tokens of 32+ characters; the client's
name is the actor in the audit log). With no tokens set the API answers 404 to everything: off.
It is a Rasa input channel only to be served by the bot's own server; it takes no messages.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
from typing import Any, Awaitable, Callable, Dict, List, Optional, Text, Tuple

from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from rasa.core.channels.channel import InputChannel, UserMessage
from cardsystem.config import parse_desk_tokens as parse_tokens
from cardsystem.errors import CardSystemError, NotFound

logger = logging.getLogger(__name__)
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}
STATUSES = ["open", "in_progress", "needs_documents", "resolved", "rejected"]


def client_of(request: Request, clients: List[Tuple[str, str]]) -> Optional[str]:
    given = request.headers.get("Authorization", "")
    found = None
    for name, token in clients:  # every token compared, in constant time
        if hmac.compare_digest(given.encode("utf-8"), f"Bearer {token}".encode("utf-8")):
            found = name
    return found


def openapi(base: str = "/webhooks/desk/v1") -> Dict[str, Any]:
    request_row = {"type": "object", "properties": {
        "reference": {"type": "string", "example": "LMT261123K7Q2"}, "kind": {"type": "string"},
        "label": {"type": "string"}, "status": {"type": "string", "enum": STATUSES},
        "customer_name": {"type": "string"}, "customer_phone": {"type": "string", "description": "masked"},
        "promised_by": {"type": "string", "format": "date-time"}, "created_at": {"type": "string", "format": "date-time"},
        "overdue": {"type": "boolean"}, "waiting_for_customer": {"type": "boolean"},
        "escalation_level": {"type": "integer"}, "escalation_name": {"type": "string"},
        "assigned_to": {"type": "string", "nullable": True}, "documents": {"type": "integer"}}}
    error = {"type": "object", "properties": {"error": {"type": "string"}, "code": {"type": "string"}}}
    errors = {code: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
              for code, text in (("401", "missing or wrong bearer token"), ("404", "no such request"),
                                 ("409", "refused by the lifecycle's rules (code says why)"),
                                 ("415", "the body must be JSON"))}
    return {
        "openapi": "3.0.3",
        "info": {"title": "cardcare service desk API", "version": "1.0.0",
                 "description": "Service requests raised by customers on WhatsApp, for the bank's core systems. "
                                "Status changes follow the same rules as the agent console and tell the customer "
                                "on WhatsApp (and by e-mail where set up)."},
        "servers": [{"url": base}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Request": request_row, "Error": error,
                        "StatusChange": {"type": "object", "required": ["status"], "properties": {
                            "status": {"type": "string", "enum": STATUSES},
                            "note": {"type": "string", "maxLength": 500,
                                     "description": "required for needs_documents (what is needed), resolved (the "
                                                    "resolution) and rejected (the reason)"}}}}},
        "security": [{"bearer": []}],
        "paths": {
            "/requests": {"get": {
                "summary": "The worklist, soonest due first (active requests unless status or closed is given)",
                "parameters": [{"name": n, "in": "query", "required": False, "schema": s} for n, s in (
                    ("kind", {"type": "string"}), ("status", {"type": "string", "enum": STATUSES}),
                    ("overdue", {"type": "boolean"}), ("closed", {"type": "boolean"}),
                    ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 200}))],
                "responses": {"200": {"description": "requests", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"requests": {"type": "array", "items": {
                        "$ref": "#/components/schemas/Request"}}}}}}}, "401": errors["401"]}}},
            "/requests/{reference}": {"get": {
                "summary": "One request with its documents (metadata), history and notices",
                "parameters": [{"name": "reference", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the request"}, "401": errors["401"], "404": errors["404"]}}},
            "/requests/{reference}/status": {"post": {
                "summary": "Move the request; the customer is told",
                "parameters": [{"name": "reference", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/StatusChange"}}}},
                "responses": {"200": {"description": "the request after the change"}, **{
                    c: errors[c] for c in ("401", "404", "409", "415")}}}},
            "/figures": {"get": {
                "summary": "Per kind: opened, active, resolved in time and late, rejected, overdue, escalated, "
                           "median hours to resolve",
                "responses": {"200": {"description": "figures"}, "401": errors["401"]}}},
        },
    }


class ServiceDeskAPI(InputChannel):
    """See the module docstring."""

    @classmethod
    def name(cls) -> Text:
        return "desk"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[Text, Any]]) -> "ServiceDeskAPI":
        return cls(parse_tokens(os.environ.get("CARDCARE_DESK_API_TOKENS")))

    def __init__(self, clients: List[Tuple[str, str]], desk: Any = None) -> None:
        self.clients = clients
        self.desk = desk
        if not clients:
            logger.info("service desk API off (CARDCARE_DESK_API_TOKENS is not set)")

    def _desk(self) -> Any:
        if self.desk is None:
            from cardsystem.requests.desk import ServiceDesk

            self.desk = ServiceDesk()
        return self.desk

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        bp = Blueprint(f"desk_api_{id(self)}", __name__)

        def answer(data: Any, status: int = 200) -> HTTPResponse:
            return response.json(data, status=status, headers=HEADERS, default=str)

        def guarded(handler):
            async def wrapper(request: Request, *args, **kwargs):
                if not self.clients:
                    return answer({"error": "not found"}, 404)
                client = client_of(request, self.clients)
                if client is None:
                    logger.warning("desk API: refused a call without a valid token (%s %s)", request.method,
                                   request.path[:80])
                    return answer({"error": "unauthorised"}, 401)
                if request.method == "POST" and \
                        request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
                    return answer({"error": "Send JSON (Content-Type: application/json)."}, 415)
                try:
                    return await handler(request, client, *args, **kwargs)
                except NotFound as exc:
                    return answer({"error": str(exc), "code": exc.code}, 404)
                except CardSystemError as exc:
                    return answer({"error": str(exc), "code": exc.code}, 409)
            wrapper.__name__ = handler.__name__
            return wrapper

        @bp.route("/", methods=["GET"])
        async def health(_: Request) -> HTTPResponse:
            return answer({"status": "ok" if self.clients else "off"})

        @bp.route("/v1/openapi.json", methods=["GET"])
        async def document(_: Request) -> HTTPResponse:
            if not self.clients:
                return answer({"error": "not found"}, 404)
            return answer(openapi())

        @bp.route("/v1/requests", methods=["GET"])
        @guarded
        async def listing(request: Request, client: str) -> HTTPResponse:
            def flag(name: str) -> bool:
                return str(request.args.get(name) or "").lower() in ("1", "true", "yes")
            try:
                limit = int(request.args.get("limit") or 200)
            except ValueError:
                return answer({"error": "limit must be a number"}, 400)
            rows = await asyncio.to_thread(self._desk().worklist, request.args.get("kind") or None,
                                           request.args.get("status") or None, flag("overdue"), None, flag("closed"),
                                           limit)
            return answer({"requests": rows})

        @bp.route("/v1/requests/<reference>", methods=["GET"])
        @guarded
        async def one(request: Request, client: str, reference: str) -> HTTPResponse:
            return answer(await asyncio.to_thread(self._desk().request, reference))

        @bp.route("/v1/requests/<reference>/status", methods=["POST"])
        @guarded
        async def status(request: Request, client: str, reference: str) -> HTTPResponse:
            try:
                body = request.json
            except Exception:  # malformed JSON
                body = None
            if not isinstance(body, dict):
                return answer({"error": "The body must be a JSON object with status and note."}, 400)
            done = await asyncio.to_thread(self._desk().set_status, reference, str(body.get("status") or ""),
                                           str(body.get("note") or ""), f"api:{client}")
            logger.info("desk API: %s set %s to %s", client, done["reference"], done["status"])
            return answer(done)

        @bp.route("/v1/figures", methods=["GET"])
        @guarded
        async def figures(request: Request, client: str) -> HTTPResponse:
            return answer(await asyncio.to_thread(self._desk().figures))

        return bp
