"""
Handles: the policy for handles of new accounts on this PDS, and resolution
of any handle to a DID (https://atproto.com/specs/handle).

Resolution talks to hosts named by strangers, so the HTTPS lookup refuses
hosts whose addresses are not public and connects only to the address it
checked: a second DNS answer (rebinding) cannot redirect the connection.
"""

from typing import Any, Coroutine, TypeVar

from hyperlink import URL, DecodedURL
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import DomainError
from twisted.web.iweb import IResponse

from leafpds.errors import XRPCError
from leafpds.outbound import Refused, SystemResolver, discard, get_pinned, read_bounded
from leafpds.syntax import InvalidSyntax, normalize_handle, validate_did

log = Logger()

T = TypeVar("T")

# Registration-time policy, not syntax: these names never resolve in the
# public DNS (RFC 6761 and friends), so a handle under them could never be
# verified by anyone else.
DISALLOWED_TLDS = (
    ".local",
    ".arpa",
    ".invalid",
    ".localhost",
    ".internal",
    ".example",
    ".alt",
    ".onion",
)

# First labels under our own domains that would let an account pass for the
# service, its operators, or a well-known organisation.
RESERVED_NAMES = frozenset(
    """
    abuse access account accounts admin administrator administrators admins
    alerts anonymous api apis app apps appview archive assets atp atproto auth
    autoconfig autodiscover backup beta billing blog bluesky bot bots bsky cdn
    chat config contact dashboard data default demo dev developer developers
    did dns docs download email example feed feeds firehose ftp git handle
    help helpdesk home host hostmaster hostname imap info invalid invite
    jetstream labeler legal lexicon localhost login logout mail mailer
    manager moderation moderator mod mods news noc noreply no-reply null
    oauth official operator owner password pds plc policy pop pop3 postmaster
    privacy profile relay repo report root rss security server service
    services settings signin signup smtp staff staging static stats status
    support sync sysadmin system team test tos undefined user username users
    webmaster webmail www xrpc
    apple amazon facebook github gitlab google instagram mastodon meta
    microsoft reddit threads tiktok twitter whatsapp wikipedia youtube
    """.split()
)

_FIRST_LABEL_MIN = 3
_FIRST_LABEL_MAX = 18


class InvalidHandle(XRPCError):
    name = "InvalidHandle"


def _syntax_problem(handle: str) -> str:
    """Why ``handle`` is not a valid handle, in the reference PDS's words."""
    if not all(c.isascii() and (c.isalnum() or c in ".-") for c in handle):
        return (
            "Disallowed characters in handle "
            "(ASCII letters, digits, dashes, periods only)"
        )
    if len(handle) > 253:
        return "Handle is too long (253 chars max)"
    labels = handle.split(".")
    if len(labels) < 2:
        return "Handle domain needs at least two parts"
    for label in labels:
        if not label:
            return "Handle parts can not be empty"
        if len(label) > 63:
            return "Handle part too long (max 63 chars)"
        if label.startswith("-") or label.endswith("-"):
            return "Handle parts can not start or end with hyphens"
    if not labels[-1][0].isalpha():
        return "Handle final component (TLD) must start with ASCII letter"
    return "Invalid handle"


def validate_new_handle(handle: str, domains: list[str]) -> str:
    """
    The normalized form of ``handle`` if this PDS may give it to a new
    account under one of ``domains`` (such as ``".test"``); otherwise raise
    :class:`~leafpds.errors.XRPCError` with the reference PDS's error name.
    Whether the handle is already taken is the caller's question.
    """
    try:
        normalized = normalize_handle(handle)
    except InvalidSyntax:
        raise InvalidHandle(_syntax_problem(handle)) from None

    suffixes = ["." + domain.lower().lstrip(".") for domain in domains]
    # The longest match, so that ".pds.test" wins over ".test".
    served = max(
        (s for s in suffixes if normalized.endswith(s)), key=len, default=None
    )
    if served is None:
        if normalized.endswith(DISALLOWED_TLDS):
            raise InvalidHandle("Handle TLD is invalid or disallowed")
        raise XRPCError("Not a supported handle domain", name="UnsupportedDomain")

    front = normalized[: -len(served)]
    if "." in front:
        raise InvalidHandle("Invalid characters in handle")
    if len(front) < _FIRST_LABEL_MIN:
        raise InvalidHandle("Handle too short")
    if len(front) > _FIRST_LABEL_MAX:
        raise InvalidHandle("Handle too long")
    if front in RESERVED_NAMES:
        raise XRPCError("Reserved handle", name="HandleNotAvailable")
    return normalized


