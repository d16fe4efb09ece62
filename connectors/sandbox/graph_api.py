"""The Graph API as the sandbox serves it: same validation, same error shapes.

The messages endpoint (`validate`, `Outbox`) and message templates (`Templates`): created
through the Business Management API (checked as Meta checks a submission), approved or
rejected by a test hook, and rendered when a send names one (checked as Meta checks a send).
"""
from __future__ import annotations

import hashlib
import itertools
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from connectors.whatsapp.outbound import (
    LIST_ROW_DESCRIPTION_MAX, LIST_ROW_TITLE_MAX, LIST_ROWS_MAX, REPLY_BUTTONS_MAX, REPLY_TITLE_MAX, TEXT_LIMIT,
)

_ids = itertools.count(1)
RUN = uuid.uuid4().hex[:8]  # this sandbox run: its message ids never repeat an earlier run's
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
    def __init__(self, code: int, message: str, http_status: int = 400, *, details: Optional[str] = None,
                 subcode: Optional[int] = None, user_title: Optional[str] = None) -> None:
        super().__init__(message)
        self.code, self.message, self.http_status = code, message, http_status
        self.details, self.subcode, self.user_title = details, subcode, user_title

    def body(self) -> Dict[str, Any]:
        error: Dict[str, Any] = {"message": self.message, "type": "OAuthException", "code": self.code,
                                 "error_data": {"messaging_product": "whatsapp", "details": self.details or self.message},
                                 "fbtrace_id": f"sandbox{int(time.time() * 1000)}"}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.user_title is not None:  # the Business Management API's user-facing explanation
            error.update(is_transient=False, error_user_title=self.user_title, error_user_msg=self.details or self.message)
        return {"error": error}


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


# Message templates: the limits Meta checks when a template is submitted and when one is sent.
TEMPLATE_NAME_RE = re.compile(r"[a-z0-9_]{1,512}")
TEMPLATE_LANGUAGE_RE = re.compile(r"[a-z]{2,3}(_[A-Z]{2,4})?")
TEMPLATE_CATEGORIES = ("UTILITY", "MARKETING", "AUTHENTICATION")
TEMPLATE_BODY_MAX = 1024
TEMPLATE_HEADER_MAX = 60
TEMPLATE_FOOTER_MAX = 60
TEMPLATE_BUTTON_TEXT_MAX = 25
TEMPLATE_BUTTONS_MAX = 10
TEMPLATE_URL_BUTTONS_MAX = 2
TEMPLATE_PHONE_BUTTONS_MAX = 1
TEMPLATE_URL_MAX = 2000
TEMPLATE_PHONE_MAX = 20
HEADER_FORMATS = ("TEXT", "IMAGE", "VIDEO", "DOCUMENT", "LOCATION")
BUTTON_TYPES = {"QUICK_REPLY": "quick_reply", "URL": "url", "PHONE_NUMBER": "phone_number"}
_VARIABLE = re.compile(r"\{\{(.*?)\}\}")
_NUMBERED = re.compile(r"\{\{(\d+)\}\}")
_template_ids = itertools.count(1)


def _invalid(detail: str, title: str = "Invalid parameter", subcode: Optional[int] = None) -> GraphError:
    """A submission Meta refuses: code 100 with the user-facing title and message."""
    return GraphError(100, f"(#100) Invalid parameter: {detail}", details=detail, subcode=subcode, user_title=title)


def _variable_count(text: str, where: str) -> int:
    """How many numbered variables a text has; they must be {{1}}..{{n}}, first used in that order."""
    found = _VARIABLE.findall(text)
    if text.count("{{") != len(found) or text.count("}}") != len(found):
        raise _invalid(f"{where} has unbalanced braces; variables are written {{{{1}}}}, {{{{2}}}}, ...")
    order: List[int] = []
    for inner in found:
        if not inner.isdigit():
            raise _invalid(f"{where} has the variable {{{{{inner}}}}}; positional variables are numbered {{{{1}}}}, {{{{2}}}}, ...")
        if int(inner) not in order:
            order.append(int(inner))
    if order != list(range(1, len(order) + 1)):
        raise _invalid(f"{where} variables must be numbered {{{{1}}}} to {{{{{len(order)}}}}} in order, found "
                       + ", ".join(f"{{{{{n}}}}}" for n in order), "Variable parameters are not sequential")
    return len(order)


