"""WhatsApp message templates: the registry (templates.yml), checked against WhatsApp's rules,
in the two shapes the Graph API wants (the creation body for approval, the message to send),
and their approval status as Meta last told it.

Rules checked (Meta's template guidelines and the Graph API's limits): name `[a-z0-9_]`, up to 512;
category utility / marketing / authentication; body up to 1024 characters with parameters
{{1}}..{{n}} in order, each with an example, none at the very start or end; header and footer up to
60 characters, footer without parameters; at most 10 buttons, at most 2 URL buttons, quick replies
side by side; button text up to 25 characters; a URL up to 2000 characters with at most one
parameter, at its end. At send time a parameter may not hold a newline, a tab or more than four
spaces in a row (error 132018), and the body filled in stays within 1024 characters.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from cardsystem.config import PROJECT_ROOT

CATEGORIES = ("utility", "marketing", "authentication")
NAME = re.compile(r"^[a-z0-9_]{1,512}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")
PLACEHOLDER = re.compile(r"\{\{\s*(\d+)\s*\}\}")
BODY_MAX, HEADER_MAX, FOOTER_MAX, BUTTON_TEXT_MAX, URL_MAX, PAYLOAD_MAX = 1024, 60, 60, 25, 2000, 256
MAX_BUTTONS, MAX_URL_BUTTONS = 10, 2
BAD_PARAMETER = re.compile(r"[\n\t]| {5,}")


# what the bank's messages can be filled with (cardsystem.reminders.outreach fills them)
FIELDS = {"card_last4", "total_due", "minimum_due", "due_date", "payment_link_query", "amount", "paid_on", "month",
          "period", "request_label", "reference", "request_news", "blocked_at", "block_reason", "support_phone"}


class TemplateError(ValueError):
    """A template breaks one of WhatsApp's rules, or cannot be filled in as asked."""


@dataclass(frozen=True)
class Button:
    type: str                       # quick_reply | url
    text: str
    payload: str = ""               # quick_reply: what the bot receives ({field}s filled in)
    url: str = ""                   # url: ends with {{1}} when it has a parameter
    parameter: str = ""             # url: the field the {{1}} is filled with
    example: str = ""


@dataclass(frozen=True)
class Template:
    name: str
    language: str
    category: str
    body: str
    parameters: Tuple[Tuple[str, str], ...]   # (field, example) per {{n}}
    footer: str = ""
    header: str = ""
    buttons: Tuple[Button, ...] = ()

    @property
    def key(self) -> Tuple[str, str]:
        return self.name, self.language

    @property
    def content_hash(self) -> str:
        """What Meta approved: a changed text needs a new approval (and so a new name)."""
        content = {"category": self.category, "body": self.body, "footer": self.footer, "header": self.header,
                   "buttons": [(b.type, b.text, b.url) for b in self.buttons]}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()[:16]

    # -- the two Graph API shapes ---------------------------------------------------------------
    def creation_body(self) -> Dict[str, Any]:
        """POST /{waba-id}/message_templates."""
        components: List[Dict[str, Any]] = []
        if self.header:
            components.append({"type": "HEADER", "format": "TEXT", "text": self.header})
        body: Dict[str, Any] = {"type": "BODY", "text": self.body}
        if self.parameters:
            body["example"] = {"body_text": [[example for _, example in self.parameters]]}
        components.append(body)
        if self.footer:
            components.append({"type": "FOOTER", "text": self.footer})
        if self.buttons:
            buttons = []
            for b in self.buttons:
                if b.type == "quick_reply":
                    buttons.append({"type": "QUICK_REPLY", "text": b.text})
                else:
                    item = {"type": "URL", "text": b.text, "url": b.url}
                    if PLACEHOLDER.search(b.url):
                        item["example"] = [PLACEHOLDER.sub(b.example, b.url)]
                    buttons.append(item)
            components.append({"type": "BUTTONS", "buttons": buttons})
        return {"name": self.name, "language": self.language, "category": self.category.upper(),
                "components": components}

    def message(self, values: Mapping[str, Any]) -> Dict[str, Any]:
        """The message to send (`type: template`), filled with `values` (by field name)."""
        parameters = []
        for field_name, _ in self.parameters:
            parameters.append({"type": "text", "text": _parameter(values, field_name, self.name)})
        rendered = self.render(values)
        if len(rendered) > BODY_MAX:
            raise TemplateError(f"{self.name}: the body filled in is {len(rendered)} characters (at most {BODY_MAX})")
        components: List[Dict[str, Any]] = []
        if parameters:
            components.append({"type": "body", "parameters": parameters})
        for index, b in enumerate(self.buttons):
            if b.type == "quick_reply":
                components.append({"type": "button", "sub_type": "quick_reply", "index": str(index),
                                   "parameters": [{"type": "payload", "payload": self.payload(b, values)}]})
            elif PLACEHOLDER.search(b.url):
                components.append({"type": "button", "sub_type": "url", "index": str(index),
                                   "parameters": [{"type": "text", "text": _parameter(values, b.parameter, self.name)}]})
        return {"type": "template", "template": {"name": self.name, "language": {"code": self.language},
                                                 "components": components}}

    def render(self, values: Mapping[str, Any]) -> str:
        """The body as the customer reads it."""
        fields = [name for name, _ in self.parameters]
        return PLACEHOLDER.sub(lambda m: str(values.get(fields[int(m.group(1)) - 1], "")), self.body)

    def payload(self, button: Button, values: Mapping[str, Any]) -> str:
        text = re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), "")), button.payload)
        if len(text) > PAYLOAD_MAX:
            raise TemplateError(f"{self.name}: the payload of '{button.text}' is longer than {PAYLOAD_MAX}")
        return text

    def url_of(self, button: Button, values: Mapping[str, Any]) -> str:
        return PLACEHOLDER.sub(str(values.get(button.parameter, "")), button.url)


