"""The agent console's locked doors, on a real Sanic server: sign-in lockout per account and per
address, JSON-only posts, agent and supervisor roles, and customers' files served as downloads."""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import re
from types import SimpleNamespace

import aiohttp
import pytest
import pytest_asyncio
from sanic import Blueprint, Sanic

from cardsystem import agents as agents_cli
from cardsystem.accounts import TooManyAttempts
from cardsystem.handoff import Forbidden, HandoffDesk, HandoffSettings
from connectors.handoff.console import add_console_routes, client_address
from connectors.whatsapp.media import MediaStore
from tests.conftest import DISPUTE, NOW, ONE_CARD, TWO_CARDS
from tests.servers import free_port
from tests.whatsapp.test_handoff_channel import Console, desk_with_agents
from tests.test_handoff import open_for, system  # noqa: F401  (on SQLite and on PostgreSQL)

pytestmark = pytest.mark.asyncio
_names = itertools.count()
WRONG = "Wrong username or password, or the account is locked after too many attempts."
CLIENT = "203.0.113.7"  # the address the local proxy says the browser has


@pytest.fixture
def desk(system):
    desk = desk_with_agents(system)
    desk.accounts.create_agent("meera", "Meera", "supervisor-password", role="supervisor")
    return desk


@pytest_asyncio.fixture
async def start_console(desk, tmp_path):
    """Serve the console of `desk` (optionally with other sign-in limits); returns (desk, base URL)."""
    servers = []

    async def start(settings=None):
        served = desk
        if settings is not None:
            served = HandoffDesk(desk.system, settings)
            served.clock = desk.clock
        channel = SimpleNamespace(desk=served, media=MediaStore(tmp_path / "media"))  # no customer is written to
        app = Sanic(f"console_security_{next(_names)}")
        Sanic.test_mode = True
        blueprint = Blueprint(f"console_{next(_names)}")
        add_console_routes(blueprint, channel, on_new_message=None)
        app.blueprint(blueprint, url_prefix="/webhooks/whatsapp")
        server = await app.create_server(host="127.0.0.1", port=free_port(), return_asyncio_server=True)
        await server.startup()
        await server.after_start()
        servers.append(server)
        return served, f"http://127.0.0.1:{server.server.sockets[0].getsockname()[1]}/webhooks/whatsapp"

    yield start
    for server in servers:
        await server.close()


class Browser(Console):
    """One browser behind the local proxy (which says where it is in X-Real-IP)."""

    def __init__(self, base: str, address: str = CLIENT) -> None:
        super().__init__(base, headers={"X-Real-IP": address})

    async def raw(self, method, path, **options):
        async with self.http.request(method, f"{self.base}{path}", **options) as answer:
            return answer.status, answer.headers, await answer.read()

    async def close(self):
        await self.http.close()


def actions(desk):
    return [a["action"] for a in desk.system.audit_entries()]


# -- sign-in: lockout per account and per address ----------------------------------------------

async def test_wrong_passwords_lock_the_account_even_against_the_right_one_until_unlocked(
        start_console, monkeypatch):
    desk, base = await start_console()
    browser = Browser(base)
    try:
        for _ in range(desk.settings.lock_after):
            assert await browser.login("priya", "guessing-wrong") == (401, {"error": WRONG})
        # locked: the right password is refused, in the very words of a wrong one or an unknown name
        assert await browser.login("priya", "a-long-password") == (401, {"error": WRONG})
        assert await browser.login("nobody-here", "a-long-password") == (401, {"error": WRONG})
        assert desk.accounts.locked_until("priya") == NOW + dt.timedelta(minutes=15)
        monkeypatch.setenv("CARDCARE_DB_URL", desk.system.settings.db_url)
        assert agents_cli.main(["unlock", "priya"]) == 0
        assert desk.accounts.locked_until("priya") is None
        status, data = await browser.login("priya", "a-long-password")
        assert status == 200 and data["agent"] == {"username": "priya", "first_name": "Priya", "role": "agent"}
    finally:
        await browser.close()
    failures = [a for a in desk.system.audit_entries() if a["action"] == "agent_sign_in_failed"]
    assert len(failures) == 7 and {f["details"]["address"] for f in failures} == {CLIENT}
    assert [f["details"]["locked"] for f in failures if f["entity_id"] == "priya"] == [False] * 5 + [True]
    # a name that is no account is not recorded (it may be a password typed into the wrong box)
    assert [f["entity_id"] for f in failures if f["entity_id"] != "priya"] == ["(unknown account)"]
    locked = [a for a in desk.system.audit_entries() if a["action"] == "agent_locked"]
    assert len(locked) == 1 and locked[0]["entity_id"] == "priya" and locked[0]["details"]["failures"] == 5
    assert ("admin", "agent_unlocked") in {(a["actor"], a["action"]) for a in desk.system.audit_entries()}
    assert "guessing-wrong" not in str(desk.system.audit_entries())  # passwords are never recorded


