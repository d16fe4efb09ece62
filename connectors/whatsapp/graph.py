"""Async Graph API client for the WhatsApp channel: sends, marks read, retries by error code.

Never blocks the event loop (aiohttp); every send attempt's outcome is recorded in the
channel store; free-form messages outside the customer's 24-hour window are refused here.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional
from urllib.parse import quote

import aiohttp

from cardsystem.formatting import mask_phone
from connectors.whatsapp.errors import MAX_ATTEMPTS, Verdict, classify, meaning_of
from connectors.whatsapp.store import ChannelStore

logger = logging.getLogger(__name__)
TIMEOUT = aiohttp.ClientTimeout(total=15)
MEDIA_TIMEOUT = aiohttp.ClientTimeout(total=60)
MEDIA_MAX_BYTES = 100 * 1024 * 1024  # the platform's document limit; images are 5 MB


class MediaError(Exception):
    """A media upload or download that did not work (the reason is in the message)."""


@dataclass(frozen=True)
class Media:
    content: bytes
    mime_type: str
    sha256: str


@dataclass(frozen=True)
class Attempt:
    wamid: Optional[str]        # set when WhatsApp accepted the message
    code: Optional[int]         # the Graph error code otherwise
    verdict: Verdict            # whether trying again can help, and when


class OutsideServiceWindow(Exception):
    """A free-form message to a customer who hasn't written in 24 hours: use a template."""


