"""The whole WhatsApp path for real: the sandbox posts signed webhooks to the bot, the bot's
channel answers through the sandbox's Graph API (no Meta account, no internet)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import time

import pytest
import requests
import yaml

from tests.servers import MODEL, ROOT, Phone, running_whatsapp_bot

pytestmark = pytest.mark.model
ONE_CARD, TWO_CARDS, EXPIRING = "919800000001", "919800000002", "919800000004"


@pytest.fixture(scope="module")
def sandbox_and_bot(tmp_path_factory):
    if not MODEL.exists():
        pytest.fail("models/cardcare.tar.gz is missing: run `make train` (make test does it for you)")
    workdir = tmp_path_factory.mktemp("wa")
    # the bank's reminders at any hour in these tests (no quiet hours), the rest as shipped
    config = yaml.safe_load((ROOT / "reminders.yml").read_text())
    config["consent"]["quiet_hours"] = {"start": "00:00", "end": "00:00"}
    (workdir / "reminders.yml").write_text(yaml.safe_dump(config))
    hours = {"CARDCARE_AGENT_HOURS": "00:00-00:00", "CARDCARE_AGENT_DAYS": "Mon-Sun",  # agents always on duty
             "CARDCARE_REMINDERS_CONFIG": str(workdir / "reminders.yml")}
    with running_whatsapp_bot(workdir, extra_env=hours) as running:
        yield running


def conversation(sandbox_url: str, wa_id: str):
    seen = len(requests.get(f"{sandbox_url}/_sandbox/messages", params={"to": wa_id}, timeout=5).json())

    def send(text: str = "", reply: dict = None, wait_for_text: str = "", timeout: float = 30.0):
        nonlocal seen
        body = {"from": wa_id, "name": "Test", **({"reply": reply} if reply else {"text": text})}
        assert requests.post(f"{sandbox_url}/_sandbox/send", json=body, timeout=10).json()["bot_status"] == 200
        deadline = time.monotonic() + timeout
        got = []
        while time.monotonic() < deadline:
            got = requests.get(f"{sandbox_url}/_sandbox/messages", params={"to": wa_id, "after": seen}, timeout=5).json()
            if got and (not wait_for_text or wait_for_text in str(got)):
                time.sleep(0.5)  # let the rest of the turn's messages arrive
                got = requests.get(f"{sandbox_url}/_sandbox/messages", params={"to": wa_id, "after": seen}, timeout=5).json()
                break
            time.sleep(0.2)
        seen += len(got)
        return [m["message"] for m in got]

    return send


def test_balance_over_whatsapp(sandbox_and_bot):
    sandbox_url, _ = sandbox_and_bot
    send = conversation(sandbox_url, ONE_CARD)
    replies = send("what's my balance", wait_for_text="Outstanding")
    assert any("Outstanding" in (m.get("text") or {}).get("body", "") for m in replies)


def test_two_cards_as_reply_buttons_then_a_tap(sandbox_and_bot):
    sandbox_url, _ = sandbox_and_bot
    send = conversation(sandbox_url, TWO_CARDS)
    replies = send("how much do I owe", wait_for_text="Which card")
    [menu] = [m for m in replies if m["type"] == "interactive"]
    buttons = menu["interactive"]["action"]["buttons"]
    assert [b["reply"]["title"] for b in buttons] == ["Card ending 1117", "Card ending 6392"]
    replies = send(reply={"id": buttons[1]["reply"]["id"], "title": buttons[1]["reply"]["title"]}, wait_for_text="6392")
    assert "Outstanding" in str(replies)


def test_statement_arrives_as_a_document(sandbox_and_bot):
    sandbox_url, _ = sandbox_and_bot
    send = conversation(sandbox_url, ONE_CARD)
    replies = send("send me my statement for last month", wait_for_text="document")
    [document] = [m["document"] for m in replies if m["type"] == "document"]
    assert document["filename"].startswith("Statement-") and document["filename"].endswith("-4821.pdf")
    assert "link" not in document  # uploaded to the media endpoint: no statement URL leaves the bank
    pdf = requests.get(f"{sandbox_url}/_sandbox/media/{document['id']}", timeout=10)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF") and b"/Encrypt" in pdf.content


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser_page():
    """Debian's Chromium, headless, driven by Playwright (no browser download)."""
    if not CHROMIUM:
        if os.environ.get("CARDCARE_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here: `make browser` installs Debian's chromium")
        pytest.skip("no Chromium on this machine: `make browser` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        context = browser.new_context(accept_downloads=True)
        yield context.new_page()
        context.close()
        browser.close()


def test_chat_page_in_headless_chromium_balance_and_statement_download(sandbox_and_bot, browser_page, tmp_path):
    sandbox_url, _ = sandbox_and_bot
    page = browser_page
    page.goto(sandbox_url)
    page.wait_for_selector(f'#persona option[value="{ONE_CARD}"]', state="attached")
    page.select_option("#persona", ONE_CARD)

    def say(text, expect, timeout=30_000):
        before = page.locator(".msg.bot").count()
        page.fill("#text", text)
        page.press("#text", "Enter")
        page.locator(".msg.me", has_text=text).last.wait_for()
        page.wait_for_function("([n, t]) => [...document.querySelectorAll('.msg.bot')].slice(n)"
                               ".some(e => e.textContent.includes(t))", arg=[before, expect], timeout=timeout)

    say("what's my balance", "Outstanding")
    assert "₹" in page.locator(".msg.bot", has_text="Outstanding").last.text_content()
    say("send me my statement for last month", "Statement-")
    link = page.locator(".msg.bot.doc a").last
    assert link.get_attribute("download").endswith("-4821.pdf")
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.read_bytes().startswith(b"%PDF") and b"/Encrypt" in saved.read_bytes()
    sent_to_phone = requests.get(f"{sandbox_url}/_sandbox/messages", params={"to": ONE_CARD}, timeout=5).json()
    assert any(m["message"]["type"] == "document" for m in sent_to_phone)


def test_handoff_in_headless_chromium_customer_agent_and_rating(sandbox_and_bot, browser_page):
    """A customer on the chat page asks for a person; an agent signs in on the console, claims,
    replies; the customer sees it; the agent closes; the customer rates the chat."""
    from cardsystem.agents import DEMO
    from cardsystem.config import Settings
    from cardsystem.handoff import HandoffDesk
    from cardsystem.service import CardSystem

    sandbox_url, bot = sandbox_and_bot
    customer = browser_page
    agent = customer.context.browser.new_context().new_page()
    agent.goto(f"{bot.url}/webhooks/whatsapp/agents")
    agent.fill("#username", DEMO[0])
    agent.fill("#password", DEMO[2])
    agent.click("#login")
    agent.wait_for_selector("#desk:not([hidden])")

    customer.goto(sandbox_url)
    customer.wait_for_selector(f'#persona option[value="{EXPIRING}"]', state="attached")
    customer.select_option("#persona", EXPIRING)

    def bot_says(text, timeout=30_000):
        customer.locator(".msg.bot", has_text=text).last.wait_for(timeout=timeout)

    def type_(text):
        customer.fill("#text", text)
        customer.press("#text", "Enter")

    type_("I want to talk to a person")
    bot_says("number 1 in the queue")
    agent.locator("#queue li", has_text="Vikram").first.click()
    agent.wait_for_selector("#chat:not([hidden])")
    assert "was handed over because the customer asked for a person" in agent.text_content("#summary")
    agent.locator("#messages .m.customer", has_text="I want to talk to a person").wait_for()
    agent.click("#claim")
    bot_says("Asha from the cardcare card team has joined")
    agent.fill("#reply", "Hello Vikram, your points expire on the 30th. Shall I help you redeem them?")
    agent.click("#send")
    bot_says("your points expire on the 30th")
    type_("no thanks, that is all")
    agent.locator("#messages .m.customer", has_text="no thanks, that is all").wait_for(timeout=15_000)
    agent.fill("#resolution", "told the customer about expiring points")
    agent.click("#close")
    bot_says("you're back with me")
    customer.locator(".msg.bot .choices button", has_text="4 - Good").last.click()
    bot_says("Anything you'd like to add")
    customer.locator(".msg.bot .choices button", has_text="Skip").last.click()
    bot_says("Thanks for your feedback")
    desk = HandoffDesk(CardSystem(dataclasses.replace(Settings.from_env(), db_url=bot.env["CARDCARE_DB_URL"])))
    ticket = desk.latest(EXPIRING)
    assert ticket.status == "closed" and ticket.rating == 4 and ticket.agent.username == DEMO[0]
    assert ticket.resolution == "told the customer about expiring points"


def test_address_change_worked_by_the_desk_in_headless_chromium(sandbox_and_bot, browser_page, tmp_path):
    """A customer asks for an address change on the chat page and uploads a proof; an executive
    asks for one more document in the console; the customer sends it; the executive resolves; the
    customer gets the signed PDF proof and rates the service through the feedback link."""
    import re

    from cardsystem.agents import DEMO_SUPERVISOR
    from cardsystem.requests.proof import verify_proof

    sandbox_url, bot = sandbox_and_bot
    customer = browser_page
    customer.goto(sandbox_url)
    persona = "919800000005"
    customer.wait_for_selector(f'#persona option[value="{persona}"]', state="attached")
    customer.select_option("#persona", persona)

    def bot_says(text, timeout=30_000):
        """Wait for a message with `text` that the bot sent after the customer's latest one."""
        customer.wait_for_function(
            "t => { const all = [...document.querySelectorAll('.msg')];"
            " const mine = all.map(e => e.classList.contains('me')).lastIndexOf(true);"
            " return all.slice(mine + 1).some(e => e.classList.contains('bot') && e.textContent.includes(t)); }",
            arg=text, timeout=timeout)

    def type_(text):
        customer.fill("#text", text)
        customer.press("#text", "Enter")
        customer.locator(".msg.me", has_text=text).last.wait_for()

    def upload(name, content, mime):
        path = tmp_path / name
        path.write_bytes(content)
        customer.set_input_files("#attach", str(path))
        customer.locator(".msg.me", has_text=name).last.wait_for()

    type_("I have shifted house, please change my address")
    bot_says("type your new address")
    type_("Flat 12, Lotus Towers, Andheri East, Mumbai 400069")
    bot_says("Change your address to")
    customer.locator(".msg.bot .choices button", has_text="Yes, change it").last.click()
    bot_says("your address change is registered")
    said = customer.locator(".msg.bot", has_text="your address change is registered").last.text_content()
    reference = re.search(r"ADR\d{6}[A-Z2-9]{4}", said).group(0)
    upload("bill.pdf", b"%PDF-1.4\n% electricity bill\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "application/pdf")
    bot_says(f"received your document for {reference}")

    executive = customer.context.browser.new_context(accept_downloads=True).new_page()
    executive.goto(f"{bot.url}/webhooks/whatsapp/agents")
    executive.fill("#username", DEMO_SUPERVISOR[0])
    executive.fill("#password", DEMO_SUPERVISOR[2])
    executive.click("#login")
    executive.wait_for_selector("#tabs:not([hidden])")
    executive.click("#tab-requests")
    executive.locator("#worklist tbody tr", has_text=reference).click()
    executive.wait_for_selector("#request:not([hidden])")
    assert "Change of address" in executive.text_content("#r-title")
    with executive.expect_download() as download:
        executive.locator("#r-documents a").first.click()
    assert download.value.suggested_filename.endswith(".pdf")
    executive.select_option("#r-status", "needs_documents")
    executive.fill("#r-note", "a utility bill that shows your name as well")
    executive.click("#r-update")
    executive.locator("#r-history li", has_text="a utility bill that shows your name").wait_for()
    bot_says("a utility bill that shows your name as well")

    upload("bill-with-name.pdf", b"%PDF-1.4\n% bill with the name\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
           "application/pdf")
    bot_says(f"received your document for {reference}", timeout=30_000)
    executive.locator("#worklist tbody tr", has_text=reference).click()
    executive.locator("#r-documents a").nth(1).wait_for()
    executive.select_option("#r-status", "resolved")
    executive.fill("#r-note", "Address updated to Flat 12, Lotus Towers, Andheri East, Mumbai 400069")
    executive.click("#r-update")
    bot_says("Your address change is done")
    bot_says(f"CardCare-{reference}-proof.pdf")

    proof = [m["message"]["document"] for m in requests.get(f"{sandbox_url}/_sandbox/messages",
                                                           params={"to": persona}, timeout=5).json()
             if m["message"]["type"] == "document" and reference in m["message"]["document"].get("filename", "")][-1]
    pdf = requests.get(f"{sandbox_url}/_sandbox/media/{proof['id']}", timeout=10).content
    checked = verify_proof(pdf, (bot.workdir / "signing" / "dev-signing-cert.pem").read_bytes())
    assert checked["intact"] and checked["valid"] and checked["trusted"] and checked["coverage"] == "ENTIRE_FILE"

    done = customer.locator(".msg.bot", has_text="How did we do").last.text_content()
    link = re.search(r"https?://\S+/webhooks/feedback/\S+", done).group(0)
    rating = customer.context.new_page()
    rating.goto(link)
    rating.check('input[name="rating"][value="5"]')
    rating.fill('textarea[name="comment"]', "Quick and clear, thank you")
    rating.click('button[type="submit"]')
    rating.locator("h1", has_text="Thank you").wait_for()
    rating.goto(link)
    assert "already have your feedback" in rating.text_content("body")
    from cardsystem.requests.desk import ServiceDesk

    kept = ServiceDesk(db_url=bot.env["CARDCARE_DB_URL"], email=False).request(reference)
    assert kept["status"] == "resolved" and len(kept["documents"]) == 2
    assert [h["event"] for h in kept["history"]][-1] == "feedback" and "rated 5/5" in kept["history"][-1]["note"]


def test_the_bank_writes_first_a_reminder_tapped_on_the_chat_page_and_stop_honoured(sandbox_and_bot, browser_page):
    """The templates are submitted to the sandbox and approved there (the approval reaches the bot as
    a webhook); the scheduler runs as cron would; Priya, silent for a day, sees the reminder as a
    template on the chat page, taps "Pay now" and gets her payment links; Ananya typed STOP first
    and gets nothing more."""
    import datetime as dt
    import subprocess
    import sys
    from zoneinfo import ZoneInfo

    from sqlalchemy import create_engine, text

    sandbox_url, bot = sandbox_and_bot
    priya, ananya = "919800000003", ONE_CARD
    run = lambda *args: subprocess.run([sys.executable, "-m", "cardsystem.reminders", *args], cwd=ROOT,  # noqa: E731
                                       env=bot.env, capture_output=True, text=True, timeout=120)
    submitted = run("templates", "submit")
    assert submitted.returncode == 0 and "PENDING" in submitted.stdout, submitted.stderr
    for template in requests.get(f"{sandbox_url}/_sandbox/templates", timeout=5).json():
        assert requests.post(f"{sandbox_url}/_sandbox/templates/{template['id']}/approve", timeout=5).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "PENDING" in run("templates", "list").stdout:
        time.sleep(0.5)
    listed = run("templates", "list").stdout
    assert "payment_due_reminder" in listed and "PENDING" not in listed and "APPROVED" in listed

    Phone(sandbox_url, ananya).send("STOP")
    due = dt.datetime.now(ZoneInfo("Asia/Kolkata")).date() + dt.timedelta(days=5)
    engine = create_engine(bot.env["CARDCARE_DB_URL"])
    with engine.begin() as db:
        for phone in (priya, ananya):
            db.execute(text("UPDATE cards SET due_date = :due, minimum_due_paise = 150000, outstanding_paise = 900000 "
                            "WHERE customer_id = (SELECT id FROM customers WHERE phone = :phone)"), {"due": due, "phone": phone})
    engine.dispose()
    before = len(requests.get(f"{sandbox_url}/_sandbox/messages", params={"to": ananya}, timeout=5).json())
    queued = run("run")
    assert queued.returncode == 0 and "queued" in queued.stdout, queued.stderr

    customer = browser_page
    customer.goto(sandbox_url)
    customer.wait_for_selector(f'#persona option[value="{priya}"]', state="attached")
    customer.select_option("#persona", priya)
    reminder = customer.locator(".msg.bot", has_text="Payment reminder for your CardCare credit card ending 7305")
    reminder.last.wait_for(timeout=30_000)
    shown = reminder.last.text_content()
    assert "₹9,000.00" in shown and "₹1,500.00" in shown and "Reply STOP to stop reminders" in shown
    assert reminder.last.locator("a", has_text="Pay bill").get_attribute("href").startswith("http")
    reminder.last.locator("button", has_text="Pay now").click()
    customer.locator(".msg.bot", has_text="Pay the total due").last.wait_for(timeout=30_000)
    paying = customer.locator(".msg.bot", has_text="Pay the total due").last.text_content()
    assert "card ending 7305" in paying.lower() or "7305" in paying
    time.sleep(6)  # three rounds of the channel's notice loop
    after = requests.get(f"{sandbox_url}/_sandbox/messages", params={"to": ananya}, timeout=5).json()
    assert len(after) == before                                             # STOP: nothing more
