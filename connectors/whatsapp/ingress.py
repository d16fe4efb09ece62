"""The WhatsApp ingress: a small process that takes Meta's webhooks and records them.

    python -m connectors.whatsapp.ingress [--host 127.0.0.1] [--port 5007]

It verifies the signature, records each message and status in the channel database and
answers, and nothing else: no Rasa, no model. Rasa's WhatsApp channel, started with
WHATSAPP_INGRESS=1 (`make serve` does both), finds the recorded messages and answers them in
order. So a Rasa that is restarting, loading its model or killed mid-turn loses nothing and
reorders nothing: the webhooks keep being taken, in the order they come, and the answers
follow when Rasa is back. Settings are the channel's (WHATSAPP_APP_SECRET, WHATSAPP_VERIFY_TOKEN,
WHATSAPP_PHONE_NUMBER_ID, CARDCARE_CHANNEL_DB_URL).

Routes: GET and POST /webhooks/whatsapp/webhook (as the channel's own), GET /healthz.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import List, Optional

from aiohttp import web

from connectors.whatsapp.store import ChannelStore
from connectors.whatsapp.webhook import Receipt, WebhookReceiver, channel_settings

logger = logging.getLogger(__name__)
WEBHOOK_PATH = "/webhooks/whatsapp/webhook"
MAX_BODY = 1024 * 1024  # nginx allows 64 KB from outside; this is the ingress's own bound


class Recorder:
    """One writer: the webhooks that arrive while a batch is being written wait together and
    are recorded in the next transaction (arrival order is recording order), each answered
    once its batch is committed. Under load the batches grow by themselves, and the database
    is entered once per batch instead of once per webhook."""

    def __init__(self, receiver: WebhookReceiver, max_batch: int = 200) -> None:
        self.receiver = receiver
        self.max_batch = max_batch
        self.waiting: List["tuple[bytes, Optional[str], asyncio.Future]"] = []
        self.writer: Optional[asyncio.Task] = None

    async def record(self, body: bytes, signature: Optional[str]) -> Receipt:
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append((body, signature, answer))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.ensure_future(self._write())
        return await answer

    async def _write(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting[:self.max_batch], self.waiting[self.max_batch:]
            try:
                receipts = await asyncio.to_thread(self.receiver.receive_many, [(b, s) for b, s, _ in batch])
            except Exception:  # (receive_many answers every failure itself; this is a last resort)
                logger.exception("recording a batch of webhooks failed")
                receipts = [Receipt(503, {"error": "not recorded"}) for _ in batch]
            for (_, _, answer), receipt in zip(batch, receipts):
                if not answer.done():
                    answer.set_result(receipt)


def make_app(receiver: WebhookReceiver) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    recorder = Recorder(receiver)

    async def verify(request: web.Request) -> web.Response:
        status, text = receiver.verify(request.query)
        return web.Response(text=text, status=status)

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        receipt = await recorder.record(body, request.headers.get("X-Hub-Signature-256"))
        return web.json_response(receipt.answer, status=receipt.status)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get(WEBHOOK_PATH, verify)
    app.router.add_post(WEBHOOK_PATH, webhook)
    app.router.add_get("/healthz", health)
    return app


def receiver_from_env() -> WebhookReceiver:
    values = channel_settings()
    if not values["app_secret"] or not values["phone_number_id"]:
        raise SystemExit("WHATSAPP_APP_SECRET and WHATSAPP_PHONE_NUMBER_ID must be set")
    receiver = WebhookReceiver(ChannelStore(), [s.strip() for s in values["app_secret"].split(",")],
                               str(values["phone_number_id"]), values["verify_token"])
    if os.environ.get("WHATSAPP_NOTICES", "1").lower() not in ("0", "false", "no"):
        from cardsystem.requests.notices import NoticeBox

        box = NoticeBox()  # the statuses of the bank's own messages and its templates' approvals
        receiver.notice_status = box.outcome
        receiver.template_status = box.template_status
    return receiver


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("INGRESS_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("INGRESS_PORT", "5007")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = make_app(receiver_from_env())
    logger.info("WhatsApp ingress on http://%s:%d%s", args.host, args.port, WEBHOOK_PATH)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
