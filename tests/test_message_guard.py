"""The NLU guard that keeps empty and pasted-document messages away from the classifiers."""
from rasa.shared.nlu.training_data.message import Message

from components.message_guard import MessageGuard


def classify(text: str) -> dict:
    message = Message(data={"text": text, "intent": {"name": "block_card", "confidence": 0.97},
                            "entities": [{"entity": "card_last4", "value": "1234"}]})
    MessageGuard({"max_chars": 1000}).process([message])
    return message.data


def test_over_long_and_empty_messages_become_not_understood():
    for text in ("x" * 5000, "", "   \n "):
        data = classify(text)
        assert data["intent"] == {"name": "nlu_fallback", "confidence": 1.0}
        assert data["entities"] == [] and data["intent_ranking"][0]["name"] == "nlu_fallback"


def test_ordinary_messages_and_button_payloads_are_left_alone():
    assert classify("block my card")["intent"]["name"] == "block_card"
    assert classify("/block_card" + "x" * 2000)["intent"]["name"] == "block_card"
