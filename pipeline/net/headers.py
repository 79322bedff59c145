"""Reading response headers: Retry-After, the X-Robots-Tag opt-out, Content-Type, a URL's host (pure)."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC

from yarl import URL

__all__ = ["opted_out", "parse_retry_after"]

OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
# X-Robots-Tag directives that carry their own "name: value"; the name before their colon
# is not a user-agent prefix (https://developers.google.com/search/docs/crawling-indexing/robots-meta-tag).
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None.

    A date in the past gives 0.0; anything unparseable gives None (i.e. ignore the header).
    ``now`` is a Unix time, for tests.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():  # RFC 9110 §10.2.3: delta-seconds = 1*DIGIT
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def opted_out(values: list[str] | tuple[str, ...], user_agent: str) -> bool:
    """Whether X-Robots-Tag header values forbid AI use (noai/noimageai) for our agent.

    Each header holds comma-separated directives, optionally prefixed by a bot name
    (``otherbot: noai, noimageai``); a prefix applies to the rest of that header. Directives
    without a prefix, or for ``*``, or for our product token apply to us.
    """
    ours = {"*", _product_token(user_agent)}
    for value in values:
        agent: str | None = None
        for item in value.split(","):
            name, sep, rest = item.partition(":")
            name = name.strip().lower()
            if sep and name not in _VALUED_DIRECTIVES and " " not in name:
                agent, item = name, rest
            if (agent is None or agent in ours) and item.strip().lower() in OPT_OUT_DIRECTIVES:
                return True
    return False


def _product_token(user_agent: str) -> str:
    """'pipeline/0.1.0 (image downloader...)' → 'pipeline'."""
    return user_agent.strip().split("/", 1)[0].split(None, 1)[0].lower()


def _host_of(url: str) -> str:
    try:
        return (URL(url).host or "").lower()
    except (ValueError, TypeError):
        return ""


def _mime(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None
