"""Message templates in the sandbox, as Meta's Graph API has them: submitted and checked through
the Business Management API, approved or rejected (a signed webhook tells the bot), sent and
checked like a real send, shown on the phone with their buttons, a quick reply tapped back as a
"button" message, and a recipient whose deliveries fail."""
from __future__ import annotations

import asyncio
import copy

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from connectors.sandbox.server import make_app
from connectors.whatsapp.inbound import parse_webhook
from connectors.whatsapp.signature import is_signed_by
from tests.servers import free_port

pytestmark = pytest.mark.asyncio
SECRET, PHONE_ID, WABA = "s3cret", "1111", "2222"
AUTH = {"Authorization": "Bearer t"}
CUSTOMER = "919800000001"
REMINDER = {
    "name": "payment_due_reminder", "language": "en", "category": "UTILITY",
    "components": [
        {"type": "HEADER", "format": "TEXT", "text": "Payment due"},
        {"type": "BODY", "text": "Hi {{1}}, your card bill of {{2}} is due on {{3}}. Please pay on time.",
         "example": {"body_text": [["Asha", "₹12,345", "5 Nov"]]}},
        {"type": "FOOTER", "text": "cardcare Bank"},
        {"type": "BUTTONS", "buttons": [
            {"type": "QUICK_REPLY", "text": "Pay now"},
            {"type": "QUICK_REPLY", "text": "Talk to an agent"},
            {"type": "URL", "text": "Pay bill", "url": "https://bank.example/pay?{{1}}",
             "example": ["https://bank.example/pay?t=abc"]},
        ]},
    ],
}


def reminder(**changes):
    template = copy.deepcopy(REMINDER)
    template.update(changes)
    return template


def with_component(kind, **changes):
    """REMINDER with one component changed (or removed, with changes=None)."""
    template = copy.deepcopy(REMINDER)
    for component in template["components"]:
        if component["type"] == kind:
            component.update(changes)
    return template


def buttons(*given):
    return with_component("BUTTONS", buttons=list(given))


def send_body(to=CUSTOMER, name="payment_due_reminder", language="en", body=("Asha", "₹12,345", "5 Nov"),
              payloads=("/pay_bill", "/human_handoff"), url_suffix="t=tok123", extra=()):
    components = [{"type": "body", "parameters": [{"type": "text", "text": v} for v in body]}]
    for index, payload in enumerate(payloads):
        components.append({"type": "button", "sub_type": "quick_reply", "index": str(index),
                           "parameters": [{"type": "payload", "payload": payload}]})
    if url_suffix is not None:
        components.append({"type": "button", "sub_type": "url", "index": "2",
                           "parameters": [{"type": "text", "text": url_suffix}]})
    components += list(extra)
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "template",
            "template": {"name": name, "language": {"code": language}, "components": components}}


class Sandbox:
    """The sandbox on a real port, posting to a fake bot that keeps every (signed) webhook."""

    def __init__(self, http, url, webhooks):
        self.http, self.url, self.webhooks = http, url, webhooks

    async def call(self, method, path, **kwargs):
        async with self.http.request(method, self.url + path, **kwargs) as answer:
            return answer.status, await answer.json()

    async def create(self, template, waba=WABA):
        return await self.call("POST", f"/v21.0/{waba}/message_templates", json=template, headers=AUTH)

    async def send(self, body):
        return await self.call("POST", f"/v21.0/{PHONE_ID}/messages", json=body, headers=AUTH)

    async def approve(self, template_id):
        return await self.call("POST", f"/_sandbox/templates/{template_id}/approve")

    def changes(self, field):
        return [c["value"] for w in self.webhooks for e in w["entry"] for c in e["changes"] if c["field"] == field]

    def statuses(self, wamid):
        return [s for v in self.changes("messages") for s in v.get("statuses", []) if s["id"] == wamid]

    async def wait_for(self, condition, seconds=5.0):
        for _ in range(int(seconds / 0.05)):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not within {seconds}s; webhooks: {self.webhooks}")