class GraphClient:
    def __init__(self, api_base: str, api_version: str, phone_number_id: str, access_token: str,
                 store: ChannelStore) -> None:
        self.base = f"{api_base.rstrip('/')}/{api_version}"
        self.url = f"{self.base}/{phone_number_id}/messages"
        self.media_url = f"{self.base}/{phone_number_id}/media"
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

    async def check_window(self, recipient: str, message: Dict[str, Any], window_open: Optional[bool] = None) -> None:
        """Refuse (and record) a free-form message to a customer silent for 24 hours (`window_open`:
        already read by the caller)."""
        if message.get("type") == "template":
            return  # templates are what may be sent outside the window
        if window_open is None:
            window_open = await asyncio.to_thread(self.store.window_open, recipient)
        if not window_open:
            await asyncio.to_thread(self.store.record_send, recipient, message, "refused", None, 131047,
                                    "outside the 24-hour window: a template is required", 0)
            logger.warning("not sending free-form message to %s: outside the 24-hour window", mask_phone(recipient))
            raise OutsideServiceWindow(recipient)

    async def attempt(self, recipient: str, reply_by: str, message: Dict[str, Any], attempt: int = 1,
                      callback_data: Optional[str] = None, max_attempts: Optional[int] = MAX_ATTEMPTS,
                      record_sent: bool = True) -> Attempt:
        """One POST of one message, its outcome recorded (an accepted one only with
        `record_sent`: the outbox records it with its own bookkeeping); the caller decides
        about retrying.

        `callback_data` goes out as biz_opaque_callback_data: WhatsApp echoes it in the status
        webhooks, which tells after a crash whether a request in flight was accepted."""
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", reply_by: recipient, **message}
        if callback_data:
            body["biz_opaque_callback_data"] = callback_data
        status, answer = await self._post(body)
        wamid = ((answer.get("messages") or [{}])[0] or {}).get("id") if status == 200 else None
        if wamid:
            if record_sent:
                await asyncio.to_thread(self.store.record_send, recipient, message, "sent", wamid, None, None, attempt)
            return Attempt(str(wamid), None, Verdict(False, 0.0, "sent"))
        code = (answer.get("error") or {}).get("code")
        verdict = classify(code, status, attempt, max_attempts=max_attempts)
        logger.warning("send to %s failed (HTTP %s, code %s: %s), attempt %d%s", mask_phone(recipient), status, code,
                       meaning_of(code), attempt, f", retrying in {verdict.delay_seconds:.1f}s" if verdict.retry else "")
        if not verdict.retry:
            await asyncio.to_thread(self.store.record_send, recipient, message, "failed", None, code,
                                    verdict.meaning, attempt)
        return Attempt(None, code, verdict)

    async def send(self, recipient: str, reply_by: str, message: Dict[str, Any]) -> Optional[str]:
        """Send one message now, retrying in place; its wamid, or None when it finally failed (recorded).
        Replies to customers go through the channel's outbox instead, which retries durably."""
        await self.check_window(recipient, message)
        number = 0
        while True:
            number += 1
            outcome = await self.attempt(recipient, reply_by, message, number)
            if outcome.wamid or not outcome.verdict.retry:
                return outcome.wamid
            await asyncio.sleep(outcome.verdict.delay_seconds)

    async def mark_read(self, message_id: str) -> None:
        status, answer = await self._post({"messaging_product": "whatsapp", "status": "read", "message_id": message_id})
        if status != 200:
            logger.info("mark-as-read failed: %s", (answer.get("error") or {}).get("code"))

    async def upload_media(self, content: bytes, mime_type: str, filename: str) -> str:
        """Upload a file to the media endpoint; returns its media id (valid 30 days)."""
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", mime_type)
        form.add_field("file", content, filename=filename, content_type=mime_type)
        try:
            session = await self.session()
            async with session.post(self.media_url, data=form, timeout=MEDIA_TIMEOUT) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise MediaError(f"upload failed: {type(exc).__name__}") from exc
        media_id = answer.get("id") if isinstance(answer, dict) else None
        if response.status != 200 or not media_id:
            code = ((answer or {}).get("error") or {}).get("code") if isinstance(answer, dict) else None
            raise MediaError(f"upload refused (HTTP {response.status}, code {code}: {meaning_of(code)})")
        return str(media_id)

    async def download_media(self, media_id: str, expected_sha256: Optional[str] = None,
                             max_bytes: int = MEDIA_MAX_BYTES) -> Media:
        """A customer's media by id: look up its short-lived URL, fetch it with the token, check its hash."""
        try:
            session = await self.session()
            async with session.get(f"{self.base}/{quote(media_id, safe='')}") as response:
                info = await response.json(content_type=None)
                if response.status != 200 or not isinstance(info, dict) or not info.get("url"):
                    code = ((info or {}).get("error") or {}).get("code") if isinstance(info, dict) else None
                    raise MediaError(f"media lookup refused (HTTP {response.status}, code {code}: {meaning_of(code)})")
            if int(info.get("file_size") or 0) > max_bytes:
                raise MediaError(f"media is {info['file_size']} bytes, over the {max_bytes}-byte limit")
            async with session.get(info["url"], timeout=MEDIA_TIMEOUT) as response:
                if response.status != 200:
                    raise MediaError(f"media download refused (HTTP {response.status})")
                content = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    content.extend(chunk)
                    if len(content) > max_bytes:
                        raise MediaError(f"media is over the {max_bytes}-byte limit")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise MediaError(f"download failed: {type(exc).__name__}") from exc
        digest = hashlib.sha256(content).hexdigest()
        expected = expected_sha256 or info.get("sha256")
        if expected and expected != digest:
            raise MediaError("media content does not match its sha256")
        return Media(bytes(content), str(info.get("mime_type") or "application/octet-stream"), digest)

    async def upload_link(self, link: str, filename: str) -> Optional[str]:
        """A document the bot links to, uploaded to the media endpoint (no public URL needed):
        its media id, or None when that failed (the caller sends it by link)."""
        try:
            content, mime_type = await self.fetch_link(link)
            if mime_type in ("application/octet-stream", "binary/octet-stream") and filename.endswith(".pdf"):
                mime_type = "application/pdf"
            return await self.upload_media(content, mime_type, filename)
        except MediaError as exc:
            logger.warning("document upload failed (%s); sending it by link", exc)
            return None

    async def fetch_link(self, link: str, max_bytes: int = MEDIA_MAX_BYTES) -> "tuple[bytes, str]":
        """Download a file the bot links to (e.g. a statement), to upload it rather than expose its URL."""
        try:
            async with aiohttp.ClientSession(timeout=MEDIA_TIMEOUT) as session:  # no Graph token on other hosts
                async with session.get(link) as response:
                    if response.status != 200:
                        raise MediaError(f"file link answered HTTP {response.status}")
                    content = await response.content.read(max_bytes + 1)
                    if len(content) > max_bytes:
                        raise MediaError(f"file is over the {max_bytes}-byte limit")
                    return content, response.headers.get("Content-Type", "application/octet-stream").split(";")[0]
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise MediaError(f"file link failed: {type(exc).__name__}") from exc

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
