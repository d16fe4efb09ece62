"""A background loop's failures, logged as an operator can read them.

The channel's loops (new messages, retries, the sweep, notices) run every 0.1-1 s. With the
database away, logging every failed round with its traceback wrote thousands of lines a
minute and buried what happened. Here the first failure is logged with its traceback, then
one line a minute while it lasts (how often, for how long, the latest error), and one line
when it works again.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

REPEAT_SECONDS = 60.0


class Outage:
    def __init__(self, what: str, logger: logging.Logger, repeat_seconds: float = REPEAT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.logger, self.repeat_seconds, self.clock = what, logger, repeat_seconds, clock
        self.since: Optional[float] = None
        self.failures = 0
        self._last_logged = 0.0

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, error: BaseException) -> None:
        """(In the except block.) Another failed round."""
        now = self.clock()
        self.failures += 1
        if self.since is None:
            self.since, self._last_logged = now, now
            self.logger.error("%s failed; retrying", self.what, exc_info=error)
        elif now - self._last_logged >= self.repeat_seconds:
            self._last_logged = now
            self.logger.error("%s still failing: %d times in %.0f s, latest %s: %s", self.what, self.failures,
                              now - self.since, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "")

    def worked(self) -> None:
        """A round that succeeded: ends the outage (logged once)."""
        if self.since is not None:
            self.logger.warning("%s works again after %.0f s (%d failed rounds)", self.what, self.clock() - self.since,
                                self.failures)
            self.since, self.failures = None, 0
