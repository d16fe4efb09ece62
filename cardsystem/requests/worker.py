"""The desk's background work, started with the action server (deploy/action_server.py): the
delay job every CARDCARE_SLA_SECONDS (60), the reminders' scheduler every CARDCARE_REMINDER_SECONDS
(300; the messages themselves go out through the WhatsApp channel) and, when CARDCARE_SMTP_URL is
set, the e-mail notices every 10 s. All are safe on several instances at once (a breach is claimed
once, a notice queued and taken once), so every action server may run it; CARDCARE_DESK_WORKER=0
turns it off where cron runs `python -m cardsystem.requests run-sla` and
`python -m cardsystem.reminders run` instead.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional

logger = logging.getLogger(__name__)
MAIL_SECONDS = 10.0


class DeskWorker(threading.Thread):
    """A daemon thread: the delay job, then e-mail, in turn, until stopped."""

    def __init__(self, sla_seconds: Optional[float] = None) -> None:
        super().__init__(name="desk-worker", daemon=True)
        self.sla_seconds = float(sla_seconds or os.environ.get("CARDCARE_SLA_SECONDS") or 60)
        self.reminder_seconds = float(os.environ.get("CARDCARE_REMINDER_SECONDS") or 300)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        from cardsystem.config import Settings
        from cardsystem.requests.desk import ServiceDesk
        from cardsystem.requests.notices import NoticeBox
        from cardsystem.service import CardSystem

        from cardsystem.reminders import run_once

        try:
            system = CardSystem()
            system.create_schema()
            desk = ServiceDesk()
        except Exception:
            logger.exception("desk worker could not start: late requests are not looked for")
            return
        settings = Settings.from_env()
        mailer = None
        if settings.smtp_url:
            from cardsystem.requests.mailer import Mailer, deliver_email_notices
            mailer = Mailer(settings.smtp_url, settings.mail_from)
        box = NoticeBox(engine=desk.engine)
        next_sla = next_reminders = time.monotonic()
        while not self._halt.is_set():
            if time.monotonic() >= next_reminders:
                try:
                    run_once(system)
                except Exception:
                    logger.exception("reminders' scheduler failed")
                next_reminders = time.monotonic() + self.reminder_seconds
            if time.monotonic() >= next_sla:
                try:
                    desk.run_sla()
                except Exception:  # the database may be briefly away: next round
                    logger.exception("delay job failed")
                next_sla = time.monotonic() + self.sla_seconds
            if mailer is not None:
                try:
                    deliver_email_notices(box, mailer)
                except Exception:
                    logger.exception("e-mail notices failed")
            soonest = min(next_sla, next_reminders) - time.monotonic()
            self._halt.wait(MAIL_SECONDS if mailer else max(0.0, soonest))


def start_desk_worker() -> Optional[DeskWorker]:
    if os.environ.get("CARDCARE_DESK_WORKER", "1").lower() in ("0", "false", "no"):
        logger.info("desk worker off (CARDCARE_DESK_WORKER=0): run `python -m cardsystem.requests run-sla` from cron")
        return None
    worker = DeskWorker()
    worker.start()
    return worker
