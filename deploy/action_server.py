"""The action server, locked: bound to 127.0.0.1 and refusing any call without the shared secret.

    python -m deploy.action_server [--host 127.0.0.1] [--port 5055]

The action server runs whatever `next_action` a caller names on whatever tracker it sends (a
hand-made tracker with `action_block_card` blocks a card), so only Rasa may call it: Rasa
sends `Authorization: Bearer $CARDCARE_ACTION_SECRET` (endpoints.production.yml) and every
other caller gets 401. /health stays open for probes and tells nothing. Errors are answered
without the request body or the exception text (rasa-sdk's default echoes both).
"""
from __future__ import annotations

import argparse
import hmac
import logging
import os
import sys
from typing import Optional

from sanic import Sanic, response
from sanic.request import Request

from rasa_sdk import utils
from rasa_sdk.endpoint import create_app

logger = logging.getLogger(__name__)
OPEN_PATHS = ("/health",)


def action_secret() -> Optional[str]:
    """The shared secret; required in production, optional on a developer's machine."""
    secret = os.environ.get("CARDCARE_ACTION_SECRET", "")
    if not secret and os.environ.get("CARDCARE_ENV", "development") == "production":
        raise SystemExit("CARDCARE_ACTION_SECRET must be set in production (the action server's shared secret)")
    return secret or None


def authorised(request: Request, secret: str) -> bool:
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode("utf-8"), f"Bearer {secret}".encode("utf-8"))


def locked_app(secret: Optional[str], package: str = "actions") -> Sanic:
    app = create_app(package, cors_origins=[])

    @app.middleware("request")
    async def require_secret(request: Request):
        if secret is None or request.path in OPEN_PATHS:
            return None
        if not authorised(request, secret):
            logger.warning("action server call refused: missing or wrong shared secret (%s %s)",
                           request.method, request.path)
            return response.json({"error": "unauthorised"}, status=401)
        return None

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
    logger.info("action server on http://%s:%d (%s)", args.host, args.port,
                "shared secret required" if secret else "no secret")
    app.run(args.host, args.port, workers=utils.number_of_sanic_workers(), access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
