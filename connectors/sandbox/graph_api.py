"""The Graph API's messages endpoint as the sandbox serves it: same validation, same error shapes."""
from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from connectors.whatsapp.outbound import (
    LIST_ROW_DESCRIPTION_MAX, LIST_ROW_TITLE_MAX, LIST_ROWS_MAX, REPLY_BUTTONS_MAX, REPLY_TITLE_MAX, TEXT_LIMIT,
)

_ids = itertools.count(1)
_media_ids = itertools.count(1)
MEDIA_LIMITS = {  # mime type -> largest accepted size in bytes, as the Cloud API documents them
    "image/jpeg": 5 << 20, "image/png": 5 << 20, "image/webp": 500 << 10,
    "application/pdf": 100 << 20, "text/plain": 100 << 20, "application/msword": 100 << 20,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": 100 << 20,
    "application/vnd.ms-excel": 100 << 20,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": 100 << 20,
    "audio/ogg": 16 << 20, "audio/mpeg": 16 << 20, "audio/aac": 16 << 20, "audio/mp4": 16 << 20,
    "video/mp4": 16 << 20, "video/3gpp": 16 << 20,
}


@dataclass(frozen=True)
class StoredMedia:
    media_id: str
    content: bytes
    mime_type: str
    filename: Optional[str]
    sha256: str


class GraphError(Exception):
    def __init__(self, code: int, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.http_status = code, message, http_status

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": "OAuthException", "code": self.code,
                          "error_data": {"messaging_product": "whatsapp", "details": self.message},
                          "fbtrace_id": f"sandbox{int(time.time() * 1000)}"}}


def _require(condition: bool, message: str, code: int = 100) -> None:
    if not condition:
        raise GraphError(code, message)


def validate(body: Any, media: Optional[Dict[str, "StoredMedia"]] = None) -> str:
    """Check a send the way the Graph API does for the shapes cardcare uses; return the recipient."""
    _require(isinstance(body, dict), "Invalid JSON body")
    _require(body.get("messaging_product") == "whatsapp", "(#100) The parameter messaging_product is required.")
    recipient = body.get("to") or body.get("recipient")
    _require(bool(recipient), "(#100) The parameter to is required.")
    kind = body.get("type", "text")
    payload = body.get(kind)
    _require(isinstance(payload, dict), f"(#100) The parameter {kind} is required.")
    if kind == "text":
        text = payload.get("body")
        _require(isinstance(text, str) and text != "", "(#100) The parameter text['body'] is required.")
        _require(len(text) <= TEXT_LIMIT, f"(#100) Param text['body'] must be at most {TEXT_LIMIT} characters long.")
    elif kind == "interactive":
        _validate_interactive(payload)
    elif kind in ("document", "image"):
        _require(bool(payload.get("id") or payload.get("link")), f"(#100) The parameter {kind}['link'] is required.")
        if payload.get("id") and media is not None:
            _require(str(payload["id"]) in media, f"(#100) Invalid parameter: media id {payload['id']} not found")
        _require(len(payload.get("caption") or "") <= 1024, "(#100) Param caption must be at most 1024 characters long.")
    elif kind != "template":
        raise GraphError(131051, f"Unsupported message type {kind}")
    callback = body.get("biz_opaque_callback_data")
    _require(callback is None or (isinstance(callback, str) and len(callback) <= 512),
             "(#100) Param biz_opaque_callback_data must be a string of at most 512 characters.")
    return str(recipient)


def _validate_interactive(payload: Dict[str, Any]) -> None:
    action = payload.get("action") or {}
    _require(bool((payload.get("body") or {}).get("text")), "(#100) The parameter interactive['body']['text'] is required.")
    if payload.get("type") == "button":
        buttons = action.get("buttons") or []
        _require(1 <= len(buttons) <= REPLY_BUTTONS_MAX, "(#131009) Buttons count should be between 1 and 3", 131009)
        titles = [(b.get("reply") or {}).get("title") or "" for b in buttons]
        _require(all(0 < len(t) <= REPLY_TITLE_MAX for t in titles), "(#100) Button title length invalid")
        _require(len(set(titles)) == len(titles), "(#100) Button titles must be unique")
    elif payload.get("type") == "list":
        rows = [r for s in action.get("sections") or [] for r in s.get("rows") or []]
        _require(1 <= len(rows) <= LIST_ROWS_MAX, "(#131009) Total row count exceed max allowed count: 10", 131009)
        _require(all(0 < len(r.get("title") or "") <= LIST_ROW_TITLE_MAX for r in rows), "(#100) Row title length invalid")
        _require(all(len(r.get("description") or "") <= LIST_ROW_DESCRIPTION_MAX for r in rows),
                 "(#100) Row description length invalid")
    else:
        raise GraphError(100, "(#100) Unsupported interactive type")


class Outbox:
    """What the sandbox received from the bot, and failures it was told to return."""

    def __init__(self) -> None:
        self.messages: List[Dict[str, Any]] = []
        self.failures: List[int] = []          # error codes to answer the next sends with
        self.status_failures: List[int] = []   # accepted, then a "failed" status webhook with this code
        self.media: Dict[str, StoredMedia] = {}
        self.read: List[str] = []              # message ids the bot marked as read
        self.outage_until = 0.0                # time.monotonic() until which every send gets HTTP 503

    def accept(self, body: Any) -> Dict[str, Any]:
        if isinstance(body, dict) and body.get("status") == "read":
            _require(bool(body.get("message_id")), "(#100) The parameter message_id is required.")
            self.read.append(str(body["message_id"]))
            return {"success": True}
        if time.monotonic() < self.outage_until:
            raise GraphError(2, "Service temporarily unavailable (sandbox outage)", 503)
        recipient = validate(body, self.media)
        if self.failures:
            code = self.failures.pop(0)
            raise GraphError(code, f"sandbox failure {code} as requested", 400 if code != 190 else 401)
        wamid = f"wamid.sandbox{next(_ids)}"
        self.messages.append({"id": wamid, "to": recipient, "at": time.time(), "message": body})
        return {"messaging_product": "whatsapp", "contacts": [{"input": recipient, "wa_id": recipient}],
                "messages": [{"id": wamid}]}

    def for_recipient(self, recipient: Optional[str], after: int = 0) -> List[Dict[str, Any]]:
        found = [m for m in self.messages if recipient is None or m["to"] == recipient]
        return found[after:]

    def upload(self, fields: Dict[str, Any], content: Optional[bytes], filename: Optional[str],
               file_type: Optional[str]) -> Dict[str, Any]:
        """The media endpoint: multipart messaging_product, type and file."""
        _require(fields.get("messaging_product") == "whatsapp", "(#100) The parameter messaging_product is required.")
        _require(content is not None, "(#100) The parameter file is required.")
        mime_type = str(fields.get("type") or file_type or "")
        _require(mime_type in MEDIA_LIMITS, f"(#131053) Media upload error: unsupported type {mime_type}", 131053)
        _require(0 < len(content or b"") <= MEDIA_LIMITS[mime_type],
                 f"(#131053) Media upload error: file size must be between 1 and {MEDIA_LIMITS[mime_type]} bytes", 131053)
        return {"id": self.keep(content or b"", mime_type, filename).media_id}

    def keep(self, content: bytes, mime_type: str, filename: Optional[str]) -> StoredMedia:
        media_id = str(9000000000000000 + next(_media_ids))
        stored = StoredMedia(media_id, content, mime_type, filename, hashlib.sha256(content).hexdigest())
        self.media[media_id] = stored
        return stored
