"""`python -m cardsystem.requests`, as an operator or cron runs it: list, show, set-status, run-sla,
figures; and the delay job run by two processes at once on PostgreSQL (several instances)."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import postgres_database, run_module

ROOT = Path(__file__).resolve().parent.parent


def run(env, *args, check=True):
    return run_module("cardsystem.requests", env, *args, check=check)


@pytest.fixture
def sqlite_env(tmp_path, seeded_template, signing_pair):
    (tmp_path / "cards.db").write_bytes(seeded_template.read_bytes())
    return {**os.environ, "CARDCARE_DB_URL": f"sqlite:///{tmp_path / 'cards.db'}", "PYTHONPATH": str(ROOT),
            "CARDCARE_PROOF_DIR": str(tmp_path / "proofs"), "CARDCARE_STATEMENT_DIR": str(tmp_path / "files"),
            "CARDCARE_SIGNING_KEY": str(signing_pair[0]), "CARDCARE_SIGNING_CERT": str(signing_pair[1])}


def test_list_show_set_status_and_figures(sqlite_env):
    rows = json.loads(run(sqlite_env, "list", "--json").stdout)
    assert rows and all(r["status"] in ("open", "in_progress", "needs_documents") for r in rows)
    reference = rows[0]["reference"]
    assert reference in run(sqlite_env, "list").stdout
    shown = json.loads(run(sqlite_env, "show", reference.lower()).stdout)
    assert shown["reference"] == reference and "*" in shown["customer"]["phone"]

    refused = run(sqlite_env, "set-status", reference, "resolved", check=False)
    assert refused.returncode == 1 and "resolution" in refused.stderr
    missing = run(sqlite_env, "set-status", "DSP000000ZZZZ", "resolved", "--note", "x", check=False)
    assert missing.returncode == 1 and "No request" in missing.stderr
    bad = run(sqlite_env, "run-sla", "--now", "yesterday", check=False)
    assert bad.returncode == 2 and "ISO" in bad.stderr

    done = run(sqlite_env, "set-status", reference, "needs_documents", "--note", "address proof", "--as", "ops")
    assert f"{reference} is now needs_documents" in done.stdout
    shown = json.loads(run(sqlite_env, "show", reference).stdout)
    assert shown["history"][-1]["actor"] == "cli:ops" and shown["needs"] == "address proof"
    assert shown["notices"][-1]["medium"] == "whatsapp" and "address proof" in shown["notices"][-1]["text"]
    figures = json.loads(run(sqlite_env, "figures", "--json").stdout)
    assert {f["kind"] for f in figures["kinds"]} >= {"dispute", "block_card"}
    assert "opened" in run(sqlite_env, "figures").stdout


def test_run_sla_with_a_given_now_is_idempotent(sqlite_env):
    late_moment = (dt.date.today() + dt.timedelta(days=60)).isoformat() + "T10:00"
    first = run(sqlite_env, "run-sla", "--now", late_moment).stdout
    assert "late (customer told the new date)" in first and "  late " in first
    again = run(sqlite_env, "run-sla", "--now", late_moment).stdout
    assert "0 late" in again and "0 escalated" in again
    overdue = json.loads(run(sqlite_env, "list", "--overdue", "--json").stdout)
    assert overdue == []   # each got a new date


@pytest.fixture
def postgres_url():
    with postgres_database("cardcare_desk") as name:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"


def test_two_instances_of_the_delay_job_on_postgresql_act_once_per_breach(postgres_url, tmp_path):
    env = {**os.environ, "CARDCARE_DB_URL": postgres_url, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "cardsystem.seed"], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=300)
    # more late work than the seed has: a limit request for every card
    subprocess.run([sys.executable, "-c", (
        "from cardsystem.service import CardSystem\n"
        "from cardsystem.models import Card\n"
        "from cardsystem.db import session_scope\n"
        "from sqlalchemy import select\n"
        "system = CardSystem()\n"
        "with session_scope(system.engine) as s:\n"
        "    cards = [(c.customer_id, c.last4, c.credit_limit_paise) for c in s.execute(select(Card).where(Card.status == 'active')).scalars()]\n"
        "for customer, last4, limit in cards:\n"
        "    system.request_limit_increase(customer, last4, limit + 1000000)\n")],
        cwd=ROOT, env=env, check=True, timeout=300)
    moment = (dt.date.today() + dt.timedelta(days=60)).isoformat() + "T10:00"
    command = [sys.executable, "-m", "cardsystem.requests", "run-sla", "--now", moment]
    runs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in runs]
    assert all(p.returncode == 0 for p in runs), outputs
    acted = [line.split()[-1] for out, _ in outputs for line in out.splitlines() if line.startswith("  late ")]
    assert len(acted) >= 10 and len(acted) == len(set(acted))   # every late request once, by one of the two

    import psycopg2

    with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT key FROM customer_notices")
        keys = [k for (k,) in cursor.fetchall()]
        cursor.execute("SELECT count(*) FROM service_request_history WHERE event = 'delay'")
        delays = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM service_requests WHERE breaches = 1")
        breached = cursor.fetchone()[0]
    assert len(keys) == len(set(keys)) == len(acted) == delays == breached
