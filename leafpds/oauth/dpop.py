"""
DPoP proofs (RFC 9449): the ``DPoP`` header a client signs for each request
with the key its tokens are bound to.

A proof is accepted when it is a JWT of ``typ`` ``dpop+jwt`` signed (ES256)
by the public ``jwk`` in its own header; its ``htm`` is the request's
method and its ``htu`` the request's URL (query and fragment aside); its
``iat`` is recent; its ``jti`` has not been seen; it carries a nonce this
server handed out; and, when it comes with an access token, its ``ath`` is
that token's hash.  The order of the checks is the official PDS's, so the
same faulty proof gets the same error from both.
"""

import functools
import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jwt.utils import base64url_encode
from twisted.internet.interfaces import IReactorTime

from leafpds.oauth import jws
from leafpds.oauth.errors import InvalidDpopProof, UseDpopNonce
from leafpds.oauth.jwk import ALGORITHMS, BadKey, public_key_and_thumbprint
from leafpds.oauth.nonces import DpopNonces
from leafpds.oauth.replay import ReplayCache

# A proof is for one request: it must be this fresh (seconds)...
MAX_AGE = 10
# ...give or take the clock difference the official PDS tolerates (a
# nonce's lifetime): the nonce, not iat, is what really bounds a proof's age.
CLOCK_TOLERANCE = 180
# A proof is a few hundred bytes; refuse to parse anything much larger.
MAX_PROOF = 8192


@dataclass(frozen=True)
class Proof:
    """A verified proof: ``jkt`` is its key's thumbprint."""

    jkt: str
    jti: str
    htm: str
    htu: str


def access_token_hash(token: str) -> str:
    """The ``ath`` of ``token``: base64url SHA-256 of its ASCII."""
    return base64url_encode(hashlib.sha256(token.encode("ascii")).digest()).decode("ascii")


# A client calls the same few URLs over and over.
@functools.lru_cache(maxsize=1024)
def normalize_htu(url: str) -> str:
    """
    ``url`` as proofs' ``htu`` is compared: scheme and host lower-cased, the
    default port dropped, an empty path made ``/``, without query and
    fragment (RFC 9449 section 4.3, RFC 3986 section 6.2.2-6.2.3);
    ``ValueError`` for what is not an http(s) URL without credentials.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("URL with credentials")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port  # ValueError for a bad one
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path or '/'}"


class DpopVerifier:
    """Checks proofs; ``nonces`` None turns nonces off (tests of other parts only)."""

    def __init__(
        self,
        clock: IReactorTime,
        nonces: DpopNonces | None,
        replay: ReplayCache,
        max_age: float = MAX_AGE,
        tolerance: float = CLOCK_TOLERANCE,
    ) -> None:
        self._clock = clock
        self.nonces = nonces
        self._replay = replay
        self._max_age = max_age
        self._tolerance = tolerance

    def verify(self, proof: str | None, method: str, url: str, access_token: str | None = None) -> Proof:
        """
        The verified ``proof`` sent with a ``method`` request to ``url`` (the
        URL as this server is known to the public), presenting
        ``access_token`` if any.  Raises :class:`InvalidDpopProof` or
        :class:`UseDpopNonce`.
        """
        if not proof:
            raise InvalidDpopProof("DPoP proof required")
        jkt, claims = self._signed_claims(proof)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise InvalidDpopProof('DPoP "jti" missing')
        htm = claims.get("htm")
        # RFC 9110 section 9.1: methods are case-sensitive.
        if htm != method:
            raise InvalidDpopProof('DPoP "htm" mismatch')
        htu = claims.get("htu")
        if not isinstance(htu, str):
            raise InvalidDpopProof('Invalid DPoP "htu" type')
        try:
            same_url = normalize_htu(htu) == normalize_htu(url)
        except ValueError:
            raise InvalidDpopProof('DPoP "htu" is not a valid URL') from None
        if not same_url:
            raise InvalidDpopProof('DPoP "htu" mismatch')
        nonce = claims.get("nonce")
        if nonce is not None and not isinstance(nonce, str):
            raise InvalidDpopProof('Invalid DPoP "nonce" type')
        if self.nonces is not None:
            if not nonce:
                raise UseDpopNonce("Authorization server requires nonce in DPoP proof")
            if not self.nonces.check(nonce):
                raise UseDpopNonce('DPoP "nonce" mismatch')
        ath = claims.get("ath")
        if access_token is not None:
            if ath != access_token_hash(access_token):
                raise InvalidDpopProof('DPoP "ath" mismatch')
        elif ath is not None:
            raise InvalidDpopProof('DPoP "ath" claim not allowed')
        # Last, so that a proof refused for another reason burns no jti.
        if not self._replay.use(f"dpop:{jti}", claims["iat"] + self._max_age + self._tolerance):
            raise InvalidDpopProof("DPoP proof replayed")
        return Proof(jkt, jti, htm, htu)

    def _signed_claims(self, proof: str) -> tuple[str, dict[str, Any]]:
        """The thumbprint of the key that signed ``proof``, and its claims."""
        if len(proof) > MAX_PROOF:
            raise InvalidDpopProof("DPoP proof too large")
        try:
            header, claims, signing_input, signature = jws.parse(proof)
        except jws.MalformedJWS:
            raise InvalidDpopProof("Failed to verify DPoP proof: malformed JWT") from None
        if header.get("typ") != "dpop+jwt":
            raise InvalidDpopProof('Failed to verify DPoP proof: "typ" must be "dpop+jwt"')
        if "crit" in header:  # RFC 7515 section 4.1.11: no extension is understood here
            raise InvalidDpopProof('Failed to verify DPoP proof: unsupported "crit"')
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidDpopProof("Failed to verify DPoP proof: unsupported algorithm")
        try:
            key, jkt = public_key_and_thumbprint(header.get("jwk"), alg)
        except BadKey as e:
            raise InvalidDpopProof(f"Failed to verify DPoP proof: {e}") from None
        if not jws.verify_es256(key, signing_input, signature):
            raise InvalidDpopProof("Failed to verify DPoP proof: bad signature")
        iat = claims.get("iat")
        if not isinstance(iat, (int, float)) or isinstance(iat, bool):
            raise InvalidDpopProof('Failed to verify DPoP proof: "iat" missing')
        now = self._clock.seconds()
        if iat > now + self._tolerance:
            raise InvalidDpopProof('Failed to verify DPoP proof: "iat" in the future')
        if iat < now - self._max_age - self._tolerance:
            raise InvalidDpopProof('Failed to verify DPoP proof: "iat" too old')
        return jkt, claims
