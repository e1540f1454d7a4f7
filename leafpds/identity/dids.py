"""
Any DID to its document: ``did:plc`` through the PLC directory, ``did:web``
from ``https://<host>/.well-known/did.json`` (over http for ``localhost``,
as ``@atproto/identity`` does), and the service endpoints documents name.

Documents of ``did:web`` are fetched from hosts strangers name, so through
:mod:`leafpds.outbound`'s vetted addresses unless private ones are allowed.
"""

import json
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from leafpds.identity.plc import PLCClient, PLCError
from leafpds.outbound import SystemResolver, discard, get_pinned, read_bounded
from leafpds.syntax import InvalidSyntax, validate_did

log = Logger()


class Unresolved(Exception):
    """
    Why a DID has no document: its source said it has none (``gone`` False)
    or that it was deactivated (``gone`` True, as the PLC directory answers
    410 for a tombstoned DID), or the source could not be asked
    (``confirmed`` False: unreachable, timed out, a malformed answer).
    """

    def __init__(self, message: str, *, confirmed: bool, gone: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.confirmed = confirmed
        self.gone = gone


class DIDResolver:
    """Resolves DIDs, caching documents (and failures, briefly) for ``cache_ttl`` seconds."""

    MAX_DOCUMENT = 64 * 1024
    MAX_CACHED = 10_000

    def __init__(
        self,
        reactor: Any,
        plc: PLCClient,
        *,
        allow_private: bool = False,
        timeout: float = 5.0,
        cache_ttl: float = 300.0,
    ) -> None:
        self._reactor = reactor
        self._plc = plc
        self._allow_private = allow_private
        self._timeout = timeout
        self._cache_ttl = cache_ttl
        self._cache: dict[str, tuple[dict[str, Any] | None, float]] = {}
        self._dns: Any = None

    def stop(self) -> None:
        """Stop the DNS client's timers (it still answers if asked)."""
        if self._dns is not None:
            self._dns.stop()

    async def resolve(self, did: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """
        The DID document, or None if ``did`` does not resolve; ``fresh``
        skips the caches (ours and the PLC client's), for the checks that
        must see the document as it is now.
        """
        cached = self._cache.get(did)
        if cached is not None and cached[1] > self._reactor.seconds() and not fresh:
            return cached[0]
        try:
            return await self._resolve_now(did, fresh)
        except Unresolved as e:
            log.info("DID {did} does not resolve: {reason}", did=did[:200], reason=e.message)
            return None

    async def refresh(self, did: str) -> dict[str, Any]:
        """
        The DID document as its source serves it now (remembered for the
        next :meth:`resolve`), or :class:`Unresolved` saying why not.
        """
        return await self._resolve_now(did, fresh=True)

    async def _resolve_now(self, did: str, fresh: bool) -> dict[str, Any]:
        now = self._reactor.seconds()
        doc = None
        try:
            doc = await self._document(did, fresh)
        finally:
            # Failures are often transient: remember them for less long.
            ttl = self._cache_ttl if doc is not None else self._cache_ttl / 5
            self._cache.pop(did, None)
            self._cache[did] = (doc, now + ttl)
            if len(self._cache) > self.MAX_CACHED:
                del self._cache[next(iter(self._cache))]
        return doc

    def forget(self, did: str) -> None:
        """Drop ``did``'s document (ours and the PLC client's): it has just changed."""
        self._cache.pop(did, None)
        self._plc.forget(did)

    async def _document(self, did: str, fresh: bool) -> dict[str, Any]:
        try:
            validate_did(did)
            if did.startswith("did:plc:"):
                doc = await self._plc.resolve(did, fresh=fresh)
            elif did.startswith("did:web:"):
                doc = await self._web(did)
            else:
                raise Unresolved(f"{did.split(':')[1]!r} is not a DID method atproto uses", confirmed=True)
        except Unresolved:
            raise
        except InvalidSyntax as e:
            raise Unresolved(f"not a DID: {e}", confirmed=True) from None
        except PLCError as e:
            raise Unresolved(e.message, confirmed=e.status in (404, 410), gone=e.status == 410) from None
        except Exception as e:  # unreachable, malformed, whatever the reason
            raise Unresolved(f"{type(e).__name__}: {e}", confirmed=False) from None
        if doc.get("id") != did:
            raise Unresolved("the document is another DID's", confirmed=True)
        return doc

    async def _web(self, did: str) -> dict[str, Any]:
        # atproto allows only host-level did:web (a port percent-encoded).
        name = did[len("did:web:"):]
        if ":" in name:
            raise Unresolved("a did:web with a path is not one atproto uses", confirmed=True)
        netloc = unquote(name)
        host = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
        scheme = "http" if host == "localhost" else "https"
        if self._dns is None:
            self._dns = SystemResolver(self._reactor)
        attempt = ensureDeferred(self._fetch(f"{scheme}://{netloc}/.well-known/did.json"))
        attempt.addTimeout(self._timeout, self._reactor)
        return await attempt

    async def _fetch(self, url: str) -> dict[str, Any]:
        response = await get_pinned(
            self._reactor, self._dns, url, allow_private=self._allow_private, timeout=self._timeout,
            headers={"Accept": "application/json"},
        )
        if response.code != 200:
            await discard(response)
            # The host answered: 404 and 410 say there is no document; anything else may pass.
            raise Unresolved(f"{url} answered {response.code}", confirmed=response.code in (404, 410),
                             gone=response.code == 410)
        doc = json.loads(await read_bounded(response, self.MAX_DOCUMENT))
        if not isinstance(doc, dict):
            raise Unresolved(f"{url} holds no JSON object", confirmed=True)
        return doc


def service_endpoint(doc: dict[str, Any], service_id: str) -> str | None:
    """
    The ``serviceEndpoint`` of the service ``#<id>`` in ``doc`` (its id may
    be written relative, ``#id``, or absolute, ``<did>#id``): an http(s) URL.
    """
    fragment = service_id if service_id.startswith("#") else "#" + service_id
    services = doc.get("service")
    if not isinstance(services, list):
        return None
    for service in services:
        if not isinstance(service, dict):
            continue
        sid = service.get("id")
        if sid == fragment or sid == f"{doc.get('id')}{fragment}":
            endpoint = service.get("serviceEndpoint")
            if isinstance(endpoint, str) and endpoint.startswith(("https://", "http://")):
                return endpoint.rstrip("/")
            return None
    return None
