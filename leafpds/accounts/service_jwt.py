"""
Checking the service JWTs other services send here: the counterpart of
:mod:`leafpds.accounts.service_auth`, which mints them.  A PDS an account
leaves signs one (``lxm`` ``com.atproto.server.createAccount``, ``aud``
this PDS) so that the account can be created here with its existing DID.

The checks and their error names are the official PDS's (all 401): the
token's form (``BadJwt``), its ``typ`` (``BadJwtType``: no session or
DPoP token), ``exp`` (``JwtExpired``), ``aud`` (``BadJwtAudience``),
``lxm`` (``BadJwtLexiconMethod``), the issuer's DID document
(``BadJwtIss``) and the signature by the issuer's current ``#atproto`` key
(``BadJwtSignature``; a failure is tried once more with the document read
afresh, in case the key was just rotated).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from leafpds import crypto
from leafpds.errors import AuthenticationRequired
from leafpds.identity.plc import PLCOperationError, parse_document
from leafpds.oauth import jws
from leafpds.oauth.jws import MalformedJWS

#: Resolves a DID to its document (None if it does not resolve); ``fresh``
#: bypasses caches.  :meth:`leafpds.identity.dids.DIDResolver.resolve` is one.
Resolve = Callable[..., Awaitable[dict[str, Any] | None]]

# Tokens of these types are sessions or proofs, never service auth.
_REFUSED_TYPES = ("at+jwt", "refresh+jwt", "dpop+jwt")


@dataclass(frozen=True)
class ServiceClaims:
    iss: str  # the issuing DID (without a "#service" fragment)
    aud: str
    lxm: str | None
    exp: int


def _refuse(message: str, name: str) -> AuthenticationRequired:
    return AuthenticationRequired(message, name=name)


async def verify_service_jwt(
    token: str, *, aud: str, lxm: str, resolve: Resolve, now: float
) -> ServiceClaims:
    """
    The claims of ``token`` if it is a service JWT for ``aud`` and ``lxm``,
    unexpired at ``now`` (epoch seconds) and signed by its issuer's current
    atproto key; otherwise raise the official 401.
    """
    try:
        header, payload, signing_input, signature = jws.parse(token)
    except MalformedJWS:
        raise _refuse("poorly formatted jwt", "BadJwt") from None
    if header.get("typ") in _REFUSED_TYPES:
        raise _refuse(f"Invalid jwt type \"{header.get('typ')}\"", "BadJwtType")
    iss, audience, exp, method = payload.get("iss"), payload.get("aud"), payload.get("exp"), payload.get("lxm")
    if (
        not isinstance(iss, str)
        or not isinstance(audience, str)
        or type(exp) not in (int, float)
        or method is not None and not isinstance(method, str)
    ):
        raise _refuse("poorly formatted jwt", "BadJwt")
    if now > exp:
        raise _refuse("jwt expired", "JwtExpired")
    if audience != aud:
        raise _refuse("jwt audience does not match service did", "BadJwtAudience")
    if method != lxm:
        problem = "bad" if method is not None else "missing"
        raise _refuse(f'{problem} jwt lexicon method ("lxm"). must match: {lxm}', "BadJwtLexiconMethod")

    did = iss.split("#", 1)[0]

    async def signed_by_current_key(fresh: bool) -> bool:
        key = await _atproto_key(resolve, did, fresh)
        try:
            alg, _ = crypto.parse_did_key(key)
        except crypto.InvalidKey:
            raise _refuse("missing or bad key in did doc", "BadJwtIss") from None
        return alg == header.get("alg") and crypto.verify_signature(key, signing_input, signature)

    if not (await signed_by_current_key(fresh=False) or await signed_by_current_key(fresh=True)):
        raise _refuse("jwt signature does not match jwt issuer", "BadJwtSignature")
    return ServiceClaims(did, audience, method, int(exp))


async def _atproto_key(resolve: Resolve, did: str, fresh: bool) -> str:
    doc = await resolve(did, fresh=fresh)
    if doc is None:
        raise _refuse(f"could not resolve iss did: {did}", "BadJwtIss")
    try:
        key = parse_document(doc).signing_key
    except PLCOperationError:
        key = None
    if key is None:
        raise _refuse("missing or bad key in did doc", "BadJwtIss")
    return key
