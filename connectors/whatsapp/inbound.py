"""Reading WhatsApp webhook payloads into inbound messages and delivery statuses.

Every entry, change and message is read (Meta batches). The body is Meta's (its signature was
checked) but its shape is not trusted: every level is type-checked and every message and status
is read on its own, so a malformed part is reported in `Webhook.problems` and skipped while the
rest of the batch is still read. Nothing here raises, whatever JSON value it is given: a batch
that always failed would be redelivered for days and its good messages never answered.

What is kept is safe to store and show: ids and senders of a known shape, strings without control
characters and bounded in length, timestamps as ints. Problems are logged, so they name message
ids, never a customer's number or words.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from cardsystem.formatting import hide_secrets
from connectors.whatsapp.outbound import TEXT_LIMIT  # WhatsApp's limit for a text message, either way

MEDIA_TYPES = ("image", "document", "audio", "video", "sticker")
READ_KINDS = ("text", "interactive", "button", "reaction", "location") + MEDIA_TYPES  # the others' bodies go unread
MEDIA_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")  # Meta's media ids are digits
EVENT_KIND = "cardcare_event"  # not from WhatsApp: the channel's own event for the bot (never from a webhook)
ID_LIMIT = 256        # the channel store's message id column
SHORT_LIMIT = 256     # profile names, file names, mime types, emoji ...
WA_ID = re.compile(r"[0-9]{5,20}")                  # a phone number in digits, as WhatsApp writes it
USER_ID = re.compile(r"[A-Z]{2}\.[A-Za-z0-9]{1,128}")  # a business-scoped user id, e.g. "IN.1648738043044942"
KIND = re.compile(r"[a-z_]{1,32}")
TIMESTAMP = re.compile(r"[0-9]{1,10}")
MAX_INTEGER = 2 ** 31 - 1     # what an INTEGER column holds in every database (timestamps, error codes)
MAX_NUMERIC_ID = 10 ** 20     # an id sent as a JSON number: a phone number's digits at most
UNSTORABLE = re.compile(r"[\x00-\x08\x0b-\x1f\ud800-\udfff]")  # C0 controls but \t and \n; lone surrogates


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
    callback_data: Optional[str] = None  # our biz_opaque_callback_data, echoed: the outbox key of the reply


@dataclass
class Webhook:
    messages: List[Inbound] = field(default_factory=list)
    statuses: List[Status] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    # Meta's verdicts on the business's templates (field message_template_status_update): approved,
    # rejected, paused ...; they concern the whole account, not one number
    template_updates: List[Dict[str, Any]] = field(default_factory=list)


class Malformed(ValueError):
    """One part of a webhook that cannot be read: reported and skipped, the rest is read."""


def _clean(text: str) -> str:
    """Without what no database should store (NUL, other control characters, lone surrogates)."""
    return UNSTORABLE.sub("", text)


def _string(value: Any, limit: int = SHORT_LIMIT) -> Optional[str]:
    """A text field, cleaned and cut to `limit`; None when it is not a string."""
    return _clean(value[:limit]) if isinstance(value, str) else None


def _identifier(value: Any) -> Optional[str]:
    """An id: a string, or a whole number taken as its digits (only scalars are turned into text,
    never a list or an object); None when it is absent, empty, of another type or too long to store."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_NUMERIC_ID:
        value = str(value)
    if not isinstance(value, str) or len(value) > ID_LIMIT:
        return None
    return _clean(value) or None


def _timestamp(raw: Any) -> int:
    """Seconds since the epoch (WhatsApp sends digits in a string); 0 when unusable: a bad timestamp
    costs a message its place in the customer's order, not its answer."""
    if isinstance(raw, str) and TIMESTAMP.fullmatch(raw):
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int):
        return 0
    return raw if 0 <= raw <= MAX_INTEGER else 0


