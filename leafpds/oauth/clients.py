"""
OAuth clients as atproto knows them: no registration, the ``client_id`` is
the https URL of the client's metadata document, which the authorization
server fetches (through :mod:`leafpds.outbound`: public addresses only,
bounded size and time, cached) and validates.  A development client may
instead use ``http://localhost?redirect_uri=…&scope=…``, whose metadata
the server builds itself from the query, as the spec allows.

What is checked, as atproto.com/specs/oauth and the official PDS check it:
``client_id`` equal to the URL fetched; ``dpop_bound_access_tokens`` true;
``response_types`` ``["code"]``; ``grant_types`` with ``authorization_code``
(and ``refresh_token`` only besides); ``scope`` with ``atproto``;
``redirect_uris`` per ``application_type`` (``web``: https; ``native``:
https on the client's own origin, a custom scheme that is the client's
host reversed, or http on a loopback IP); ``token_endpoint_auth_method``
``none`` or ``private_key_jwt`` with ES256 and exactly one of ``jwks`` /
``jwks_uri``.
"""

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from leafpds.oauth.errors import InvalidClientMetadata
from leafpds.oauth.jwk import ALGORITHMS, BadKey, public_key
from leafpds.oauth.scopes import ATPROTO, split_scope
from leafpds.outbound import Refused, TooLarge, discard, get_pinned, is_localhost_name, read_bounded

log = Logger()

MAX_DOCUMENT = 64 * 1024
FETCH_TIMEOUT = 10.0
CACHE_TTL = 10 * 60
# A failure is remembered for less long: it is often transient.
FAILURE_TTL = 60
MAX_CACHED = 1000
LOOPBACK_IPS = ("127.0.0.1", "[::1]")
AUTH_METHODS = ("none", "private_key_jwt")


@dataclass(frozen=True)
class Client:
    """A client's validated metadata (the fields leafpds uses)."""

    client_id: str
    redirect_uris: tuple[str, ...]
    scope: str
    application_type: str = "web"
    token_endpoint_auth_method: str = "none"
    jwks: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    jwks_uri: str | None = None
    client_name: str | None = None
    client_uri: str | None = None
    logo_uri: str | None = None
    tos_uri: str | None = None
    policy_uri: str | None = None
    # A development client: its metadata is built, not fetched, and
    # consent is always asked.
    loopback: bool = False

    @property
    def confidential(self) -> bool:
        return self.token_endpoint_auth_method == "private_key_jwt"


def is_loopback_client_id(client_id: str) -> bool:
    return client_id == "http://localhost" or client_id.startswith(("http://localhost?", "http://localhost/"))


def loopback_client(client_id: str) -> Client:
    """
    The metadata of a development client ``http://localhost[?redirect_uri=…][&scope=…]``:
    no port, no path; redirect URIs on a loopback IP (default both, at ``/``),
    scope ``atproto`` unless given.
    """
    parts = urlsplit(client_id)
    if parts.scheme != "http" or parts.netloc != "localhost" or parts.path not in ("", "/") or parts.fragment:
        raise InvalidClientMetadata("Loopback client_id must be http://localhost with an optional query")
    if parts.path == "/":
        raise InvalidClientMetadata("Loopback client_id must not have a path")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise InvalidClientMetadata("Malformed loopback client_id query") from None
    redirect_uris: list[str] = []
    scopes: list[str] = []
    for name, value in pairs:
        if name == "redirect_uri":
            redirect_uris.append(value)
        elif name == "scope":
            scopes.append(value)
        else:
            raise InvalidClientMetadata(f"Unknown loopback client_id parameter {name[:50]!r}")
    if len(scopes) > 1:
        raise InvalidClientMetadata("Loopback client_id may name one scope parameter")
    for uri in redirect_uris:
        if not _is_loopback_redirect(uri):
            raise InvalidClientMetadata("Loopback client redirect URIs must be http on 127.0.0.1 or [::1]")
    scope = scopes[0] if scopes else ATPROTO
    if ATPROTO not in split_scope(scope):
        raise InvalidClientMetadata('Client scope must include "atproto"')
    return Client(
        client_id=client_id,
        redirect_uris=tuple(redirect_uris or ("http://127.0.0.1/", "http://[::1]/")),
        scope=scope,
        application_type="native",
        loopback=True,
    )


def _is_loopback_redirect(uri: str) -> bool:
    parts = urlsplit(uri)
    host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.endswith("]") else parts.netloc
    return parts.scheme == "http" and host in LOOPBACK_IPS and not parts.fragment and "@" not in parts.netloc


