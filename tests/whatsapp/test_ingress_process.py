"""The ingress as `make serve` runs it, a process of its own: a webhook it acknowledged survives
the ingress being killed (SIGKILL, no goodbye) before the channel database took it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from sqlalchemy import select

from cardsystem.db import dispose_engine, session_scope
from connectors.whatsapp.signature import sign
from connectors.whatsapp.store import ChannelStore, InboundRecord
from tests.servers import ROOT, free_port, wait_for
from tests.whatsapp.test_pieces import envelope, message

SECRET, PHONE_ID = "process-secret", "2222"
ABSENT_DATABASE = "postgresql://postgres@127.0.0.1:1/nowhere"  # (nothing listens on port 1: refused at once)


def start(workdir: Path, channel_url: str) -> "tuple[subprocess.Popen, str]":
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WHATSAPP_APP_SECRET": SECRET, "WHATSAPP_PHONE_NUMBER_ID": PHONE_ID,
           "WHATSAPP_NOTICES": "0", "CARDCARE_CHANNEL_DB_URL": channel_url,
           "CARDCARE_INGRESS_JOURNAL": str(workdir / "journal")}
    log = workdir / "ingress.log"
    process = subprocess.Popen([sys.executable, "-m", "connectors.whatsapp.ingress", "--port", str(port)], cwd=ROOT,
                               env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)
    wait_for(f"http://127.0.0.1:{port}/healthz", 60, process, log)
    return process, f"http://127.0.0.1:{port}"


def post(base: str, mid: str, words: str) -> requests.Response:
    raw = json.dumps(envelope(message("text", {"body": words}, mid), phone_id=PHONE_ID)).encode()
    return requests.post(f"{base}/webhooks/whatsapp/webhook", data=raw, timeout=10,
                         headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, SECRET)})


def test_acknowledged_webhooks_survive_a_killed_ingress_and_are_recorded_by_the_next(tmp_path):
    first, base = start(tmp_path, ABSENT_DATABASE)  # (starts, and answers, with its database away)
    try:
        answers = [post(base, f"wamid.k{n}", f"message {n}") for n in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        health = requests.get(f"{base}/healthz", timeout=5).json()
        assert health["backlog"] == 5
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)

    url = f"sqlite:///{tmp_path / 'channel.db'}"
    second, base = start(tmp_path, url)
    try:
        for _ in range(100):
            if requests.get(f"{base}/healthz", timeout=5).json()["backlog"] == 0:
                break
            time.sleep(0.1)
        store = ChannelStore(url)
        with session_scope(store.engine) as s:
            rows = [(r.message_id, r.text) for r in s.execute(select(InboundRecord).order_by(InboundRecord.id)).scalars()]
        assert rows == [(f"wamid.k{n}", f"message {n}") for n in range(5)]
        log = (tmp_path / "ingress.log").read_text()
        assert "5 webhooks taken before the last stop wait to be recorded" in log
        assert "uvloop)" in log  # (installed with Rasa's Sanic: the ingress's loop)
        assert SECRET not in log and "message 0" not in log  # no secret, no customer's words in the log
    finally:
        second.terminate()
        second.wait(10)
        dispose_engine(url)


def test_a_second_ingress_on_the_same_journal_refuses_to_start(tmp_path):
    first, _ = start(tmp_path, f"sqlite:///{tmp_path / 'channel.db'}")
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "WHATSAPP_APP_SECRET": SECRET, "WHATSAPP_PHONE_NUMBER_ID": PHONE_ID,
               "WHATSAPP_NOTICES": "0", "CARDCARE_CHANNEL_DB_URL": f"sqlite:///{tmp_path / 'channel.db'}",
               "CARDCARE_INGRESS_JOURNAL": str(tmp_path / "journal")}
        second = subprocess.run([sys.executable, "-m", "connectors.whatsapp.ingress", "--port", str(free_port())],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert "another ingress is using the journal" in second.stderr
    finally:
        first.terminate()
        first.wait(10)