async def test_a_lock_lapses_and_a_success_starts_the_count_again(desk):
    for _ in range(4):
        assert desk.accounts.sign_in("priya", "guessing-wrong") is None
    assert desk.accounts.sign_in("priya", "a-long-password") is not None  # resets the count
    for _ in range(4):
        assert desk.accounts.sign_in("priya", "guessing-wrong") is None
    assert desk.accounts.sign_in("priya", "a-long-password") is not None and "agent_locked" not in actions(desk)
    for _ in range(5):
        desk.accounts.sign_in("priya", "guessing-wrong")
    assert desk.accounts.sign_in("priya", "a-long-password") is None and desk.accounts.locked_until("priya")
    desk.clock.moment += dt.timedelta(minutes=15, seconds=1)
    assert desk.accounts.sign_in("priya", "a-long-password") is not None  # the lock lapsed


async def test_an_address_that_keeps_failing_is_refused_with_429(start_console, monkeypatch):
    desk, base = await start_console(HandoffSettings(address_limit=3))
    guesser, colleague = Browser(base), Browser(base, "203.0.113.8")
    try:
        for username in ("priya", "rahul", "someone"):  # different accounts: none of them locks
            assert (await guesser.login(username, "guessing-wrong"))[0] == 401
        async with guesser.http.post(f"{guesser.api}/login", json={"username": "priya",
                                                                     "password": "a-long-password"}) as answer:
            assert answer.status == 429 and answer.headers["Content-Type"].startswith("application/json")
            assert 0 < int(answer.headers["Retry-After"]) <= 900
            assert "Too many failed sign-ins from this address" in (await answer.json())["error"]
        assert (await colleague.login("priya", "a-long-password"))[0] == 200  # another address is not refused
        monkeypatch.setenv("CARDCARE_DB_URL", desk.system.settings.db_url)
        assert agents_cli.main(["unlock", "priya", "--address", CLIENT]) == 0
        assert (await guesser.login("priya", "a-long-password"))[0] == 200
        for _ in range(3):
            await guesser.login("rahul", "guessing-wrong")
        assert (await guesser.login("priya", "a-long-password"))[0] == 429
        desk.clock.moment += dt.timedelta(minutes=15, seconds=1)  # the failures left the window
        assert (await guesser.login("priya", "a-long-password"))[0] == 200
    finally:
        await guesser.close()
        await colleague.close()
    assert actions(desk).count("address_locked") == 2 and "address_unlocked" in actions(desk)
    assert desk.accounts.locked_until("rahul") is None  # three failures: under the account's limit


async def test_twenty_failures_from_one_address_refuse_it_by_default(desk):
    for attempt in range(20):
        assert desk.accounts.sign_in(f"guess{attempt}", "guessing-wrong", "198.51.100.1") is None
    with pytest.raises(TooManyAttempts) as refused:
        desk.accounts.sign_in("priya", "a-long-password", "198.51.100.1")
    assert refused.value.retry_after == 15 * 60
    assert desk.accounts.sign_in("priya", "a-long-password", "198.51.100.2") is not None
    desk.clock.moment += dt.timedelta(minutes=5)  # a restart or another instance: the count is in the database
    assert pytest.raises(TooManyAttempts, HandoffDesk(desk.system, HandoffSettings()).accounts.sign_in, "priya",
                         "a-long-password", "198.51.100.1").value.retry_after == 10 * 60


