"""Client-side DPoP and JWT signing for the OAuth tests: real P-256 keys, as a client holds them."""

import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from twisted.internet.task import Clock

from leafpds.oauth.dpop import access_token_hash


class ClientKey:
    """A P-256 key pair a client signs with, and its public JWK."""

    def __init__(self, kid: str | None = None) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        if kid is not None:
            self.jwk["kid"] = kid

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(claims, self.private, algorithm="ES256", headers=header)

    def proof(
        self,
        htm: str = "POST",
        htu: str = "https://pds.test/oauth/token",
        *,
        iat: float | None = None,
        nonce: str | None = None,
        access_token: str | None = None,
        jti: str | None = None,
        typ: str = "dpop+jwt",
        jwk: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        """A DPoP proof; every part can be made wrong on purpose."""
        claims: dict[str, Any] = {
            "jti": jti or secrets.token_urlsafe(16),
            "htm": htm,
            "htu": htu,
            "iat": int(time.time() if iat is None else iat),
            **extra,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        return self.sign(claims, typ=typ, jwk=self.jwk if jwk is None else jwk)


# The time the OAuth unit tests run at (a Clock's), and such a Clock.
NOW = 1_760_000_000


def clock_at(now: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock
