"""The NLU guard that keeps empty and pasted-document messages away from the classifiers."""
from rasa.shared.nlu.training_data.message import Message

from components.message_guard import MessageGuard


def classify(text: str, intent: str = "block_card", metadata: dict = None, entities=None) -> dict:
    message = Message(data={"text": text, "intent": {"name": intent, "confidence": 0.97},
                            "entities": [{"entity": "card_last4", "value": "1234"}] if entities is None else entities,
                            "metadata": metadata or {}})
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


def test_a_photo_without_a_caption_is_shared_media_not_a_goodbye():
    photo = {"attachment": {"media_id": "m-1", "mime_type": "image/png"}}
    assert classify("", metadata=photo)["intent"] == {"name": "share_media", "confidence": 1.0}
    assert classify("", metadata={})["intent"]["name"] == "nlu_fallback"


def test_a_caption_describes_its_file_unless_it_reports_a_charge():
    photo = {"attachment": {"media_id": "m-2", "mime_type": "image/jpeg"}}
    assert classify("my PAN card", intent="block_card", metadata=photo)["intent"]["name"] == "share_media"
    assert classify("electricity bill for the new flat", intent="check_balance", metadata=photo)["intent"]["name"] \
        == "share_media"
    assert classify("swiggy charged me twice", intent="report_dispute", metadata=photo)["intent"]["name"] \
        == "report_dispute"                                   # the screenshot that starts a dispute


def test_a_short_answer_the_classifier_declined_is_an_answer():
    card = [{"entity": "card_last4", "value": "6392"}]
    assert classify("6392 wala", intent="out_of_scope", entities=card)["intent"]["name"] == "inform"
    assert classify("the other one", intent="nlu_fallback", entities=[])["intent"]["name"] == "inform"
    assert classify("and the other one?", intent="out_of_scope", entities=[])["intent"]["name"] == "inform"
    # a real out-of-scope question that happens to hold a number stays out of scope
    long_question = "what is the interest rate on a gold loan of 50000 for my daughter"
    assert classify(long_question, intent="out_of_scope", entities=[{"entity": "amount", "value": "50000"}]
                    )["intent"]["name"] == "out_of_scope"


def test_stop_and_start_are_taken_whole_whatever_the_classifier_says():
    for text in ("STOP", "Stop.", "stop!", "UNSUBSCRIBE", "band karo", "मत भेजो", "बंद करो"):
        data = classify(text, intent="cancel", entities=[])
        assert data["intent"] == {"name": "opt_out", "confidence": 1.0}, text
    for text in ("START", "start", "chalu karo", "शुरू करो"):
        assert classify(text, intent="greet", entities=[])["intent"]["name"] == "opt_in", text
    # a sentence with the word in it is the classifier's to read
    assert classify("stop my card it was stolen", intent="block_card", entities=[])["intent"]["name"] == "block_card"
    assert classify("when does the offer start", intent="faq", entities=[])["intent"]["name"] == "faq"


def test_a_plain_request_to_stop_is_a_stop_however_it_is_put_and_never_a_start():
    for text in ("reminders मत भेजो", "मुझे reminder मत भेजो", "updates मत भेजो", "रोक दो", "ＳＴＯＰ",
                 "please stop sending me messages", "don't send reminders", "mujhe reminder mat bhejo",
                 "payment reminder mat bhejo", "messages band karo", "no more reminders", "stopp karo ye reminders",
                 "stop kar do messages"):
        assert classify(text, intent="opt_in", entities=[])["intent"]["name"] == "opt_out", text
    for text in ("card band karo", "कार्ड बंद करो", "card stop karo", "stop karo mera card", "stop the payment of 500",
                 "stop my card it was stolen",
                 "I want to stop my card", "please don't block my card"):
        assert classify(text, intent="block_card", entities=[])["intent"]["name"] == "block_card", text
