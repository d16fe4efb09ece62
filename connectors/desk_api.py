"""The service desk's REST API for the bank's core systems: list requests, read one, set its status
(the same rules, audit and customer notices as the console and `python -m cardsystem.requests`),
and the figures per kind; and for the payment gateway and core banking: use a payment link (once),
record a payment, block a card (the customer is told), and the report of the messages the bank
sent first. Its OpenAPI document is served with it.

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
            "/payment-links/use": {"post": {
                "summary": "The payment gateway takes the payment a signed link asks for: once (a second use is 409)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["link"], "properties": {"link": {"type": "string"}}}}}},
                "responses": {"200": {"description": "the payment posted: transaction, amount_paise, card_last4"},
                              "400": {"description": "not a link of ours (altered or unreadable)"},
                              "409": {"description": "used already (code used), or the amount no longer due"},
                              "410": {"description": "expired"}, "401": errors["401"]}}},
            "/payments": {"post": {
                "summary": "A payment core banking received (NEFT, UPI, a branch): posted, dues lowered, customer told",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["phone", "card_last4", "amount_paise"], "properties": {
                        "phone": {"type": "string"}, "card_last4": {"type": "string"},
                        "amount_paise": {"type": "integer", "minimum": 1}, "via": {"type": "string"}}}}}},
                "responses": {"200": {"description": "the transaction"}, "400": {"description": "a malformed body"},
                              "404": {"description": "no card with those digits for that number"},
                              "409": {"description": "an amount larger than the card could owe"},
                              **{c: errors[c] for c in ("401", "415")}}}},
            "/cards/block": {"post": {
                "summary": "The bank blocks a card (e.g. its fraud checks): a replacement is opened, the customer told",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["phone", "card_last4"], "properties": {
                        "phone": {"type": "string"}, "card_last4": {"type": "string"},
                        "reason": {"type": "string", "enum": ["bank", "suspicious", "lost", "stolen", "damaged"]}}}}}},
                "responses": {"200": {"description": "the replacement request"},
                              **{c: errors[c] for c in ("401", "404", "409", "415")}}}},
            "/messages/report": {"get": {
                "summary": "Messages the bank sent first, per day and category: sent, delivered, read, paid within "
                           "48 h of a reminder, cost on WhatsApp against SMS",
                "parameters": [{"name": "days", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 366, "default": 7}}],
                "responses": {"200": {"description": "the report"}, "401": errors["401"]}}},
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

    def __init__(self, clients: List[Tuple[str, str]], desk: Any = None, system: Any = None) -> None:
        self.clients = clients
        self.desk = desk
        self.system = system
        if not clients:
            logger.info("service desk API off (CARDCARE_DESK_API_TOKENS is not set)")
        else:
            logger.info("service desk API on for %s", ", ".join(name for name, _ in clients))

    def _system(self) -> Any:
        if self.system is None:
            from cardsystem.service import CardSystem

            self.system = CardSystem()
        return self.system

    def _desk(self) -> Any:
        if self.desk is None:
            from cardsystem.requests.desk import ServiceDesk

            self.desk = ServiceDesk()
        return self.desk

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        bp = Blueprint(f"desk_api_{id(self)}", __name__)

        def answer(data: Any, status: int = 200) -> HTTPResponse:
            return response.json(data, status=status, headers=HEADERS, default=str)

        def body_of(request: Request) -> Optional[Dict[str, Any]]:
            try:
                body = request.json
            except Exception:  # malformed JSON
                return None
            return body if isinstance(body, dict) else None

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
            body = body_of(request)
            if body is None:
                return answer({"error": "The body must be a JSON object with status and note."}, 400)
            done = await asyncio.to_thread(self._desk().set_status, reference, str(body.get("status") or ""),
                                           str(body.get("note") or ""), f"api:{client}")
            logger.info("desk API: %s set %s to %s", client, done["reference"], done["status"])
            return answer(done)

        def customer_card(body: Dict[str, Any]) -> Tuple[Any, Any]:
            system = self._system()
            customer = system.find_customer(str(body.get("phone") or ""))
            card = system.card_of(customer.id, str(body.get("card_last4") or "")) if customer else None
            if card is None:
                raise NotFound("unknown_card", "No card with those last 4 digits for that number.")
            return customer, card

        @bp.route("/v1/payment-links/use", methods=["POST"])
        @guarded
        async def use_link(request: Request, client: str) -> HTTPResponse:
            from cardsystem.paylinks import InvalidPaymentLink

            body = body_of(request)
            if body is None or not isinstance(body.get("link"), str):
                return answer({"error": "The body must be a JSON object with the link."}, 400)
            try:
                txn = await asyncio.to_thread(self._system().pay_with_link, body["link"][:4000], f"api:{client}")
            except InvalidPaymentLink as exc:
                status = {"used": 409, "expired": 410}.get(exc.reason, 400)
                return answer({"error": {"used": "This link was used already.", "expired": "This link has expired."}
                               .get(exc.reason, "Not a payment link of ours."), "code": exc.reason}, status)
            card = await asyncio.to_thread(self._system().card_by_id, txn.card_id)
            logger.info("desk API: %s took a payment by link (%s)", client, txn.reference)
            return answer({"transaction": txn.reference, "amount_paise": -txn.amount_paise,
                           "card_last4": card.last4 if card else None})

        @bp.route("/v1/payments", methods=["POST"])
        @guarded
        async def payment(request: Request, client: str) -> HTTPResponse:
            body = body_of(request)
            amount = body.get("amount_paise") if body else None
            if body is None or not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < 10 ** 13 \
                    or not isinstance(body.get("phone"), str) or not isinstance(body.get("card_last4"), str):
                return answer({"error": "The body must be a JSON object with phone, card_last4 and amount_paise "
                                        "(a positive whole number of paise)."}, 400)
            _, card = await asyncio.to_thread(customer_card, body)
            txn = await asyncio.to_thread(self._system().record_payment, card.id, amount,
                                          f"api:{client}:{str(body.get('via') or '')[:20]}")
            return answer({"transaction": txn.reference, "amount_paise": amount, "card_last4": card.last4})

        @bp.route("/v1/cards/block", methods=["POST"])
        @guarded
        async def block(request: Request, client: str) -> HTTPResponse:
            body = body_of(request)
            reasons = ("bank", "suspicious", "lost", "stolen", "damaged")
            if body is None or not isinstance(body.get("phone"), str) or not isinstance(body.get("card_last4"), str) \
                    or body.get("reason", "bank") not in reasons:
                return answer({"error": "The body must be a JSON object with phone, card_last4 and, optionally, "
                                        f"reason (one of {', '.join(reasons)})."}, 400)
            customer, card = await asyncio.to_thread(customer_card, body)
            done = await asyncio.to_thread(self._system().block_card, customer.id, card.last4,
                                           body.get("reason", "bank"), f"api:{client}")
            return answer({"reference": done.reference, "card_last4": card.last4, "status": "blocked"})

        @bp.route("/v1/messages/report", methods=["GET"])
        @guarded
        async def messages_report(request: Request, client: str) -> HTTPResponse:
            from cardsystem.reminders.policy import Policy
            from cardsystem.reminders.report import report

            text = str(request.args.get("days") or "7")
            if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 366):
                return answer({"error": "days must be a whole number from 1 to 366"}, 400)
            days = int(text)
            system = self._system()
            return answer(await asyncio.to_thread(report, system.engine,
                                                  Policy.load(timezone=system.desk_rules.calendar.timezone), days))

        @bp.route("/v1/figures", methods=["GET"])
        @guarded
        async def figures(request: Request, client: str) -> HTTPResponse:
            return answer(await asyncio.to_thread(self._desk().figures))

        return bp