def redirect_uri_allowed(client: Client, uri: str) -> bool:
    """
    Whether ``uri`` is one of ``client``'s redirect URIs: exactly, or for a
    loopback IP redirect, with any port (RFC 8252 section 7.3) and the same
    path and query.
    """
    if uri in client.redirect_uris:
        return True
    if not _is_loopback_redirect(uri):
        return False
    wanted = _without_port(uri)
    return any(_is_loopback_redirect(r) and _without_port(r) == wanted for r in client.redirect_uris)


def _without_port(uri: str) -> tuple[str, str, str, str]:
    parts = urlsplit(uri)
    host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.endswith("]") else parts.netloc
    return parts.scheme, host, parts.path or "/", parts.query


def check_client_id_url(client_id: str, allow_local: bool) -> None:
    """
    A discoverable ``client_id``: an https URL with a path, no credentials or
    fragment, not on ``localhost`` or a name under it.  ``allow_local`` (off by default; tests
    and development only) lets it be http on any host.
    """
    try:
        parts = urlsplit(client_id)
        parts.port  # noqa: B018 (ValueError for a bad port)
    except ValueError:
        raise InvalidClientMetadata("client_id is not a valid URL") from None
    if parts.scheme != "https" and not (allow_local and parts.scheme == "http"):
        raise InvalidClientMetadata("client_id must be an https URL")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise InvalidClientMetadata("client_id must be a URL with a host and without credentials")
    if parts.fragment or "#" in client_id:
        raise InvalidClientMetadata("client_id must not have a fragment")
    if not parts.path or parts.path == "/":
        raise InvalidClientMetadata("client_id must have a path")
    if is_localhost_name(parts.hostname) and not allow_local:
        raise InvalidClientMetadata("client_id must not be on localhost")


def validate_metadata(client_id: str, doc: Any, allow_local: bool = False) -> Client:
    """
    ``doc``, fetched from ``client_id``, validated; :class:`InvalidClientMetadata`
    otherwise.  ``allow_local`` also lets redirect URIs be http on any host.
    """
    if not isinstance(doc, dict):
        raise InvalidClientMetadata("Client metadata must be a JSON object")
    if doc.get("client_id") != client_id:
        raise InvalidClientMetadata("client_id in the document does not match the URL it was fetched from")
    if doc.get("dpop_bound_access_tokens") is not True:
        raise InvalidClientMetadata('"dpop_bound_access_tokens" must be true')
    if doc.get("response_types", ["code"]) != ["code"]:
        raise InvalidClientMetadata('"response_types" must be ["code"]')
    grants = doc.get("grant_types", ["authorization_code"])
    if (not isinstance(grants, list) or "authorization_code" not in grants
            or any(g not in ("authorization_code", "refresh_token") for g in grants)):
        raise InvalidClientMetadata('"grant_types" must include "authorization_code", and only it and "refresh_token"')
    scope = doc.get("scope")
    if not isinstance(scope, str) or ATPROTO not in split_scope(scope):
        raise InvalidClientMetadata('Client "scope" must include "atproto"')
    application_type = doc.get("application_type", "web")
    if application_type not in ("web", "native"):
        raise InvalidClientMetadata('"application_type" must be "web" or "native"')
    redirect_uris = doc.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris or not all(isinstance(u, str) for u in redirect_uris):
        raise InvalidClientMetadata('"redirect_uris" must be a non-empty list of URLs')
    for uri in redirect_uris:
        _check_redirect_uri(uri, client_id, application_type, allow_local)
    method = doc.get("token_endpoint_auth_method", "none")
    if method not in AUTH_METHODS:
        raise InvalidClientMetadata('"token_endpoint_auth_method" must be "none" or "private_key_jwt"')
    jwks, jwks_uri = doc.get("jwks"), doc.get("jwks_uri")
    if method == "private_key_jwt":
        if application_type == "native":
            raise InvalidClientMetadata('Native clients must authenticate using "none"')
        if doc.get("token_endpoint_auth_signing_alg") not in ALGORITHMS:
            raise InvalidClientMetadata('"token_endpoint_auth_signing_alg" must be ES256')
        if (jwks is None) == (jwks_uri is None):
            raise InvalidClientMetadata('Confidential clients need exactly one of "jwks" and "jwks_uri"')
        if jwks is not None:
            check_jwks(jwks)
        else:
            if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("https", "http"):
                raise InvalidClientMetadata('"jwks_uri" must be a URL')
    elif jwks is not None or jwks_uri is not None:
        raise InvalidClientMetadata('"jwks" and "jwks_uri" are for "private_key_jwt" clients only')
    text = {name: doc.get(name) for name in ("client_name", "client_uri", "logo_uri", "tos_uri", "policy_uri")}
    for name, value in text.items():
        if value is not None and (not isinstance(value, str) or len(value) > 2048):
            raise InvalidClientMetadata(f'"{name}" must be a string')
    for name in ("client_uri", "logo_uri", "tos_uri", "policy_uri"):
        scheme = urlsplit(text[name]).scheme if text[name] is not None else "https"
        if scheme != "https" and not (allow_local and scheme == "http"):
            raise InvalidClientMetadata(f'"{name}" must be an https URL')
    # A page names the client by its client_uri: it must be the client's own.
    if text["client_uri"] is not None and _origin(text["client_uri"]) != _origin(client_id):
        raise InvalidClientMetadata('"client_uri" must have the origin of the client_id')
    return Client(
        client_id=client_id,
        redirect_uris=tuple(redirect_uris),
        scope=scope,
        application_type=application_type,
        token_endpoint_auth_method=method,
        jwks=jwks,
        jwks_uri=jwks_uri,
        **text,
    )


