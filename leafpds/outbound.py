"""
HTTP to hosts that strangers name: a handle's host, a ``did:web``, a service
endpoint from a DID document.  Every address such a name has must be public
(no loopback, private, link-local or multicast target: the server must not be
turned against its own network), and the connection goes to the very address
that was checked, so a second DNS answer (rebinding) cannot redirect it.
"""

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from treq import collect
from treq.client import HTTPClient
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.names import client, dns
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

AnyAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# RFC 6761 section 6.3: "localhost" and the names under it are the loopback
# interface, never a DNS question.
_LOOPBACK = ipaddress.ip_address("127.0.0.1")


def is_localhost_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


class SystemResolver(client.Resolver):
    """
    Twisted's DNS client on the system's ``/etc/resolv.conf``, which it
    re-reads on a timer from the moment it is made; :meth:`stop` ends the
    timer, so a stopped leafpds leaves nothing behind in its reactor.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__(resolv="/etc/resolv.conf", reactor=reactor)

    def stop(self) -> None:
        call = getattr(self, "_parseCall", None)  # Twisted's re-read timer
        if call is not None and call.active():
            call.cancel()


class Refused(Exception):
    """The request must not go on (the reason is the message)."""


class TooLarge(Exception):
    """A response body larger than we are willing to read."""


def is_public_address(address: AnyAddress) -> bool:
    """
    Whether ``address`` is on the public internet: not private, loopback,
    link-local, CGNAT, unique-local, multicast, unspecified or reserved,
    including when an IPv4 address hides inside an IPv6 one.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour]
        embedded.extend(address.teredo or ())
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(v4 is not None and not is_public_address(v4) for v4 in embedded):
            return False
    # is_global already excludes private, loopback, link-local, CGNAT, ULA,
    # unspecified and reserved ranges; global multicast is still not a host.
    return address.is_global and not address.is_multicast


async def vetted_address(resolver: Any, host: str, *, allow_private: bool, timeout: float) -> AnyAddress:
    """
    An address of ``host`` (a name or an IP literal), if all of its
    addresses are public or ``allow_private``; :class:`Refused` otherwise.
    ``resolver`` is a :mod:`twisted.names` resolver.
    """
    host = host.strip("[]").lower()
    try:
        addresses: list[AnyAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = [_LOOPBACK] if is_localhost_name(host) else await _lookup(resolver, host, timeout)
    if not addresses:
        raise Refused(f"no address for {host}")
    if not allow_private:
        # One bad address refuses them all: it may be the one chosen.
        for address in addresses:
            if not is_public_address(address):
                raise Refused(f"{host} has a non-public address {address}")
    # A records came first: IPv4 is more likely to be reachable.
    return addresses[0]


async def _lookup(resolver: Any, host: str, timeout: float) -> list[AnyAddress]:
    results = await DeferredList(
        [
            resolver.lookupAddress(host, timeout=(timeout,)),
            resolver.lookupIPV6Address(host, timeout=(timeout,)),
        ],
        consumeErrors=True,
    )
    addresses: list[AnyAddress] = []
    for ok, result in results:
        if ok:
            for record in result[0]:
                if record.type in (dns.A, dns.AAAA):
                    addresses.append(ipaddress.ip_address(record.payload.address))
    return addresses


@implementer(IAgentEndpointFactory)
class PinnedEndpointFactory:
    """
    Connects to one vetted address whatever the URL's host resolves to now,
    while TLS (SNI and certificate check) and the Host header keep the name.
    """

    def __init__(self, reactor: Any, host: str, address: AnyAddress, timeout: float) -> None:
        self._reactor = reactor
        self._host = host
        self._address = address
        self._timeout = timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.host.decode("ascii") != self._host:
            raise Refused(f"unexpected host {uri.host!r}")
        tcp = TCP4ClientEndpoint if self._address.version == 4 else TCP6ClientEndpoint
        endpoint = tcp(self._reactor, str(self._address), uri.port, self._timeout)
        if uri.scheme == b"https":
            creator = BrowserLikePolicyForHTTPS().creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


async def read_bounded(response: IResponse, limit: int) -> bytes:
    """The whole body of ``response``; :class:`TooLarge` past ``limit`` bytes."""
    chunks: list[bytes] = []
    received = 0

    def keep(data: bytes) -> None:
        nonlocal received
        received += len(data)
        if received > limit:
            raise TooLarge(f"body larger than {limit} bytes")
        chunks.append(data)

    await collect(response, keep)
    return b"".join(chunks)


async def discard(response: IResponse) -> None:
    """Close the connection without reading a body we do not want."""

    def refuse(data: bytes) -> None:
        raise TooLarge("unwanted body")

    try:
        await collect(response, refuse)
    except Exception:
        # Whatever happened to a body nobody reads does not matter.
        pass


async def get_pinned(
    reactor: Any, resolver: Any, url: str, *, allow_private: bool, timeout: float,
    headers: dict[str, str] | None = None,
) -> IResponse:
    """
    GET ``url`` (http or https, no redirects followed) from a vetted address
    of its host; :class:`Refused` when the host has a non-public address and
    ``allow_private`` is off.  ``timeout`` bounds the lookup and the connection;
    the caller bounds the whole exchange, body included.
    """
    host = urlsplit(url).hostname or ""
    address = await vetted_address(resolver, host, allow_private=allow_private, timeout=timeout)
    agent = Agent.usingEndpointFactory(reactor, PinnedEndpointFactory(reactor, host, address, timeout))
    return await HTTPClient(agent).get(url, headers=headers, allow_redirects=False)