def _parameter(values: Mapping[str, Any], field_name: str, template: str) -> str:
    value = values.get(field_name)
    if value is None or str(value).strip() == "":
        raise TemplateError(f"{template}: no value for '{field_name}'")
    text = str(value)
    if BAD_PARAMETER.search(text):
        raise TemplateError(f"{template}: '{field_name}' may not hold a newline, a tab or more than four spaces")
    return text


def check(template: Template) -> List[str]:
    """WhatsApp's rules `template` breaks (empty: none)."""
    problems: List[str] = []
    where = f"{template.name or '?'} ({template.language or '?'})"
    if not NAME.match(template.name or ""):
        problems.append(f"{where}: a name is lower-case letters, digits and _ (at most 512)")
    if not LANGUAGE.match(template.language or ""):
        problems.append(f"{where}: language '{template.language}' is not a WhatsApp language code (en, hi, en_US)")
    if template.category not in CATEGORIES:
        problems.append(f"{where}: category must be one of {', '.join(CATEGORIES)}")
    body = template.body or ""
    if not body.strip():
        problems.append(f"{where}: the body is empty")
    if len(body) > BODY_MAX:
        problems.append(f"{where}: the body is {len(body)} characters (at most {BODY_MAX})")
    numbers = [int(n) for n in PLACEHOLDER.findall(body)]
    if numbers and sorted(set(numbers)) != list(range(1, max(numbers) + 1)):
        problems.append(f"{where}: body parameters must be {{{{1}}}}..{{{{n}}}} with none missing")
    if len(numbers) != len(set(numbers)):
        problems.append(f"{where}: a body parameter is used twice")
    if len(set(numbers)) != len(template.parameters):
        problems.append(f"{where}: the body has {len(set(numbers))} parameters but {len(template.parameters)} are described")
    if numbers and (PLACEHOLDER.match(body.strip()) or re.search(r"\{\{\s*\d+\s*\}\}[.!?]?$", body.strip())):
        problems.append(f"{where}: a parameter may not start or end the body")
    for field_name, example in template.parameters:
        if not field_name or not str(example or "").strip():
            problems.append(f"{where}: every parameter needs a field and an example")
        elif BAD_PARAMETER.search(str(example)):
            problems.append(f"{where}: the example of '{field_name}' holds a newline, tab or 5 spaces")
    if len(template.header) > HEADER_MAX:
        problems.append(f"{where}: the header is longer than {HEADER_MAX}")
    if len(template.footer) > FOOTER_MAX:
        problems.append(f"{where}: the footer is longer than {FOOTER_MAX}")
    if PLACEHOLDER.search(template.footer):
        problems.append(f"{where}: a footer may not have parameters")
    problems += _check_buttons(where, template.buttons)
    if template.category == "authentication":
        problems.append(f"{where}: authentication templates carry one-time codes only; cardcare sends none")
    return problems