def _text_field(component: Dict[str, Any], where: str, limit: int) -> str:
    text = component.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _invalid(f"{where} text is required")
    if len(text) > limit:
        raise _invalid(f"{where} text must be at most {limit} characters long (it has {len(text)})",
                       f"{where.capitalize()} text too long")
    return text


def _examples(example: Any, key: str, nested: bool) -> Optional[List[Any]]:
    values = example.get(key) if isinstance(example, dict) else None
    if nested:
        values = values[0] if isinstance(values, list) and values and isinstance(values[0], list) else None
    return values if isinstance(values, list) else None


def _need_examples(values: Optional[List[Any]], count: int, where: str) -> None:
    if values is None or len(values) != count or not all(isinstance(v, str) and v.strip() for v in values):
        raise _invalid(f"{where} has {count} variable(s) and needs one sample value for each "
                       f"({'example.body_text: [[...]]' if where == 'body' else 'example.header_text: [...]'})",
                       "Message template's examples missing", 2388043)


@dataclass
class Template:
    id: str
    name: str
    language: str
    category: str
    components: List[Dict[str, Any]]
    waba_id: str
    status: str = "PENDING"
    rejected_reason: Optional[str] = None
    created: float = field(default_factory=time.time)

    def component(self, kind: str) -> Optional[Dict[str, Any]]:
        return next((c for c in self.components if c["type"] == kind), None)

    @property
    def buttons(self) -> List[Dict[str, Any]]:
        return list((self.component("BUTTONS") or {}).get("buttons") or [])

    def as_graph(self) -> Dict[str, Any]:
        """As GET /{waba_id}/message_templates lists it."""
        listed = {"id": self.id, "name": self.name, "language": self.language, "status": self.status,
                  "category": self.category, "components": self.components}
        if self.status == "REJECTED":
            listed["rejected_reason"] = self.rejected_reason or "NONE"
        return listed


def _check_components(components: Any) -> List[Dict[str, Any]]:
    """The submitted components, types upper-cased, or the error Meta answers."""
    if not isinstance(components, list) or not components:
        raise _invalid("components is required: at least a BODY")
    checked: Dict[str, Dict[str, Any]] = {}
    for raw in components:
        if not isinstance(raw, dict) or str(raw.get("type", "")).upper() not in ("HEADER", "BODY", "FOOTER", "BUTTONS"):
            raise _invalid("each component needs a type: HEADER, BODY, FOOTER or BUTTONS")
        component = {**raw, "type": str(raw["type"]).upper()}
        if component["type"] in checked:
            raise _invalid(f"there can be only one {component['type']} component")
        checked[component["type"]] = component
    if "BODY" not in checked:
        raise _invalid("a template needs a BODY component", "Message template body missing")
    body = checked["BODY"]
    text = _text_field(body, "body", TEMPLATE_BODY_MAX)
    count = _variable_count(text, "body")
    if count:
        if re.match(r"\s*\{\{", text) or re.search(r"\}\}\s*$", text):
            raise _invalid("variables can't be at the start or end of the template body",
                           "Variables can't be at the start or end of the template", 2388299)
        _need_examples(_examples(body.get("example"), "body_text", nested=True), count, "body")
    if "HEADER" in checked:
        header = checked["HEADER"]
        form = str(header.get("format", "")).upper()
        if form not in HEADER_FORMATS:
            raise _invalid("header format must be TEXT, IMAGE, VIDEO, DOCUMENT or LOCATION")
        header["format"] = form
        if form == "TEXT":
            text = _text_field(header, "header", TEMPLATE_HEADER_MAX)
            if "\n" in text:
                raise _invalid("header text can't have new lines")
            count = _variable_count(text, "header")
            if count > 1:
                raise _invalid("a header can have at most one variable")
            if count:
                _need_examples(_examples(header.get("example"), "header_text", nested=False), count, "header")
    if "FOOTER" in checked:
        footer = _text_field(checked["FOOTER"], "footer", TEMPLATE_FOOTER_MAX)
        if "{{" in footer:
            raise _invalid("a footer can't have variables")
    if "BUTTONS" in checked:
        _check_buttons(checked["BUTTONS"].get("buttons"))
    order = ("HEADER", "BODY", "FOOTER", "BUTTONS")
    return [checked[kind] for kind in order if kind in checked]


