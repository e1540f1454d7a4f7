"""
Client authentication (RFC 6749 section 2.3): public clients send only
their ``client_id`` (method ``none``); confidential ones prove it with a
``private_key_jwt`` assertion (RFC 7523 section 2.2): a JWT signed (ES256)
by one of the keys their metadata publishes, ``iss`` and ``sub`` the
client id, ``aud`` this issuer, recent, and a ``jti`` used only once.
Assertions are secrets: never logged.
"""

from typing import Any

import jwt
from twisted.internet.interfaces import IReactorTime

from leafpds.oauth.clients import Client, ClientStore
from leafpds.oauth.errors import InvalidClient
from leafpds.oauth.jwk import ALGORITHMS, BadKey, public_key
from leafpds.oauth.replay import ReplayCache

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# An assertion is made for one request; older ones are refused.
MAX_AGE = 60
CLOCK_TOLERANCE = 10
MAX_ASSERTION = 8192


def verify_assertion(
    assertion: str, client_id: str, keys: list[dict[str, Any]], audiences: list[str],
    clock: IReactorTime, replay: ReplayCache,
) -> None:
    """Accept ``assertion`` for ``client_id`` or raise :class:`InvalidClient`."""
    if len(assertion) > MAX_ASSERTION:
        raise InvalidClient("Client assertion too large")
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        raise InvalidClient("Malformed client assertion") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise InvalidClient("Unsupported client assertion algorithm")
    kid = header.get("kid")
    candidates = [k for k in keys if kid is None or k.get("kid") == kid]
    claims = None
    for jwk in candidates:
        try:
            key = public_key(jwk, alg)
        except BadKey:
            continue
        try:
            claims = jwt.decode(
                assertion, key, algorithms=[alg], audience=audiences, issuer=client_id,
                leeway=CLOCK_TOLERANCE,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"],
                         "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidTokenError as e:
            raise InvalidClient(f"Invalid client assertion: {e}") from None
    if claims is None:
        raise InvalidClient("Client assertion not signed by any of the client's keys")
    if claims["sub"] != client_id:
        raise InvalidClient('Client assertion "sub" must be the client_id')
    now = clock.seconds()
    exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (exp, iat)):
        raise InvalidClient("Client assertion times must be numbers")
    if exp <= now - CLOCK_TOLERANCE:
        raise InvalidClient("Client assertion expired")
    if iat > now + CLOCK_TOLERANCE or iat < now - MAX_AGE - CLOCK_TOLERANCE:
        raise InvalidClient('Client assertion "iat" out of range')
    if not isinstance(jti, str) or not jti:
        raise InvalidClient('Client assertion "jti" missing')
    if not replay.use(f"assertion:{client_id}:{jti}", max(exp, iat + MAX_AGE) + CLOCK_TOLERANCE):
        raise InvalidClient("Client assertion replayed")


async def authenticate(
    store: ClientStore, client: Client, params: dict[str, list[str]], audiences: list[str],
    clock: IReactorTime, replay: ReplayCache,
) -> str:
    """
    Authenticate ``client`` by the request's form ``params``; the method it
    used (``none`` or ``private_key_jwt``).  A confidential client must
    send an assertion and a public one must not (:class:`InvalidClient`).
    A key set fetched from ``jwks_uri`` that verifies nothing is fetched
    again once, in case the client rotated its keys.
    """
    assertion_types = params.get("client_assertion_type") or []
    assertions = params.get("client_assertion") or []
    if len(assertion_types) > 1 or len(assertions) > 1:
        raise InvalidClient("Client assertion given twice")
    if not client.confidential:
        if assertion_types or assertions:
            raise InvalidClient('Client authenticates with "none"')
        return "none"
    if assertion_types != [ASSERTION_TYPE] or not assertions:
        raise InvalidClient("Client assertion required (private_key_jwt)")
    try:
        verify_assertion(assertions[0], client.client_id, await store.keys(client), audiences, clock, replay)
    except InvalidClient as e:
        if client.jwks_uri is None or "not signed" not in e.message:
            raise
        store.forget_keys(client)
        verify_assertion(assertions[0], client.client_id, await store.keys(client), audiences, clock, replay)
    return "private_key_jwt"