def _coordinate(value: Any) -> Optional[float]:
    """A latitude or longitude; None for anything that is not a number in range (NaN included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -180 <= value <= 180:
        return None
    return float(value)


def _list(container: Dict[str, Any], key: str, result: Webhook) -> List[Any]:
    """container[key] when it is a list; absent is empty, anything else is reported and read as empty."""
    value = container.get(key)
    if value is None or isinstance(value, list):
        return value or []
    result.problems.append(f"{key} is not a list")
    return []


def _customer_text(raw: str) -> Tuple[str, List[str], bool]:
    """(text safe to store and show, secrets hidden, whether it was cut to TEXT_LIMIT).

    A card number, CVV, OTP or date of birth typed by mistake is hidden before the message is
    recorded, shown to an agent or understood (the channel warns the customer). Secrets are hidden
    before the cut, so that a card number across the limit is not half kept."""
    text, hidden = hide_secrets(_clean(raw[:2 * TEXT_LIMIT]))
    return text[:TEXT_LIMIT], hidden, len(raw) > TEXT_LIMIT


def _content(kind: str, body: Dict[str, Any]) -> Tuple[str, Optional[Dict[str, Any]], bool]:
    """(text for Rasa, attachment, supported) of one message's type body; the caller cleans and bounds the text."""
    if kind == "text":
        text = body.get("body")
        if not isinstance(text, str):
            raise Malformed("a text message without a body")
        return text, None, True
    if kind == "interactive":
        reply = body.get("button_reply") or body.get("list_reply") or {}
        if not isinstance(reply, dict):
            raise Malformed("an interactive reply that is not an object")
        return _string(reply.get("id")) or _string(reply.get("title")) or "", None, bool(reply)
    if kind == "button":  # a template's quick-reply button
        return _string(body.get("payload")) or _string(body.get("text")) or "", None, True
    if kind in MEDIA_TYPES:
        media_id = _identifier(body.get("id"))
        if media_id is None or not MEDIA_ID_RE.fullmatch(media_id):  # it becomes a Graph API path: no "../"
            return "", None, False
        caption = body.get("caption") if isinstance(body.get("caption"), str) else None
        attachment = {"media_id": media_id, "mime_type": _string(body.get("mime_type")),
                      "filename": _string(body.get("filename")), "caption": caption, "kind": kind,
                      "sha256": _string(body.get("sha256"))}
        # voice notes and stickers are not something the bot can use (an agent can: see the channel)
        return caption or "", attachment, kind not in ("audio", "sticker")
    if kind == "reaction":  # an emoji on one of our messages ("" when the customer removes it)
        emoji = _string(body.get("emoji"))
        return emoji or "", {"kind": "reaction", "emoji": emoji,
                             "message_id": _identifier(body.get("message_id"))}, False
    if kind == "location":
        return "", {"kind": "location", "latitude": _coordinate(body.get("latitude")),
                    "longitude": _coordinate(body.get("longitude")), "name": _string(body.get("name")),
                    "address": _string(body.get("address"))}, False
    return "", None, False  # contacts, order, unsupported, ...: answered politely