async def test_forwarded_addresses_are_believed_only_from_the_local_proxy():
    def request(peer, **headers):
        return SimpleNamespace(ip=peer, headers=headers)

    assert client_address(request("127.0.0.1", **{"x-real-ip": CLIENT})) == CLIENT
    assert client_address(request("::1", **{"x-forwarded-for": "10.0.0.9, 203.0.113.9"})) == "203.0.113.9"
    assert client_address(request("198.51.100.4", **{"x-real-ip": CLIENT})) == "198.51.100.4"  # spoofed
    assert client_address(request("127.0.0.1", **{"x-real-ip": "not an address"})) == "127.0.0.1"
    assert client_address(request("127.0.0.1")) == "127.0.0.1"


# -- JSON only: no login CSRF, no cross-site form posts -----------------------------------------

async def test_sign_in_and_posts_take_json_only(start_console, monkeypatch):
    desk, base = await start_console()
    ticket = open_for(desk, ONE_CARD)
    browser = Browser(base)
    login = '{"username": "priya", "password": "a-long-password"}'
    try:
        for kind, body in (("text/plain", login), ("application/x-www-form-urlencoded",
                                                    "username=priya&password=a-long-password")):
            status, headers, answer = await browser.raw("POST", "/agents/api/login", data=body,
                                                        headers={"Content-Type": kind})
            assert status == 415 and b"Send JSON" in answer
        form = aiohttp.FormData({"username": "priya", "password": "a-long-password"})
        form.add_field("file", b"x", filename="x.txt")  # multipart
        assert (await browser.raw("POST", "/agents/api/login", data=form))[0] == 415
        assert "agent_sign_in" not in actions(desk)  # not even tried
        async with browser.http.post(f"{browser.api}/login", data=login.encode(),
                                     headers={"Content-Type": "application/json; charset=utf-8"}) as answer:
            assert answer.status == 200
            browser.csrf = (await answer.json())["csrf"]
            cookie = answer.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
        note = f"/agents/api/tickets/{ticket.reference}/note"
        for kind, body in (("application/x-www-form-urlencoded", "text=hello"), ("text/plain", '{"text": "hello"}'),
                           ("application/x-www-form-urlencoded", "")):  # a form with no fields too
            status, _, _ = await browser.raw("POST", note, data=body,
                                             headers={"Content-Type": kind, "X-CSRF-Token": browser.csrf})
            assert status == 415
        assert not [m for m in desk.messages_since(ticket.reference, 0) if m["author"] == "note"]
        assert await browser.post(f"/tickets/{ticket.reference}/note", {"text": "hello"}) == (200, {"saved": True})
        status, _, _ = await browser.raw("POST", "/agents/api/logout", headers={"X-CSRF-Token": browser.csrf})
        assert status == 200  # no body at all is fine
    finally:
        await browser.close()
    monkeypatch.setenv("CARDCARE_ENV", "production")
    _, production = await start_console()
    browser = Browser(production)
    try:
        async with browser.http.post(f"{browser.api}/login", json={"username": "rahul",
                                                                   "password": "another-long-password"}) as answer:
            assert answer.status == 200 and "Secure" in answer.headers["Set-Cookie"]
    finally:
        await browser.close()


async def test_every_console_response_carries_the_security_headers(start_console):
    desk, base = await start_console()
    browser = Browser(base)
    try:
        status, headers, page = await browser.raw("GET", "/agents")
        assert status == 200
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "style-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        # the page fits its policy: its script and style are files of its own, nothing inline
        scripts = [b'<script src="/webhooks/whatsapp/agents/console.js"></script>',
                   b'<script src="/webhooks/whatsapp/agents/requests.js"></script>']
        assert all(script in page for script in scripts) and page.count(b"<script") == len(scripts)  # no inline script
        assert b"<style" not in page and b"style=" not in page and not re.search(rb"\son[a-z]+=", page)
        for path in ("/agents", "/agents/console.js", "/agents/requests.js", "/agents/api/queue", "/agents/api/me",
                     "/agents/api/requests", "/agents/api/figures", "/agents/api/alerts"):
            _, headers, _ = await browser.raw("GET", path)
            assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Referrer-Policy"] == "no-referrer"
    finally:
        await browser.close()