def _check_buttons(buttons: Any) -> None:
    if not isinstance(buttons, list) or not buttons:
        raise _invalid("a BUTTONS component needs a list of buttons")
    if len(buttons) > TEMPLATE_BUTTONS_MAX:
        raise _invalid(f"a template can have at most {TEMPLATE_BUTTONS_MAX} buttons (it has {len(buttons)})",
                       "Too many buttons")
    groups: List[bool] = []
    for index, button in enumerate(buttons):
        kind = str(button.get("type", "")).upper() if isinstance(button, dict) else ""
        if kind not in BUTTON_TYPES:
            raise _invalid(f"button {index}: type must be QUICK_REPLY, URL or PHONE_NUMBER")
        button["type"] = kind
        text = button.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _invalid(f"button {index}: text is required")
        if len(text) > TEMPLATE_BUTTON_TEXT_MAX:
            raise _invalid(f"button {index}: text must be at most {TEMPLATE_BUTTON_TEXT_MAX} characters long "
                           f"(it has {len(text)})", "Button text too long")
        if kind == "URL":
            _check_url_button(index, button)
        elif kind == "PHONE_NUMBER":
            number = button.get("phone_number")
            if not isinstance(number, str) or not 0 < len(number) <= TEMPLATE_PHONE_MAX:
                raise _invalid(f"button {index}: phone_number is required (at most {TEMPLATE_PHONE_MAX} characters)")
        groups.append(kind == "QUICK_REPLY")
    if sum(b["type"] == "URL" for b in buttons) > TEMPLATE_URL_BUTTONS_MAX:
        raise _invalid(f"a template can have at most {TEMPLATE_URL_BUTTONS_MAX} URL buttons", "Too many URL buttons")
    if sum(b["type"] == "PHONE_NUMBER" for b in buttons) > TEMPLATE_PHONE_BUTTONS_MAX:
        raise _invalid("a template can have at most one phone number button")
    if sum(a != b for a, b in zip(groups, groups[1:])) > 1:
        raise _invalid("quick reply buttons must be grouped together (not mixed in between URL or phone number buttons)",
                       "Buttons are not grouped")


def _check_url_button(index: int, button: Dict[str, Any]) -> None:
    url = button.get("url")
    if not isinstance(url, str) or not re.match(r"https?://[^/\s{}]+", url):
        raise _invalid(f"button {index}: url must be an http(s) URL")
    if len(url) > TEMPLATE_URL_MAX:
        raise _invalid(f"button {index}: url must be at most {TEMPLATE_URL_MAX} characters long")
    found = _VARIABLE.findall(url)
    if len(found) > 1:
        raise _invalid(f"button {index}: a URL can have at most one variable")
    if found:
        if found[0] != "1" or not url.endswith("{{1}}") or url.count("{{") != 1:
            raise _invalid(f"button {index}: the URL's variable must be {{{{1}}}} at the end of the URL",
                           "Variable must be at the end of the URL")
        example = button.get("example")
        if not (isinstance(example, list) and len(example) == 1 and isinstance(example[0], str) and example[0]):
            raise _invalid(f"button {index}: a URL with a variable needs example: [\"<a full sample URL>\"]",
                           "Message template's examples missing", 2388043)


def _send_error(code: int, detail: str) -> GraphError:
    titles = {100: "Invalid parameter", 131008: "Required parameter is missing",
              131009: "Parameter value is not valid", 132000: "Number of parameters does not match the expected number of params",
              132001: "Template name does not exist in the translation", 132005: "Translated text too long",
              132012: "Parameter format does not match format in the created template",
              132018: "There was an issue with the parameters in your template."}
    return GraphError(code, f"(#{code}) {titles[code]}", details=detail)


