"""The service desk's REST API for core systems, on a real server: bearer tokens per client, the
lifecycle's rules and the customer's notice as from the console, the OpenAPI document, and an
API that is off without tokens."""
from __future__ import annotations


import aiohttp
import pytest
import pytest_asyncio

from cardsystem.config import parse_desk_tokens
from connectors.desk_api import ServiceDeskAPI, openapi
from tests.conftest import ONE_CARD
from tests.servers import serve_blueprint

pytestmark = pytest.mark.asyncio
CORE = "c0re-" + "9f8e7d6c5b4a3928" * 2
CRM = "crm-" + "a1b2c3d4e5f60718" * 2


@pytest_asyncio.fixture
async def api(system, make_desk):
    servers = []

    async def start(tokens):
        server, url = await serve_blueprint(ServiceDeskAPI(tokens, desk=make_desk()).blueprint(None), "/webhooks/desk")
        servers.append(server)
        return f"{url}/v1"

    yield start
    for server in servers:
        await server.close()


def limit_request(system):
    customer = system.find_customer(ONE_CARD)
    card = system.cards_of(customer.id)[0]
    return system.request_limit_increase(customer.id, card.last4, card.credit_limit_paise + 5_000_000)


async def call(method, url, token=None, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, headers=headers, **kwargs) as answer:
            return answer.status, await answer.json(), answer.headers


async def test_tokens_rules_and_notices(api, system):
    base = await api([("core-banking", CORE), ("crm", CRM)])
    request = limit_request(system)
    assert (await call("GET", f"{base}/requests"))[0] == 401
    assert (await call("GET", f"{base}/requests", CORE[:-1] + "x"))[0] == 401
    status, listing, headers = await call("GET", f"{base}/requests?kind=limit_increase", CORE)
    assert status == 200 and [r["reference"] for r in listing["requests"]] == [request.reference]
    assert headers["Cache-Control"] == "no-store" and all("*" in r["customer_phone"] for r in listing["requests"])

    url = f"{base}/requests/{request.reference}/status"
    assert (await call("POST", url, CORE, data="status=resolved"))[0] == 415
    assert (await call("POST", url, CORE, data="{not json", headers={"Content-Type": "application/json"}))[0] == 400
    status, refused, _ = await call("POST", url, CORE, json={"status": "resolved"})
    assert status == 409 and refused["code"] == "note_needed"
    status, missing, _ = await call("POST", f"{base}/requests/LMT000000ZZZZ/status", CORE,
                                    json={"status": "resolved", "note": "x"})
    assert status == 404
    status, done, _ = await call("POST", url, CRM, json={"status": "rejected", "note": "Income below the policy"})
    assert status == 200 and done["status"] == "rejected" and done["history"][-1]["actor"] == "api:crm"
    assert "Income below the policy" in done["notices"][-1]["text"] and done["notices"][-1]["medium"] == "whatsapp"
    status, again, _ = await call("POST", url, CORE, json={"status": "in_progress"})
    assert status == 409 and again["code"] == "closed"
    status, one, _ = await call("GET", f"{base}/requests/{request.reference.lower()}", CORE)
    assert status == 200 and one["resolution"] == "Income below the policy"
    status, figures, _ = await call("GET", f"{base}/figures", CORE)
    assert status == 200 and any(f["kind"] == "limit_increase" and f["rejected"] == 1 for f in figures["kinds"])
    assert (await call("GET", f"{base}/requests?limit=many", CORE))[0] == 400


async def test_openapi_document_and_off_without_tokens(api):
    base = await api([("core-banking", CORE)])
    status, document, _ = await call("GET", f"{base}/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.") and document == openapi()
    assert set(document["paths"]) == {"/requests", "/requests/{reference}", "/requests/{reference}/status", "/figures",
                                      "/payment-links/use", "/payments", "/cards/block", "/messages/report"}
    off = await api([])
    assert (await call("GET", f"{off}/requests", CORE))[0] == 404
    assert (await call("GET", f"{off}/openapi.json"))[0] == 404


@pytest.mark.parametrize("text, ok", [
    ("", True), ("core:" + "x" * 32, True), ("core:short", False), ("Core:" + "x" * 32, False),
    ("core" + "x" * 32, False), ("a:" + "y" * 40 + ", b:" + "z" * 40, True),
])
def test_token_setting(text, ok):
    if ok:
        parse_desk_tokens(text)
    else:
        with pytest.raises(ValueError) as refused:
            parse_desk_tokens(text)
        assert "x" * 10 not in str(refused.value)   # a token is never echoed


def test_make_serve_refuses_weak_or_shared_api_tokens():
    from cardsystem.preflight import problems
    from tests.test_serve import production_secrets

    env = {**production_secrets(), "CARDCARE_ENV": "production"}
    assert problems(env) == []
    assert problems({**env, "CARDCARE_DESK_API_TOKENS": f"core:{'a' * 40}"})
    assert problems({**env, "CARDCARE_DESK_API_TOKENS": "core:short"})
    assert problems({**env, "CARDCARE_DESK_API_TOKENS": f"core:{CORE},crm:{CORE}"})
    assert problems({**env, "CARDCARE_DESK_API_TOKENS": f"core:{CORE},crm:{CRM}"}) == []


def test_make_serve_needs_the_banks_own_signing_pair(signing_pair):
    from cardsystem.preflight import problems
    from tests.test_serve import production_secrets

    env = {**production_secrets(), "CARDCARE_ENV": "production"}
    missing = {k: v for k, v in env.items() if k != "CARDCARE_SIGNING_CERT"}
    assert any("CARDCARE_SIGNING_KEY and CARDCARE_SIGNING_CERT" in p for p in problems(missing))
    development = {**env, "CARDCARE_SIGNING_KEY": str(signing_pair[0]), "CARDCARE_SIGNING_CERT": str(signing_pair[1])}
    assert any("development signing pair" in p for p in problems(development))
    mismatched = {**env, "CARDCARE_SIGNING_CERT": str(signing_pair[1])}
    assert any("cannot be used" in p for p in problems(mismatched))
