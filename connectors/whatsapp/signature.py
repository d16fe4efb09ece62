"""X-Hub-Signature-256: HMAC-SHA256 of the raw body with the app secret, checked in constant time."""
from __future__ import annotations

import hashlib
import hmac
from typing import Iterable, Optional

PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The header value Meta sends for `body` (used by the sandbox and tests)."""
    return PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def is_signed_by(body: bytes, header: Optional[str], secrets: Iterable[str]) -> bool:
    """True when `header` is a valid signature of the raw `body` by one of `secrets`.

    Several secrets let an operator rotate the app secret without dropping webhooks.
    A missing header, another prefix, or a value of the wrong length is a mismatch.
    """
    if not header or not header.startswith(PREFIX) or len(header) != len(PREFIX) + 64:
        return False
    return any(secret and hmac.compare_digest(sign(body, secret), header) for secret in secrets)