def _check_buttons(where: str, buttons: Tuple[Button, ...]) -> List[str]:
    problems: List[str] = []
    if len(buttons) > MAX_BUTTONS:
        problems.append(f"{where}: {len(buttons)} buttons (at most {MAX_BUTTONS})")
    kinds = [b.type for b in buttons]
    if kinds.count("url") > MAX_URL_BUTTONS:
        problems.append(f"{where}: at most {MAX_URL_BUTTONS} URL buttons")
    quick = [i for i, kind in enumerate(kinds) if kind == "quick_reply"]
    if quick and quick != list(range(quick[0], quick[-1] + 1)):
        problems.append(f"{where}: quick replies must be side by side, not mixed with other buttons")
    for b in buttons:
        if b.type not in ("quick_reply", "url"):
            problems.append(f"{where}: button type '{b.type}' is not quick_reply or url")
        if not b.text.strip() or len(b.text) > BUTTON_TEXT_MAX:
            problems.append(f"{where}: button text '{b.text}' must be 1 to {BUTTON_TEXT_MAX} characters")
        if b.type == "quick_reply" and not b.payload:
            problems.append(f"{where}: quick reply '{b.text}' needs a payload")
        if b.type == "url":
            found = PLACEHOLDER.findall(b.url)
            if not re.match(r"^https?://", b.url) or len(b.url) > URL_MAX:
                problems.append(f"{where}: button '{b.text}' needs an http(s) URL of at most {URL_MAX} characters")
            if len(found) > 1 or (found and not re.search(r"\{\{\s*1\s*\}\}$", b.url)):
                problems.append(f"{where}: a URL may have one parameter, {{{{1}}}}, at its end")
            if found and (not b.parameter or not b.example):
                problems.append(f"{where}: URL button '{b.text}' needs the parameter's field and an example")
    texts = [b.text for b in buttons]
    if len(set(texts)) != len(texts):
        problems.append(f"{where}: two buttons have the same text")
    return problems


def _template(entry: Mapping[str, Any], context: Mapping[str, str]) -> Template:
    def fill(text: str) -> str:  # {payment_base_url} and the like; {{n}} is left alone
        return re.sub(r"(?<!\{)\{(payment_base_url)\}(?!\})", lambda m: context.get(m.group(1), ""), text)

    buttons = tuple(Button(type=str(b.get("type", "")), text=str(b.get("text", "")), payload=str(b.get("payload", "")),
                           url=fill(str(b.get("url", ""))), parameter=str(b.get("parameter", "")),
                           example=str(b.get("example", "")))
                    for b in entry.get("buttons") or [])
    return Template(
        name=str(entry.get("name", "")), language=str(entry.get("language", "")),
        category=str(entry.get("category", "")).lower(), body=" ".join(str(entry.get("body", "")).split()),
        parameters=tuple((str(p.get("field", "")), str(p.get("example", ""))) for p in entry.get("parameters") or []),
        footer=str(entry.get("footer", "")), header=str(entry.get("header", "")), buttons=buttons)


@dataclass
class Registry:
    templates: Dict[Tuple[str, str], Template] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Optional[Path] = None, payment_base_url: Optional[str] = None) -> "Registry":
        """templates.yml (CARDCARE_TEMPLATES), every template checked: one broken template stops the load.
        Beyond WhatsApp's rules: each parameter is filled from a field cardcare knows (FIELDS)."""
        path = Path(path or os.environ.get("CARDCARE_TEMPLATES") or PROJECT_ROOT / "templates.yml")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise TemplateError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        entries = data.get("templates") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise TemplateError(f"{path}: no templates (a list under `templates:`)")
        if payment_base_url is None:
            from cardsystem.config import Settings

            payment_base_url = Settings.from_env().payment_base_url
        registry = cls.from_entries(entries, {"payment_base_url": payment_base_url}, str(path))
        unknown = [f"{t.name}: {field}" for t in registry for field in
                   [f for f, _ in t.parameters] + [b.parameter for b in t.buttons if b.parameter]
                   + [m for b in t.buttons for m in re.findall(r"\{(\w+)\}", b.payload)] if field not in FIELDS]
        if unknown:
            raise TemplateError(f"{path}: fields cardcare does not fill: {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(FIELDS))})")
        return registry

    @classmethod
    def from_entries(cls, entries: List[Mapping[str, Any]], context: Optional[Mapping[str, str]] = None,
                     source: str = "templates") -> "Registry":
        registry = cls()
        problems: List[str] = []
        for entry in entries:
            if not isinstance(entry, Mapping):
                problems.append("an entry is not a mapping")
                continue
            template = _template(entry, context or {})
            problems += check(template)
            if template.key in registry.templates:
                problems.append(f"{template.name} ({template.language}) is defined twice")
            registry.templates[template.key] = template
        if problems:
            raise TemplateError(f"{source}: " + "; ".join(problems))
        return registry

    def get(self, name: str, language: str = "en") -> Template:
        try:
            return self.templates[(name, language)]
        except KeyError:
            raise TemplateError(f"no template {name} ({language}) in the registry") from None

    def __iter__(self):
        return iter(self.templates.values())
