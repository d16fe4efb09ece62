"""Payments on real servers: the gateway's seam in the desk API (a link used once, a payment from
core banking, a block by the bank told to the customer, the messages report) and the demo payment
page (what a link pays, paid once, altered and expired links refused plainly)."""
from __future__ import annotations

import datetime as dt
from urllib.parse import urlparse

import aiohttp
import pytest
import pytest_asyncio
from sqlalchemy import select

from cardsystem.db import session_scope
from cardsystem.models import CustomerNotice, utcnow
from cardsystem.paylinks import make_payment_link
from connectors.desk_api import ServiceDeskAPI, openapi
from connectors.paypage import DemoPaymentPage
from tests.conftest import ONE_CARD, TWO_CARDS
from tests.servers import serve_blueprint
from tests.test_desk_api import CORE, call

pytestmark = pytest.mark.asyncio
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest_asyncio.fixture
async def serve():
    servers = []

    async def start(blueprint, prefix):
        server, url = await serve_blueprint(blueprint, prefix)
        servers.append(server)
        return url

    yield start
    for server in servers:
        await server.close()


def link(system, amount=10_000, minutes=30, nonce="n-1", start=None, phone=ONE_CARD):
    customer = system.find_customer(phone)
    card = system.cards_of(customer.id)[0]
    made = make_payment_link(system.settings.payment_base_url, system.settings.payment_link_secret, card.id, amount,
                             "part", start or utcnow(), minutes, nonce)
    return made.url, card


async def test_the_gateway_uses_a_link_once_and_core_banking_posts_payments(serve, system, make_desk):
    base = await serve(ServiceDeskAPI([("gateway", CORE)], desk=make_desk(), system=system).blueprint(None),
                       "/webhooks/desk") + "/v1"
    url, card = link(system)
    status, body, _ = await call("POST", f"{base}/payment-links/use", CORE, json={"link": url})
    assert status == 200 and body["amount_paise"] == 10_000 and body["card_last4"] == card.last4
    assert body["transaction"].startswith("P")
    status, body, _ = await call("POST", f"{base}/payment-links/use", CORE, json={"link": url})
    assert (status, body["code"]) == (409, "used")
    status, body, _ = await call("POST", f"{base}/payment-links/use", CORE, json={"link": url.replace("s=", "s=A")})
    assert (status, body["code"]) == (400, "signature")
    old, _ = link(system, nonce="n-2", start=utcnow() - dt.timedelta(hours=2))
    status, body, _ = await call("POST", f"{base}/payment-links/use", CORE, json={"link": old})
    assert (status, body["code"]) == (410, "expired")
    status, _, _ = await call("POST", f"{base}/payment-links/use", None, json={"link": url})
    assert status == 401
    status, _, _ = await call("POST", f"{base}/payment-links/use", CORE, data="link", headers={"Content-Type": "text/plain"})
    assert status == 415

    before = system.card_by_id(card.id)
    status, body, _ = await call("POST", f"{base}/payments", CORE, json={
        "phone": ONE_CARD, "card_last4": card.last4, "amount_paise": 25_000, "via": "neft"})
    assert status == 200 and body["amount_paise"] == 25_000
    assert system.card_by_id(card.id).outstanding_paise == before.outstanding_paise - 25_000
    status, body, _ = await call("POST", f"{base}/payments", CORE, json={
        "phone": ONE_CARD, "card_last4": card.last4, "amount_paise": 2 ** 62})
    assert status == 400
    status, body, _ = await call("POST", f"{base}/payments", CORE, json={
        "phone": ONE_CARD, "card_last4": card.last4, "amount_paise": 10 ** 12})
    assert (status, body["code"]) == (409, "amount_too_large")
    status, body, _ = await call("POST", f"{base}/payment-links/use", CORE, json={"link": "https://x/pay?t=ü😀&s=ß"})
    assert (status, body["code"]) == (400, "signature")
    for bad in ({"phone": ONE_CARD, "card_last4": card.last4, "amount_paise": -5},
                {"phone": ONE_CARD, "card_last4": card.last4, "amount_paise": "100"},
                {"phone": ONE_CARD, "card_last4": card.last4, "amount_paise": True}):
        status, _, _ = await call("POST", f"{base}/payments", CORE, json=bad)
        assert status == 400
    status, body, _ = await call("POST", f"{base}/payments", CORE, json={
        "phone": ONE_CARD, "card_last4": "0000", "amount_paise": 100})
    assert (status, body["code"]) == (404, "unknown_card")
    with session_scope(system.engine) as s:
        told = [n.kind for n in s.execute(select(CustomerNotice).where(CustomerNotice.card_id == card.id)).scalars()]
    assert told == ["payment_received", "payment_received"]                 # each payment told once

    other = system.cards_of(system.find_customer(TWO_CARDS).id)[0]
    for bad in ({}, {"phone": TWO_CARDS, "card_last4": other.last4, "reason": "because"},
                {"phone": 919800000002, "card_last4": other.last4}):
        status, _, _ = await call("POST", f"{base}/cards/block", CORE, json=bad)
        assert status == 400
    status, body, _ = await call("POST", f"{base}/cards/block", CORE, json={"phone": TWO_CARDS, "card_last4": other.last4})
    assert status == 200 and body["status"] == "blocked" and body["reference"].startswith("BLK")
    status, body, _ = await call("POST", f"{base}/cards/block", CORE, json={"phone": TWO_CARDS, "card_last4": other.last4})
    assert (status, body["code"]) == (409, "already_blocked")
    with session_scope(system.engine) as s:
        assert s.execute(select(CustomerNotice.kind).where(CustomerNotice.card_id == other.id)).scalars().all() == [
            "card_blocked"]
    status, body, _ = await call("GET", f"{base}/messages/report?days=3", CORE)
    assert status == 200 and {"rows", "total", "rates", "not_sent"} <= set(body)
    for days in ("x", "0", "-1", "367", "３"):
        status, _, _ = await call("GET", f"{base}/messages/report?days={days}", CORE)
        assert status == 400, days
    assert {"/payment-links/use", "/payments", "/cards/block", "/messages/report"} <= set(openapi()["paths"])


