"""The WhatsApp ingress: a small process that takes Meta's webhooks and records them.

    python -m connectors.whatsapp.ingress [--host 127.0.0.1] [--port 5007]

It verifies the signature, appends the webhook to its journal on disk (connectors.whatsapp.journal),
forces it to disk and answers: nothing else, no Rasa, no model, no database. Its recorder
(connectors.whatsapp.recorder, a child process it starts, and starts again should it die) follows
the journal and records the webhooks in the channel database, in arrival order, a batch at a
time. Rasa's WhatsApp channel, started with WHATSAPP_INGRESS=1 (`make serve` does both), finds
the recorded messages and answers them in order.

So an acknowledgement waits for a disk append, never for the database: neither for a busy one
nor for one that is down (the recorder retries once a second and the webhooks keep being taken
meanwhile, up to CARDCARE_INGRESS_BACKLOG of them not yet recorded; beyond that, or if the
journal cannot be written, the answer is 503 and Meta redelivers). An ingress killed after
answering loses nothing: its next recorder records what the journal holds. A Rasa that is
restarting, loading its model or killed mid-turn loses and reorders nothing either.

Settings are the channel's (WHATSAPP_APP_SECRET, WHATSAPP_VERIFY_TOKEN, WHATSAPP_PHONE_NUMBER_ID,
CARDCARE_CHANNEL_DB_URL), and CARDCARE_INGRESS_JOURNAL (the journal's directory, default
var/ingress-journal; one ingress per directory).

Routes: GET and POST /webhooks/whatsapp/webhook (as the channel's own), GET /healthz (with the
backlog not yet recorded, and whether recording is stalled).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from aiohttp import web

from connectors.whatsapp.journal import Journal, JournalBusy
from connectors.whatsapp.store import ChannelStore
from connectors.whatsapp.webhook import Receipt, WebhookReceiver, channel_settings

logger = logging.getLogger(__name__)
WEBHOOK_PATH = "/webhooks/whatsapp/webhook"
MAX_BODY = 1024 * 1024  # nginx allows 64 KB from outside; this is the ingress's own bound
DEFAULT_JOURNAL = Path("var") / "ingress-journal"
MAX_BACKLOG = 100_000  # webhooks journalled and not yet recorded (CARDCARE_INGRESS_BACKLOG)
STALLED_SECONDS = 5.0  # a backlog that has not moved for this long: /healthz says recording is stalled
TICK_SECONDS = 1.0  # how often the journal is looked after (segments moved on from, recorded ones deleted)
BUSY = Receipt(503, {"error": "busy: too many webhooks not yet recorded, retry later"})
UNWRITABLE = Receipt(503, {"error": "the webhook could not be kept, retry later"})
ACCEPTED = {"status": "received"}
RECORDER = [sys.executable, "-m", "connectors.whatsapp.recorder"]


class Ingress:
    """Acknowledge once journalled; the recorder records.

    `take(body, signature)` answers a webhook: refused ones (bad signature, not JSON) at once;
    the others are appended to the journal together with the ones that arrived meanwhile (one
    disk flush for all of them), answered once they are on disk, and the recorder is woken.
    The flush runs on the event loop itself: it holds the loop for the fdatasync (about 1 ms,
    7 ms at p99 on a busy box), which costs less than handing it to a thread and back (the
    two wake-ups cost 2-3 ms on a busy box, acknowledgement p50 3.0 -> 2.3 ms, p99 13 -> 9.5 ms
    inside the ingress); answers cannot be sent before the flush anyway. `recorder` is the
    command of the recorder process (None: the caller records, as the tests do).
    """

    def __init__(self, receiver: WebhookReceiver, journal: Journal, max_backlog: int = MAX_BACKLOG,
                 recorder: Optional[List[str]] = RECORDER, tick_seconds: float = TICK_SECONDS) -> None:
        self.receiver, self.journal, self.max_backlog = receiver, journal, max_backlog
        self.recorder_command = recorder
        self.recorder: Optional[subprocess.Popen] = None
        self.tick_seconds = tick_seconds
        self._arriving: List[Tuple[float, bytes, asyncio.Future]] = []
        self._flusher: Optional[asyncio.Task] = None
        self._watcher: Optional[asyncio.Task] = None
        self._keeper: Optional[asyncio.Task] = None
        self._maintain = False
        self._backlog, self._backlog_at = 0, 0.0
        self._moved_at, self._last_backlog = time.monotonic(), 0
        self._full_logged = 0.0
        self._stopping = False

    async def start(self) -> None:
        waiting = await asyncio.to_thread(self.journal.open)
        if waiting:
            logger.warning("journal: %d webhooks taken before the last stop wait to be recorded", waiting)
        if self.recorder_command:
            self._start_recorder()
            self._watcher = asyncio.ensure_future(self._watch_recorder())
        self._keeper = asyncio.ensure_future(self._keep_journal())

    async def stop(self) -> None:
        """Answer what is being written; the recorder finishes the backlog (for a few seconds) and stops."""
        self._stopping = True
        if self._keeper is not None:
            self._keeper.cancel()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._watcher is not None:
            self._watcher.cancel()
        if self.recorder is not None:
            await asyncio.to_thread(self._stop_recorder)
        await asyncio.to_thread(self.journal.close)

    def health(self) -> dict:
        backlog = self.backlog(fresh=True)
        stalled = backlog and time.monotonic() - self._moved_at > STALLED_SECONDS
        recorder = "none" if not self.recorder_command else (
            "running" if self.recorder is not None and self.recorder.poll() is None else "down")
        return {"status": "ok", "backlog": backlog, "recorder": recorder,
                "recording": "stalled (is the channel database reachable?)" if stalled else "ok"}

    def backlog(self, fresh: bool = False) -> int:
        """Webhooks acknowledged and not yet recorded (read from the journal's note at most
        every 50 ms)."""
        now = time.monotonic()
        if fresh or now - self._backlog_at > 0.05:
            self._backlog, self._backlog_at = self.journal.unrecorded(), now
            if self._backlog < self._last_backlog or not self._backlog:
                self._moved_at = now
            self._last_backlog = self._backlog
        return self._backlog

    # -- taking ---------------------------------------------------------------------------------

    async def take(self, body: bytes, signature: Optional[str]) -> Receipt:
        refused = self.receiver.refusal(body, signature)
        if refused is not None:
            return refused
        if self.backlog() + len(self._arriving) >= self.max_backlog:
            self._log_full()
            return BUSY
        answer = asyncio.get_running_loop().create_future()
        self._arriving.append((time.time(), body, answer))
        self._kick_flusher()
        return await answer

    def _kick_flusher(self) -> None:
        """Start the flusher unless it runs (it takes what arrived and the journal's upkeep)."""
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # (let the requests already read join this flush)
        while self._arriving or self._maintain:
            if self._maintain:  # (here, so that no append runs meanwhile; off the loop: file create, unlinks)
                self._maintain = False
                try:
                    await asyncio.to_thread(self.journal.maintain)
                except Exception:  # (the flusher must go on: answers wait on it)
                    logger.exception("journal: looking after its segments failed (tried again in a second)")
                continue
            batch, self._arriving = self._arriving, []
            try:
                self.journal.append([(arrived, body) for arrived, body, _ in batch])
            except Exception:
                logger.exception("journal: %d webhooks could not be written (answered 503: Meta redelivers)", len(batch))
                receipt = UNWRITABLE
            else:
                receipt = Receipt(200, ACCEPTED)
                self._backlog += len(batch)
                self._wake()
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_result(receipt)

    def _log_full(self) -> None:
        now = time.monotonic()
        if now - self._full_logged >= 60:
            self._full_logged = now
            logger.error("journal: %d webhooks wait to be recorded: new ones are answered 503 until the channel "
                         "database takes them", self._backlog)

    async def _keep_journal(self) -> None:
        """Every tick: when the journal has segments to move on from or to delete (what customers
        typed stays on disk only until it is recorded), have the flusher do it between appends."""
        while not self._stopping:
            await asyncio.sleep(self.tick_seconds)
            try:
                due = self.journal.maintenance_due()
            except OSError:
                logger.exception("journal: its note could not be read")
                continue
            if due and not self._stopping:
                self._maintain = True
                self._kick_flusher()

    # -- the recorder ---------------------------------------------------------------------------

    def _start_recorder(self) -> None:
        self.recorder = subprocess.Popen(self.recorder_command, stdin=subprocess.PIPE, env=os.environ.copy())
        os.set_blocking(self.recorder.stdin.fileno(), False)

    def _wake(self) -> None:
        if self.recorder is None or self.recorder.stdin is None:
            return
        try:
            os.write(self.recorder.stdin.fileno(), b"\n")
        except OSError:  # BlockingIOError: its pipe is full of wake-ups already; otherwise it died,
            pass  # and the watcher starts another

    async def _watch_recorder(self) -> None:
        started = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(1.0)
            code = self.recorder.poll() if self.recorder is not None else None
            if code is None or self._stopping:
                continue
            quick = time.monotonic() - started < 10
            logger.error("journal: the recorder exited (code %s); starting another%s", code,
                         " in 5 s" if quick else "")
            if quick:
                await asyncio.sleep(5.0)
            self._start_recorder()
            started = time.monotonic()

    def _stop_recorder(self) -> None:
        try:
            self.recorder.stdin.close()  # (its end of input: it drains and stops)
        except OSError:
            pass
        try:
            self.recorder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.warning("journal: the recorder did not stop in 10 s: killed (the next one goes on)")
            self.recorder.kill()
            self.recorder.wait()


def journal_dir() -> Path:
    return Path(os.environ.get("CARDCARE_INGRESS_JOURNAL") or DEFAULT_JOURNAL)


def make_app(receiver: WebhookReceiver, journal: Optional[Journal] = None,
             recorder: Optional[List[str]] = RECORDER) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    ingress = Ingress(receiver, journal or Journal(journal_dir()),
                      max_backlog=int(os.environ.get("CARDCARE_INGRESS_BACKLOG") or MAX_BACKLOG), recorder=recorder)
    app["ingress"] = ingress

    async def verify(request: web.Request) -> web.Response:
        status, text = receiver.verify(request.query)
        return web.Response(text=text, status=status)

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        receipt = await ingress.take(body, request.headers.get("X-Hub-Signature-256"))
        return web.json_response(receipt.answer, status=receipt.status)

    async def health(_: web.Request) -> web.Response:
        return web.json_response(ingress.health())

    async def on_startup(_: web.Application) -> None:
        await ingress.start()

    async def on_cleanup(_: web.Application) -> None:
        await ingress.stop()

    app.router.add_get(WEBHOOK_PATH, verify)
    app.router.add_post(WEBHOOK_PATH, webhook)
    app.router.add_get("/healthz", health)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def receiver_from_env() -> WebhookReceiver:
    values = channel_settings()
    if not values["app_secret"] or not values["phone_number_id"]:
        raise SystemExit("WHATSAPP_APP_SECRET and WHATSAPP_PHONE_NUMBER_ID must be set")
    receiver = WebhookReceiver(ChannelStore(schema_now=False), [s.strip() for s in values["app_secret"].split(",")],
                               str(values["phone_number_id"]), values["verify_token"])
    if os.environ.get("WHATSAPP_NOTICES", "1").lower() not in ("0", "false", "no"):
        from cardsystem.requests.notices import NoticeBox

        box = NoticeBox()  # the statuses of the bank's own messages and its templates' approvals
        receiver.notice_status = box.outcome
        receiver.template_status = box.template_status
    return receiver


def use_uvloop() -> bool:
    """Run on uvloop (libuv; Rasa's Sanic runs on it too) where installed: an acknowledgement
    is a handful of loop callbacks, each cheaper there than on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("INGRESS_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("INGRESS_PORT", "5007")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    loop = "uvloop" if use_uvloop() else "asyncio's loop"
    app = make_app(receiver_from_env())
    logger.info("WhatsApp ingress on http://%s:%d%s (journal %s, %s)", args.host, args.port, WEBHOOK_PATH,
                journal_dir(), loop)
    try:
        web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)
    except JournalBusy as exc:
        logger.error("%s: is one running already? (CARDCARE_INGRESS_JOURNAL chooses another)", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
