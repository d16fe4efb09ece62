"""parse_webhook on bodies Meta signs but nobody would write: it never raises, it keeps only what is
safe to store and show, and one malformed part costs that part only."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.whatsapp.inbound import TEXT_LIMIT, parse_webhook
from tests.whatsapp.test_pieces import envelope, message
from tests.whatsapp.test_webhook_fuzz import JSON, near_valid_webhooks

PHONE_ID = "1111"
UNSTORABLE = re.compile(r"[\x00-\x08\x0b-\x1f\ud800-\udfff]")


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)


@settings(max_examples=300, deadline=None, database=None,  # (the webhook fuzz posts 500 more)
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payload=st.one_of(near_valid_webhooks().map(lambda pair: pair[0]), JSON))
def test_any_json_value_is_read_without_raising_into_safe_bounded_values(payload):
    webhook = parse_webhook(payload, PHONE_ID)
    for inbound in webhook.messages:
        assert 0 < len(inbound.message_id) <= 256 and isinstance(inbound.timestamp, int)
        assert re.fullmatch(r"[0-9]{5,20}", inbound.sender) and inbound.reply_by == "to" \
            or re.fullmatch(r"[A-Z]{2}\.[A-Za-z0-9]{1,128}", inbound.sender) and inbound.reply_by == "recipient"
        assert len(inbound.text) <= TEXT_LIMIT
        assert not any(UNSTORABLE.search(text) for text in strings([inbound.text, inbound.metadata()]))
    for status in webhook.statuses:
        assert 0 < len(status.message_id) <= 256 and isinstance(status.timestamp, int)
        assert all(error["code"] is None or isinstance(error["code"], int) for error in status.errors)


def good(mid="wamid.good"):
    return message("text", {"body": "what's my balance"}, mid)


@pytest.mark.parametrize("odd", [
    {"from": "919800000002", "id": "wamid.x", "type": "text", "text": "my words"},
    {"from": "919800000002", "id": "wamid.x", "type": "interactive", "interactive": {"button_reply": "/pay"}},
    {"from": "919800000002", "id": {"wamid": 1}, "type": "text", "text": {"body": "my words"}},
    {"from": "919800000002", "id": ["wamid.x"], "type": "text", "text": {"body": "my words"}},
    {"from": "919800000002", "id": "w" * 257, "type": "text", "text": {"body": "my words"}},
    {"from": "919800000002", "id": "wamid.x", "type": "text", "text": {"body": ["hi"]}},
    {"from": "+91 98000 00002", "id": "wamid.x", "type": "text", "text": {"body": "my words"}},
    {"from": ["919800000002"], "id": "wamid.x", "type": "text", "text": {"body": "my words"}},
    {"from_user_id": "not a user id", "id": "wamid.x", "type": "text", "text": {"body": "my words"}},
    "a string", 42, None, [],
])
def test_a_malformed_message_is_reported_and_skipped_and_the_good_one_kept(odd):
    webhook = parse_webhook(envelope(odd, good()), PHONE_ID)
    assert [m.message_id for m in webhook.messages] == ["wamid.good"] and len(webhook.problems) == 1
    assert "9800000002" not in webhook.problems[0] and "words" not in webhook.problems[0]  # problems are logged


@pytest.mark.parametrize("value", [
    ["a list"], "a string", {"metadata": "a string", "messages": [good()]},
    {"metadata": {"phone_number_id": PHONE_ID}, "messages": {"0": good()}},
])
def test_a_change_of_an_odd_shape_is_reported_and_the_next_change_still_read(value):
    payload = envelope(good("wamid.next"))
    payload["entry"].insert(0, {"changes": [{"field": "messages", "value": value}, "not a change"]})
    payload["entry"].insert(0, "not an entry")
    webhook = parse_webhook(payload, PHONE_ID)
    assert [m.message_id for m in webhook.messages] == ["wamid.next"] and len(webhook.problems) == 3


def test_odd_parts_of_a_good_message_are_left_out_not_the_message():
    contacts = ["odd", {"wa_id": ["919800000001"]}, {"wa_id": 919800000001, "profile": {"name": "Ananya\x00"}}]
    odd = {"from": 919800000001, "id": 12345, "timestamp": 1795500000.5, "type": "text",
           "text": {"body": "hi\x00\x1b[31m\tthere\r\nok \ud800"}, "context": "wamid.menu"}
    photo = message("image", {"id": 77, "mime_type": {"x": 1}, "caption": ["receipt"]}, "wamid.photo")
    place = message("location", {"latitude": float("nan"), "longitude": 10 ** 400, "name": 7}, "wamid.place")
    webhook = parse_webhook(envelope(odd, photo, place, contacts=contacts), PHONE_ID)
    text, image, location = webhook.messages
    assert (text.message_id, text.sender, text.timestamp, text.context_id) == ("12345", "919800000001", 0, None)
    assert text.text == "hi[31m\tthere\nok " and text.profile_name == "Ananya"
    assert image.attachment["media_id"] == "77" and image.attachment["mime_type"] is None and image.text == ""
    assert location.attachment == {"kind": "location", "latitude": None, "longitude": None, "name": None,
                                   "address": None}
    assert len(webhook.problems) == 2  # the contact that is not an object, the context that is not one


def test_long_text_is_cut_to_whatsapps_limit_with_no_half_card_number_left():
    card = "4532 7781 0093 4821"
    body = "x" * (TEXT_LIMIT - 10) + " " + card + " and more" * 1000
    [inbound] = parse_webhook(envelope(message("text", {"body": body}, "wamid.long")), PHONE_ID).messages
    assert len(inbound.text) == TEXT_LIMIT and "4532" not in inbound.text and inbound.hidden == ("card number",)
    assert parse_webhook(envelope(message("text", {"body": body}, "wamid.long")), PHONE_ID).problems == [
        f"message wamid.long: text longer than {TEXT_LIMIT} characters cut"]


def test_statuses_are_read_one_by_one():
    statuses = [{"id": ["wamid.a"], "status": "read"}, "odd", {"id": "wamid.b", "status": {"read": 1}},
                {"id": "wamid.out", "status": "failed", "timestamp": "99999999999",
                 "errors": [{"code": "131026", "title": "Undeliverable"}, "odd", {"code": 131047, "title": ["x"]}]}]
    webhook = parse_webhook(envelope(statuses=statuses), PHONE_ID)
    [status] = webhook.statuses
    assert (status.message_id, status.status, status.timestamp) == ("wamid.out", "failed", 0)
    assert status.errors == [{"code": None, "title": "Undeliverable", "message": None},
                             {"code": 131047, "title": None, "message": None}]
    assert webhook.problems == ["status without id or status"] * 3


@pytest.mark.parametrize("media_id", ["../../_sandbox/fail", "123/456", "a b", "x" * 200])
def test_a_media_id_that_is_no_id_is_not_fetched(media_id):
    """The id becomes part of a Graph API path: one that could walk elsewhere is not an attachment."""
    [parsed] = parse_webhook(envelope(message("image", {"id": media_id, "mime_type": "image/png"}, "wamid.m"))).messages
    assert parsed.attachment is None and not parsed.supported
    [good] = parse_webhook(envelope(message("image", {"id": "1234567890", "mime_type": "image/png"}, "wamid.g"))).messages
    assert good.attachment["media_id"] == "1234567890"
