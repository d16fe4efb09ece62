"""Entities a card customer types, found by rules rather than guessed by a model.

Card digits, amounts, months, dates and reference numbers have fixed shapes, and getting
them wrong costs money ("8851 wala" read as a rating, "around 4.5k" not read at all), so they
are matched by patterns that are tested one by one (tests/test_card_entities.py). The
actions still check every value against the customer's own cards and transactions.

Values are the text as typed (the actions parse "4.5k", "last month" or "3rd" themselves),
except reference numbers, which are normalised ("dsp-261101-abcd" -> "DSP261101ABCD").
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterator, List, Optional, Text, Tuple

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.extractors.extractor import EntityExtractorMixin
from rasa.shared.nlu.constants import ENTITIES, TEXT
from rasa.shared.nlu.training_data.message import Message

MONTH_NAMES = (
    "january|february|febuary|march|april|may|june|july|august|september|october|november|december|"
    "jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec"
)
_RELATIVE_MONTH = (
    r"(?:last|previous|prev|this|current|next|coming|pichle|pichla|pichhle|agle|is)\s+(?:month|mahine|mahina|mahiney)"
    r"(?:'?s)?"
)
MONTH_RE = re.compile(
    rf"\b(?:(?:{MONTH_NAMES})(?:\s*[-' ]\s*(?:20)?\d\d)?|{_RELATIVE_MONTH}|(?:0?[1-9]|1[0-2])[/-]20\d\d)\b", re.I)
# "may" is also a verb: only a month next to a year, a statement word, or on its own.
_MAY_AS_MONTH = re.compile(r"\bmay\b(?=\s*(?:[-' ]\s*(?:20)?\d\d|\s+(?:statement|bill|ka|ki|month)\b|\s*$))", re.I)

_WEEKDAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday|mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun"
DATE_RE = re.compile(
    r"\b(?:"
    r"(?:day before yesterday|yesterday|today|kal|parso|aaj)"
    rf"|(?:last|this|past|pichle)\s+(?:{_WEEKDAYS})"
    r"|\d+\s+(?:days?|weeks?|din|hafte)\s+(?:ago|back|pehle)"
    r"|(?:last|pichle)\s+(?:week|hafte)"
    rf"|(?:on\s+)?(?:the\s+)?(?:[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?(?:\s+(?:of\s+)?(?:{MONTH_NAMES}))"
    r"|(?:on\s+)?(?:the\s+)?(?:[1-9]|[12]\d|3[01])(?:st|nd|rd|th)\b"
    r"|(?:[0-2]?\d|3[01])[/.-](?:0?[1-9]|1[0-2])(?:[/.-](?:20)?\d\d)?"
    rf"|(?:{MONTH_NAMES})\s+(?:[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?"
    r")\b", re.I)

_NUMBER = r"\d[\d,]*(?:\.\d{1,2})?(?:\s*(?:k|lakhs?|lacs?|crores?|cr)\b)?"
AMOUNT_RE = re.compile(
    rf"(?:(?:rs\.?|inr|₹)\s*{_NUMBER}"                                     # Rs 4,500 / ₹1200 / rs.2k
    r"|\b\d[\d,]*(?:\.\d{1,2})?\s*(?:k\b|lakhs?\b|lacs?\b|crores?\b|cr\b|rs\b\.?|rupees?\b|rupay\w*|inr\b|/-)"  # 4.5k / 1200 rs
    rf"|\b(?:around|about|approx\.?|approximately|roughly|almost|nearly|lagbhag|karib|over|above)\s+{_NUMBER}"
    rf"|(?<![\d/.-])\b\d{{1,3}}(?:,\d\d)*,\d{{3}}(?:\.\d{{1,2}})?\b(?![/.-]\d)"  # 2,999 / 1,20,000
    r"|\b(?:charged|paid|pay|debited|deducted|cut|kata|kate|amount|bill|of|for)\s+(?!(?:19|20)\d\d\b)\d{4}(?:\.\d{1,2})?\b(?![/.:-]\d)"
    rf"|(?<![\d/.-])\b(?!(?:19|20)\d\d\b)(?:\d{{2,3}}|\d{{5,7}})(?:\.\d{{1,2}})?\b(?![/.:-]\d)(?!\s*(?:st|nd|rd|th|days?|weeks?|months?|din|points?|pts)\b)"
    r")",
    re.I)
_AMOUNT_NUMBER = re.compile(r"\d[\d,]*(?:\.\d{1,2})?\s*(?:k|lakhs?|lacs?|crores?|cr)?", re.I)

CARD_RE = re.compile(
    r"(?:\b(?:ending|ends|end|last\s*(?:4|four)(?:\s*digits?)?|card(?:\s*(?:no\.?|number))?|xx+|\*+)"
    r"\s*(?:in|with|is|:|-|#)?\s*(?P<a>\d{4})\b"
    r"|(?<![\d,.])(?P<b>\d{4})\s*(?:wala|wali|wale|waala|waali|one|card|vala|vali)\b"
    r"|^\s*(?P<c>\d{4})\s*$)", re.I)
_YEAR = re.compile(r"^(?:19|20)\d\d$")

REFERENCE_RE = re.compile(r"\b(?P<prefix>DSP|BLK|LMT|CBK|RDM|RPL|ADR|EML|CLS)[\s-]?(?P<date>\d{6})[\s-]?(?P<tail>[A-Z0-9]{4})\b", re.I)
# A reference the customer read from elsewhere ("ref no 4471823", "SR#88231"): kept, so the bot
# can say it found nothing under it rather than not understanding.
OTHER_REFERENCE_RE = re.compile(
    r"\b(?:ref(?:erence)?|sr|ticket|complaint|request|case)\s*(?:no\.?|number|num|id|#)?\s*[:#-]?\s*"
    r"(?P<ref>(?=[A-Z0-9/-]*\d)[A-Z0-9][A-Z0-9/-]{4,24})\b", re.I)


def _spans(pattern: "re.Pattern[str]", text: Text) -> Iterator[Tuple[int, int, Text]]:
    for match in pattern.finditer(text):
        if match.group(0).strip():
            yield match.start(), match.end(), match.group(0)


_MONTH_WORDS = MONTH_NAMES.split("|")


def month_typo(word: Text) -> Optional[Text]:
    """'agust' -> 'august', 'decmber' -> 'december' (long words only, one or two slips)."""
    import difflib

    if len(word) < 5 or word.lower() in _MONTH_WORDS:
        return None
    close = difflib.get_close_matches(word.lower(), [m for m in _MONTH_WORDS if len(m) > 4], n=1, cutoff=0.8)
    return close[0] if close else None


def find_months(text: Text) -> List[Tuple[int, int, Text]]:
    found = []
    for match in re.finditer(r"[A-Za-z]{5,}", text):
        fixed = month_typo(match.group(0))
        if fixed:
            found.append((match.start(), match.end(), fixed))
    for start, end, value in _spans(MONTH_RE, text):
        if value.lower().startswith("may") and not _MAY_AS_MONTH.match(text, start):
            continue
        if value.lower() in ("mar", "sep", "dec", "jan") and re.match(r"\s*(?:ko|ki|ka|de)\b", text[end:]) is None \
                and len(text.split()) > 6 and not re.search(r"statement|bill|month", text, re.I):
            continue  # a stray "mar" in a long Hinglish sentence ("mar gaya") is not a month
        found.append((start, end, value.strip()))
    return found


def find_card_last4(text: Text) -> List[Tuple[int, int, Text]]:
    found = []
    for match in CARD_RE.finditer(text):
        name = next(n for n in ("a", "b", "c") if match.group(n))
        value = match.group(name)
        if _YEAR.match(value) and re.search(rf"(?:{MONTH_NAMES})\W*{value}", text, re.I):
            continue  # "december 2025" names a year, not a card
        found.append((match.start(name), match.end(name), value))
    return found


def find_amounts(text: Text, taken: List[Tuple[int, int]]) -> List[Tuple[int, int, Text]]:
    found = []
    for start, end, value in _spans(AMOUNT_RE, text):
        number = _AMOUNT_NUMBER.search(value)
        if number is None:
            continue
        a, b = start + number.start(), start + number.end()
        if any(a < t_end and t_start < b for t_start, t_end in taken):
            continue
        if re.fullmatch(r"\d{4}", number.group(0).strip()) and re.search(r"(?:wala|wali|ending|card)", value, re.I):
            continue
        found.append((start, end, value.strip()))
    return found


def find_references(text: Text) -> List[Tuple[int, int, Text]]:
    found = [(m.start(), m.end(), (m.group("prefix") + m.group("date") + m.group("tail")).upper())
             for m in REFERENCE_RE.finditer(text)]
    for match in OTHER_REFERENCE_RE.finditer(text):
        if any(match.start() < e and s < match.end() for s, e, _ in found):
            continue
        found.append((match.start("ref"), match.end("ref"), re.sub(r"[/-]", "", match.group("ref").upper())))
    return found


def extract(text: Text) -> List[Dict[Text, Any]]:
    """Every rule-based entity in `text` (entity, value, start, end)."""
    entities: List[Dict[Text, Any]] = []
    taken: List[Tuple[int, int]] = []

    def add(name: Text, spans: List[Tuple[int, int, Text]]) -> None:
        for start, end, value in spans:
            if any(start < t_end and t_start < end for t_start, t_end in taken):
                continue
            taken.append((start, end))
            entities.append({"entity": name, "value": value, "start": start, "end": end,
                             "confidence_entity": 1.0, "extractor": "CardEntityExtractor"})

    add("reference_id", find_references(text))
    add("card_last4", find_card_last4(text))
    add("amount", find_amounts(text, taken))
    add("date", list(_spans(DATE_RE, text)))
    add("month", find_months(text))
    return sorted(entities, key=lambda e: e["start"])


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR, is_trainable=False)
class CardEntityExtractor(GraphComponent, EntityExtractorMixin):
    """Adds card_last4, amount, month, date and reference_id entities found by rules."""

    @classmethod
    def create(cls, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource,
               execution_context: ExecutionContext) -> "CardEntityExtractor":
        return cls()

    def process(self, messages: List[Message]) -> List[Message]:
        for message in messages:
            text = message.get(TEXT) or ""
            if not text or text.startswith("/"):
                continue
            found = extract(text)
            if found:
                message.set(ENTITIES, (message.get(ENTITIES) or []) + found, add_to_output=True)
        return messages
