"""Serves statement PDFs the action server published, by signed and expiring links.

Configured in credentials.yml as `connectors.files.StatementFiles`; served at
`/webhooks/files/statements/<token>/<filename>`. It is a Rasa input channel only so that
the documents come from the same server (and port) as the bot; it takes no messages.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Optional, Text

from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from rasa.core.channels.channel import InputChannel, UserMessage
from cardsystem import files
from cardsystem.config import Settings

logger = logging.getLogger(__name__)


class StatementFiles(InputChannel):
    """Hands out customer documents; never lists them, never serves without a valid token."""

    @classmethod
    def name(cls) -> Text:
        return "files"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[Text, Any]]) -> "StatementFiles":
        directory = (credentials or {}).get("directory")
        return cls(Path(directory) if directory else None)

    def __init__(self, directory: Optional[Path] = None) -> None:
        self.directory = directory or Settings.from_env().statement_dir

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        files_webhook = Blueprint("files_webhook", __name__)

        @files_webhook.route("/", methods=["GET"])
        async def health(_: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @files_webhook.route("/statements/<token>/<filename>", methods=["GET"])
        async def statement(_: Request, token: Text, filename: Text) -> HTTPResponse:
            path = files.resolve(self.directory, token)
            if path is None:
                logger.info("statement link refused (forged, expired or removed)")
                return response.json({"error": "This link is invalid or has expired. Ask the assistant again."},
                                     status=404)
            return await response.file(
                str(path), mime_type="application/pdf",
                headers={"Content-Disposition": f'attachment; filename="{filename}"',
                         "Cache-Control": "private, no-store"},
            )

        return files_webhook
