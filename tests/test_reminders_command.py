"""`python -m cardsystem.reminders` as an operator or cron runs it: templates check and list, run with
a given --now (idempotent), report; and two schedulers at once on PostgreSQL queue each reminder once."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.servers import postgres_database, run_module

ROOT = Path(__file__).resolve().parent.parent


def run(env, *args, check=True):
    return run_module("cardsystem.reminders", env, *args, check=check)


def due_in(url, day, days=5):
    """Every card's bill due `days` after the given (local) date, with a minimum to pay."""
    engine = create_engine(url)
    with engine.begin() as db:
        db.execute(text("UPDATE cards SET due_date = :due, minimum_due_paise = 50000, outstanding_paise = 300000"),
                   {"due": day + dt.timedelta(days=days)})
    engine.dispose()


def test_templates_run_and_report_from_the_command_line(tmp_path, seeded_template):
    (tmp_path / "cards.db").write_bytes(seeded_template.read_bytes())
    url = f"sqlite:///{tmp_path / 'cards.db'}"
    env = {**os.environ, "CARDCARE_DB_URL": url, "PYTHONPATH": str(ROOT)}
    checked = run(env, "templates", "check").stdout
    assert "ok  payment_due_reminder (en, utility): 4 parameters, 4 buttons" in checked
    assert "NOT SUBMITTED" in run(env, "templates", "list").stdout
    due_in(url, dt.date(2026, 12, 5))
    first = run(env, "run", "--now", "2026-12-05T10:00").stdout
    count = int(first.split()[1])
    assert count > 10 and "as of 2026-12-05T10:00" in first
    assert run(env, "run", "--now", "2026-12-05T16:00").stdout.startswith("queued 0 payment reminders")
    figures = json.loads(run(env, "report", "--days", "3", "--json", "--now", "2026-12-05T17:00").stdout)
    assert figures["from"] == "2026-12-03" and figures["to"] == "2026-12-05" and figures["waiting"]["pending"] >= count
    assert "Messages the bank sent first" in run(env, "report", "--now", "2026-12-05T17:00").stdout
    wrong = run(env, "run", "--now", "tomorrow", check=False)
    assert wrong.returncode == 2 and "not an ISO time" in wrong.stderr
    broken = tmp_path / "templates.yml"
    broken.write_text("templates:\n  - {name: x, language: en, category: utility, body: '{{1}} hi', parameters: []}\n")
    refused = run({**env, "CARDCARE_TEMPLATES": str(broken)}, "templates", "check", check=False)
    assert refused.returncode == 1 and "start or end" in refused.stderr


def test_two_schedulers_at_once_on_postgresql_queue_each_reminder_once(tmp_path):
    with postgres_database("cardcare_reminders") as name:
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        env = {**os.environ, "CARDCARE_DB_URL": url, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "cardsystem.seed", "--today", "2026-11-30"], cwd=ROOT, env=env,
                       check=True, capture_output=True, timeout=600)
        due_in(url, dt.date(2026, 12, 5))
        command = [sys.executable, "-m", "cardsystem.reminders", "run", "--now", "2026-12-05T10:00"]
        runs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        outputs = [p.communicate(timeout=300) for p in runs]
        assert all(p.returncode == 0 for p in runs), [err for _, err in outputs]
        engine = create_engine(url)
        with engine.connect() as db:
            keys = db.execute(text("SELECT key FROM customer_notices WHERE kind = 'payment_due'")).scalars().all()
            consenting = db.execute(text(
                "SELECT count(*) FROM cards c JOIN customers u ON u.id = c.customer_id JOIN messaging_consent m "
                "ON m.phone = u.phone WHERE m.opted_in AND c.status <> 'closed'")).scalar_one()
        engine.dispose()
        assert len(keys) == len(set(keys)) == consenting > 0       # every card of a consenting customer, once


def test_the_command_refuses_bad_input_plainly(tmp_path, seeded_template):
    (tmp_path / "cards.db").write_bytes(seeded_template.read_bytes())
    env = {**os.environ, "CARDCARE_DB_URL": f"sqlite:///{tmp_path / 'cards.db'}", "PYTHONPATH": str(ROOT)}
    for args, code, words in ((("report", "--days", "0"), 2, "1 to 366"), (("report", "--days", "800000"), 2, "1 to 366"),
                              (("run", "--now", "0001-01-01T00:00"), 2, "2000-2100"),
                              (("templates", "submit", "nosuch"), 1, "no template named nosuch"),
                              (("templates", "sync", "x"), 2, "takes no names")):
        done = run(env, *args, check=False)
        assert done.returncode == code and words in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    files = {"empty.yml": "", "five.yml": "templates: 5\n", "yaml.yml": "templates: [\n",
             "field.yml": "templates:\n  - {name: x, language: en, category: utility, body: 'Hi {{1}} ok',"
                          " parameters: [{field: nonsense, example: a}]}\n"}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
        done = run({**env, "CARDCARE_TEMPLATES": str(tmp_path / name)}, "templates", "check", check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.strip(), (name, done.stderr)
    marketing = (ROOT / "templates.yml").read_text().replace("category: utility", "category: marketing", 1)
    (tmp_path / "marketing.yml").write_text(marketing)
    done = run({**env, "CARDCARE_TEMPLATES": str(tmp_path / "marketing.yml")}, "templates", "check", check=False)
    assert done.returncode == 1 and "must be a utility template" in done.stderr
    for bad in ('consent: {quiet_hours: {start: "25:99", end: "09:00"}}', "payment_due: {offsets_days: [x]}",
                "consent: {weekly_cap: -1}", "rates: {whatsapp: {IN: {utility: -0.1}}}", "[1, 2]"):
        (tmp_path / "reminders.yml").write_text(bad + "\n")
        done = run({**env, "CARDCARE_REMINDERS_CONFIG": str(tmp_path / "reminders.yml")}, "run", check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr and "reminders.yml" in done.stderr, (bad, done.stderr)
