"""Where the engine connects because someone told it to: webhook URLs.

An admin may point a webhook anywhere, and the delivery log says how each try went;
unchecked, that makes the engine a port scanner of the networks it sits in (cloud
metadata at 169.254.169.254 included). So webhook targets must be public addresses:
loopback, private, link-local, shared (carrier-grade NAT), multicast, reserved and
unspecified ones are refused, and an IPv4 address inside an IPv6 one (mapped, 6to4,
NAT64, Teredo) is judged as that IPv4 address, unless CCENGINE_WEBHOOK_ALLOWED_NETWORKS
lists the network.

Checked twice: when a webhook is created (address literals in any spelling, and
``localhost`` names), and on every connection a delivery opens: the name is resolved
then, every address it resolves to must pass, and the connection goes to one of those
checked addresses, so a name that resolves elsewhere by then (DNS rebinding) gains
nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
SETTING = "CCENGINE_WEBHOOK_ALLOWED_NETWORKS"


class TargetRefused(Exception):
    """A target the policy refuses; the message says why and is safe to show."""


def _kind(ip: IPAddress) -> str | None:
    """What makes an address not a public one; None for a public address."""
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:  # connecting to it reaches this host
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a public address"
    return None


def _inner_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


class TargetPolicy:
    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allowed_networks
        )

    def refusal(self, ip: IPAddress) -> str | None:
        """Why the engine may not connect to ``ip``; None if it may."""
        inner = _inner_v4(ip)
        candidates = [ip] if inner is None else [inner, ip]
        if any(a in net for a in candidates for net in self.allowed):
            return None
        # a mapped or NAT64 address reaches the IPv4 one: their prefixes themselves
        # count as private and reserved
        translated = isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip in NAT64)
        for a in candidates[:1] if translated else candidates:
            if (kind := _kind(a)) is not None:
                shown = str(a) if a == ip else f"{ip} ({a})"
                return f"{shown} is {kind}; allow its network in {SETTING}"
        return None

    def url_refusal(self, url: str) -> str | None:
        """What can be judged before any name is resolved: an address written in the
        URL (also as 2130706433, 0x7f000001, 0177.0.0.1 or 127.1), or localhost."""
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return "not a URL"
        if not host:
            return "the URL names no host"
        ip = _literal(host)
        if ip is not None:
            return self.refusal(ip)
        if host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost"):
            return self.refusal(ipaddress.IPv4Address("127.0.0.1"))
        return None  # a name: judged by what it resolves to, when a delivery connects


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # the spellings inet_aton (and so getaddrinfo) accepts: 127.1, 0x7f000001, …
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):  # not an address; ValueError: a NUL in it
        return None


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _resolve(host, port, timeout)
        for ip in addresses:
            why = self.policy.refusal(ip)
            if why is not None:
                raise TargetRefused(why if str(ip) == host else f"{host} resolves to {why}")
        failure: httpcore.ConnectError | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )  # fmt: skip
            except httpcore.ConnectError as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("a Unix socket is no webhook target")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _resolve(host: str, port: int, seconds: float | None) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), seconds
        )
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {host} took over {seconds} s") from None
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def guarded_transport(policy: TargetPolicy, max_connections: int = 100) -> httpx.AsyncHTTPTransport:
    """An httpx transport that connects only where ``policy`` allows. No proxy from
    the environment: through a proxy, the address checked would be the proxy's."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx takes no network backend: the pool it made, made again with ours
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        network_backend=_GuardedBackend(policy),
        max_connections=max_connections,
    )
    return transport
