"""Start the action server and Rasa on free local ports against a seeded temporary database."""
from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import requests

from deploy.serve import worker_env

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "cardcare.tar.gz"
RASA = str(Path(sys.executable).parent / "rasa")


_HANDED_OUT: set = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing listens on, outside the kernel's ephemeral range. A port taken with
    bind(0) comes from that range, so any outgoing connection made before the server binds it
    (PostgreSQL, Redis, HTTP: hundreds in a load test) may be given the same number, and the server
    then fails with "address already in use" (CI saw this once). Ports below the range are only
    ever taken by listeners; each is handed out once per process."""
    low = _ephemeral_low()
    rng = random.Random()
    if low > 12000:
        for _ in range(200):
            port = rng.randrange(10000, low)
            if port in _HANDED_OUT:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _HANDED_OUT.add(port)
    return port


def free_port_pair() -> int:
    """A port p with p+1 free too (make serve's workers take RASA_PORT and RASA_PORT+1)."""
    for _ in range(50):
        port = free_port()
        if port + 1 in _HANDED_OUT:
            continue
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        _HANDED_OUT.add(port + 1)
        return port
    raise RuntimeError("no two free ports in a row")


def wait_for(url: str, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early; see {log}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout}s; see {log}")


class Bot:
    """A running bot: action server + Rasa with the REST channel and the HTTP API."""

    def __init__(self, rasa_url: str, workdir: Path, env: Dict[str, str]) -> None:
        self.url = rasa_url
        self.workdir = workdir
        self.env = env

    def say(self, sender: str, text: str, metadata: Optional[dict] = None) -> list:
        body = {"sender": sender, "message": text, **({"metadata": metadata} if metadata else {})}
        response = requests.post(f"{self.url}/webhooks/rest/webhook", json=body, timeout=60)
        response.raise_for_status()
        return response.json()


class Servers:
    """The action server and Rasa as processes of their own, against a seeded card system in
    `workdir`: started, killed and restarted separately (the fault benchmark does all three).
    Conversations are kept in memory unless `sql_tracker` (the SQLite store `make run` uses) or
    `postgres` (database names by part, postgres_stores(): PostgreSQL for conversations, card
    system, channel and actions, Redis for the locks, as make serve runs them). `workers` Rasa
    processes (each its own port; the first is `rasa`) answer what the ingress records."""

    def __init__(self, workdir: Path, today: Optional[str] = None, extra_env: Optional[Dict[str, str]] = None,
                 sql_tracker: bool = False, rasa_port: Optional[int] = None, ingress: bool = False,
                 customers: Optional[int] = None, seed: bool = True, postgres: Optional[Dict[str, str]] = None,
                 workers: int = 1) -> None:
        self.workdir = workdir
        self.ingress_port = free_port() if ingress else None
        self.action_port, self.rasa_port = free_port(), rasa_port or free_port()
        self.worker_ports = [self.rasa_port] + [free_port() for _ in range(workers - 1)]
        if postgres:
            extra_env = {"CARDCARE_DB_URL": pg_url(postgres["cards"]), "CARDCARE_CHANNEL_DB_URL": pg_url(postgres["channel"]),
                         "CARDCARE_ACTIONS_DB_URL": pg_url(postgres["actions"]), **(extra_env or {})}
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CARDCARE_DB_URL": f"sqlite:///{workdir / 'cards.db'}",
            "CARDCARE_STATEMENT_DIR": str(workdir / "statements"),
            "CARDCARE_PAYMENT_LINK_SECRET": "e2e-payment-secret",
            "CARDCARE_FILES_SECRET": "e2e-files-secret",
            "CARDCARE_FILES_BASE_URL": f"http://127.0.0.1:{self.rasa_port}/webhooks/files/statements",
            "CARDCARE_CHANNEL_DB_URL": f"sqlite:///{workdir / 'channel.db'}",
            "CARDCARE_INGRESS_JOURNAL": str(workdir / "ingress-journal"),
            "CARDCARE_MEDIA_DIR": str(workdir / "media"),
            "CARDCARE_PROOF_DIR": str(workdir / "proofs"),
            "CARDCARE_SIGNING_KEY": str(workdir / "signing" / "dev-signing-key.pem"),
            "CARDCARE_SIGNING_CERT": str(workdir / "signing" / "dev-signing-cert.pem"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
            **({"WHATSAPP_INGRESS": "1"} if ingress else {}),
            **(extra_env or {}),
        }
        seed_args = [sys.executable, "-m", "cardsystem.seed"] + (["--today", today] if today else []) + \
            (["--customers", str(customers)] if customers is not None else [])
        if seed:
            subprocess.run(seed_args, cwd=ROOT, env=self.env, check=True, capture_output=True)
        from cardsystem.requests.proof import ensure_dev_pair
        ensure_dev_pair(workdir / "signing")  # the run's own signing pair (proofs of resolution)
        self.endpoints = workdir / "endpoints.yml"
        tracker = ("tracker_store:\n  type: components.tracker_store.RecentTurnsSQLTrackerStore\n  dialect: sqlite\n"
                   f"  db: {workdir / 'tracker.db'}\n" if sql_tracker else "")  # (as endpoints.yml keeps them)
        if postgres:  # (as endpoints.production.yml keeps them)
            tracker = ("tracker_store:\n  type: components.tracker_store.RecentTurnsSQLTrackerStore\n"
                       f"  dialect: postgresql\n  url: 127.0.0.1\n  port: 5432\n  username: postgres\n"
                       f"  db: {postgres['tracker']}\nlock_store:\n  type: components.lock_store.AtomicRedisLockStore\n  url: 127.0.0.1\n  port: 6379\n"
                       f"  db: 1\n  key_prefix: {postgres['tracker'].replace('_', '')}\n")
        self.endpoints.write_text(f'action_endpoint:\n  url: "http://127.0.0.1:{self.action_port}/webhook"\n'
                                  f"  enable_selective_domain: true\n{tracker}")  # (as endpoints.yml)
        self.action_log, self.rasa_log = workdir / "actions.log", workdir / "rasa.log"
        self.actions: Optional[subprocess.Popen] = None
        self.workers: List[Optional[subprocess.Popen]] = [None] * workers
        self.ingress: Optional[subprocess.Popen] = None

    @property
    def rasa(self) -> Optional[subprocess.Popen]:
        return self.workers[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rasa_port}"

    @property
    def webhook_url(self) -> str:
        """Where WhatsApp's webhooks go: the ingress when there is one, else Rasa's own route."""
        base = f"http://127.0.0.1:{self.ingress_port}" if self.ingress_port else self.url
        return f"{base}/webhooks/whatsapp/webhook"

    def start_ingress(self) -> None:
        log = self.workdir / "ingress.log"
        self.ingress = subprocess.Popen(
            [sys.executable, "-m", "connectors.whatsapp.ingress", "--host", "127.0.0.1", "--port", str(self.ingress_port)],
            cwd=ROOT, env=self.env, stdout=log.open("a"), stderr=subprocess.STDOUT)
        wait_for(f"http://127.0.0.1:{self.ingress_port}/healthz", 60, self.ingress, log)

    def start_actions(self, wait: bool = True) -> None:
        self.actions = subprocess.Popen(
            [sys.executable, "-m", "deploy.action_server", "--host", "127.0.0.1", "--port", str(self.action_port)],
            cwd=ROOT, env=self.env, stdout=self.action_log.open("a"), stderr=subprocess.STDOUT)
        if wait:
            wait_for(f"http://127.0.0.1:{self.action_port}/health", 120, self.actions, self.action_log)

    def start_rasa(self, wait: bool = True, worker: Optional[int] = None) -> None:
        """Every worker (or the one numbered `worker`, from 0); with `wait`, until it answers."""
        numbers = range(len(self.workers)) if worker is None else [worker]
        for number in numbers:
            log = self.rasa_log if number == 0 else self.workdir / f"rasa{number + 1}.log"
            self.workers[number] = subprocess.Popen(
                [RASA, "run", "--enable-api", "--port", str(self.worker_ports[number]), "-i", "127.0.0.1", "-m",
                 str(MODEL), "--endpoints", str(self.endpoints), "--credentials", str(ROOT / "credentials.yml")],
                cwd=ROOT, env=worker_env(self.env, number, len(self.workers)), stdout=log.open("a"),
                stderr=subprocess.STDOUT)
        for number in numbers if wait else []:
            log = self.rasa_log if number == 0 else self.workdir / f"rasa{number + 1}.log"
            wait_for(f"http://127.0.0.1:{self.worker_ports[number]}/status", 300, self.workers[number], log)

    def stop(self) -> None:
        running = [p for p in (*self.workers, self.actions, self.ingress) if p is not None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def running_bot(workdir: Path, today: Optional[str] = None, extra_env: Optional[Dict[str, str]] = None,
                sql_tracker: bool = False, rasa_port: Optional[int] = None) -> Iterator[Bot]:
    """Seed a card system in `workdir`, start both servers, stop them afterwards."""
    servers = Servers(workdir, today, extra_env, sql_tracker, rasa_port)
    try:
        servers.start_actions()
        servers.start_rasa()
        yield Bot(servers.url, workdir, servers.env)
    finally:
        servers.stop()


def start_sandbox(workdir: Path, bot_url: str, env: Optional[Dict[str, str]] = None) -> "tuple[subprocess.Popen, str]":
    """The WhatsApp sandbox (Graph API stand-in and customers' phones) posting to `bot_url`."""
    port, log = free_port(), workdir / "sandbox.log"
    sandbox = subprocess.Popen([sys.executable, "-m", "connectors.sandbox", "--port", str(port), "--bot-url", bot_url],
                               cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/_sandbox/personas", 120, sandbox, log)
    except RuntimeError:
        sandbox.kill()
        raise
    return sandbox, url


@contextmanager
def running_whatsapp_bot(workdir: Path, extra_env: Optional[Dict[str, str]] = None) -> Iterator["tuple[str, Bot]"]:
    """The whole WhatsApp path: the sandbox (Graph API stand-in and customer phones) posting
    signed webhooks to a running bot whose channel answers through the sandbox."""
    rasa_port = free_port()
    sandbox, sandbox_url = start_sandbox(workdir, f"http://127.0.0.1:{rasa_port}/webhooks/whatsapp/webhook")
    try:
        # The desk worker (in the action server) sends what the bank writes first every few minutes,
        # whatever the day's date makes due: statement notices, payment reminders, delay notices.
        # Here they go only where a test sends them (`python -m cardsystem.reminders run`, as cron
        # would), never into the middle of another conversation: a date on which Ananya's statement
        # notice and Rohan's reminder were due failed "nothing changed" and "one menu" once.
        env = {"WHATSAPP_API_BASE": sandbox_url, "CARDCARE_DESK_WORKER": "0", **(extra_env or {})}
        with running_bot(workdir, rasa_port=rasa_port, extra_env=env) as bot:
            subprocess.run([sys.executable, "-m", "cardsystem.agents", "demo"], cwd=ROOT, env=bot.env, check=True,
                           capture_output=True)
            yield sandbox_url, bot
    finally:
        sandbox.terminate()
        try:
            sandbox.wait(timeout=20)
        except subprocess.TimeoutExpired:  # (a stand-in, not under test here: it must not fail a test)
            sandbox.kill()
            sandbox.wait()


PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
PG_PARTS = ("cards", "channel", "tracker", "actions")


def pg_url(name: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def pg_admin(statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(connect_timeout=5, **PG_ADMIN)
    connection.autocommit = True
    try:
        connection.cursor().execute(statement)
    finally:
        connection.close()


@contextmanager
def postgres_stores(prefix: str, cards_template: Optional[str] = None) -> Iterator[Dict[str, str]]:
    """Fresh PostgreSQL databases for a run's card system, channel, conversations and actions
    (the card system copied from `cards_template` when given), dropped afterwards."""
    import uuid

    names = {part: f"{prefix}_{uuid.uuid4().hex[:8]}_{part}" for part in PG_PARTS}
    try:
        for part, name in names.items():
            pg_admin(f"CREATE DATABASE {name}" + (f" TEMPLATE {cards_template}" if part == "cards" and cards_template
                                                  else ""))
        yield names
    finally:
        for name in names.values():
            pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of its own on 127.0.0.1:5432 (trust auth), dropped afterwards; its name.
    Skips the test when no PostgreSQL answers."""
    import uuid

    import psycopg2
    import pytest

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is needed here: {exc}")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


class Phone:
    """A customer's WhatsApp, through the sandbox: say something, get what the bot sent back."""

    def __init__(self, sandbox_url: str, wa_id: str) -> None:
        self.url, self.wa_id = sandbox_url, wa_id
        self.seen = len(self._messages(0))

    def _messages(self, after: int) -> list:
        return requests.get(f"{self.url}/_sandbox/messages", params={"to": self.wa_id, "after": after}, timeout=10).json()

    def send(self, text: str = "", reply: Optional[dict] = None, media: Optional[dict] = None,
             quiet: float = 1.2, timeout: float = 40.0) -> list:
        """Send one message; return the bot's messages once it has been quiet for `quiet` seconds."""
        body: Dict[str, object] = {"from": self.wa_id, "name": "Customer"}
        if reply:
            body["reply"] = reply
        elif media:
            body["media"] = media
        else:
            body["text"] = text
        response = requests.post(f"{self.url}/_sandbox/send", json=body, timeout=15).json()
        assert response.get("bot_status") == 200, response
        deadline = time.monotonic() + timeout
        got: list = []
        last_change = time.monotonic()
        while time.monotonic() < deadline:
            now = self._messages(self.seen)
            if len(now) != len(got):
                got, last_change = now, time.monotonic()
            elif got and time.monotonic() - last_change >= quiet:
                break
            time.sleep(0.15)
        self.seen += len(got)
        return [m["message"] for m in got]


def run_module(module: str, env: Dict[str, str], *args: str, check: bool = True,
               timeout: float = 180) -> "subprocess.CompletedProcess[str]":
    """`python -m module args` as an operator runs it (the repository's root, this environment)."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr
    return done


_BLUEPRINT_APPS = itertools.count()


async def serve_blueprint(blueprint, prefix: str) -> "tuple[object, str]":
    """A Sanic app serving one blueprint under `prefix` on a free loopback port: (server, its base URL).
    Close it with `await server.close()`."""
    from sanic import Sanic

    app = Sanic(f"blueprint_test_{next(_BLUEPRINT_APPS)}")  # Sanic wants a new name per app
    Sanic.test_mode = True
    app.blueprint(blueprint, url_prefix=prefix)
    server = await app.create_server(host="127.0.0.1", port=free_port(), return_asyncio_server=True)
    await server.startup()
    await server.after_start()
    return server, f"http://127.0.0.1:{server.server.sockets[0].getsockname()[1]}{prefix}"
