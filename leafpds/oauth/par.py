"""
Pushed authorization requests (RFC 9126): the client posts its
authorization request here first, and sends the browser to the
authorization page with only the ``request_uri`` it got back.

A request is checked as atproto requires: ``response_type`` ``code``; PKCE
with ``S256`` (RFC 7636); a ``state``; a ``redirect_uri`` that is one of
the client's; a scope the client declared, with ``atproto``; a
``login_hint`` that is a handle or a DID; no ``request`` object, OpenID
``nonce`` or ``claims``.  The request then waits (in memory, bounded) for
5 minutes; its ``request_uri`` opens the authorization page once.
"""

import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from leafpds.oauth.clients import Client, redirect_uri_allowed
from leafpds.oauth.errors import InvalidRequest, OAuthError
from leafpds.oauth.metadata import PROMPTS, RESPONSE_MODES
from leafpds.oauth.scopes import check_request
from leafpds.syntax import is_valid

REQUEST_LIFETIME = 5 * 60
REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"
MAX_PENDING = 10_000
# RFC 7636 section 4.2: the S256 challenge is base64url of a SHA-256, 43 characters.
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
# OpenID Connect and JAR parameters atproto does not take (REFERENCE-NOTES.md).
_REFUSED = ("nonce", "claims", "request", "max_age", "id_token_hint", "authorization_details")
MAX_STATE = 1024


class TemporarilyUnavailable(OAuthError):
    status = 503
    name = "temporarily_unavailable"


@dataclass(frozen=True)
class AuthorizationRequest:
    client_id: str
    redirect_uri: str
    scope: str
    state: str
    code_challenge: str
    response_mode: str = "query"
    login_hint: str | None = None
    prompt: str | None = None
    # The DPoP key the request was pushed with: the code will be bound to it.
    dpop_jkt: str | None = None


def single(params: dict[str, list[str]], name: str) -> str | None:
    """The one value of form parameter ``name`` (RFC 6749 section 3.1: never repeated), or None."""
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f'Parameter "{name}" must be given once')
    return values[0]


def parse_request(params: dict[str, list[str]], client: Client, dpop_jkt: str | None) -> AuthorizationRequest:
    """
    The authorization request ``client`` pushed with the form ``params``,
    with a DPoP proof of key ``dpop_jkt`` (if any); :class:`InvalidRequest`
    or :class:`~leafpds.oauth.errors.InvalidScope` otherwise.
    """
    for name in _REFUSED:
        if name in params:
            raise InvalidRequest(f'Parameter "{name}" is not supported')
    # RFC 6749 section 3.1: no parameter twice (unknown ones are ignored).
    for name in params:
        single(params, name)
    if single(params, "client_id") != client.client_id:
        raise InvalidRequest("client_id does not match the authenticated client")
    if single(params, "response_type") != "code":
        raise InvalidRequest('"response_type" must be "code"')
    challenge = single(params, "code_challenge")
    method = single(params, "code_challenge_method")
    if challenge is None:
        raise InvalidRequest("PKCE code_challenge is required")
    if method != "S256":
        raise InvalidRequest('PKCE "code_challenge_method" must be "S256"')
    if not _CHALLENGE.fullmatch(challenge):
        raise InvalidRequest('Invalid "code_challenge"')
    state = single(params, "state")
    if not state or len(state) > MAX_STATE:
        raise InvalidRequest('"state" is required')
    redirect_uri = single(params, "redirect_uri")
    if redirect_uri is None:
        raise InvalidRequest('"redirect_uri" is required')
    if not redirect_uri_allowed(client, redirect_uri):
        raise InvalidRequest('"redirect_uri" is not one of the client\'s')
    scope = check_request(single(params, "scope"), client.scope)
    login_hint = single(params, "login_hint")
    if login_hint is not None:
        login_hint = _login_hint(login_hint)
    response_mode = single(params, "response_mode") or "query"
    if response_mode not in RESPONSE_MODES:
        raise InvalidRequest(f'Unsupported "response_mode" {response_mode[:50]!r}')
    prompt = single(params, "prompt")
    if prompt is not None and prompt not in PROMPTS:
        raise InvalidRequest('Unsupported "prompt"')
    requested_jkt = single(params, "dpop_jkt")
    if requested_jkt is not None and requested_jkt != dpop_jkt:
        raise InvalidRequest('"dpop_jkt" does not match the DPoP proof')
    return AuthorizationRequest(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        scope=scope,
        state=state,
        code_challenge=challenge,
        response_mode=response_mode,
        login_hint=login_hint,
        prompt=prompt,
        dpop_jkt=dpop_jkt,
    )


def _login_hint(value: str) -> str:
    hint = value.strip()
    if hint.startswith("did:"):
        if is_valid("did", hint):
            return hint
    else:
        hint = hint.removeprefix("@").lower()
        if is_valid("handle", hint):
            return hint
    raise InvalidRequest('"login_hint" must be a handle or a DID')


@dataclass
class _Pending:
    request: AuthorizationRequest
    expires_at: float
    opened: bool = False


class PendingRequests:
    """
    Pushed requests waiting for the person, by id; ``request_uri`` is the
    id with RFC 9126's prefix.  The authorization page opens a request
    once (:meth:`open`), refers to it by id while the person signs in and
    consents (:meth:`get`), and :meth:`finish` removes it.
    """

    def __init__(self, clock: IReactorTime, lifetime: float = REQUEST_LIFETIME, capacity: int = MAX_PENDING) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self._capacity = capacity
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def push(self, request: AuthorizationRequest) -> str:
        """Keep ``request``; its ``request_uri``."""
        self._prune()
        if len(self._pending) >= self._capacity:
            raise TemporarilyUnavailable("Too many pending authorization requests")
        request_id = secrets.token_urlsafe(24)
        self._pending[request_id] = _Pending(request, self._clock.seconds() + self.lifetime)
        return REQUEST_URI_PREFIX + request_id

    def open(self, request_uri: str, client_id: str) -> tuple[str, AuthorizationRequest]:
        """The request ``request_uri`` names, for ``client_id``; it opens only once."""
        request_id = request_uri.removeprefix(REQUEST_URI_PREFIX) if request_uri.startswith(REQUEST_URI_PREFIX) else ""
        pending = self._live(request_id)
        if pending is None or pending.opened or pending.request.client_id != client_id:
            raise InvalidRequest("Unknown, expired or already used request_uri")
        pending.opened = True
        return request_id, pending.request

    def get(self, request_id: str) -> AuthorizationRequest | None:
        """An opened request, while it lives."""
        pending = self._live(request_id)
        return pending.request if pending is not None and pending.opened else None

    def finish(self, request_id: str) -> AuthorizationRequest | None:
        """Remove an opened request (a code was issued, or the person denied); it once was."""
        request = self.get(request_id)
        if request is not None:
            del self._pending[request_id]
        return request

    def _live(self, request_id: str) -> _Pending | None:
        self._prune()
        return self._pending.get(request_id)

    def _prune(self) -> None:
        now = self._clock.seconds()
        # Insertion order is expiry order: every request lives as long.
        while self._pending:
            request_id, pending = next(iter(self._pending.items()))
            if pending.expires_at > now:
                return
            del self._pending[request_id]