# -- roles: an agent's own chats, a supervisor's all ------------------------------------------------

def three_chats(desk):
    """A waiting chat (with notes by Rahul and Priya), Rahul's active chat, Rahul's closed chat."""
    by_name = {agent.username: agent for agent in desk.accounts.agents()}
    priya, rahul, meera = by_name["priya"], by_name["rahul"], by_name["meera"]
    waiting, rahuls, closed = open_for(desk, ONE_CARD), open_for(desk, TWO_CARDS), open_for(desk, DISPUTE)
    desk.note(waiting.reference, rahul, "rahul's private thought")
    desk.note(waiting.reference, priya, "priya's private thought")
    desk.claim(rahuls.reference, rahul)
    desk.note(rahuls.reference, rahul, "customer sounds upset")
    desk.claim(closed.reference, rahul)
    desk.close(closed.reference, rahul, "sorted")
    return (priya, rahul, meera), (waiting, rahuls, closed)


async def test_an_agent_sees_and_touches_only_waiting_chats_and_their_own(start_console, desk):
    (priya, rahul, meera), (waiting, rahuls, closed) = three_chats(desk)
    assert (priya.role, rahul.role, meera.role) == ("agent", "agent", "supervisor")
    _, base = await start_console()
    browser = Browser(base)
    try:
        await browser.login("priya", "a-long-password")
        status, queue = await browser.get("/queue")
        assert status == 200 and [r["reference"] for r in queue["queue"]] == [waiting.reference]
        for reference in (rahuls.reference, closed.reference):
            for path in (f"/tickets/{reference}", f"/tickets/{reference}/messages?after=0"):
                status, answer = await browser.get(path)
                assert status == 403 and answer == {"error": "This chat is not yours to open."}
            for action, body in (("note", {"text": "sneaky"}), ("reply", {"text": "hi"}),
                                 ("close", {"resolution": "done"}), ("claim", {}),
                                 ("transfer", {"to": "priya"})):
                assert (await browser.post(f"/tickets/{reference}/{action}", body))[0] == 403
        status, detail = await browser.get(f"/tickets/{waiting.reference}")
        notes = [m["text"] for m in detail["messages"] if m["author"] == "note"]
        assert status == 200 and notes == ["priya's private thought"]  # not Rahul's
        status, polled = await browser.get(f"/tickets/{waiting.reference}/messages?after=0")
        assert [m["text"] for m in polled["messages"] if m["author"] == "note"] == ["priya's private thought"]
    finally:
        await browser.close()
    assert "sneaky" not in str(desk.messages_since(rahuls.reference, 0))
    with pytest.raises(Forbidden):
        desk.transfer(rahuls.reference, priya, "meera")


async def test_a_supervisor_sees_every_chat_and_note_and_may_transfer(start_console, desk):
    (priya, rahul, meera), (waiting, rahuls, closed) = three_chats(desk)
    _, base = await start_console()
    browser = Browser(base)
    try:
        status, me = await browser.login("meera", "supervisor-password")
        assert status == 200 and me["agent"]["role"] == "supervisor"
        status, queue = await browser.get("/queue")
        assert [(r["reference"], r["status"]) for r in queue["queue"]] == [
            (waiting.reference, "queued"), (rahuls.reference, "active"), (closed.reference, "closed")]
        status, detail = await browser.get(f"/tickets/{waiting.reference}")
        assert [m["text"] for m in detail["messages"] if m["author"] == "note"] == [
            "rahul's private thought", "priya's private thought"]
        status, detail = await browser.get(f"/tickets/{closed.reference}")
        assert status == 200 and detail["status"] == "closed"
        assert (await browser.get(f"/tickets/{rahuls.reference}/messages?after=0"))[0] == 200
    finally:
        await browser.close()
    _, to = desk.transfer(rahuls.reference, meera, "priya")  # a supervisor moves a colleague's chat
    assert to.username == "priya" and desk.ticket(rahuls.reference, priya)["agent"]["username"] == "priya"
    with pytest.raises(Forbidden):
        desk.ticket(rahuls.reference, rahul)  # not his any more


# -- customers' files ---------------------------------------------------------------------------------

