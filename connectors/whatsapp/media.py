"""Customers' media (dispute screenshots, documents), fetched promptly and kept under access control.

WhatsApp media ids expire after 7 days and their download URLs after minutes, so the channel
downloads what a customer sends before the turn runs and keeps it here, named by its SHA-256,
readable by the service's own user only. `CARDCARE_MEDIA_DIR`, by default var/media.
"""
from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Optional

from cardsystem.config import PROJECT_ROOT

EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "application/pdf": ".pdf",
              "audio/ogg": ".ogg", "video/mp4": ".mp4", "text/plain": ".txt"}


def default_directory() -> Path:
    return Path(os.environ.get("CARDCARE_MEDIA_DIR") or PROJECT_ROOT / "var" / "media")


class MediaStore:
    def __init__(self, directory: Optional[Path] = None) -> None:
        self.directory = Path(directory or default_directory())

    def save(self, content: bytes, mime_type: str, sha256: str) -> str:
        """Keep a file once (same content, same key); returns its key, e.g. '3f2a….jpg'."""
        extension = EXTENSIONS.get(mime_type) or mimetypes.guess_extension(mime_type or "") or ".bin"
        key = f"{sha256}{extension}"
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        path = self.directory / key
        if not path.exists():
            partial = path.with_suffix(path.suffix + ".part")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.replace(partial, path)  # never a half-written file under the final name
        return key

    def path(self, key: str) -> Optional[Path]:
        candidate = (self.directory / key).resolve()
        if candidate.parent != self.directory.resolve() or not candidate.is_file():
            return None
        return candidate