async def start(approve_templates=False):
    webhooks = []

    async def bot(request):
        raw = await request.read()
        assert is_signed_by(raw, request.headers.get("X-Hub-Signature-256"), [SECRET])
        webhooks.append(await request.json())
        return web.json_response({"status": "received"})

    bot_app = web.Application()
    bot_app.router.add_post("/webhook", bot)
    bot_port, sandbox_port = free_port(), free_port()
    runners = []
    for app, port in ((bot_app, bot_port),
                      (make_app(f"http://127.0.0.1:{bot_port}/webhook", SECRET, PHONE_ID,
                                approve_templates=approve_templates), sandbox_port)):
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    return runners, f"http://127.0.0.1:{sandbox_port}", webhooks


@pytest_asyncio.fixture
async def sandbox():
    runners, url, webhooks = await start()
    async with aiohttp.ClientSession() as http:
        yield Sandbox(http, url, webhooks)
    for runner in reversed(runners):
        await runner.cleanup()


@pytest_asyncio.fixture
async def approved(sandbox):
    """The sandbox with REMINDER submitted and approved: (sandbox, template id)."""
    _, created = await sandbox.create(REMINDER)
    await sandbox.approve(created["id"])
    return sandbox, created["id"]


@pytest.mark.parametrize("template, words", [
    (reminder(name="Payment-Due"), "name"),
    (reminder(name=""), "name"),
    (reminder(language="English"), "language"),
    (reminder(category="PROMO"), "category"),
    (with_component("BODY", example={"body_text": [["Asha", "₹12,345"]]}), "sample value"),   # 3 params, 2 examples
    (with_component("BODY", example=None), "sample value"),                                      # params, no example
    (with_component("BODY", text="Hi {{1}}, due {{3}} soon", example={"body_text": [["a", "b"]]}), "in order"),
    (with_component("BODY", text="Hi {{2}} and {{1}} ok", example={"body_text": [["a", "b"]]}), "in order"),
    (with_component("BODY", text="Hi {{name}} ok", example={"body_text": [["a"]]}), "numbered"),
    (with_component("BODY", text="{{1}} is due", example={"body_text": [["a"]]}), "start or end"),
    (with_component("BODY", text="Due on {{1}}", example={"body_text": [["a"]]}), "start or end"),
    (with_component("BODY", text="x" * 1025, example=None), "1024"),
    (reminder(components=[{"type": "HEADER", "format": "TEXT", "text": "Hi"}]), "BODY"),
    (with_component("HEADER", text="h" * 61), "60"),
    (with_component("FOOTER", text="f" * 61), "60"),
    (buttons(*[{"type": "QUICK_REPLY", "text": f"Option {i}"} for i in range(11)]), "at most 10 buttons"),
    (buttons({"type": "QUICK_REPLY", "text": "This label is far too long"}), "25"),
    (buttons({"type": "URL", "text": "Pay", "url": "https://x.example/pay/{{1}}/now",
              "example": ["https://x.example/pay/a/now"]}), "at the end"),
    (buttons({"type": "URL", "text": "Pay", "url": "https://x.example/{{1}}?a={{2}}",
              "example": ["https://x.example/a?a=b"]}), "at most one variable"),
    (buttons({"type": "URL", "text": "Pay", "url": "https://x.example/pay?{{1}}"}), "example"),
    (buttons({"type": "URL", "text": "Pay", "url": "https://x.example/" + "p" * 2000}), "2000"),
    (buttons(*[{"type": "URL", "text": f"Site {i}", "url": f"https://x.example/{i}"} for i in range(3)]), "URL buttons"),
    (buttons({"type": "QUICK_REPLY", "text": "Yes"}, {"type": "URL", "text": "Site", "url": "https://x.example/"},
             {"type": "QUICK_REPLY", "text": "No"}), "grouped"),
    (buttons({"type": "COPY_CODE", "text": "Copy"}), "type"),
])
async def test_a_submission_meta_would_refuse_gets_a_graph_error(sandbox, template, words):
    status, answer = await sandbox.create(template)
    assert status == 400, answer
    error = answer["error"]
    assert error["code"] == 100 and error["type"] == "OAuthException" and "fbtrace_id" in error
    assert words.lower() in (error["message"] + error["error_user_msg"]).lower(), error
    assert (await sandbox.call("GET", "/_sandbox/templates"))[1] == []


