"""`make serve` started as an operator starts it, then tried from outside: every door but the
public one is locked, and the public one lets through only what it should.

Production topology on this machine: PostgreSQL tracker store (a database made for this run),
Redis lock store, the locked action server, two Rasa workers (`WORKERS=2`) on 127.0.0.1 with
credentials.production.yml sharing the SQLite channel and card databases, nginx on PUBLIC_PORT
when installed (spreading the console and links over both workers), the sandbox as the Graph
API (its base URL is configurable). A worker killed with SIGKILL is started again while the
other goes on answering.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from connectors.whatsapp.signature import sign
from tests.servers import MODEL, ROOT, free_port, free_port_pair, postgres_database, start_sandbox

pytestmark = pytest.mark.model
CUSTOMER = "919800000001"   # a seeded customer with one card
CARD_NUMBER = "4111 1111 1111 1111"
AGENT_PASSWORD = "a-long-agent-password"
NGINX = shutil.which("nginx") or (Path("/usr/sbin/nginx") if Path("/usr/sbin/nginx").exists() else None)


def signing_pair() -> tuple:
    """A stand-in for the bank's signing key and certificate (not the development pair)."""
    import tempfile

    from cardsystem.requests.proof import ensure_dev_pair

    folder = Path(tempfile.gettempdir()) / f"cardcare-test-signing-{os.getuid()}"
    return ensure_dev_pair(folder, common_name="CardCare Bank test signer")


def production_secrets() -> dict:
    key, cert = signing_pair()
    return {
        "CARDCARE_SIGNING_KEY": str(key), "CARDCARE_SIGNING_CERT": str(cert),
        "CARDCARE_FEEDBACK_BASE_URL": "https://bot.example.bank/webhooks/feedback",
        "CARDCARE_PAYMENT_BASE_URL": "https://pay.example.bank/card",
        "WHATSAPP_APP_SECRET": secrets.token_hex(16), "WHATSAPP_ACCESS_TOKEN": "EAA" + secrets.token_hex(24),
        "WHATSAPP_VERIFY_TOKEN": secrets.token_hex(12), "WHATSAPP_PHONE_NUMBER_ID": "109876543210987",
        "CARDCARE_PAYMENT_LINK_SECRET": secrets.token_hex(16), "CARDCARE_FILES_SECRET": secrets.token_hex(16),
        "CARDCARE_ACTION_SECRET": secrets.token_hex(16), "RASA_AUTH_TOKEN": secrets.token_hex(16),
    }


def make_serve(env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["make", "-s", "serve"], cwd=ROOT, env=env, start_new_session=True, **kwargs)


