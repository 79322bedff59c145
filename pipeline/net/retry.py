"""When to try again: full-jitter backoff, a clamped Retry-After, and each host's cool-down."""

from __future__ import annotations

import asyncio
import random

from yarl import URL

from pipeline.config import FetchOptions

__all__ = ["retry_delay"]

# A hop waits for its host's cool-down only if more than this is left: a retry that slept
# for the whole Retry-After may wake a hair early (the loop runs timers within its clock
# resolution), and must not be sent back for a millisecond.
_COOL_DOWN_SLACK_S = 0.05


def retry_delay(
    failed_attempt: int, retry_after: float | None, options: FetchOptions, rng: random.Random
) -> float:
    """Full-jitter backoff (0-based `failed_attempt`), never shorter than a clamped Retry-After.

    Full jitter spreads the retries of a shard that all failed at once on the same host
    (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
    """
    ceiling = min(options.backoff_max, options.backoff_base * 2 ** min(failed_attempt, 60))
    delay = rng.uniform(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, options.max_retry_after))
    return delay


class _Cooldowns:
    """Per session: until when (loop time) each host asked us, via Retry-After, to wait."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    @staticmethod
    def _key(url: str) -> str | None:
        try:
            u = URL(url)
        except (ValueError, TypeError):
            return None
        return f"{u.host}:{u.port}" if u.host else None

    def hold(self, url: str, seconds: float) -> None:
        key = self._key(url)
        if key is None or seconds <= 0:
            return
        now = asyncio.get_running_loop().time()
        # Forget hosts that cooled down, so a long shard's dict stays small.
        self._until = {k: t for k, t in self._until.items() if t > now}
        self._until[key] = max(self._until.get(key, 0.0), now + seconds)

    def remaining(self, url: str) -> float:
        if not self._until:  # the common case: skip parsing the URL (yarl) on every request
            return 0.0
        key = self._key(url)
        until = self._until.get(key, 0.0) if key is not None else 0.0
        return max(0.0, until - asyncio.get_running_loop().time())