async def test_a_submission_is_pending_listed_and_unique_by_name_and_language(sandbox):
    status, created = await sandbox.create(REMINDER)
    assert status == 200 and created["status"] == "PENDING" and created["category"] == "UTILITY"
    assert created["id"].isdigit()
    status, again = await sandbox.create(REMINDER)
    assert status == 400 and again["error"]["code"] == 100 and "already exists" in again["error"]["message"]
    status, hindi = await sandbox.create(reminder(language="hi"))  # another language of the same name is fine
    assert status == 200 and hindi["id"] != created["id"]
    status, listed = await sandbox.call("GET", f"/v21.0/{WABA}/message_templates?name=payment_due_reminder&language=en",
                                        headers=AUTH)
    assert status == 200 and listed["paging"] == {}
    [only] = listed["data"]
    assert (only["id"], only["name"], only["language"], only["status"], only["category"]) == \
        (created["id"], "payment_due_reminder", "en", "PENDING", "UTILITY")
    assert [c["type"] for c in only["components"]] == ["HEADER", "BODY", "FOOTER", "BUTTONS"]
    assert len((await sandbox.call("GET", "/_sandbox/templates"))[1]) == 2
    # a token is required, and templates belong to the business account, not to the phone number
    async with sandbox.http.post(f"{sandbox.url}/v21.0/{WABA}/message_templates", json=REMINDER) as answer:
        assert answer.status == 401 and (await answer.json())["error"]["code"] == 190
    status, answer = await sandbox.create(reminder(name="other"), waba=PHONE_ID)
    assert status == 400 and answer["error"]["code"] == 100
    status, _ = await sandbox.call("DELETE", f"/v21.0/{WABA}/message_templates?name=payment_due_reminder", headers=AUTH)
    assert status == 200 and (await sandbox.call("GET", "/_sandbox/templates"))[1] == []


async def test_only_an_approved_template_can_be_sent_and_approval_reaches_the_bot(sandbox):
    _, created = await sandbox.create(REMINDER)
    status, answer = await sandbox.send(send_body())
    assert status == 400 and answer["error"]["code"] == 132001
    assert answer["error"]["message"] == "(#132001) Template name does not exist in the translation"
    status, approved = await sandbox.approve(created["id"])
    assert status == 200 and approved["status"] == "APPROVED"
    await sandbox.wait_for(lambda: sandbox.changes("message_template_status_update"))
    [update] = [w for w in sandbox.webhooks if w["entry"][0]["changes"][0]["field"] == "message_template_status_update"]
    assert update["object"] == "whatsapp_business_account" and update["entry"][0]["id"] == WABA
    assert update["entry"][0]["changes"][0]["value"] == {
        "event": "APPROVED", "message_template_id": int(created["id"]), "message_template_name": "payment_due_reminder",
        "message_template_language": "en", "reason": "NONE"}
    assert parse_webhook(update, PHONE_ID).messages == []  # the bot's parser leaves other fields alone
    status, answer = await sandbox.send(send_body())
    assert status == 200 and answer["messages"][0]["id"].startswith("wamid.")
    for wrong in (send_body(name="payment_due_reminder_v2"), send_body(language="en_US")):
        status, answer = await sandbox.send(wrong)
        assert status == 400 and answer["error"]["code"] == 132001


async def test_a_rejected_template_cannot_be_sent(sandbox):
    _, created = await sandbox.create(REMINDER)
    status, rejected = await sandbox.call("POST", f"/_sandbox/templates/{created['id']}/reject",
                                          json={"reason": "PROMOTIONAL"})
    assert status == 200 and rejected["status"] == "REJECTED" and rejected["rejected_reason"] == "PROMOTIONAL"
    await sandbox.wait_for(lambda: sandbox.changes("message_template_status_update"))
    value = sandbox.changes("message_template_status_update")[0]
    assert value["event"] == "REJECTED" and value["reason"] == "PROMOTIONAL"
    assert (await sandbox.send(send_body()))[1]["error"]["code"] == 132001
    status, _ = await sandbox.call("POST", f"/_sandbox/templates/{created['id']}/reject")
    assert status == 409  # already rejected
    assert (await sandbox.call("POST", "/_sandbox/templates/404/approve"))[0] == 404


