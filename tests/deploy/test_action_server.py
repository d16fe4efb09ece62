"""The locked action server: refuses calls without its shared secret, and runs each action once
per customer message however often a retried turn calls it."""
from __future__ import annotations

import itertools

import aiohttp
import pytest
import pytest_asyncio
from sanic import Sanic

from deploy.action_server import ActionReplies, locked_app
from tests.deploy import counting_actions
from tests.servers import free_port

pytestmark = pytest.mark.asyncio
SECRET = "s" * 32
_names = itertools.count()


def call(message_id: str, actions_before: int = 0, sender: str = "919800000001") -> dict:
    events = [{"event": "action", "name": "action_listen"},
              {"event": "user", "text": "block my card", "message_id": message_id, "parse_data": {}}]
    events += [{"event": "action", "name": f"earlier_{n}"} for n in range(actions_before)]
    return {"next_action": "action_count", "sender_id": sender, "version": "3.6.21", "domain": {},
            "tracker": {"sender_id": sender, "slots": {}, "latest_message": {}, "events": events, "paused": False,
                        "followup_action": None, "active_loop": {}, "latest_action_name": None}}


@pytest_asyncio.fixture
async def server(tmp_path):
    counting_actions.RUNS.clear()
    app = locked_app(SECRET, "tests.deploy.counting_actions", ActionReplies(f"sqlite:///{tmp_path / 'actions.db'}"))
    app.name = f"actions_{next(_names)}"
    Sanic.test_mode = True
    port = free_port()
    running = await app.create_server(host="127.0.0.1", port=port, return_asyncio_server=True)
    await running.startup()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SECRET}"}) as session:
        yield f"http://127.0.0.1:{port}", session
    await running.close()


async def test_calls_without_the_secret_are_refused(server):
    url, _ = server
    async with aiohttp.ClientSession() as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}):
            async with anonymous.post(f"{url}/webhook", json=call("wamid.1"), headers=headers) as answer:
                assert answer.status == 401
        async with anonymous.get(f"{url}/actions") as answer:
            assert answer.status == 401
        async with anonymous.get(f"{url}/health") as answer:
            assert answer.status == 200
    assert counting_actions.RUNS == []


async def test_a_retried_turn_gets_the_first_answer_and_the_action_runs_once(server):
    url, session = server

    async def post(body):
        async with session.post(f"{url}/webhook", json=body) as answer:
            assert answer.status == 200
            return await answer.json()

    first = await post(call("wamid.1"))
    assert first["responses"][0]["text"] == "run 1"
    assert await post(call("wamid.1")) == first  # the whole turn again: same answer, no second run
    assert len(counting_actions.RUNS) == 1
    later_in_turn = await post(call("wamid.1", actions_before=2))  # the same action later in that turn runs
    new_message = await post(call("wamid.2"))
    other_customer = await post(call("wamid.1", sender="919800000002"))
    assert [r["responses"][0]["text"] for r in (later_in_turn, new_message, other_customer)] == \
        ["run 2", "run 3", "run 4"]


async def test_errors_tell_nothing_of_the_request(server):
    url, session = server
    async with session.post(f"{url}/webhook", data=b"{not json", headers={"Content-Type": "application/json"}) as answer:
        assert answer.status == 400 and await answer.json() == {"error": "bad request"}