def keep_file(desk, media, reference, content, mime_type, filename=None):
    """A file the customer sent in a chat, kept as the channel keeps it."""
    key = media.save(content, mime_type, hashlib.sha256(content).hexdigest())
    desk.customer_said(reference, "[document]", {"kind": "document", "mime_type": mime_type, "filename": filename,
                                                  "stored": key})
    return key


async def test_customer_files_are_downloads_that_cannot_run(start_console, desk, tmp_path):
    (priya, rahul, meera), (waiting, rahuls, closed) = three_chats(desk)
    media = MediaStore(tmp_path / "media")
    page = keep_file(desk, media, waiting.reference, b"<script>alert(document.cookie)</script>", "text/html",
                     'evil".html')
    svg = keep_file(desk, media, waiting.reference, b"<svg onload=alert(1)>", "image/svg+xml")
    pdf = keep_file(desk, media, waiting.reference, b"%PDF-1.7 receipt", "application/pdf", "receipt.pdf")
    rahuls_photo = keep_file(desk, media, rahuls.reference, b"\x89PNG photo", "image/png")
    loose = media.save(b"not in any chat", "image/png", hashlib.sha256(b"not in any chat").hexdigest())
    _, base = await start_console()
    browser = Browser(base)
    try:
        await browser.login("priya", "a-long-password")
        status, headers, body = await browser.raw("GET", f"/agents/api/media/{page}")
        assert status == 200 and body.startswith(b"<script>")
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"] == 'attachment; filename="evil_.html.bin"'
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
        assert headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
        assert headers["X-Frame-Options"] == "DENY"
        status, headers, _ = await browser.raw("GET", f"/agents/api/media/{svg}")
        assert headers["Content-Type"] == "application/octet-stream" and "attachment" in headers["Content-Disposition"]
        status, headers, body = await browser.raw("GET", f"/agents/api/media/{pdf}")
        assert status == 200 and body == b"%PDF-1.7 receipt" and headers["Content-Type"] == "application/pdf"
        assert headers["Content-Disposition"] == 'attachment; filename="receipt.pdf"'
        assert headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
        assert (await browser.raw("GET", f"/agents/api/media/{rahuls_photo}"))[0] == 403  # Rahul's chat
        assert (await browser.raw("GET", f"/agents/api/media/{loose}"))[0] == 404  # in no chat: no way in
        assert (await browser.raw("GET", "/agents/api/media/..%2Fcards.db"))[0] == 404
    finally:
        await browser.close()
    supervisor = Browser(base)
    try:
        await supervisor.login("meera", "supervisor-password")
        status, headers, _ = await supervisor.raw("GET", f"/agents/api/media/{rahuls_photo}")
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert headers["Content-Disposition"].startswith("attachment; filename=")
    finally:
        await supervisor.close()
    assert ("agent:priya", "agent_file") in {(a["actor"], a["action"]) for a in desk.system.audit_entries()}


# -- the command line -----------------------------------------------------------------------------

async def test_accounts_have_roles_from_the_command_line(system, monkeypatch, capsys):
    monkeypatch.setenv("CARDCARE_DB_URL", system.settings.db_url)
    monkeypatch.setenv("CARDCARE_AGENT_PASSWORD", "a-long-password")
    assert agents_cli.main(["add", "anil", "--first-name", "Anil", "--role", "supervisor"]) == 0
    assert agents_cli.main(["add", "bela", "--first-name", "Bela"]) == 0
    assert agents_cli.main(["demo"]) == 0
    assert "username meera, password cardcare-demo-supervisor" in capsys.readouterr().out
    assert agents_cli.main(["list"]) == 0
    listed = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()}
    assert listed == {"anil": "supervisor", "asha": "agent", "bela": "agent", "meera": "supervisor"}
    assert agents_cli.main(["unlock", "nobody"]) == 1
    with pytest.raises(SystemExit):
        agents_cli.main(["unlock", "anil", "--address", "not-an-ip"])
    monkeypatch.setenv("CARDCARE_ENV", "production")
    monkeypatch.setenv("CARDCARE_PAYMENT_LINK_SECRET", "a-production-secret")
    assert agents_cli.main(["demo"]) == 1
