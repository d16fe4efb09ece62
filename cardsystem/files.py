"""Customer documents (statement PDFs) published under signed, expiring links.

The action server writes a file and gets a link; whoever serves the files (the Rasa
server's `connectors.files.StatementFiles` channel) checks the signature and expiry
before reading it. Links carry a random file id, never a customer or card number.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from typing import Optional

_DEV_FILES_SECRET = "dev-only-files-secret-change-me"
DEFAULT_TTL_SECONDS = 3600  # a statement link works for an hour; ask again for a new one
_FILE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def files_secret() -> bytes:
    secret = os.environ.get("CARDCARE_FILES_SECRET", "")
    if os.environ.get("CARDCARE_ENV", "development") == "production":
        if secret in ("", _DEV_FILES_SECRET):
            raise RuntimeError("CARDCARE_FILES_SECRET must be set to a production secret")
    elif not secret:
        secret = _DEV_FILES_SECRET
    return secret.encode("utf-8")


def files_base_url() -> str:
    return os.environ.get("CARDCARE_FILES_BASE_URL", "http://localhost:5005/webhooks/files/statements").rstrip("/")


def _signature(file_id: str, expires: int, secret: bytes) -> str:
    return hmac.new(secret, f"{file_id}.{expires}".encode("ascii"), hashlib.sha256).hexdigest()[:32]


def publish(directory: Path, content: bytes, filename: str, ttl_seconds: int = DEFAULT_TTL_SECONDS,
            now: Optional[float] = None) -> "tuple[str, Path]":
    """Store `content` and return (signed URL ending in `filename`, local path)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # customers' statements: readable by the service's own user only
    file_id = secrets.token_urlsafe(18)
    path = directory / f"{file_id}.pdf"
    tmp = directory / f".{file_id}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    tmp.replace(path)
    expires = int((now or time.time()) + ttl_seconds)
    token = f"{file_id}.{expires}.{_signature(file_id, expires, files_secret())}"
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    _purge_expired(directory, now or time.time(), ttl_seconds)
    return f"{files_base_url()}/{token}/{safe_name}", path


def resolve(directory: Path, token: str, now: Optional[float] = None) -> Optional[Path]:
    """The file a token points to, or None if the token is forged, expired or gone."""
    parts = token.split(".")
    if len(parts) != 3 or not _FILE_ID_RE.match(parts[0]) or not parts[1].isdigit():
        return None
    file_id, expires, signature = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(_signature(file_id, expires, files_secret()), signature):
        return None
    if (now or time.time()) > expires:
        return None
    path = directory / f"{file_id}.pdf"
    return path if path.is_file() else None


def _purge_expired(directory: Path, now: float, ttl_seconds: int) -> None:
    """Delete documents older than their lifetime so statements don't pile up on disk."""
    for old in directory.glob("*.pdf"):
        try:
            if old.stat().st_mtime + ttl_seconds < now:
                old.unlink()
        except OSError:
            pass