@pytest.mark.parametrize("body, code", [
    (send_body(body=("Asha", "₹12,345")), 132000),                         # 2 of 3 body parameters
    (send_body(body=("Asha", "₹12,345", "5 Nov", "extra")), 132000),
    (send_body(body=()), 132000),
    (send_body(body=("Asha\nKumar", "₹12,345", "5 Nov")), 132018),          # a new line in a parameter
    (send_body(body=("Asha", "₹12,345\t", "5 Nov")), 132018),               # a tab
    (send_body(body=("Asha", "₹     12,345", "5 Nov")), 132018),            # five spaces in a row
    (send_body(body=("Asha", "", "5 Nov")), 131008),                        # an empty parameter
    (send_body(url_suffix=None), 131008),                                   # the URL button's suffix is missing
    (send_body(url_suffix="t=a\nb"), 132018),
    (send_body(extra=[{"type": "button", "sub_type": "url", "index": "0",
                       "parameters": [{"type": "text", "text": "x"}]}]), 100),   # index 0 is a quick reply
    (send_body(extra=[{"type": "button", "sub_type": "quick_reply", "index": "7",
                       "parameters": [{"type": "payload", "payload": "x"}]}]), 100),   # no button 7
    (send_body(extra=[{"type": "header", "parameters": [{"type": "text", "text": "x"}]}]), 132000),  # static header
])
async def test_a_send_meta_would_refuse_gets_its_error_code(approved, body, code):
    sandbox, _ = approved
    status, answer = await sandbox.send(body)
    assert status == 400 and answer["error"]["code"] == code, answer
    assert (await sandbox.call("GET", "/_sandbox/messages"))[1] == []


async def test_the_phone_shows_the_filled_in_template_with_its_buttons(approved):
    sandbox, template_id = approved
    _, answer = await sandbox.send(send_body())
    wamid = answer["messages"][0]["id"]
    _, [entry] = await sandbox.call("GET", f"/_sandbox/messages?to={CUSTOMER}")
    assert entry["id"] == wamid and entry["message"]["type"] == "template"
    shown = entry["template"]
    assert (shown["id"], shown["name"], shown["language"], shown["category"]) == \
        (template_id, "payment_due_reminder", "en", "UTILITY")
    assert shown["header"] == {"format": "TEXT", "text": "Payment due"}
    assert shown["body"] == "Hi Asha, your card bill of ₹12,345 is due on 5 Nov. Please pay on time."
    assert shown["footer"] == "cardcare Bank"
    assert shown["buttons"] == [
        {"index": 0, "type": "QUICK_REPLY", "text": "Pay now", "payload": "/pay_bill"},
        {"index": 1, "type": "QUICK_REPLY", "text": "Talk to an agent", "payload": "/human_handoff"},
        {"index": 2, "type": "URL", "text": "Pay bill", "url": "https://bank.example/pay?t=tok123"},
    ]
    # a template's delivery is charged by its category
    await sandbox.wait_for(lambda: len(sandbox.statuses(wamid)) == 2)
    assert [(s["status"], s["pricing"]["category"]) for s in sandbox.statuses(wamid)] == \
        [("sent", "utility"), ("delivered", "utility")]


