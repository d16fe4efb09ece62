"""Marks messages no classifier should be trusted with (empty, or far too long) as not understood,
and a photo or document sent without a caption as `share_media`.

A 5,000-character paste or an empty message must not be read as, say, a request to block a
card. This component runs after the FallbackClassifier and sets `nlu_fallback` with full
confidence, so the dialogue answers with a clear request to rephrase or shorten.
"""
from __future__ import annotations

from typing import Any, Dict, List, Text

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.shared.constants import DEFAULT_NLU_FALLBACK_INTENT_NAME
from rasa.shared.nlu.constants import ENTITIES, INTENT, INTENT_RANKING_KEY, TEXT
from rasa.shared.nlu.training_data.message import Message

MAX_CHARS_KEY = "max_chars"
MEDIA_INTENT = "share_media"  # a photo or document with no caption: kept, never read as "bye"


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

    def process(self, messages: List[Message]) -> List[Message]:
        for message in messages:
            text = (message.get(TEXT) or "").strip()
            if text.startswith("/"):
                continue  # a button payload: the intent is given, not guessed
            attachment = (message.get("metadata") or {}).get("attachment")
            if not text and isinstance(attachment, dict) and attachment.get("media_id"):
                media = {"name": MEDIA_INTENT, "confidence": 1.0}
                message.set(INTENT, media, add_to_output=True)
                message.set(INTENT_RANKING_KEY, [media], add_to_output=True)
                message.set(ENTITIES, [], add_to_output=True)
                continue
            if not text or len(text) > self.max_chars:
                fallback = {"name": DEFAULT_NLU_FALLBACK_INTENT_NAME, "confidence": 1.0}
                message.set(INTENT, fallback, add_to_output=True)
                message.set(INTENT_RANKING_KEY, [fallback], add_to_output=True)
                message.set(ENTITIES, [], add_to_output=True)
        return messages
