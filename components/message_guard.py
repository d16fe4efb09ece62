"""Marks messages no classifier should be trusted with (empty, or far too long) as not understood,
and a photo or document as `share_media` (unless its caption starts a dispute: the screenshot).

A 5,000-character paste or an empty message must not be read as, say, a request to block a
card. This component runs after the FallbackClassifier and sets `nlu_fallback` with full
confidence, so the dialogue answers with a clear request to rephrase or shorten.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Dict, List, Optional, Text

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.shared.constants import DEFAULT_NLU_FALLBACK_INTENT_NAME
from rasa.shared.nlu.constants import ENTITIES, INTENT, INTENT_RANKING_KEY, TEXT
from rasa.shared.nlu.training_data.message import Message

MAX_CHARS_KEY = "max_chars"
MEDIA_INTENT = "share_media"  # a photo or document with no caption: kept, never read as "bye"
# A photo or document whose caption asks for one of these starts it (the screenshot of a dispute);
# any other caption ("my PAN card", "bill for the new flat") describes the file, which is kept.
CAPTION_REQUESTS = {"report_dispute"}
# A short message that is mostly an answer ("6392 wala", "1117", "agust", "the other one") is
# an answer, whatever the classifier thought of so few words.
ANSWER_ENTITIES = {"card_last4", "month", "amount", "reference_id", "date", "merchant", "transaction_id"}
STRONG_ANSWERS = {"card_last4", "month", "reference_id", "transaction_id"}  # "6392 wala", "agust", a reference
ANSWER_WORDS = 5
# WhatsApp's consent keywords work whatever a classifier thinks: the whole message is the word.
# STOP (and its Hindi / Hinglish forms) opts out of everything the bank sends first; START opts in.
CONSENT_WORDS = {
    "opt_out": {"stop", "stop all", "stopall", "unsubscribe", "unsubscribe me", "opt out", "optout", "opt-out",
                "stop messages", "stop reminders", "band", "band karo", "band kar do", "bandh karo", "mat bhejo",
                "message mat bhejo", "messages mat bhejo", "बंद", "बंद करो", "बंद कर दो", "मत भेजो", "रोको"},
    "opt_in": {"start", "subscribe", "opt in", "optin", "opt-in", "start messages", "start reminders",
               "shuru karo", "chalu karo", "chaalu karo", "शुरू", "शुरू करो", "चालू करो"},
}
UNSURE = 0.6  # only a classifier that was unsure is overruled; a confident "out of scope" stands
LATEST = re.compile(r"^\W*(?:(?:just|only|show|give|send|tell)\s+(?:me\s+)?)?(?:the\s+)?"
                    r"(?:latest|newest|most recent|last)(?:\s+one)?(?:\s+(?:please|pls))?\W*$", re.I)
CHOOSING = re.compile(r"^\W*(?:(?:and|aur|n|what about|how about|same for|ok|okay)\s+)?(?:for\s+)?(?:the\s+)?"
                      r"(?:other|another|dusr[aei]|doosr[aei]|second|2nd|first|1st|pehl[aei])"
                      r"(?:\s+(?:one|card|wala|wali|vala|vali))?(?:\s+(?:too|also|bhi|please|pls))?\W*$", re.I)


# "reminders mat bhejo", "मुझे updates मत भेजो", "stop sending me messages", "रोक दो": a request to stop,
# however it is put; a classifier that read one of these as START (it has happened) is overruled
STOP_PHRASE = re.compile(
    r"(?:\b(?:mat|mt|na|nahi|nahin)\s+(?:bhej|bhejo|bhejna|bhejiye|bhejen|karo|kro)\b|मत\s*(?:भेज|करो)|नहीं\s*(?:भेज|चाहिए)"
    r"|\b(?:band|bandh|bnd)\s*(?:karo|kro|kar\s*do|kardo|kijiye|ho)\b|बंद\s*(?:करो|कर\s*दो|कीजिए|करें)|रोक\s*(?:दो|दें|दीजिए)|रोको"
    r"|\bsto+p+\s*(?:karo|kro|kar\s*do|kardo|kijiye|kar\s*dijiye)\b|\bsto+p+\s*करो"
    r"|^\W*(?:please\s+|pls\s+|plz\s+)?(?:sto+p+|unsubscribe|opt\s*-?\s*out)\b(?!.*\b(?:card|payment|transaction|charge|debit)\b)"
    r"|\b(?:sto+p+|quit|cease)\s+(?:sending|messaging|texting|spamming|the\s+(?:messages|reminders|updates))\b"
    r"|\b(?:don'?t|do\s+not|dont|never|no\s+more)\s+(?:send|message|text|remind|whatsapp)\w*\b"
    r"|\bno\s+more\s+(?:messages|reminders|updates|whatsapps?)\b)",
    re.I)
ABOUT_MONEY = re.compile(r"\b(?:card|cards|transaction|txn|payment|pay|charge|debit|account|upi|emi|loan|limit|autopay|"
                         r"mandate|standing)\b|कार्ड|भुगतान|खाता", re.I)
NEGATION = re.compile(r"\b(?:mat|band|bandh|stop|don'?t|dont|do\s+not|no\s+more|never|nahi|nahin)\b|मत|बंद|रोक|नहीं",
                      re.I)


def consent_intent(text: Text, classified: Optional[Text]) -> Optional[Text]:
    """opt_out / opt_in when the message is a consent keyword or a plain request to stop, else None.
    Full-width and other look-alike letters count as the letters they look like (NFKC)."""
    plain = unicodedata.normalize("NFKC", text or "").lower()
    keyword = re.sub(r"[\s.!]+", " ", plain).strip()
    for name, words in CONSENT_WORDS.items():
        if keyword in words:
            return name
    about = re.sub(r"\b(?:payment|bill|due|card)\s+(?:reminders?|updates?|alerts?|messages?)\b", "reminders", keyword)
    if len(keyword) <= 80 and STOP_PHRASE.search(keyword) and not ABOUT_MONEY.search(about):
        return "opt_out"  # ("card band karo" blocks a card: not a STOP)
    if classified == "opt_in" and NEGATION.search(keyword):
        return "opt_out"  # "reminders मत भेजो" is never a START
    return None


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER, is_trainable=False)
class MessageGuard(GraphComponent):
    """Overrides the intent of empty or over-long messages with `nlu_fallback`."""

    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        return {MAX_CHARS_KEY: 1000}

    def __init__(self, config: Dict[Text, Any]) -> None:
        self.max_chars = int(config[MAX_CHARS_KEY])

    @classmethod
    def create(cls, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource,
               execution_context: ExecutionContext) -> "MessageGuard":
        return cls(config)

    @staticmethod
    def _is_bare_answer(message: Message, text: Text) -> bool:
        intent = (message.get(INTENT) or {}).get("name")
        confidence = (message.get(INTENT) or {}).get("confidence") or 0.0
        if intent not in ("out_of_scope", DEFAULT_NLU_FALLBACK_INTENT_NAME, "rate", None):
            return False
        if CHOOSING.match(text) or LATEST.match(text):
            return True
        found = {e.get("entity") for e in message.get(ENTITIES) or []}
        if len(text.split()) > ANSWER_WORDS:
            return False
        if found & STRONG_ANSWERS:
            return True
        return bool(found & ANSWER_ENTITIES) and not (intent == "out_of_scope" and confidence >= UNSURE)

    def process(self, messages: List[Message]) -> List[Message]:
        for message in messages:
            text = (message.get(TEXT) or "").strip()
            if text.startswith("/"):
                continue  # a button payload: the intent is given, not guessed
            attachment = (message.get("metadata") or {}).get("attachment")
            has_media = isinstance(attachment, dict) and attachment.get("media_id")
            if has_media and (not text or (message.get(INTENT) or {}).get("name") not in CAPTION_REQUESTS):
                media = {"name": MEDIA_INTENT, "confidence": 1.0}
                message.set(INTENT, media, add_to_output=True)
                message.set(INTENT_RANKING_KEY, [media], add_to_output=True)
                message.set(ENTITIES, [], add_to_output=True)
                continue
            consent = consent_intent(text, (message.get(INTENT) or {}).get("name"))
            if consent:
                chosen = {"name": consent, "confidence": 1.0}
                message.set(INTENT, chosen, add_to_output=True)
                message.set(INTENT_RANKING_KEY, [chosen], add_to_output=True)
                message.set(ENTITIES, [], add_to_output=True)
                continue
            if text and len(text) <= self.max_chars and self._is_bare_answer(message, text):
                inform = {"name": "inform", "confidence": 0.9}
                message.set(INTENT, inform, add_to_output=True)
                message.set(INTENT_RANKING_KEY, [inform] + [r for r in message.get(INTENT_RANKING_KEY) or []
                                                            if r.get("name") != "inform"], add_to_output=True)
                continue
            if not text or len(text) > self.max_chars:
                fallback = {"name": DEFAULT_NLU_FALLBACK_INTENT_NAME, "confidence": 1.0}
                message.set(INTENT, fallback, add_to_output=True)
                message.set(INTENT_RANKING_KEY, [fallback], add_to_output=True)
                message.set(ENTITIES, [], add_to_output=True)
        return messages
