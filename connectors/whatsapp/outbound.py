"""Rasa replies as WhatsApp Cloud API message bodies, within the platform's limits."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

TEXT_LIMIT = 4096
REPLY_BUTTONS_MAX = 3
REPLY_TITLE_MAX = 20
REPLY_BODY_MAX = 1024
LIST_ROWS_MAX = 10
LIST_ROW_TITLE_MAX = 24
LIST_ROW_DESCRIPTION_MAX = 72
LIST_BUTTON_LABEL = "Choose"
ROW_ID_MAX = 200
BUTTON_ID_MAX = 256


def cut(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary where one is near."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ")
    return head[:space] if space >= limit // 2 else head


def split_text(text: str, limit: int = TEXT_LIMIT) -> List[str]:
    """Split a long text into messages at paragraph, line, sentence or word boundaries."""
    text = text.strip()
    parts: List[str] = []
    while len(text) > limit:
        window = text[:limit]
        at = max(window.rfind("\n\n"), -1)
        for pattern in ("\n", ". ", " "):
            if at < limit // 2:
                at = window.rfind(pattern)
                if pattern == ". " and at >= 0:
                    at += 1
        if at < limit // 4:
            at = limit
        parts.append(text[:at].strip())
        text = text[at:].strip()
    if text:
        parts.append(text)
    return parts


def text_message(body: str, preview_url: bool = False) -> Dict[str, Any]:
    return {"type": "text", "text": {"body": body, "preview_url": preview_url}}


def _unique_titles(titles: List[str], limit: int) -> List[str]:
    seen: Dict[str, int] = {}
    unique = []
    for title in titles:
        short = cut(title, limit) or "Option"
        if short in seen:
            seen[short] += 1
            suffix = f" {seen[short]}"
            short = cut(short, limit - len(suffix)) + suffix
        else:
            seen[short] = 1
        unique.append(short)
    return unique


def buttons_message(text: str, buttons: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], Dict[str, str]]:
    """Messages for a text with Rasa buttons, and the typed-number menu (number -> payload).

    Up to 3 buttons become reply buttons, up to 10 a list, more a numbered text menu the
    customer answers by typing a number.
    """
    payloads = [str(b.get("payload") or b.get("title") or "") for b in buttons]
    titles = [str(b.get("title") or b.get("payload") or "") for b in buttons]
    if len(buttons) <= REPLY_BUTTONS_MAX and len(text) <= REPLY_BODY_MAX and all(len(p) <= BUTTON_ID_MAX for p in payloads):
        action = {"buttons": [{"type": "reply", "reply": {"id": p, "title": t}}
                              for p, t in zip(payloads, _unique_titles(titles, REPLY_TITLE_MAX))]}
        return [{"type": "interactive", "interactive": {"type": "button", "body": {"text": text}, "action": action}}], {}
    if len(buttons) <= LIST_ROWS_MAX and len(text) <= REPLY_BODY_MAX and all(len(p) <= ROW_ID_MAX for p in payloads):
        rows = []
        for payload, title, short in zip(payloads, titles, _unique_titles(titles, LIST_ROW_TITLE_MAX)):
            row = {"id": payload, "title": short}
            rest = " ".join(title.split())[len(short):].strip()
            if rest:
                row["description"] = cut(rest, LIST_ROW_DESCRIPTION_MAX)
            rows.append(row)
        action = {"button": LIST_BUTTON_LABEL, "sections": [{"rows": rows}]}
        return [{"type": "interactive", "interactive": {"type": "list", "body": {"text": text}, "action": action}}], {}
    menu = {str(i): payload for i, payload in enumerate(payloads, 1)}
    lines = [text, ""] + [f"{i}. {title}" for i, title in enumerate(titles, 1)] + ["", "Reply with a number."]
    return [text_message(part) for part in split_text("\n".join(lines))], menu


def document_message(filename: str, link: Optional[str] = None, media_id: Optional[str] = None,
                     caption: Optional[str] = None) -> Dict[str, Any]:
    document: Dict[str, Any] = {"id": media_id} if media_id else {"link": link}
    document["filename"] = filename
    if caption:
        document["caption"] = cut(caption, 1024)
    return {"type": "document", "document": document}


def menu_choice(text: str, menu: Dict[str, str]) -> Optional[str]:
    """The payload of a numbered menu entry the customer typed ("2", " 2. "), if any."""
    match = re.fullmatch(r"\s*(\d{1,2})\s*[.)]?\s*", text or "")
    return menu.get(match.group(1)) if match else None


def template_payloads(message: Dict[str, Any]) -> List[str]:
    """The quick-reply payloads a template message carries (they come back as button replies)."""
    payloads = []
    for component in (message.get("template") or {}).get("components") or []:
        if isinstance(component, dict) and component.get("sub_type") == "quick_reply":
            payloads += [str(p.get("payload")) for p in component.get("parameters") or []
                         if isinstance(p, dict) and p.get("payload")]
    return payloads