def check_jwks(jwks: Any) -> list[dict[str, Any]]:
    """The usable (public, ES256) keys of a client's JWK set; :class:`InvalidClientMetadata` if none."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise InvalidClientMetadata('"jwks" must be a JWK set {"keys": [...]}')
    usable = []
    for key in keys:
        try:
            public_key(key, "ES256")
        except BadKey as e:
            if isinstance(key, dict) and "d" in key:
                raise InvalidClientMetadata("Client JWK set holds a private key") from None
            log.debug("Client key skipped: {reason}", reason=str(e))
            continue
        usable.append(key)
    if not usable:
        raise InvalidClientMetadata("Client JWK set has no usable ES256 key")
    return usable


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _check_redirect_uri(uri: str, client_id: str, application_type: str, allow_local: bool) -> None:
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        raise InvalidClientMetadata("Invalid redirect URI") from None
    if parts.fragment or "#" in uri:
        raise InvalidClientMetadata("Redirect URIs must not have a fragment")
    if parts.scheme in ("http", "https"):
        if parts.username is not None or parts.password is not None:
            raise InvalidClientMetadata("Redirect URIs must not hold credentials")
        if port is not None and port == {"http": 80, "https": 443}[parts.scheme]:
            raise InvalidClientMetadata("Redirect URIs must not name the default port")
    if parts.scheme == "https":
        if parts.hostname in ("localhost", "127.0.0.1", "::1"):
            raise InvalidClientMetadata("https redirect URIs must not be on a loopback host")
        if application_type == "native" and _origin(uri) != _origin(client_id):
            raise InvalidClientMetadata("Native clients' https redirect URIs must be on the client_id's origin")
        return
    if parts.scheme == "http":
        if allow_local or (application_type == "native" and _is_loopback_redirect(uri)):
            return
        raise InvalidClientMetadata("http redirect URIs are for native clients on 127.0.0.1 or [::1] only")
    if application_type != "native":
        raise InvalidClientMetadata("Web clients' redirect URIs must be https")
    # A private-use scheme: the client's host reversed, then ":/" and a path (RFC 8252 section 7.1).
    host = urlsplit(client_id).hostname or ""
    if parts.scheme != ".".join(reversed(host.split("."))):
        raise InvalidClientMetadata("A native client's custom URI scheme must be its client_id host reversed")
    if not uri.startswith(parts.scheme + ":/") or uri.startswith(parts.scheme + "://"):
        raise InvalidClientMetadata("A custom-scheme redirect URI must be <scheme>:/<path>")


class ClientStore:
    """
    Clients by ``client_id``: loopback ones built, the others fetched and
    cached for :data:`CACHE_TTL` (failures for :data:`FAILURE_TTL`), with
    their ``jwks_uri`` key sets the same way.  ``allow_local`` (off by
    default) lets client ids and key sets be http and on private or loopback
    addresses: for tests and development only.
    """

    def __init__(
        self, reactor: Any, resolver: Any, *, allow_local: bool = False,
        timeout: float = FETCH_TIMEOUT, ttl: float = CACHE_TTL, clock: IReactorTime | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock = clock or reactor
        self._resolver = resolver
        self._allow_local = allow_local
        self._timeout = timeout
        self._ttl = ttl
        self._cache: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._waiting: dict[str, list[Deferred[Any]]] = {}

    def stop(self) -> None:
        """Stop the DNS client's timers, if it has any (see :class:`leafpds.outbound.SystemResolver`)."""
        stop = getattr(self._resolver, "stop", None)
        if stop is not None:
            stop()

    async def get(self, client_id: str) -> Client:
        """The client ``client_id`` names; :class:`InvalidClientMetadata` if it cannot be had."""
        if not isinstance(client_id, str) or not client_id or len(client_id) > 2048:
            raise InvalidClientMetadata("Invalid client_id")
        if is_loopback_client_id(client_id):
            return loopback_client(client_id)
        check_client_id_url(client_id, self._allow_local)
        return await self._cached("client " + client_id, self._fetch_client, client_id)

    async def keys(self, client: Client) -> list[dict[str, Any]]:
        """The usable public keys of a confidential ``client``."""
        if client.jwks is not None:
            return check_jwks(client.jwks)
        if client.jwks_uri is None:
            raise InvalidClientMetadata("Client has no keys")
        return await self._cached("jwks " + client.jwks_uri, self._fetch_keys, client.jwks_uri)

    def forget(self, client_id: str) -> None:
        """Drop a cached document (e.g. a key set that no longer verifies: keys rotate)."""
        self._cache.pop("client " + client_id, None)

    def forget_keys(self, client: Client) -> None:
        if client.jwks_uri is not None:
            self._cache.pop("jwks " + client.jwks_uri, None)

    async def _cached(self, name: str, fetch: Any, url: str) -> Any:
        now = self._clock.seconds()
        hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(name)
            outcome = hit[1]
        elif name in self._waiting:
            # Already being fetched: one fetch serves every request that wants it.
            waiter: Deferred[Any] = Deferred()
            self._waiting[name].append(waiter)
            outcome = await waiter
        else:
            self._waiting[name] = []
            try:
                outcome = await fetch(url)
                expires = now + self._ttl
            except InvalidClientMetadata as e:
                outcome = e
                expires = now + min(self._ttl, FAILURE_TTL)
            except BaseException:
                for waiter in self._waiting.pop(name):
                    waiter.errback(InvalidClientMetadata("Unable to obtain client metadata"))
                raise
            self._cache[name] = (expires, outcome)
            self._cache.move_to_end(name)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
            for waiter in self._waiting.pop(name):
                waiter.callback(outcome)
        if isinstance(outcome, InvalidClientMetadata):
            raise InvalidClientMetadata(outcome.message)
        return outcome

    async def _fetch_client(self, client_id: str) -> Client:
        return validate_metadata(client_id, await self._fetch_json(client_id), self._allow_local)

    async def _fetch_keys(self, jwks_uri: str) -> list[dict[str, Any]]:
        parts = urlsplit(jwks_uri)
        if parts.scheme != "https" and not (self._allow_local and parts.scheme == "http"):
            raise InvalidClientMetadata('"jwks_uri" must be an https URL')
        return check_jwks(await self._fetch_json(jwks_uri))

    async def _fetch_json(self, url: str) -> Any:
        attempt = ensureDeferred(self._read(url))
        attempt.addTimeout(self._timeout, self._reactor)
        try:
            return await attempt
        except InvalidClientMetadata:
            raise
        except Refused as e:
            raise InvalidClientMetadata(f"Unable to obtain client metadata: {e}") from None
        except TooLarge:
            raise InvalidClientMetadata("Unable to obtain client metadata: document too large") from None
        except Exception as e:  # unreachable, timed out, reset: the client is unusable now
            log.info("Client document {url} unavailable: {reason}", url=url[:200], reason=type(e).__name__)
            raise InvalidClientMetadata("Unable to obtain client metadata") from None

    async def _read(self, url: str) -> Any:
        response = await get_pinned(
            self._reactor, self._resolver, url, allow_private=self._allow_local, timeout=self._timeout,
            headers={"Accept": "application/json"},
        )
        if response.code != 200:
            await discard(response)
            raise InvalidClientMetadata(f"Unable to obtain client metadata: HTTP status {response.code}")
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if content_type.split(b";")[0].strip().lower() != b"application/json":
            await discard(response)
            raise InvalidClientMetadata("Client metadata must be served as application/json")
        body = await read_bounded(response, MAX_DOCUMENT)
        try:
            return json.loads(body)
        except ValueError:
            raise InvalidClientMetadata("Client metadata is not valid JSON") from None
