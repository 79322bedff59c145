"""The SSRF guard: which IP addresses a fetch may connect to, checked on each address connected to.

A manifest is untrusted input: a URL, a redirect or a DNS name can point at the machine
running the crawl (``127.0.0.1``, a cloud metadata service at ``169.254.169.254``, a
database on ``10.0.0.5``). By default only globally routable unicast addresses are allowed.
``_Guard`` applies this policy where the address is final: on the resolver's answer
(names; the resolver is ``session._GuardedResolver``) and on the socket about to connect (IP
literals), so redirects and DNS names that lead there are caught as well as literal URLs.

An IPv6 address that embeds an IPv4 one (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``,
6to4 ``2002::/16``) is judged by the IPv4 address it reaches.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

__all__ = ["AddressPolicy", "blocked_reason"]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 shared space: not is_private in 3.11
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def blocked_reason(address: str) -> str | None:
    """Why a fetch must not connect to ``address`` ("loopback", ...), or None if it may.

    Anything that does not parse as an IP address is refused too (fail closed).
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 scope id
    except ValueError:
        return "not an IP address"
    return _reason(ip)


def _reason(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _reason(embedded)
    # Order matters only for the message: 169.254.169.254 is both link-local and private.
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT"
    if ip.is_private:  # RFC 1918, unique-local fc00::/7, documentation and benchmark ranges
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """The guard as configured: ``--allow-private`` turns it off, ``--allow-host`` exempts hosts."""

    allow_private: bool = False
    allow_hosts: frozenset[str] = frozenset()

    def host_exempt(self, host: str) -> bool:
        """Whether a URL host (a name or an IP literal) skips the check."""
        return self.allow_private or host.lower().strip("[]").rstrip(".") in self.allow_hosts

    def refusal(self, host: str, address: str) -> str | None:
        """A message when connecting to ``address`` (which ``host`` resolved to) is refused."""
        if self.host_exempt(host):
            return None
        reason = blocked_reason(address)
        if reason is None:
            return None
        target = address if host in (address, f"[{address}]") else f"{host} ({address})"
        return f"refused to connect to {target}: {reason} address (see --allow-private, --allow-host)"


class _Blocked(OSError):
    """An address the policy refuses; raised inside aiohttp's connect, found in `_classify`."""


class _Guard:
    """The session's address policy plus the addresses of exempt hosts already resolved."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        # Addresses that --allow-host names resolved to: the socket hook sees only the address.
        self.approved: set[str] = set()

    def admit(self, host: str, address: str) -> str | None:
        """The refusal message for connecting to ``address`` as ``host``, or None."""
        refusal = self.policy.refusal(host, address)
        if refusal is None and not self.policy.allow_private and self.policy.host_exempt(host):
            self.approved.add(address)
        return refusal

    def socket_factory(self, addr_info: tuple) -> socket.socket:  # type: ignore[type-arg]
        """aiohttp's last step before connect(); IP-literal URLs skip the resolver, not this."""
        family, type_, proto, _, sockaddr = addr_info
        address = str(sockaddr[0])
        if address not in self.approved and (refusal := self.admit(address, address)):
            raise _Blocked(errno.EACCES, refusal)
        return socket.socket(family, type_, proto)


def _blocked_in(exc: BaseException) -> _Blocked | None:
    """The `_Blocked` under aiohttp's wrapping (os_error / __cause__), if any."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None or isinstance(seen, _Blocked):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return None