class HandleResolver:
    """
    Resolves handles to DIDs by DNS TXT ``_atproto.<handle>``, then by
    ``https://<handle>/.well-known/atproto-did``, caching the answers.

    ``allow_private``, ``well_known_scheme="http"`` and ``well_known_port``
    exist for tests on loopback only.
    """

    # A DID is at most 2048 characters; leave room for stray whitespace.
    MAX_BODY = 4096
    # The spec allows redirects "up to a reasonable number of hops".
    MAX_REDIRECTS = 3
    # Enough for any sane traffic; an attacker asking for millions of
    # names only pushes the oldest answers out.
    MAX_CACHED = 10_000

    def __init__(
        self,
        reactor: Any,
        *,
        timeout: float = 3.0,
        allow_private: bool = False,
        dns_servers: list[tuple[str, int]] | None = None,
        well_known_scheme: str = "https",
        well_known_port: int | None = None,
        cache_ttl: float = 300.0,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._allow_private = allow_private
        self._scheme = well_known_scheme
        self._port = well_known_port
        self._cache_ttl = cache_ttl
        # Failures are often transient (a handle being set up right now).
        self._negative_ttl = cache_ttl / 5
        if dns_servers is None:
            self._dns = SystemResolver(reactor)
        else:
            self._dns = client.Resolver(servers=dns_servers, reactor=reactor)
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._pending: dict[str, list[Deferred[str | None]]] = {}

    def stop(self) -> None:
        """Stop the DNS client's timers (it still answers if asked)."""
        if isinstance(self._dns, SystemResolver):
            self._dns.stop()

    async def resolve(self, handle: str, *, fresh: bool = False) -> str | None:
        """
        The DID ``handle`` points to, or ``None`` if it does not resolve;
        ``fresh`` looks it up anew (the handle's owner has just changed it).
        """
        try:
            handle = normalize_handle(handle)
        except InvalidSyntax:
            return None
        if handle.endswith(DISALLOWED_TLDS):
            return None

        cached = self._cache.get(handle)
        if cached is not None and cached[1] > self._reactor.seconds() and not fresh:
            return cached[0]
        # Concurrent requests for one handle share one lookup (a fresh one
        # starts its own: one under way may have begun before the change).
        if fresh:
            did = await self._lookup(handle)
            self._remember(handle, did)
            return did
        if handle in self._pending:
            waiter: Deferred[str | None] = Deferred()
            self._pending[handle].append(waiter)
            return await waiter

        self._pending[handle] = []
        did = None
        try:
            did = await self._lookup(handle)
        finally:
            for waiter in self._pending.pop(handle):
                waiter.callback(did)
        self._remember(handle, did)
        return did

    def _remember(self, handle: str, did: str | None) -> None:
        ttl = self._cache_ttl if did is not None else self._negative_ttl
        self._cache.pop(handle, None)
        self._cache[handle] = (did, self._reactor.seconds() + ttl)
        if len(self._cache) > self.MAX_CACHED:
            del self._cache[next(iter(self._cache))]

    async def _lookup(self, handle: str) -> str | None:
        claims = await self._within_timeout(
            self._dns_claims(handle), handle, "DNS", default=set()
        )
        if len(claims) > 1:
            # The spec: several different DIDs mean resolution fails.
            log.info("handle {handle}: conflicting _atproto records", handle=handle)
            return None
        if claims:
            did = _valid_did(claims.pop(), handle)
            if did is not None:
                return did
        return await self._within_timeout(
            self._from_well_known(handle), handle, "HTTP", default=None
        )

    async def _within_timeout(
        self, coroutine: Coroutine[Any, Any, T], handle: str, method: str, default: T
    ) -> T:
        attempt = ensureDeferred(coroutine)
        attempt.addTimeout(self._timeout, self._reactor)
        try:
            return await attempt
        except Exception as e:
            # Whatever went wrong, the handle does not resolve this way.
            log.info(
                "{method} lookup for handle {handle} failed: {reason}",
                method=method,
                handle=handle,
                reason=f"{type(e).__name__}: {e}",
            )
            return default

    async def _dns_claims(self, handle: str) -> set[str]:
        """The DIDs the ``did=`` TXT records of ``_atproto.<handle>`` name."""
        name = "_atproto." + handle
        if len(name) > 253:
            # Too long for a DNS name; only the well-known method can work.
            return set()
        try:
            answers, _, _ = await self._dns.lookupText(name, timeout=(self._timeout,))
        except DomainError:
            return set()
        claims = set()
        for record in answers:
            if record.type == dns.TXT:
                # Long TXT values arrive as several strings, to be joined.
                text = b"".join(record.payload.data).decode("ascii", "replace")
                if text.startswith("did="):
                    claims.add(text[4:])
        return claims

    async def _from_well_known(self, handle: str) -> str | None:
        url: DecodedURL = DecodedURL(
            URL(
                scheme=self._scheme,
                host=handle,
                port=self._port,
                path=(".well-known", "atproto-did"),
            )
        )
        for _ in range(self.MAX_REDIRECTS + 1):
            response = await self._get(url)
            if response.code in (301, 302, 303, 307, 308):
                await discard(response)
                url = self._redirect_target(url, response)
                continue
            if not 200 <= response.code < 300:
                await discard(response)
                raise Refused(f"HTTP status {response.code}")
            body = await read_bounded(response, self.MAX_BODY)
            return _valid_did(body.decode("ascii", "replace").strip(), handle)
        raise Refused("too many redirects")

    def _redirect_target(self, url: DecodedURL, response: IResponse) -> DecodedURL:
        locations = response.headers.getRawHeaders(b"location")
        if not locations:
            raise Refused("redirect without a Location")
        try:
            target = url.click(locations[0].decode("ascii"))
            normalize_handle(target.host)
        except (UnicodeDecodeError, ValueError):
            raise Refused("redirect to an invalid URL") from None
        if target.scheme != self._scheme:
            raise Refused(f"redirect to scheme {target.scheme!r}")
        return target

    async def _get(self, url: DecodedURL) -> IResponse:
        return await get_pinned(
            self._reactor, self._dns, url.to_uri().to_text(),
            allow_private=self._allow_private, timeout=self._timeout, headers={"Accept": "text/plain"},
        )


def _valid_did(value: str, handle: str) -> str | None:
    try:
        validate_did(value)
    except InvalidSyntax:
        log.info("handle {handle}: malformed DID", handle=handle)
        return None
    return value