def _parameter_text(parameter: Any, where: str) -> str:
    """The text a body/header/URL parameter puts in the message, checked as Meta checks it."""
    kind = parameter.get("type") if isinstance(parameter, dict) else None
    if kind == "text":
        value = parameter.get("text")
    elif kind in ("currency", "date_time"):
        value = (parameter.get(kind) or {}).get("fallback_value") if isinstance(parameter.get(kind), dict) else None
    else:
        raise _send_error(131009, f"{where}: parameter type {kind!r} is not a text, currency or date_time")
    if not isinstance(value, str) or not value.strip():
        raise _send_error(131008, f"{where}: a parameter's text is missing or empty")
    if "\n" in value or "\t" in value or "     " in value:
        raise _send_error(132018, f"{where}: Param text cannot have new-line/tab characters or more than 4 consecutive spaces")
    return value


def _fill(text: str, values: List[str]) -> str:
    return _NUMBERED.sub(lambda m: values[int(m.group(1)) - 1], text)


class Templates:
    """The WhatsApp Business Account's message templates, kept in memory."""

    def __init__(self) -> None:
        self.by_id: Dict[str, Template] = {}

    def create(self, body: Any, waba_id: str) -> Template:
        """POST /{waba_id}/message_templates: checked as Meta checks a submission; new ones are PENDING."""
        if not isinstance(body, dict):
            raise _invalid("expected a JSON object with name, language, category and components")
        name, language = body.get("name"), body.get("language")
        if not isinstance(name, str) or not TEMPLATE_NAME_RE.fullmatch(name):
            raise _invalid("name must be 1-512 lowercase letters, digits and underscores", "Invalid template name")
        if not isinstance(language, str) or not TEMPLATE_LANGUAGE_RE.fullmatch(language):
            raise _invalid("language must be a language code such as en, en_US or hi", "Invalid language")
        category = str(body.get("category") or "").upper()
        if category not in TEMPLATE_CATEGORIES:
            raise _invalid("category must be UTILITY, MARKETING or AUTHENTICATION", "Invalid category")
        if self.find(name, language) is not None:
            raise GraphError(100, f"(#100) Message template \"{name}\" already exists in {language}",
                             details=f"There is already {language} content for the template {name}. "
                                     "Create a new template or edit the existing one.",
                             subcode=2388024, user_title="Message template already exists")
        components = _check_components(body.get("components"))
        template = Template(str(1000000000000000 + next(_template_ids)), name, language, category, components, waba_id)
        self.by_id[template.id] = template
        return template

    def find(self, name: str, language: str) -> Optional[Template]:
        return next((t for t in self.by_id.values() if t.name == name and t.language == language), None)

    def listing(self, filters: Dict[str, str]) -> List[Dict[str, Any]]:
        """GET /{waba_id}/message_templates?name=&language=&status=&category= (exact matches)."""
        keys = ("name", "language", "status", "category")
        return [t.as_graph() for t in self.by_id.values()
                if all(not filters.get(k) or str(getattr(t, k)).lower() == filters[k].lower() for k in keys)]

    def delete(self, name: Optional[str], hsm_id: Optional[str]) -> int:
        """DELETE /{waba_id}/message_templates?name=[&hsm_id=]: every language of the name, or the one id."""
        doomed = [t.id for t in self.by_id.values() if t.name == name and (not hsm_id or t.id == hsm_id)]
        if not name or not doomed:
            raise GraphError(100, f"(#100) Message template \"{name}\" not found", details="no template with that name (and id)")
        for template_id in doomed:
            del self.by_id[template_id]
        return len(doomed)

    def decide(self, template_id: str, status: str, reason: Optional[str] = None) -> Template:
        """The reviewer's verdict (a sandbox hook): APPROVED or REJECTED (with a reason)."""
        template = self.by_id[template_id]
        template.status = status
        template.rejected_reason = (reason or "INVALID_FORMAT") if status == "REJECTED" else None
        return template

    def render(self, payload: Dict[str, Any], media: Optional[Dict[str, "StoredMedia"]] = None) -> Dict[str, Any]:
        """A template send, checked as Meta checks it: what the customer's phone shows."""
        name = payload.get("name")
        language = payload.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        _require(isinstance(name, str) and bool(name), "(#100) The parameter template['name'] is required.")
        _require(isinstance(code, str) and bool(code), "(#100) The parameter template['language']['code'] is required.")
        template = self.find(name, code)
        if template is None or template.status != "APPROVED":
            state = "not approved (" + template.status + ")" if template else "does not exist"
            raise _send_error(132001, f"template name ({name}) {state} in {code}")
        given: Dict[str, Any] = {}
        buttons: Dict[int, Dict[str, Any]] = {}
        components = payload.get("components") or []
        _require(isinstance(components, list), "(#100) Param template['components'] must be an array.")
        for component in components:
            kind = str(component.get("type", "")).lower() if isinstance(component, dict) else ""
            parameters = component.get("parameters") if isinstance(component, dict) else None
            _require(parameters is None or isinstance(parameters, list),
                     f"(#100) Param template['components'][{kind}]['parameters'] must be an array.")
            if kind in ("header", "body"):
                _require(kind not in given, f"(#100) Invalid parameter: a second {kind} component")
                given[kind] = parameters or []
            elif kind == "button":
                index, sub_type = component.get("index"), str(component.get("sub_type", "")).lower()
                _require(str(index).isdigit(), "(#100) Param template['components'][button]['index'] must be a number.")
                index = int(index)
                kinds = {v: k for k, v in BUTTON_TYPES.items()}
                buttons_of_template = template.buttons
                if (sub_type not in kinds or index >= len(buttons_of_template)
                        or buttons_of_template[index]["type"] != kinds[sub_type] or index in buttons):
                    raise _send_error(100, f"buttons: Button at index {index} of type {sub_type.replace('_', ' ').title().replace(' ', '')} does not exist")
                buttons[index] = {"sub_type": sub_type, "parameters": parameters or []}
            else:
                raise _send_error(100, f"components: unknown component type {component.get('type') if isinstance(component, dict) else component!r}")
        rendered: Dict[str, Any] = {"id": template.id, "name": template.name, "language": template.language,
                                    "category": template.category, "header": self._header(template, given.get("header"), media)}
        body_text = template.component("BODY")["text"]
        expected = _variable_count(body_text, "body")
        values = given.get("body") or []
        if len(values) != expected:
            raise _send_error(132000, f"body: number of localizable_params ({len(values)}) does not match the "
                                      f"expected number of params ({expected})")
        rendered["body"] = _fill(body_text, [_parameter_text(p, "body") for p in values])
        if len(rendered["body"]) > TEMPLATE_BODY_MAX:
            raise _send_error(132005, f"body: the text with its parameters is longer than {TEMPLATE_BODY_MAX} characters")
        rendered["footer"] = (template.component("FOOTER") or {}).get("text")
        rendered["buttons"] = [self._button(index, button, buttons.get(index)) for index, button in enumerate(template.buttons)]
        return rendered

    @staticmethod
    def _header(template: Template, parameters: Optional[List[Any]],
                media: Optional[Dict[str, "StoredMedia"]]) -> Optional[Dict[str, Any]]:
        header = template.component("HEADER")
        if header is None:
            if parameters:
                raise _send_error(132000, f"header: number of localizable_params ({len(parameters)}) does not match "
                                          "the expected number of params (0)")
            return None
        form, parameters = header["format"], parameters or []
        if form == "TEXT":
            expected = _variable_count(header["text"], "header")
            if len(parameters) != expected:
                raise _send_error(132000, f"header: number of localizable_params ({len(parameters)}) does not match "
                                          f"the expected number of params ({expected})")
            return {"format": "TEXT", "text": _fill(header["text"], [_parameter_text(p, "header") for p in parameters])}
        kind = form.lower()
        if len(parameters) != 1 or not isinstance(parameters[0], dict) or parameters[0].get("type") != kind \
                or not isinstance(parameters[0].get(kind), dict):
            raise _send_error(132012, f"header: Format mismatch, expected {form}")
        value = parameters[0][kind]
        if kind != "location":
            _require(bool(value.get("id") or value.get("link")), f"(#100) The parameter header {kind}['link'] is required.")
            if value.get("id") and media is not None:
                _require(str(value["id"]) in media, f"(#100) Invalid parameter: media id {value['id']} not found")
        return {"format": form, kind: value}

    @staticmethod
    def _button(index: int, button: Dict[str, Any], sent: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        shown: Dict[str, Any] = {"index": index, "type": button["type"], "text": button["text"]}
        parameters = (sent or {}).get("parameters") or []
        if button["type"] == "QUICK_REPLY":
            payload = parameters[0].get("payload") if len(parameters) == 1 and isinstance(parameters[0], dict) \
                and parameters[0].get("type") == "payload" else None
            if sent is not None and (not isinstance(payload, str) or not payload):
                raise _send_error(131009, f"buttons: Button at index {index} of type QuickReply needs one payload parameter")
            shown["payload"] = payload if sent is not None else button["text"]  # no payload: WhatsApp echoes the text
        elif button["type"] == "URL":
            url = button["url"]
            if "{{1}}" in url:
                if sent is None:
                    raise _send_error(131008, f"buttons: Button at index {index} of type Url requires a parameter")
                if len(parameters) != 1:
                    raise _send_error(132000, f"buttons: number of localizable_params ({len(parameters)}) does not "
                                              f"match the expected number of params (1) of the Url button at index {index}")
                url = url.replace("{{1}}", _parameter_text(parameters[0], f"button {index}"))
                if len(url) > TEMPLATE_URL_MAX:
                    raise _send_error(131009, f"buttons: the URL of the button at index {index} is too long")
            elif sent is not None:
                raise _send_error(100, f"buttons: Button at index {index} of type Url has no variable to fill")
            shown["url"] = url
        else:
            shown["phone_number"] = button.get("phone_number")
        return shown


class Outbox:
    """What the sandbox received from the bot, and failures it was told to return."""

    def __init__(self) -> None:
        self.messages: List[Dict[str, Any]] = []
        self.failures: List[int] = []          # error codes to answer the next sends with
        self.status_failures: List[int] = []   # accepted, then a "failed" status webhook with this code
        self.media: Dict[str, StoredMedia] = {}
        self.read: List[str] = []              # message ids the bot marked as read
        self.outage_until = 0.0                # time.monotonic() until which every send gets HTTP 503
        self.recipient_failures: Dict[str, int] = {}  # number -> code: every send to it accepted, then "failed"
        self.templates = Templates()

    def accept(self, body: Any) -> Dict[str, Any]:
        if isinstance(body, dict) and body.get("status") == "read":
            _require(bool(body.get("message_id")), "(#100) The parameter message_id is required.")
            self.read.append(str(body["message_id"]))
            return {"success": True}
        if time.monotonic() < self.outage_until:
            raise GraphError(2, "Service temporarily unavailable (sandbox outage)", 503)
        recipient = validate(body, self.media)
        rendered = self.templates.render(body["template"], self.media) if body.get("type") == "template" else None
        if self.failures:
            code = self.failures.pop(0)
            raise GraphError(code, f"sandbox failure {code} as requested", 400 if code != 190 else 401)
        wamid = f"wamid.sandbox{RUN}.{next(_ids)}"  # unique across restarts, as WhatsApp's are
        entry = {"id": wamid, "to": recipient, "at": time.time(), "message": body}
        if rendered is not None:
            entry["template"] = rendered  # what the phone shows: body with its parameters, buttons with payloads/URLs
        self.messages.append(entry)
        return {"messaging_product": "whatsapp", "contacts": [{"input": recipient, "wa_id": recipient}],
                "messages": [{"id": wamid}]}

    def status_failure(self, recipient: str) -> Optional[int]:
        """The code an accepted send to `recipient` fails with (a "failed" status instead of delivered), if any."""
        if self.status_failures:
            return self.status_failures.pop(0)
        return self.recipient_failures.get(re.sub(r"\D", "", recipient))

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