def _sender(message: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """(sender, reply_by): the wa_id, else the business-scoped user id of a customer known by a username only."""
    wa_id = _identifier(message.get("from"))
    if wa_id and WA_ID.fullmatch(wa_id):
        return wa_id, "to"
    user_id = _identifier(message.get("from_user_id"))
    if user_id and USER_ID.fullmatch(user_id):
        return user_id, "recipient"
    return None


def _read_message(message: Any, names: Dict[str, str], problems: List[str]) -> Optional[Inbound]:
    """One customer message; None for what is not something the customer said."""
    message_id = _identifier(message.get("id")) if isinstance(message, dict) else None
    if message_id is None:
        raise Malformed("a message without a usable id")
    kind = message.get("type")
    kind = kind if isinstance(kind, str) and KIND.fullmatch(kind) and kind != EVENT_KIND else "unsupported"
    if kind == "system":
        return None  # identity changes: not something the customer said
    sender = _sender(message)
    if sender is None:
        raise Malformed(f"message {message_id}: the sender is not a WhatsApp id")
    body = message.get(kind, {})
    if kind in READ_KINDS and not isinstance(body, dict):
        raise Malformed(f"message {message_id}: its {kind} is not an object")
    text, attachment, supported = _content(kind, body)
    text, hidden, cut = _customer_text(text)
    if cut:
        problems.append(f"message {message_id}: text longer than {TEXT_LIMIT} characters cut")
    if attachment and attachment.get("caption"):
        attachment["caption"], hidden_caption, _ = _customer_text(attachment["caption"])
        hidden = list(dict.fromkeys(hidden + hidden_caption))
    context = message.get("context")
    if context is not None and not isinstance(context, dict):
        problems.append(f"message {message_id}: context is not an object, ignored")
    return Inbound(
        message_id=message_id, sender=sender[0], reply_by=sender[1], kind=kind, text=text,
        timestamp=_timestamp(message.get("timestamp")), profile_name=names.get(sender[0]), attachment=attachment,
        context_id=_identifier(context.get("id")) if isinstance(context, dict) else None, supported=supported,
        hidden=tuple(hidden),
    )


def _read_status(status: Any) -> Status:
    """A delivery status of one of our sends."""
    if not isinstance(status, dict):
        raise Malformed("status without id or status")
    message_id, state = _identifier(status.get("id")), _string(status.get("status"), 32)
    if not message_id or not state:
        raise Malformed("status without id or status")
    return Status(message_id, state, _identifier(status.get("recipient_id")), _timestamp(status.get("timestamp")),
                  _errors(status.get("errors")), _string(status.get("biz_opaque_callback_data"), 512) or None)


def _errors(raw: Any) -> List[Dict[str, Any]]:
    """A failed send's errors as the store keeps them: a numeric code and a short title or message."""
    errors = []
    for error in raw if isinstance(raw, list) else []:
        if isinstance(error, dict):
            code = error.get("code")
            valid = isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= MAX_INTEGER
            errors.append({"code": code if valid else None, "title": _string(error.get("title"), 120),
                           "message": _string(error.get("message"), 120)})
    return errors


def _names(contacts: List[Any], result: Webhook) -> Dict[str, str]:
    """Profile names by wa_id and by business-scoped user id (a name is a nicety: one that cannot be
    read is left out); a contact that is not an object is reported."""
    names: Dict[str, str] = {}
    for contact in contacts:
        if not isinstance(contact, dict):
            result.problems.append("a contact that is not an object")
            continue
        profile = contact.get("profile")
        name = _string(profile.get("name")) if isinstance(profile, dict) else None
        for key in ("wa_id", "user_id"):
            customer = _identifier(contact.get(key))
            if customer and name:
                names[customer] = name
    return names


def _each(parts: List[Any], read: Callable[[Any], Any], what: str, result: Webhook) -> List[Any]:
    """`read` applied to each part on its own: a part that cannot be read is reported and skipped."""
    read_parts = []
    for part in parts:
        try:
            value = read(part)
        except Malformed as exc:
            result.problems.append(str(exc))
        except Exception as exc:  # a shape nobody foresaw costs this one part, never the batch
            result.problems.append(f"{what} could not be read ({type(exc).__name__})")
        else:
            if value is not None:
                read_parts.append(value)
    return read_parts


def _read_change(change: Dict[str, Any], phone_number_id: Optional[str], result: Webhook) -> None:
    value = change.get("value")
    if not isinstance(value, dict):
        result.problems.append("a change without a value object")
        return
    metadata = value.get("metadata")
    number = _identifier(metadata.get("phone_number_id")) if isinstance(metadata, dict) else None
    if phone_number_id and number != phone_number_id:
        result.problems.append(f"event for another phone number id {number}")
        return
    names = _names(_list(value, "contacts", result), result)
    result.messages += _each(_list(value, "messages", result),
                             lambda message: _read_message(message, names, result.problems), "a message", result)
    result.statuses += _each(_list(value, "statuses", result), _read_status, "a status", result)


def parse_webhook(payload: Any, phone_number_id: Optional[str] = None) -> Webhook:
    """Read a webhook body already decoded from JSON (any JSON value). Events for other numbers are skipped."""
    result = Webhook()
    if not isinstance(payload, dict) or payload.get("object") != "whatsapp_business_account":
        result.problems.append("not a whatsapp_business_account webhook")
        return result
    for entry in _list(payload, "entry", result):
        if not isinstance(entry, dict):
            result.problems.append("an entry that is not an object")
            continue
        for change in _list(entry, "changes", result):
            if not isinstance(change, dict):
                result.problems.append("a change that is not an object")
            elif change.get("field") == "messages":  # other fields are other subscriptions: not ours
                _read_change(change, phone_number_id, result)
            elif change.get("field") == "message_template_status_update" and isinstance(change.get("value"), dict):
                result.template_updates.append(change["value"])
    return result
