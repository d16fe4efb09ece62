"""The customer's feedback page on a real server: a form with no script, a rating recorded once, an
escalation that re-opens the request, and tampered, expired and used links refused plainly."""
from __future__ import annotations

import time

import aiohttp
import pytest
import pytest_asyncio

from connectors.feedback import FeedbackPage
from tests.conftest import ONE_CARD
from tests.servers import serve_blueprint

pytestmark = pytest.mark.asyncio
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest_asyncio.fixture
async def site(make_desk):
    desk = make_desk()
    server, url = await serve_blueprint(FeedbackPage(desk).blueprint(None), "/webhooks/feedback")
    yield desk, url
    await server.close()


def resolved_request(system, desk):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    request = system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise + 5_000_000)
    desk.set_status(request.reference, "resolved", "Limit raised <b>today</b>", "agent:asha")
    from cardsystem.requests.notices import NoticeBox

    text = NoticeBox(engine=desk.engine).of(request.reference)[-1]["text"]
    return request.reference, text.rsplit("/webhooks/feedback/", 1)[1].split()[0]


async def fetch(method, url, **kwargs):
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, **kwargs) as answer:
            return answer.status, await answer.text(), answer.headers


async def test_rate_once_and_escalate(site, system):
    desk, base = site
    reference, token = resolved_request(system, desk)
    status, body, headers = await fetch("GET", f"{base}/{token}")
    assert status == 200 and reference in body and "<script" not in body and 'name="rating"' in body
    assert "&lt;b&gt;today&lt;/b&gt;" in body and "<b>today</b>" not in body            # the outcome is text
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
    status, body, _ = await fetch("POST", f"{base}/{token}", data="comment=", headers=FORM)
    assert status == 400 and "Choose a rating" in body
    assert (await fetch("POST", f"{base}/{token}", json={"rating": 5}))[0] == 415
    status, body, _ = await fetch("POST", f"{base}/{token}", data="rating=1&comment=Still+wrong&escalate=yes",
                                  headers=FORM)
    assert status == 200 and "re-opened" in body
    assert desk.request(reference)["status"] == "in_progress" and desk.request(reference)["escalation_level"] == 2
    status, body, _ = await fetch("POST", f"{base}/{token}", data="rating=5", headers=FORM)
    assert status == 409 and "already" in body
    assert (await fetch("GET", f"{base}/{token}"))[0] == 409


async def test_forged_and_expired_links(site, system):
    desk, base = site
    _, token = resolved_request(system, desk)
    reference, expires, nonce, signature = token.split(".")
    assert (await fetch("GET", f"{base}/{reference}.{int(expires) + 1}.{nonce}.{signature}"))[0] == 404
    assert (await fetch("GET", f"{base}/not-a-token"))[0] == 404
    from cardsystem.requests.feedback import make_token
    old = make_token(reference, now=time.time() - 30 * 86400)
    status, body, _ = await fetch("GET", f"{base}/{old}")
    assert status == 410 and "expired" in body
    status, _, headers = await fetch("GET", f"{base}/style.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
