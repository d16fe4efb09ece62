"""Reading WhatsApp webhook payloads into inbound messages and delivery statuses.

Every entry, change and message is read (Meta batches); nothing here raises on a
malformed part: it is reported in `Webhook.problems` and skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from cardsystem.formatting import hide_secrets

MEDIA_TYPES = ("image", "document", "audio", "video", "sticker")
EVENT_KIND = "cardcare_event"  # not from WhatsApp: the channel's own event for the bot (never from a webhook)


@dataclass(frozen=True)
class Inbound:
    """One customer message, channel-neutral: what Rasa gets as text and metadata."""

    message_id: str
    sender: str                    # wa_id, or the business-scoped user id when there is none
    reply_by: str                  # "to" for a wa_id, "recipient" for a business-scoped id
    kind: str                      # WhatsApp's message type
    text: str                      # what Rasa parses (a button's id is the payload itself)
    timestamp: int
    profile_name: Optional[str] = None
    attachment: Optional[Dict[str, Any]] = None
    context_id: Optional[str] = None
    supported: bool = True
    hidden: Tuple[str, ...] = ()   # secrets hidden from the text before anyone stored it ("card number", "OTP")

    def metadata(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"whatsapp": {"message_id": self.message_id, "type": self.kind,
                                             "timestamp": self.timestamp, "profile_name": self.profile_name,
                                             "context_id": self.context_id, "reply_by": self.reply_by,
                                             "supported": self.supported, "hidden": list(self.hidden)}}
        if self.attachment:
            data["attachment"] = self.attachment
        return data


@dataclass(frozen=True)
class Status:
    message_id: str
    status: str
    recipient: Optional[str]
    timestamp: int
    errors: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class Webhook:
    messages: List[Inbound] = field(default_factory=list)
    statuses: List[Status] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)


def _timestamp(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def _text_of(message: Dict[str, Any], kind: str) -> "tuple[str, Optional[Dict[str, Any]], bool]":
    """(text for Rasa, attachment, supported) of one message."""
    body = message.get(kind) if isinstance(message.get(kind), dict) else {}
    if kind == "text":
        return str(body.get("body") or ""), None, True
    if kind == "interactive":
        reply = body.get("button_reply") or body.get("list_reply") or {}
        return str(reply.get("id") or reply.get("title") or ""), None, bool(reply)
    if kind == "button":  # a template's quick-reply button
        return str(body.get("payload") or body.get("text") or ""), None, True
    if kind in MEDIA_TYPES:
        if not body.get("id"):
            return "", None, False
        attachment = {"media_id": str(body["id"]), "mime_type": body.get("mime_type"),
                      "filename": body.get("filename"), "caption": body.get("caption"), "kind": kind,
                      "sha256": body.get("sha256")}
        # voice notes and stickers are not something the bot can use (an agent can: see the channel)
        return str(body.get("caption") or ""), attachment, kind not in ("audio", "sticker")
    if kind == "reaction":  # an emoji on one of our messages ("" when the customer removes it)
        return str(body.get("emoji") or ""), {"kind": "reaction", "emoji": body.get("emoji"),
                                              "message_id": body.get("message_id")}, False
    if kind == "location":
        return "", {"kind": "location", "latitude": body.get("latitude"), "longitude": body.get("longitude"),
                    "name": body.get("name"), "address": body.get("address")}, False
    return "", None, False  # contacts, order, unsupported, ...: answered politely


def parse_webhook(payload: Any, phone_number_id: Optional[str] = None) -> Webhook:
    """Read a webhook body already decoded from JSON. Events for other numbers are skipped."""
    result = Webhook()
    if not isinstance(payload, dict) or payload.get("object") != "whatsapp_business_account":
        result.problems.append("not a whatsapp_business_account webhook")
        return result
    for entry in payload.get("entry") or []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes or []:
            if not isinstance(change, dict) or change.get("field") != "messages":
                continue
            value = change.get("value") or {}
            number = (value.get("metadata") or {}).get("phone_number_id")
            if phone_number_id and number != phone_number_id:
                result.problems.append(f"event for another phone number id {number}")
                continue
            names = {c.get("wa_id") or c.get("user_id"): (c.get("profile") or {}).get("name")
                     for c in value.get("contacts") or [] if isinstance(c, dict)}
            for message in value.get("messages") or []:
                _read_message(message, names, result)
            for status in value.get("statuses") or []:
                if isinstance(status, dict) and status.get("id") and status.get("status"):
                    result.statuses.append(Status(str(status["id"]), str(status["status"]),
                                                  status.get("recipient_id"), _timestamp(status.get("timestamp")),
                                                  list(status.get("errors") or [])))
                else:
                    result.problems.append("status without id or status")
    return result


def _read_message(message: Any, names: Dict[Any, Any], result: Webhook) -> None:
    if not isinstance(message, dict) or not message.get("id"):
        result.problems.append("message without an id")
        return
    kind = str(message.get("type") or "unsupported")
    if kind == EVENT_KIND:
        kind = "unsupported"  # a webhook cannot pose as the channel's own events
    if kind == "system":
        return  # identity changes: not something the customer said
    sender, reply_by = message.get("from"), "to"
    if not sender:
        sender, reply_by = message.get("from_user_id"), "recipient"
    if not sender:
        result.problems.append(f"message {message['id']} without a sender")
        return
    text, attachment, supported = _text_of(message, kind)
    # A card number, CVV, OTP or date of birth typed by mistake is hidden before the message is
    # recorded, shown to an agent or understood; the channel warns the customer (see channel.py).
    text, hidden = hide_secrets(text)
    if attachment and attachment.get("caption"):
        attachment["caption"], hidden_caption = hide_secrets(str(attachment["caption"]))
        hidden = list(dict.fromkeys(hidden + hidden_caption))
    result.messages.append(Inbound(
        message_id=str(message["id"]), sender=str(sender), reply_by=reply_by, kind=kind, text=text,
        timestamp=_timestamp(message.get("timestamp")), profile_name=names.get(sender),
        attachment=attachment, context_id=(message.get("context") or {}).get("id"), supported=supported,
        hidden=tuple(hidden),
    ))
