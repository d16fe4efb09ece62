"""The action server, locked: bound to 127.0.0.1 and refusing any call without the shared secret.

    python -m deploy.action_server [--host 127.0.0.1] [--port 5055]

The action server runs whatever `next_action` a caller names on whatever tracker it sends (a
hand-made tracker with `action_block_card` blocks a card), so only Rasa may call it: Rasa
sends `Authorization: Bearer $CARDCARE_ACTION_SECRET` (endpoints.production.yml) and every
other caller gets 401. /health stays open for probes and tells nothing. Errors are answered
without the request body or the exception text (rasa-sdk's default echoes both).

Each action runs once per customer message: the WhatsApp channel retries a whole turn when
one action call of it failed, so the actions before it are called again. Their first
answer is kept (by sender, message id, action and its place in the turn;
CARDCARE_ACTIONS_DB_URL, by default var/actions.db, for a day) and given again, so a card
is blocked, a dispute filed or points redeemed once, and the customer hears the same words.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import sys
import zlib
from typing import Any, Dict, Optional

from sanic import Sanic, response
from sanic.exceptions import InvalidUsage
from sanic.request import Request

from sqlalchemy import Column, DateTime, String, Text, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import declarative_base

from rasa_sdk import utils
from rasa_sdk.endpoint import create_app

from cardsystem.config import PROJECT_ROOT
from cardsystem.db import create_schema, get_engine, session_scope

logger = logging.getLogger(__name__)
OPEN_PATHS = ("/health",)
KEEP_REPLIES = dt.timedelta(days=1)
PRUNE_EVERY = dt.timedelta(minutes=10)
Base = declarative_base()


class ActionReply(Base):
    __tablename__ = "action_replies"

    key = Column(String(64), primary_key=True)
    body = Column(Text, nullable=False)
    created_at = Column(DateTime, nullable=False, index=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class ActionReplies:
    """The first answer of each action call of a turn, given again when the turn is retried."""

    def __init__(self, url: Optional[str] = None) -> None:
        self.engine = get_engine(url or os.environ.get("CARDCARE_ACTIONS_DB_URL")
                                 or f"sqlite:///{PROJECT_ROOT / 'var' / 'actions.db'}")
        create_schema(self.engine, Base.metadata)
        self._pruned = dt.datetime.min

    @staticmethod
    def key(call: Any) -> Optional[str]:
        """sender, the customer message's id, the action and how many actions ran before it in
        this turn; None for a call that is not about a customer message."""
        if not isinstance(call, dict) or not isinstance(call.get("tracker"), dict):
            return None
        events = call["tracker"].get("events") or []
        since = None
        for index in range(len(events) - 1, -1, -1):
            if isinstance(events[index], dict) and events[index].get("event") == "user":
                since = index
                break
        if since is None or not events[since].get("message_id"):
            return None
        before = sum(1 for e in events[since + 1:] if isinstance(e, dict) and e.get("event") == "action")
        raw = json.dumps([call.get("sender_id") or call["tracker"].get("sender_id"), events[since]["message_id"],
                          call.get("next_action"), before])
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        with session_scope(self.engine) as s:
            row = s.get(ActionReply, key)
            return json.loads(row.body) if row is not None else None

    def keep(self, key: str, body: Dict[str, Any]) -> None:
        now = utcnow()
        try:
            with session_scope(self.engine) as s:
                s.add(ActionReply(key=key, body=json.dumps(body), created_at=now))
                if now - self._pruned > PRUNE_EVERY:  # not on every call: answers older than a day go now and then
                    s.execute(delete(ActionReply).where(ActionReply.created_at < now - KEEP_REPLIES))
                    self._pruned = now
        except IntegrityError:
            pass  # the same call answered twice at once: the first answer stands


def action_secret() -> Optional[str]:
    """The shared secret; required in production, optional on a developer's machine."""
    secret = os.environ.get("CARDCARE_ACTION_SECRET", "")
    if not secret and os.environ.get("CARDCARE_ENV", "development") == "production":
        raise SystemExit("CARDCARE_ACTION_SECRET must be set in production (the action server's shared secret)")
    return secret or None


def authorised(request: Request, secret: str) -> bool:
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode("utf-8"), f"Bearer {secret}".encode("utf-8"))


def locked_app(secret: Optional[str], package: str = "actions", replies: Optional[ActionReplies] = None) -> Sanic:
    app = create_app(package, cors_origins=[])
    replies = replies or ActionReplies()

    @app.middleware("request")
    async def require_secret(request: Request):
        if secret is None or request.path in OPEN_PATHS:
            return None
        if not authorised(request, secret):
            logger.warning("action server call refused: missing or wrong shared secret (%s %s)",
                           request.method, request.path)
            return response.json({"error": "unauthorised"}, status=401)
        return None

    @app.middleware("request")
    async def answer_again(request: Request):
        if request.path != "/webhook" or request.method != "POST":
            return None
        try:
            if request.headers.get("Content-Encoding") == "deflate":  # Rasa may compress its calls
                call = json.loads(zlib.decompress(request.body or b""))
            else:
                call = request.json  # parsed once: rasa-sdk's handler reads the same
            request.ctx.reply_key = ActionReplies.key(call)
        except (ValueError, zlib.error, InvalidUsage):
            request.ctx.reply_key = None
        kept = await asyncio.to_thread(replies.get, request.ctx.reply_key) if request.ctx.reply_key else None
        if kept is not None:
            logger.info("action call repeated by a retried turn: its first answer is given again")
            request.ctx.reply_key = None
            return response.json(kept)
        return None

    @app.middleware("response")
    async def keep_answer(request: Request, answer):
        key = getattr(request.ctx, "reply_key", None)
        if key and answer.status == 200:
            await asyncio.to_thread(replies.keep, key, json.loads(answer.body))

    @app.exception(Exception)
    async def opaque_errors(request: Request, exception: Exception):
        status = getattr(exception, "status_code", 500)
        if status >= 500:
            logger.error("action call failed: %s", type(exception).__name__, exc_info=exception)
        return response.json({"error": "action failed" if status >= 500 else "bad request"}, status=status)

    return app


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("ACTION_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("ACTION_PORT", "5055")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    secret = action_secret()
    if secret is None:
        logger.warning("CARDCARE_ACTION_SECRET is not set: the action server accepts any local caller "
                       "(development only)")
    app = locked_app(secret)

    @app.listener("after_server_start")
    async def desk_worker(_app, _loop) -> None:  # the delay job and e-mail notices (cardsystem.requests.worker)
        from cardsystem.requests.worker import start_desk_worker

        start_desk_worker()

    logger.info("action server on http://%s:%d (%s)", args.host, args.port,
                "shared secret required" if secret else "no secret")
    app.run(args.host, args.port, workers=utils.number_of_sanic_workers(), access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