async def test_the_demo_payment_page_pays_a_link_once(serve, system):
    base = await serve(DemoPaymentPage(system).blueprint(None), "/webhooks/pay")
    url, card = link(system, amount=123_456)
    query = urlparse(url).query
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/card?{query}") as page:
            text = await page.text()
            assert page.status == 200 and "₹1,234.56" in text and card.last4 in text and "<script" not in text
            assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        fields = dict(pair.split("=", 1) for pair in query.split("&"))
        async with http.post(f"{base}/card", data=fields) as paid:
            assert paid.status == 200 and "We have received ₹1,234.56" in await paid.text()
        async with http.post(f"{base}/card", data=fields) as again:
            assert again.status == 409 and "used already" in await again.text()
        async with http.get(f"{base}/card?{query}") as shown_again:          # refused at once, not after "Pay"
            assert shown_again.status == 409 and "used already" in await shown_again.text()
        async with http.get(f"{base}/card", params={"t": "ü😀", "s": "ß"}) as odd:
            assert odd.status == 404
        async with http.get(f"{base}/card?{query.replace('s=', 's=B')}") as forged:
            assert forged.status == 404
        old, _ = link(system, nonce="old", start=utcnow() - dt.timedelta(hours=1))
        async with http.get(f"{base}/card?{urlparse(old).query}") as expired:
            assert expired.status == 410
        async with http.post(f"{base}/card", data="t=x", headers={"Content-Type": "text/plain"}) as wrong:
            assert wrong.status == 415
        async with http.get(f"{base}/card") as empty:
            assert empty.status == 404


def test_production_needs_the_banks_own_payment_page_and_sound_templates(tmp_path):
    from cardsystem.preflight import problems
    from tests.test_serve import production_secrets

    env = {**production_secrets(), "CARDCARE_ENV": "production"}
    assert problems(env) == []
    for page in ("http://pay.example.bank/card", "https://bot.example.bank/webhooks/pay/card", ""):
        assert any("CARDCARE_PAYMENT_BASE_URL" in p for p in problems({**env, "CARDCARE_PAYMENT_BASE_URL": page}))
    broken = tmp_path / "templates.yml"
    broken.write_text("templates:\n  - {name: Bad Name, language: en, category: utility, body: hi}\n")
    assert any(p.startswith("templates:") and "lower-case" in p
               for p in problems({**env, "CARDCARE_TEMPLATES": str(broken)}))
