"""What one attempt got: how far it went (``_Reached``) and its body or failure (``_AttemptResult``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import ErrorClass
from pipeline.net.headers import _mime

if TYPE_CHECKING:
    import aiohttp


@dataclass(slots=True)
class _Reached:
    """How far one attempt got; kept so a failure still reports status and final URL."""

    final_url: str
    http_status: int | None = None
    redirects: int = 0
    mime: str | None = None
    reading_body: bool = False

    def saw(self, resp: aiohttp.ClientResponse) -> None:
        self.final_url = str(resp.url)
        self.http_status = resp.status
        self.redirects = len(resp.history)
        self.mime = _mime(resp.headers.get("Content-Type"))


@dataclass(frozen=True, slots=True)
class _AttemptResult:
    """One attempt's result; `retry` says whether another attempt may help."""

    progress: _Reached
    body: bytes | None = None
    error_class: ErrorClass | None = None
    error_message: str | None = None
    retry: bool = False
    retry_after: float | None = None
    deferred: bool = False  # nothing asked of a host cooling down; wait `retry_after`, go again
