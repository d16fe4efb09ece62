"""Async Graph API client for the WhatsApp channel: sends, marks read, retries by error code.

Never blocks the event loop (aiohttp); every send attempt's outcome is recorded in the
channel store; free-form messages outside the customer's 24-hour window are refused here.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, Optional

import aiohttp

from cardsystem.formatting import mask_phone
from connectors.whatsapp.errors import classify, meaning_of
from connectors.whatsapp.store import ChannelStore

logger = logging.getLogger(__name__)
TIMEOUT = aiohttp.ClientTimeout(total=15)


class OutsideServiceWindow(Exception):
    """A free-form message to a customer who hasn't written in 24 hours: use a template."""


class GraphClient:
    def __init__(self, api_base: str, api_version: str, phone_number_id: str, access_token: str,
                 store: ChannelStore) -> None:
        self.url = f"{api_base.rstrip('/')}/{api_version}/{phone_number_id}/messages"
        self.headers = {"Authorization": f"Bearer {access_token}"}
        self.store = store
        self._session: Optional[aiohttp.ClientSession] = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT, headers=self.headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, recipient: str, reply_by: str, message: Dict[str, Any]) -> Optional[str]:
        """Send one message; returns its wamid, or None when it finally failed (recorded)."""
        if message.get("type") != "template" and not await asyncio.to_thread(self.store.window_open, recipient):
            await asyncio.to_thread(self.store.record_send, recipient, message, "refused", None, 131047,
                                    "outside the 24-hour window: a template is required", 0)
            logger.warning("not sending free-form message to %s: outside the 24-hour window", mask_phone(recipient))
            raise OutsideServiceWindow(recipient)
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", reply_by: recipient, **message}
        attempt = 0
        while True:
            attempt += 1
            status, answer = await self._post(body)
            wamid = ((answer.get("messages") or [{}])[0] or {}).get("id") if status == 200 else None
            if wamid:
                await asyncio.to_thread(self.store.record_send, recipient, message, "sent", wamid, None, None, attempt)
                return wamid
            code = (answer.get("error") or {}).get("code")
            verdict = classify(code, status, attempt)
            logger.warning("send to %s failed (HTTP %s, code %s: %s), attempt %d%s", mask_phone(recipient), status, code,
                           meaning_of(code), attempt, f", retrying in {verdict.delay_seconds:.1f}s" if verdict.retry else "")
            if not verdict.retry:
                await asyncio.to_thread(self.store.record_send, recipient, message, "failed", None, code,
                                        verdict.meaning, attempt)
                return None
            await asyncio.sleep(verdict.delay_seconds)

    async def mark_read(self, message_id: str) -> None:
        status, answer = await self._post({"messaging_product": "whatsapp", "status": "read", "message_id": message_id})
        if status != 200:
            logger.info("mark-as-read failed: %s", (answer.get("error") or {}).get("code"))

    async def _post(self, body: Dict[str, Any]) -> "tuple[int, Dict[str, Any]]":
        try:
            session = await self.session()
            async with session.post(self.url, json=body) as response:
                try:
                    answer = await response.json(content_type=None)
                except (aiohttp.ContentTypeError, ValueError):
                    answer = {}
                return response.status, answer if isinstance(answer, dict) else {}
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            logger.warning("Graph API unreachable: %s", type(exc).__name__)
            return 503, {}