def refusal(env: dict) -> str:
    """What `make serve` says when it refuses to start (it must refuse)."""
    done = subprocess.run(["make", "-s", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout
    return done.stderr


@pytest.fixture(scope="module")
def postgres_db():
    """A PostgreSQL database of its own for this run's tracker store (dropped afterwards)."""
    with postgres_database("cardcare_serve") as name:
        yield name


@pytest.fixture(scope="module")
def served(tmp_path_factory, postgres_db):
    if not MODEL.exists():
        pytest.fail("models/cardcare.tar.gz is missing: run `make train` (make test does it for you)")
    work = tmp_path_factory.mktemp("serve")
    env = {**os.environ, **production_secrets()}
    env.update({
        "RASA_PORT": str(free_port_pair()), "WORKERS": "2", "INGRESS_PORT": str(free_port()),
        "ACTION_PORT": str(free_port()), "PUBLIC_PORT": str(free_port()), "PUBLIC_HOST": "127.0.0.1", "RASA_ENABLE_API": "1",
        "RASA_TRACKER_DB_HOST": "127.0.0.1", "RASA_TRACKER_DB_PORT": "5432", "RASA_TRACKER_DB_NAME": postgres_db,
        "RASA_TRACKER_DB_USER": "postgres", "RASA_TRACKER_DB_PASSWORD": "unused-with-trust-auth",
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "6379",
        "CARDCARE_DB_URL": f"sqlite:///{work / 'cards.db'}", "CARDCARE_CHANNEL_DB_URL": f"sqlite:///{work / 'channel.db'}",
        "CARDCARE_MEDIA_DIR": str(work / "media"), "CARDCARE_STATEMENT_DIR": str(work / "statements"),
        "NGINX_RUN_DIR": str(work / "nginx"), "PYTHONPATH": str(ROOT),
        "CARDCARE_AGENT_HOURS": "00:00-00:00", "CARDCARE_AGENT_DAYS": "Mon-Sun",  # agents on duty
    })
    env.pop("CARDCARE_ENV", None)
    subprocess.run([sys.executable, "-m", "cardsystem.seed"], cwd=ROOT, env=env, check=True, capture_output=True)
    agents = {**env, "CARDCARE_ENV": "production", "CARDCARE_AGENT_PASSWORD": AGENT_PASSWORD}
    for name, role in (("priya", "agent"), ("ravi", "agent")):  # as an operator adds them
        subprocess.run([sys.executable, "-m", "cardsystem.agents", "add", name, "--first-name", name.title(),
                        "--role", role], cwd=ROOT, env=agents, check=True, capture_output=True)
    door = f"http://127.0.0.1:{env['PUBLIC_PORT']}" if NGINX else f"http://127.0.0.1:{env['RASA_PORT']}"
    sandbox, sandbox_url = start_sandbox(work, f"{door}/webhooks/whatsapp/webhook", env=env)
    env["WHATSAPP_API_BASE"] = sandbox_url
    log = work / "serve.log"
    serving = make_serve(env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while ">>> cardcare is serving" not in log.read_text():
            if serving.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"make serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"env": env, "door": door, "sandbox": sandbox_url, "work": work, "log": log,
               "rasa": f"http://127.0.0.1:{env['RASA_PORT']}", "actions": f"http://127.0.0.1:{env['ACTION_PORT']}",
               "workers": [int(env["RASA_PORT"]), int(env["RASA_PORT"]) + 1]}
    finally:
        os.killpg(serving.pid, signal.SIGTERM)
        try:
            serving.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(serving.pid, signal.SIGKILL)
        sandbox.terminate()
        sandbox.wait(timeout=20)


def say(served, text: str = "", reply: dict = None, wait: float = 30.0, customer: str = CUSTOMER) -> list:
    """A customer writes through the sandbox; the bot's replies as they arrive."""
    url = served["sandbox"]
    seen = len(requests.get(f"{url}/_sandbox/messages", params={"to": customer}, timeout=5).json())
    body = {"from": customer, "name": "Test", **({"reply": reply} if reply else {"text": text})}
    assert requests.post(f"{url}/_sandbox/send", json=body, timeout=10).json()["bot_status"] == 200
    deadline, got = time.monotonic() + wait, []
    while time.monotonic() < deadline:
        got = requests.get(f"{url}/_sandbox/messages", params={"to": customer, "after": seen}, timeout=5).json()
        if got:
            time.sleep(1.0)
            return requests.get(f"{url}/_sandbox/messages", params={"to": customer, "after": seen}, timeout=5).json()
        time.sleep(0.2)
    raise AssertionError(f"no reply to {text or reply!r}")


def tracker(served) -> dict:
    token = served["env"]["RASA_AUTH_TOKEN"]
    answer = requests.get(f"{served['rasa']}/conversations/{CUSTOMER}/tracker", params={"token": token}, timeout=10)
    assert answer.status_code == 200
    return answer.json()


# -- refusing to start ---------------------------------------------------------------------------

def test_make_serve_refuses_missing_and_development_secrets_naming_each():
    env = {**os.environ, **production_secrets(), "PYTHONPATH": str(ROOT)}
    for name in ("WHATSAPP_APP_SECRET", "CARDCARE_ACTION_SECRET", "WHATSAPP_PHONE_NUMBER_ID"):
        without = {k: v for k, v in env.items() if k != name}
        assert f"{name} is not set" in refusal(without)
    sandbox = {**env, "WHATSAPP_APP_SECRET": "sandbox-app-secret", "WHATSAPP_ACCESS_TOKEN": "sandbox-token",
               "CARDCARE_FILES_SECRET": "dev-only-files-secret-change-me"}
    said = refusal(sandbox)
    for name in ("WHATSAPP_APP_SECRET", "WHATSAPP_ACCESS_TOKEN", "CARDCARE_FILES_SECRET"):
        assert f"{name} is still a development or sandbox value" in said
    api_without_token = {k: v for k, v in env.items() if k != "RASA_AUTH_TOKEN"}
    assert "RASA_AUTH_TOKEN is not set" in refusal({**api_without_token, "RASA_ENABLE_API": "1"})


def test_make_serve_refuses_weak_or_shared_secrets_and_live_demo_accounts(tmp_path):
    env = {**os.environ, **production_secrets(), "PYTHONPATH": str(ROOT), "NGINX_RUN_DIR": str(tmp_path / "nginx"),
           "CARDCARE_DB_URL": f"sqlite:///{tmp_path / 'cards.db'}"}
    env.update({k: "x" for k in ("RASA_TRACKER_DB_HOST", "RASA_TRACKER_DB_PORT", "RASA_TRACKER_DB_NAME",
                                 "RASA_TRACKER_DB_USER", "RASA_TRACKER_DB_PASSWORD", "REDIS_HOST", "REDIS_PORT")})
    weak = {**env, "WHATSAPP_APP_SECRET": "x", "CARDCARE_ACTION_SECRET": "a" * 32,
            "CARDCARE_FILES_SECRET": env["CARDCARE_PAYMENT_LINK_SECRET"]}
    said = refusal(weak)
    assert "WHATSAPP_APP_SECRET is too short" in said and "CARDCARE_ACTION_SECRET is not random enough" in said
    assert "must all differ" in said
    development = {k: v for k, v in env.items() if k != "CARDCARE_ENV"}
    subprocess.run([sys.executable, "-m", "cardsystem.agents", "demo"], cwd=ROOT, env=development, check=True,
                   capture_output=True)  # an operator who once ran make run against this database
    said = refusal(env)
    assert "demo console account 'asha'" in said and "demo console account 'meera'" in said
    for name in ("asha", "meera"):
        subprocess.run([sys.executable, "-m", "cardsystem.agents", "disable", name], cwd=ROOT, env=env, check=True,
                       capture_output=True)
    plan = subprocess.run([sys.executable, "-m", "deploy.serve", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr


def test_the_default_plan_binds_loopback_with_no_api_and_no_rest(tmp_path):
    env = {**os.environ, **production_secrets(), "PYTHONPATH": str(ROOT), "NGINX_RUN_DIR": str(tmp_path),
           "CARDCARE_DB_URL": f"sqlite:///{tmp_path / 'cards.db'}"}
    env.update({k: "x" for k in ("RASA_TRACKER_DB_HOST", "RASA_TRACKER_DB_PORT", "RASA_TRACKER_DB_NAME",
                                 "RASA_TRACKER_DB_USER", "RASA_TRACKER_DB_PASSWORD", "REDIS_HOST", "REDIS_PORT")})
    env.pop("RASA_ENABLE_API", None)
    plan = subprocess.run([sys.executable, "-m", "deploy.serve", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True).stdout
    commands = dict(line.split(": ", 1) for line in plan.strip().splitlines())
    assert "--host 127.0.0.1" in commands["actions"]
    assert "-i 127.0.0.1" in commands["rasa"] and "credentials.production.yml" in commands["rasa"]
    assert "--enable-api" not in plan and env["CARDCARE_ACTION_SECRET"] not in plan
    assert [name for name in commands if name.startswith("rasa")] == ["rasa"]  # one worker unless asked


def test_workers_each_get_a_port_and_the_door_spreads_over_them(tmp_path):
    env = {**os.environ, **production_secrets(), "PYTHONPATH": str(ROOT), "NGINX_RUN_DIR": str(tmp_path),
           "CARDCARE_DB_URL": f"sqlite:///{tmp_path / 'cards.db'}", "WORKERS": "3", "RASA_PORT": "6100"}
    env.update({k: "x" for k in ("RASA_TRACKER_DB_HOST", "RASA_TRACKER_DB_PORT", "RASA_TRACKER_DB_NAME",
                                 "RASA_TRACKER_DB_USER", "RASA_TRACKER_DB_PASSWORD", "REDIS_HOST", "REDIS_PORT")})
    plan = subprocess.run([sys.executable, "-m", "deploy.serve", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True).stdout
    commands = dict(line.split(": ", 1) for line in plan.strip().splitlines())
    assert [commands[name].split("--port ")[1].split()[0] for name in ("rasa", "rasa2", "rasa3")] == \
        ["6100", "6101", "6102"]
    if NGINX:
        conf = (tmp_path / "nginx.conf").read_text()
        upstream = conf.split("upstream rasa {", 1)[1].split("}", 1)[0]
        assert [line.split()[1] for line in upstream.splitlines() if line.strip().startswith("server ")] == \
            ["127.0.0.1:6100;", "127.0.0.1:6101;", "127.0.0.1:6102;"]
    for workers, said in (("0", "WORKERS must be a number"), ("many", "WORKERS must be a number"),
                          ("2", "includes another process's port 6101")):
        bad = {**env, "WORKERS": workers, "ACTION_PORT": "6101"}
        assert said in refusal(bad)
    assert "rest:" not in (ROOT / "credentials.production.yml").read_text()


def test_workers_run_one_thread_pools_unless_the_operator_says_otherwise():
    from deploy.serve import TURN_THREADS, production_env

    env = production_env({"PATH": os.environ.get("PATH", "")})
    assert {name: env[name] for name in TURN_THREADS} == TURN_THREADS
    assert set(TURN_THREADS) >= {"TF_INTRA_OP_PARALLELISM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    assert production_env({"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "4"


# -- the doors, tried from outside -------------------------------------------------------------

def test_only_the_public_door_is_reachable_from_other_addresses(served):
    addresses = [a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
                 if ":" not in a and not a.startswith("127.")]
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to try from")
    for port in (*served["workers"], served["env"]["ACTION_PORT"], served["env"]["INGRESS_PORT"]):
        with pytest.raises(OSError):
            socket.create_connection((addresses[0], int(port)), timeout=2).close()


def test_rest_channel_and_api_are_not_behind_the_public_door(served):
    door = served["door"]
    assert requests.post(f"{door}/webhooks/rest/webhook", json={"sender": CUSTOMER, "message": "block my card"},
                         timeout=10).status_code == 404
    for path in ("/status", "/version", f"/conversations/{CUSTOMER}/tracker", "/model", "/"):
        assert requests.get(f"{door}{path}", timeout=10).status_code == 404
    # and on Rasa's own (loopback) port: no REST channel; the API only with the token
    rasa = served["rasa"]
    assert requests.post(f"{rasa}/webhooks/rest/webhook", json={"sender": CUSTOMER, "message": "hi"},
                         timeout=10).status_code == 404
    assert requests.get(f"{rasa}/conversations/{CUSTOMER}/tracker", timeout=10).status_code == 401
    assert requests.delete(f"{rasa}/model", timeout=10).status_code == 401
    assert requests.post(f"{rasa}/conversations/{CUSTOMER}/trigger_intent", params={"output_channel": "latest"},
                         json={"name": "block_card"}, timeout=10).status_code == 401
    assert requests.get(f"{rasa}/status", params={"token": served["env"]["RASA_AUTH_TOKEN"]}, timeout=10).ok


def test_action_server_refuses_calls_without_its_shared_secret(served):
    actions = served["actions"]
    call = {"next_action": "action_block_card", "sender_id": CUSTOMER, "version": "3.6.21",
            "tracker": {"sender_id": CUSTOMER, "slots": {}, "latest_message": {}, "events": [], "paused": False,
                        "followup_action": None, "active_loop": {}, "latest_action_name": None},
            "domain": {}}
    assert requests.post(f"{actions}/webhook", json=call, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + "0" * 32}
    assert requests.post(f"{actions}/webhook", json=call, headers=wrong, timeout=10).status_code == 401
    assert requests.get(f"{actions}/actions", timeout=10).status_code == 401
    right = {"Authorization": f"Bearer {served['env']['CARDCARE_ACTION_SECRET']}"}
    assert requests.get(f"{actions}/actions", headers=right, timeout=10).status_code == 200
    assert requests.get(f"{actions}/health", timeout=10).status_code == 200


def test_a_customer_is_answered_through_the_door_and_slash_text_is_not_an_intent(served):
    replies = say(served, "what's my balance")
    assert "Outstanding" in json.dumps(replies)
    say(served, "/handoff_closed")
    latest = tracker(served)["latest_message"]
    assert latest["text"] == "handoff_closed" and latest["intent"]["name"] != "handoff_closed"


def test_a_typed_card_number_is_masked_everywhere_and_the_customer_warned(served):
    replies = say(served, f"my card {CARD_NUMBER} 321 was stolen")
    assert "never share your full card number" in json.dumps(replies)
    digits = CARD_NUMBER.replace(" ", "")
    assert CARD_NUMBER not in json.dumps(tracker(served)) and digits not in json.dumps(tracker(served))
    for database in ("channel.db",):
        raw = (served["work"] / database).read_bytes()
        assert CARD_NUMBER.encode() not in raw and digits.encode() not in raw


def test_a_poison_batch_is_answered_200_and_its_good_message_answered(served):
    env, door = served["env"], served["door"]
    good_id = f"wamid.poison.{uuid.uuid4().hex}"
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": env["WHATSAPP_PHONE_NUMBER_ID"]},
             "contacts": [{"wa_id": CUSTOMER, "profile": {"name": "Test"}}],
             "messages": [{"from": CUSTOMER, "id": {"not": "a string"}, "type": "text", "text": "not an object"},
                          {"from": CUSTOMER, "id": good_id, "timestamp": str(int(time.time())), "type": "text",
                           "text": {"body": "when is my bill due"}}]}
    raw = json.dumps({"object": "whatsapp_business_account",
                      "entry": [{"id": "x", "changes": [{"field": "messages", "value": value}]}]}).encode()
    seen = len(requests.get(f"{served['sandbox']}/_sandbox/messages", params={"to": CUSTOMER}, timeout=5).json())
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, env["WHATSAPP_APP_SECRET"])}
    for _ in range(2):  # Meta redelivers: still once
        assert requests.post(f"{door}/webhooks/whatsapp/webhook", data=raw, headers=headers, timeout=10).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = requests.get(f"{served['sandbox']}/_sandbox/messages", params={"to": CUSTOMER, "after": seen},
                           timeout=5).json()
        if any(m["message"].get("biz_opaque_callback_data", "").startswith(good_id) for m in got):
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the good message of the poison batch was not answered")
    time.sleep(2)
    got = requests.get(f"{served['sandbox']}/_sandbox/messages", params={"to": CUSTOMER, "after": seen}, timeout=5).json()
    keys = [m["message"].get("biz_opaque_callback_data") for m in got]
    assert len(keys) == len(set(keys))  # answered once


def test_unsigned_oversized_and_unknown_requests_at_the_door(served):
    door = served["door"]
    assert requests.post(f"{door}/webhooks/whatsapp/webhook", data=b"{}", timeout=10).status_code == 403
    if NGINX:
        big = b'{"object":"whatsapp_business_account","pad":"' + b"x" * 70_000 + b'"}'
        assert requests.post(f"{door}/webhooks/whatsapp/webhook", data=big, timeout=10).status_code == 413
        chunked = (big[i:i + 8192] for i in range(0, len(big), 8192))  # no Content-Length: sent chunked
        assert requests.post(f"{door}/webhooks/whatsapp/webhook", data=chunked, timeout=10).status_code == 413
        assert requests.get(f"{door}/webhooks/files/", timeout=10).status_code == 404
    forged = "A" * 24 + ".9999999999." + "0" * 32
    assert requests.get(f"{door}/webhooks/files/statements/{forged}/statement.pdf", timeout=10).status_code == 404


def test_console_sign_in_only_as_json_through_the_door(served):
    login = f"{served['door']}/webhooks/whatsapp/agents/api/login"
    form = '{"username": "nobody", "password": "x"}'
    assert requests.post(login, data=form, headers={"Content-Type": "text/plain"}, timeout=10).status_code == 415
    assert requests.post(login, data={"username": "nobody", "password": "x"}, timeout=10).status_code == 415


def test_databases_and_customer_files_are_owner_only(served):
    say(served, "send me my last statement")
    work = served["work"]
    for path in [work / "channel.db", work / "cards.db"] + list((work / "statements").glob("*")):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert stat.S_IMODE((work / "statements").stat().st_mode) == 0o700


def console_login(served, username: str, password: str) -> requests.Response:
    """Signing in on Rasa's own port (as nginx forwards it, with the client's address), so that
    the door's own rate limit does not answer first."""
    return requests.post(f"{served['rasa']}/webhooks/whatsapp/agents/api/login", timeout=10,
                         json={"username": username, "password": password}, headers={"X-Real-IP": "198.51.100.7"})


def test_console_locks_an_account_after_repeated_failures_and_the_command_unlocks_it(served):
    for _ in range(5):
        assert console_login(served, "ravi", "not-the-password").status_code == 401
    refused = console_login(served, "ravi", AGENT_PASSWORD)  # even the right password, in the same words
    assert refused.status_code == 401 and refused.json() == console_login(served, "nobody", "x").json()
    env = {**served["env"], "CARDCARE_ENV": "production"}
    subprocess.run([sys.executable, "-m", "cardsystem.agents", "unlock", "ravi"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    assert console_login(served, "ravi", AGENT_PASSWORD).status_code == 200
    if NGINX:  # and the door itself lets an address try only a few times a minute
        statuses = {console_login_through_door(served, "ravi", "guess").status_code for _ in range(12)}
        assert 429 in statuses


def console_login_through_door(served, username: str, password: str) -> requests.Response:
    return requests.post(f"{served['door']}/webhooks/whatsapp/agents/api/login", timeout=10,
                         json={"username": username, "password": password})


def test_a_customer_document_reaches_the_agent_only_as_a_download(served):
    signed_in = requests.post(f"{served['rasa']}/webhooks/whatsapp/agents/api/login", timeout=10,
                              json={"username": "priya", "password": AGENT_PASSWORD})  # on duty first
    assert signed_in.status_code == 200
    assert "secure" in signed_in.headers["Set-Cookie"].lower()  # production: the session cookie is https-only
    agent = requests.Session()  # (this test speaks plain http to the door, so it sends the cookie itself)
    agent.headers["Cookie"] = "; ".join(f"{c.name}={c.value}" for c in signed_in.cookies)
    say(served, "I want to talk to a person")
    hostile = b"<html><script>document.title='pwned'</script></html>"
    media = {"mime_type": "text/plain", "filename": "receipt.html", "data": base64.b64encode(hostile).decode()}
    requests.post(f"{served['sandbox']}/_sandbox/send", json={"from": CUSTOMER, "name": "Test", "media": media},
                  timeout=10).raise_for_status()
    api = f"{served['door']}/webhooks/whatsapp/agents/api"
    deadline, stored = time.monotonic() + 30, None
    while stored is None and time.monotonic() < deadline:
        for ticket in agent.get(f"{api}/queue", timeout=10).json().get("queue", []):
            messages = agent.get(f"{api}/tickets/{ticket['reference']}/messages", timeout=10).json()["messages"]
            stored = next((m["attachment"]["stored"] for m in messages if (m.get("attachment") or {}).get("stored")),
                          None)
        time.sleep(0.5)
    assert stored, "the customer's document never reached the agents' queue"
    served_file = agent.get(f"{api}/media/{stored}", timeout=10)
    assert served_file.status_code == 200 and served_file.content == hostile
    assert served_file.headers["Content-Type"].startswith("application/octet-stream")
    assert served_file.headers["Content-Disposition"].startswith("attachment")
    assert served_file.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in served_file.headers["Content-Security-Policy"]
    assert requests.get(f"{api}/media/{stored}", timeout=10).status_code in (401, 403)  # no session, no file


def test_a_statement_link_works_through_the_door_for_an_hour_only(served, monkeypatch):
    from cardsystem import files

    monkeypatch.setenv("CARDCARE_FILES_SECRET", served["env"]["CARDCARE_FILES_SECRET"])
    monkeypatch.setenv("CARDCARE_FILES_BASE_URL", f"{served['door']}/webhooks/files/statements")
    link, _ = files.publish(served["work"] / "statements", b"%PDF-1.4 test", "statement.pdf")
    fetched = requests.get(link, timeout=10)
    assert fetched.status_code == 200 and fetched.content == b"%PDF-1.4 test"
    assert fetched.headers["Content-Disposition"].startswith("attachment")
    old, _ = files.publish(served["work"] / "statements", b"%PDF old", "statement.pdf", now=time.time() - 3601)
    assert requests.get(old, timeout=10).status_code == 404
    assert files.DEFAULT_TTL_SECONDS <= 3600
    token = link.split("/statements/", 1)[1].split("/", 1)[0]
    logs = [served["work"] / "serve.log"] + list((served["work"] / "nginx").glob("*.log"))
    assert all(token not in log.read_text(errors="replace") for log in logs)  # a link is a bearer token
    assert all(CUSTOMER not in log.read_text(errors="replace") for log in logs)  # nor full numbers


def worker_pid(port: int) -> int:
    """The Rasa worker serving `port` (from /proc: its command line names the port)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"deploy.rasa_server" in argv and str(port).encode() in argv:
                return int(entry.name)
    raise AssertionError(f"no Rasa worker on port {port}")


def test_a_killed_worker_is_started_again_while_the_other_answers(served):
    """(Last: it kills a worker.) SIGKILL one of the two: the customer is answered meanwhile,
    and make serve starts the worker again."""
    second = served["workers"][1]
    victim = worker_pid(second)
    os.kill(victim, signal.SIGKILL)
    other = "919800000005"  # one card (CUSTOMER is with an agent by now)
    assert "Outstanding" in json.dumps(say(served, "what's my balance", wait=60, customer=other))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{second}/webhooks/whatsapp/", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        raise AssertionError("the killed worker was not started again")
    assert worker_pid(second) != victim
    assert "starting it again" in served["log"].read_text()
    assert "minimum" in json.dumps(say(served, "what is the minimum due", customer=other)).lower()


def test_each_worker_is_told_its_share_of_the_customers():
    from connectors.whatsapp.channel import customer_share, worker_slot
    from deploy.serve import worker_env

    slots = [worker_slot(worker_env({"X": "1"}, n, 3)["CARDCARE_WORKER_SLOT"]) for n in range(3)]
    assert slots == [(0, 3), (1, 3), (2, 3)]
    assert worker_env({"X": "1"}, 0, 3)["X"] == "1"
    customers = [str(919810000000 + n) for n in range(300)]
    shares = [sum(customer_share(c, 3) == n for c in customers) for n in range(3)]
    assert sum(shares) == 300 and min(shares) > 60  # every customer in one share, the shares alike


def test_make_serve_refuses_a_port_another_process_holds():
    """The README's sandbox on 5006 beside `make serve WORKERS=2` (whose second worker takes
    RASA_PORT+1 = 5006) is refused up front, naming the port and what wanted it."""
    from deploy.serve import ports_in_use, settings

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        conf = settings({"RASA_PORT": str(taken - 1), "WORKERS": "2", "ACTION_PORT": str(free_port()),
                         "INGRESS_PORT": str(free_port()), "PUBLIC_HOST": "127.0.0.1", "PUBLIC_PORT": str(free_port())})
        found = ports_in_use(conf, nginx=True)
        assert f"port {taken}, for Rasa worker 2 (RASA_PORT+1), is in use by another process: stop it or choose " \
               "another port" in found
    assert not [line for line in ports_in_use(conf, nginx=True) if f"port {taken}," in line]  # free again


def test_stopping_ends_the_workers_before_the_action_server_they_call():
    """SIGTERM to each, workers first and waited for, then the rest (ingress, action server,
    nginx): a turn being answered ends with its worker, not against a vanished action server."""
    from deploy.serve import stop

    events = []

    class Process:
        def __init__(self, name):
            self.name, self.running = name, True

        def poll(self):
            return None if self.running else 0

        def terminate(self):
            events.append(("terminate", self.name))

        def wait(self, timeout):
            events.append(("exited", self.name))
            self.running = False

        def kill(self):  # pragma: no cover (they all exit in time)
            events.append(("kill", self.name))

    assert stop({name: Process(name) for name in ("ingress", "actions", "nginx", "rasa", "rasa2")}) == []
    assert events[:4] == [("terminate", "rasa"), ("terminate", "rasa2"), ("exited", "rasa"), ("exited", "rasa2")]
    assert sorted(events[4:]) == sorted([(e, n) for e in ("terminate", "exited") for n in ("ingress", "actions", "nginx")])


def test_stopping_kills_what_ignores_sigterm_and_says_so():
    from deploy.serve import stop, stopped_line

    class Process:
        def __init__(self, name, stubborn):
            self.name, self.stubborn, self.running, self.signals = name, stubborn, True, []

        def poll(self):
            return None if self.running else 0

        def terminate(self):
            self.signals.append("TERM")

        def wait(self, timeout=None):
            if self.stubborn and "KILL" not in self.signals:
                raise subprocess.TimeoutExpired("rasa", timeout)
            self.running = False

        def kill(self):
            self.signals.append("KILL")

    processes = {"rasa": Process("rasa", True), "actions": Process("actions", False)}
    killed = stop(processes)
    assert killed == ["rasa"] and processes["rasa"].signals == ["TERM", "KILL"]
    assert processes["actions"].signals == ["TERM"] and not any(p.running for p in processes.values())
    line = stopped_line(processes, killed)
    assert line.startswith("make serve: stopped (rasa, actions); rasa did not end within 20 s") and "was killed" in line
    assert stopped_line(processes, []) == ("make serve: stopped (rasa, actions). Messages recorded and not yet "
                                           "answered are answered at the next start.")
