"""The sandbox's HTTP server (aiohttp): Graph API endpoints, test hooks and the chat page.

Graph API (what the bot calls, Bearer token required):
  POST /{version}/{phone_id}/messages   send (validated like the real one), or mark as read; a
                                        "template" send must name an APPROVED template and fill it
                                        exactly (132001, 132000, 132018, 131008, 131009, 100)
  POST /{version}/{phone_id}/media      upload (multipart: messaging_product, type, file)
  GET  /{version}/{media_id}            media info with a short-lived download URL
  GET  /_sandbox/lookaside/{media_id}   the download URL itself (Bearer required, as at Meta)
  POST /{version}/{waba_id}/message_templates   submit a template {name, language, category,
                                        components}: checked like Meta -> {id, status: "PENDING", category}
  GET  /{version}/{waba_id}/message_templates[?name=&language=&status=&category=]
                                        -> {"data": [{id, name, language, status, category, components,
                                        rejected_reason?}], "paging": {}}
  DELETE /{version}/{waba_id}/message_templates?name=[&hsm_id=]   -> {"success": true}
  (any waba_id but the phone number id is taken as the business account)
After each accepted send it posts signed "sent" and "delivered" status webhooks to the bot
(templates' carry pricing), and "read" once the chat page has shown the message.

Test and page hooks:
  GET  /_sandbox/messages?to=&after=&read=1   what the bot sent (JSON); read=1 as the phone showing them.
       A template send's entry has "template": {id, name, language, category, header, body (filled in),
       footer, buttons: [{index, type: QUICK_REPLY, text, payload} | {index, type: URL, text, url (filled
       in)} | {index, type: PHONE_NUMBER, text, phone_number}]}
  POST /_sandbox/fail {"codes": [...], "status_codes": [...], "recipients": {"<number>": code},
       "outage_seconds": s}  fail the next sends, the delivery of the next sends, or every delivery to
       a number (accepted, then a "failed" status); each call replaces all of it, {} clears it
  POST /_sandbox/send {from, name, text | reply{id,title,kind} | media{data,mime_type,filename,caption}
       | reply{kind: "button", payload, text} | reply{kind: "button", index}, context?: "<wamid>"}
       reply kind "button" is a template's quick reply tapped (an inbound "button" message; with
       "index" its payload and text are taken from the template message named by context);
       context (any kind) quotes one of the bot's messages to that customer
  GET  /_sandbox/templates              every template submitted, as the Graph API lists them
  POST /_sandbox/templates/{id}/approve         the reviewer approves: status APPROVED, and a
  POST /_sandbox/templates/{id}/reject {reason?}  "message_template_status_update" webhook
       {event, message_template_id, message_template_name, message_template_language, reason}
  GET  /_sandbox/media/{media_id}       a document or image as the customer's phone opens it
  GET  /_sandbox/personas               the demo personas
  GET  /                                the chat page
With approve_templates (--approve-templates, SANDBOX_APPROVE_TEMPLATES=1) templates are approved
as soon as they are submitted (the webhook is posted too), for demos.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import aiohttp
from aiohttp import web

from cardsystem.seed import NOT_A_CUSTOMER, PERSONAS
from connectors.sandbox.graph_api import MEDIA_LIMITS, GraphError, Outbox, Template
from cardsystem.config import SANDBOX_DEFAULTS
from connectors.whatsapp.signature import sign

logger = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("chat.html")
_inbound_ids = itertools.count(1)
BUSINESS_NUMBER = "15550000000"  # the display number of the sandbox's business phone
STATUS_ERROR_TITLES = {  # titles WhatsApp gives the errors of a "failed" status
    131026: "Message undeliverable",
    131049: "This message was not delivered to maintain healthy ecosystem engagement.",
    131047: "Re-engagement message",
    131050: "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages "
            "on WhatsApp from your business.",
    130472: "User's number is part of an experiment",
    131000: "Something went wrong",
}
MAX_UPLOAD = 101 * 1024 * 1024
MAX_TEXT = 65536  # what a customer's WhatsApp lets them type in one message
REDELIVERY_SECONDS = 900.0  # a customer's message: redelivered for 15 minutes (Meta: up to 7 days)
STATUS_PATIENCE = 300.0     # a status webhook


def webhook_body(phone_number_id: str, value: Dict[str, Any]) -> Dict[str, Any]:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": BUSINESS_NUMBER, "phone_number_id": phone_number_id}, **value}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "sandbox-waba", "changes": [{"field": "messages", "value": value}]}]}


def template_status_body(template: Template, reason: Optional[str]) -> Dict[str, Any]:
    """The business-account webhook Meta posts when a template is approved or rejected."""
    value = {"event": template.status, "message_template_id": int(template.id),
             "message_template_name": template.name, "message_template_language": template.language,
             "reason": reason or "NONE"}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": template.waba_id, "time": int(time.time()),
                       "changes": [{"field": "message_template_status_update", "value": value}]}]}


def message_value(wa_id: str, name: str, message: Dict[str, Any]) -> Dict[str, Any]:
    return {"contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": f"wamid.in.{int(time.time())}.{next(_inbound_ids)}",
                          "timestamp": str(int(time.time())), **message}]}


def status_value(wamid: str, recipient: str, status: str, error_code: Optional[int] = None,
                 callback_data: Optional[str] = None, category: Optional[str] = None) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(time.time())),
                             "recipient_id": recipient}
    if callback_data:  # echoed as WhatsApp does: lets the sender match a status to its own record
        entry["biz_opaque_callback_data"] = callback_data
    if category and status != "failed":  # a template is charged by its category (per-message pricing)
        entry["pricing"] = {"billable": True, "pricing_model": "PMP", "category": category.lower(), "type": "regular"}
    if error_code:
        title = STATUS_ERROR_TITLES.get(error_code, f"sandbox failure {error_code}")
        entry["errors"] = [{"code": error_code, "title": title, "message": title,
                            "error_data": {"details": "as requested via /_sandbox/fail"},
                            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}]
    return {"statuses": [entry]}


async def json_or_none(request: web.Request) -> Any:
    """The request's JSON, or None when it is not JSON (the Graph API's checks then say what is wrong)."""
    try:
        return await request.json()
    except ValueError:
        return None


def graph_error(error: GraphError) -> web.Response:
    return web.json_response(error.body(), status=error.http_status)


def make_app(bot_url: str, app_secret: str, phone_number_id: str, statuses: bool = True,
             approve_templates: bool = False) -> web.Application:
    outbox = Outbox()
    templates = outbox.templates
    app = web.Application(client_max_size=MAX_UPLOAD)
    app["outbox"] = outbox
    background: Set[asyncio.Task] = set()

    async def post_webhook(value: Dict[str, Any], envelope: Optional[Dict[str, Any]] = None) -> Optional[int]:
        """Post a signed webhook: `value` in a messages envelope, or a whole `envelope` of another field."""
        raw = json.dumps(envelope or webhook_body(phone_number_id, value)).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, app_secret)}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.post(bot_url, data=raw, headers=headers) as answer:
                return answer.status

    def later(coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        background.add(task)
        task.add_done_callback(background.discard)

    async def deliver(value: Dict[str, Any], patience: float = REDELIVERY_SECONDS,
                      envelope: Optional[Dict[str, Any]] = None) -> bool:
        """Post a webhook until the bot answers 200, backing off, as Meta does (for days there;
        `patience` seconds here). False if it never did."""
        deadline, delay = time.monotonic() + patience, 0.5
        while True:
            try:
                if await post_webhook(value, envelope) == 200:
                    return True
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                pass
            if time.monotonic() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def report(statuses_to_send: List[Dict[str, Any]]) -> None:
        for value in statuses_to_send:
            await asyncio.sleep(0.05)
            if not await deliver(value, patience=STATUS_PATIENCE):
                return  # no bot listening (e.g. a unit test): statuses are best effort

    def authorised(request: web.Request) -> bool:
        return request.headers.get("Authorization", "").startswith("Bearer ")

    def refuse_post(request: web.Request) -> Optional[web.Response]:
        """What the Graph API answers a POST without a token or to another phone number id."""
        if not authorised(request):
            return graph_error(GraphError(190, "Invalid OAuth access token.", 401))
        if request.match_info["phone_id"] != phone_number_id:
            return graph_error(GraphError(100, "Unsupported post request. Object with ID does not exist.", 400))
        return None

    async def messages_endpoint(request: web.Request) -> web.Response:
        refused = refuse_post(request)
        if refused is not None:
            return refused
        body = await json_or_none(request)
        try:
            answer = outbox.accept(body)
        except GraphError as error:
            return graph_error(error)
        if statuses and answer.get("messages"):
            wamid, recipient = answer["messages"][0]["id"], answer["contacts"][0]["wa_id"]
            callback = body.get("biz_opaque_callback_data") if isinstance(body, dict) else None
            category = (outbox.messages[-1].get("template") or {}).get("category")
            failure = outbox.status_failure(recipient)
            later(report([status_value(wamid, recipient, "failed", failure, callback)] if failure else
                         [status_value(wamid, recipient, "sent", None, callback, category),
                          status_value(wamid, recipient, "delivered", None, callback, category)]))
        return web.json_response(answer)

    def refuse_account(request: web.Request) -> Optional[web.Response]:
        """The Business Management API: a token, and a business account id (not the phone number id)."""
        if not authorised(request):
            return graph_error(GraphError(190, "Invalid OAuth access token.", 401))
        if request.match_info["waba_id"] == phone_number_id:
            return graph_error(GraphError(100, f"(#100) Unsupported request. Object with ID '{phone_number_id}' "
                                               "does not support this operation (message templates belong to the "
                                               "WhatsApp Business Account, not the phone number)."))
        return None

    def review(template: Template, status: str, reason: Optional[str] = None) -> None:
        """Record the reviewer's verdict and tell the bot, as Meta does, with a signed webhook."""
        templates.decide(template.id, status, reason)
        later(deliver({}, STATUS_PATIENCE, template_status_body(template, template.rejected_reason)))

    async def create_template(request: web.Request) -> web.Response:
        refused = refuse_account(request)
        if refused is not None:
            return refused
        body = await json_or_none(request)
        try:
            template = templates.create(body, request.match_info["waba_id"])
        except GraphError as error:
            return graph_error(error)
        if approve_templates:
            review(template, "APPROVED")
        return web.json_response({"id": template.id, "status": template.status, "category": template.category})

    async def list_templates(request: web.Request) -> web.Response:
        refused = refuse_account(request)
        if refused is not None:
            return refused
        return web.json_response({"data": templates.listing(dict(request.query)), "paging": {}})

    async def delete_template(request: web.Request) -> web.Response:
        refused = refuse_account(request)
        if refused is not None:
            return refused
        try:
            templates.delete(request.query.get("name"), request.query.get("hsm_id"))
        except GraphError as error:
            return graph_error(error)
        return web.json_response({"success": True})

    async def sandbox_templates(_: web.Request) -> web.Response:
        return web.json_response([t.as_graph() for t in templates.by_id.values()])

    async def decide_template(request: web.Request) -> web.Response:
        template = templates.by_id.get(request.match_info["template_id"])
        if template is None:
            return web.json_response({"error": "no such template"}, status=404)
        status = "APPROVED" if request.match_info["verdict"] == "approve" else "REJECTED"
        reason = None
        if status == "REJECTED" and request.can_read_body:
            try:
                data = await request.json()
            except ValueError:
                return web.json_response({"error": 'expected {"reason": "..."} or no body'}, status=400)
            reason = data.get("reason") if isinstance(data, dict) else None
            if reason is not None and (not isinstance(reason, str) or not reason.strip()):
                return web.json_response({"error": "reason must be a non-empty string"}, status=400)
        if template.status == status:
            return web.json_response({"error": f"the template is already {status}"}, status=409)
        review(template, status, reason)
        return web.json_response(template.as_graph())

    async def media_upload(request: web.Request) -> web.Response:
        refused = refuse_post(request)
        if refused is not None:
            return refused
        fields: Dict[str, Any] = {}
        content, filename, file_type = None, None, None
        try:
            reader = await request.multipart()
            async for part in reader:
                if part.name == "file":
                    content = bytes(await part.read(decode=False))
                    filename, file_type = part.filename, part.headers.get("Content-Type")
                elif part.name:
                    fields[part.name] = await part.text()
        except (AssertionError, ValueError, KeyError):
            return graph_error(GraphError(100, "(#100) Expected a multipart/form-data body."))
        try:
            return web.json_response(outbox.upload(fields, content, filename, file_type))
        except GraphError as error:
            return graph_error(error)

    async def media_info(request: web.Request) -> web.Response:
        if not authorised(request):
            return graph_error(GraphError(190, "Invalid OAuth access token.", 401))
        stored = outbox.media.get(request.match_info["media_id"])
        if stored is None:
            return graph_error(GraphError(100, "(#100) Unsupported get request. Object with ID does not exist."))
        return web.json_response({"messaging_product": "whatsapp", "id": stored.media_id, "mime_type": stored.mime_type,
                                  "sha256": stored.sha256, "file_size": len(stored.content),
                                  "url": f"{request.scheme}://{request.host}/_sandbox/lookaside/{stored.media_id}"})

    def media_response(media_id: str) -> web.Response:
        stored = outbox.media.get(media_id)
        if stored is None:
            return web.json_response({"error": "no such media"}, status=404)
        headers = {"Content-Disposition": f'inline; filename="{stored.filename or stored.media_id}"'}
        return web.Response(body=stored.content, content_type=stored.mime_type, headers=headers)

    async def lookaside(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"error": "access token required"}, status=401)
        return media_response(request.match_info["media_id"])

    async def phone_media(request: web.Request) -> web.Response:
        return media_response(request.match_info["media_id"])

    async def list_messages(request: web.Request) -> web.Response:
        try:
            after = max(0, int(request.query.get("after", "0") or 0))
        except ValueError:
            return web.json_response({"error": "after must be a number"}, status=400)
        found = outbox.for_recipient(request.query.get("to"), after)
        if statuses and request.query.get("read") == "1":
            later(report([status_value(m["id"], m["to"], "read", None,
                                       (m.get("message") or {}).get("biz_opaque_callback_data"),
                                       (m.get("template") or {}).get("category")) for m in found]))
        return web.json_response(found)

    async def fail(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            outbox.failures = [int(c) for c in data.get("codes", [])]
            outbox.status_failures = [int(c) for c in data.get("status_codes", [])]
            outbox.recipient_failures = {re.sub(r"\D", "", str(number)): int(code)
                                         for number, code in (data.get("recipients") or {}).items()}
            outage = float(data.get("outage_seconds") or 0)
            outbox.outage_until = time.monotonic() + outage if outage > 0 else 0.0
        except (ValueError, TypeError, AttributeError):
            return web.json_response({"error": 'expected {"codes": [int], "status_codes": [int], '
                                               '"recipients": {"<number>": int}, "outage_seconds": number}'}, status=400)
        return web.json_response({"failures": outbox.failures, "status_failures": outbox.status_failures,
                                  "recipients": outbox.recipient_failures,
                                  "outage_seconds": max(0.0, outbox.outage_until - time.monotonic())})

    def quoted(wa_id: str, context: Any) -> Optional[Dict[str, Any]]:
        """The bot's message to this customer that `context` (its wamid) names."""
        if context is None:
            return None
        wamid = context.get("id") if isinstance(context, dict) else context
        found = next((m for m in outbox.for_recipient(None) if m["id"] == wamid
                      and re.sub(r"\D", "", m["to"]) == wa_id), None)
        if found is None:
            raise ValueError(f"context {wamid!r} is not a message the bot sent to {wa_id}")
        return found

    def template_button(reply: Dict[str, Any], sent: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """A template's quick reply tapped: {"payload", "text"}, given or looked up by index."""
        if reply.get("index") is not None:
            buttons = ((sent or {}).get("template") or {}).get("buttons") or []
            index = int(reply["index"])
            if sent is None or not 0 <= index < len(buttons) or buttons[index]["type"] != "QUICK_REPLY":
                raise ValueError("reply.index must be a quick reply of the template message named by context")
            return {"payload": buttons[index]["payload"], "text": buttons[index]["text"]}
        payload = reply.get("payload", reply.get("id"))
        text = reply.get("text", reply.get("title"))
        if not payload:
            raise ValueError("a button reply needs a payload (or an index and context)")
        return {"payload": str(payload), "text": str(text if text is not None else payload)}

    def customer_message(data: Dict[str, Any], wa_id: str) -> Dict[str, Any]:
        message = customer_content(data, wa_id)
        if data.get("context") is not None:  # a reply to (or a button on) one of the bot's messages
            message["context"] = {"from": BUSINESS_NUMBER, "id": quoted(wa_id, data["context"])["id"]}
        return message

    def customer_content(data: Dict[str, Any], wa_id: str) -> Dict[str, Any]:
        if data.get("reply"):
            reply, kind = data["reply"], data["reply"].get("kind", "button_reply")
            if kind == "button":  # a quick reply on a template message
                return {"type": "button", "button": template_button(reply, quoted(wa_id, data.get("context")))}
            if kind not in ("button_reply", "list_reply"):
                raise ValueError("reply.kind must be button_reply, list_reply or button")
            return {"type": "interactive", "interactive": {"type": kind, kind: {
                "id": str(reply["id"]), "title": str(reply.get("title", ""))}}}
        if data.get("media"):
            media = data["media"]
            mime_type = str(media.get("mime_type") or "")
            if mime_type not in MEDIA_LIMITS:
                raise ValueError(f"unsupported media type {mime_type!r}")
            content = base64.b64decode(str(media.get("data") or ""), validate=True)
            if not content or len(content) > MEDIA_LIMITS[mime_type]:
                raise ValueError("the file is empty or too large for WhatsApp")
            stored = outbox.keep(content, mime_type, media.get("filename"))
            kind = "image" if mime_type.startswith("image/") else "document"
            body = {"id": stored.media_id, "mime_type": mime_type, "sha256": stored.sha256}
            if media.get("caption"):
                body["caption"] = str(media["caption"])
            if kind == "document" and media.get("filename"):
                body["filename"] = str(media["filename"])
            return {"type": kind, kind: body}
        return {"type": "text", "text": {"body": str(data.get("text") or "")}}

    async def send(request: web.Request) -> web.Response:
        """The chat page (or a test) writes as a customer: a signed webhook goes to the bot."""
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            wa_id, name = str(data.get("from") or ""), str(data.get("name") or "Sandbox user")[:100]
            if not (wa_id.isascii() and wa_id.isdigit() and 8 <= len(wa_id) <= 15):
                raise ValueError("from must be a phone number of 8 to 15 digits (country code first)")
            if len(str(data.get("text") or "")) > MAX_TEXT:
                raise ValueError(f"a WhatsApp text has at most {MAX_TEXT} characters")
            if data.get("reply") is not None and not isinstance(data["reply"], dict):
                raise ValueError("reply must be an object")
            message = customer_message(data, wa_id)
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        value = message_value(wa_id, name, message)
        message_id = value["messages"][0]["id"]
        try:
            status = await post_webhook(value)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            status = None
        if status == 200:
            return web.json_response({"bot_status": 200, "message_id": message_id})
        later(deliver(value))  # as Meta does: the webhook is delivered again until the bot takes it
        return web.json_response({"bot_status": status, "message_id": message_id, "queued": True,
                                  "error": f"the bot at {bot_url} did not take it now; it will be redelivered"},
                                 status=202)

    async def personas(_: web.Request) -> web.Response:
        people = [{"number": p.phone, "name": p.name, "story": p.story} for p in PERSONAS]
        people.append({"number": NOT_A_CUSTOMER, "name": "Not a customer", "story": "unknown number"})
        return web.json_response(people)

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")

    async def stop_background(_: web.Application) -> None:
        for task in list(background):
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)

    app.router.add_post("/{version}/{phone_id}/messages", messages_endpoint)
    app.router.add_post("/{version}/{phone_id}/media", media_upload)
    app.router.add_get("/_sandbox/messages", list_messages)
    app.router.add_post("/_sandbox/fail", fail)
    app.router.add_post("/_sandbox/send", send)
    app.router.add_get("/_sandbox/personas", personas)
    app.router.add_get("/_sandbox/templates", sandbox_templates)
    app.router.add_post("/_sandbox/templates/{template_id}/{verdict:approve|reject}", decide_template)
    app.router.add_post("/{version}/{waba_id}/message_templates", create_template)
    app.router.add_get("/{version}/{waba_id}/message_templates", list_templates)
    app.router.add_delete("/{version}/{waba_id}/message_templates", delete_template)
    app.router.add_get("/_sandbox/lookaside/{media_id}", lookaside)
    app.router.add_get("/_sandbox/media/{media_id}", phone_media)
    app.router.add_get("/", page)
    app.router.add_get("/{version:v\\d+\\.\\d+}/{media_id}", media_info)
    app.on_cleanup.append(stop_background)
    return app


def approve_templates_from_env() -> bool:
    """SANDBOX_APPROVE_TEMPLATES=1: templates are approved as soon as they are submitted (demos)."""
    return os.environ.get("SANDBOX_APPROVE_TEMPLATES", "").strip().lower() in ("1", "true", "yes", "on")


def settings_from_env() -> Dict[str, str]:
    return {"app_secret": os.environ.get("WHATSAPP_APP_SECRET") or SANDBOX_DEFAULTS["app_secret"],
            "phone_number_id": os.environ.get("WHATSAPP_PHONE_NUMBER_ID") or SANDBOX_DEFAULTS["phone_number_id"]}