async def test_a_quick_reply_tapped_reaches_the_bot_as_a_button_message(approved):
    sandbox, _ = approved
    _, answer = await sandbox.send(send_body(payloads=("/pay_bill",)))  # no payload for button 1: its text is echoed
    wamid = answer["messages"][0]["id"]
    status, sent = await sandbox.call("POST", "/_sandbox/send", json={
        "from": CUSTOMER, "name": "Asha", "reply": {"kind": "button", "index": 0}, "context": wamid})
    assert status == 200 and sent["bot_status"] == 200
    status, _ = await sandbox.call("POST", "/_sandbox/send", json={
        "from": CUSTOMER, "reply": {"kind": "button", "payload": "Talk to an agent", "text": "Talk to an agent"},
        "context": wamid})
    assert status == 200
    await sandbox.wait_for(lambda: len([m for v in sandbox.changes("messages") for m in v.get("messages", [])]) == 2)
    said = [m for v in sandbox.changes("messages") for m in v.get("messages", [])]
    assert said[0]["type"] == "button" and said[0]["from"] == CUSTOMER
    assert said[0]["button"] == {"payload": "/pay_bill", "text": "Pay now"}
    assert said[0]["context"] == {"from": "15550000000", "id": wamid}
    assert said[1]["button"] == {"payload": "Talk to an agent", "text": "Talk to an agent"}
    # what the bot's channel makes of it: the payload is the text for Rasa, the context the template
    hook = next(w for w in sandbox.webhooks if w["entry"][0]["changes"][0]["value"].get("messages"))
    [inbound] = parse_webhook(hook, PHONE_ID).messages
    assert inbound.text == "/pay_bill" and inbound.context_id == wamid
    # a tap must name a quick reply of a message the bot sent to that customer
    for bad in ({"from": CUSTOMER, "reply": {"kind": "button", "index": 2}, "context": wamid},   # the URL button
                {"from": CUSTOMER, "reply": {"kind": "button", "index": 0}, "context": "wamid.nope"},
                {"from": "919800000009", "reply": {"kind": "button", "index": 0}, "context": wamid},
                {"from": CUSTOMER, "reply": {"kind": "button"}}):
        status, answer = await sandbox.call("POST", "/_sandbox/send", json=bad)
        assert status == 400, (bad, answer)


async def test_a_recipient_can_be_made_undeliverable(approved):
    sandbox, _ = approved
    status, answer = await sandbox.call("POST", "/_sandbox/fail",
                                        json={"recipients": {"+91 98000 00003": 131026, "919800000004": 131049}})
    assert status == 200 and answer["recipients"] == {"919800000003": 131026, "919800000004": 131049}
    wamids = {}
    for number in ("919800000003", "919800000004", CUSTOMER):
        status, answer = await sandbox.send(send_body(to=number))
        assert status == 200  # accepted: the failure comes later, as a status webhook
        wamids[number] = answer["messages"][0]["id"]
    await sandbox.wait_for(lambda: all(sandbox.statuses(w) for w in wamids.values())
                           and len(sandbox.statuses(wamids[CUSTOMER])) == 2)
    [failed] = sandbox.statuses(wamids["919800000003"])
    assert failed["status"] == "failed" and failed["recipient_id"] == "919800000003"
    assert failed["errors"][0]["code"] == 131026 and failed["errors"][0]["title"] == "Message undeliverable"
    [limited] = sandbox.statuses(wamids["919800000004"])
    assert limited["errors"][0]["code"] == 131049
    assert limited["errors"][0]["title"] == "This message was not delivered to maintain healthy ecosystem engagement."
    assert [s["status"] for s in sandbox.statuses(wamids[CUSTOMER])] == ["sent", "delivered"]
    # cleared (each /_sandbox/fail call replaces the whole failure setting)
    status, answer = await sandbox.call("POST", "/_sandbox/fail", json={})
    assert status == 200 and answer["recipients"] == {}
    _, answer = await sandbox.send(send_body(to="919800000003"))
    again = answer["messages"][0]["id"]
    await sandbox.wait_for(lambda: len(sandbox.statuses(again)) == 2)
    assert [s["status"] for s in sandbox.statuses(again)] == ["sent", "delivered"]


async def test_templates_can_be_approved_on_submission_for_demos():
    runners, url, webhooks = await start(approve_templates=True)
    try:
        async with aiohttp.ClientSession() as http:
            sandbox = Sandbox(http, url, webhooks)
            status, created = await sandbox.create(REMINDER)
            assert status == 200 and created["status"] == "APPROVED"
            await sandbox.wait_for(lambda: sandbox.changes("message_template_status_update"))
            assert sandbox.changes("message_template_status_update")[0]["event"] == "APPROVED"
            assert (await sandbox.send(send_body()))[0] == 200
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def test_the_chat_page_renders_templates_and_offers_the_review_buttons(sandbox):
    async with sandbox.http.get(sandbox.url + "/") as answer:
        page = await answer.text()
    assert "showTemplate" in page and 'kind: "button"' in page and "/_sandbox/templates/" in page
    assert "innerHTML = \"\"" in page and page.count("innerHTML") == 1  # text goes in with textContent only
