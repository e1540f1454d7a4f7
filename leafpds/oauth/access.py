"""
The resource server's side: checking ``Authorization: DPoP <token>`` with
its ``DPoP`` proof on an XRPC call, and what the answer to a refusal says
(REFERENCE-NOTES.md: 401 everywhere, ``WWW-Authenticate: DPoP`` with the
error, a fresh ``DPoP-Nonce``).  leafpds.xrpc.auth calls it.
"""

import functools
from dataclasses import dataclass

from leafpds.errors import XRPCError
from leafpds.oauth.dpop import DpopVerifier
from leafpds.oauth.errors import InvalidDpopProof, InvalidToken, OAuthError, UseDpopNonce
from leafpds.oauth.scopes import Permissions
from leafpds.oauth.tokens import AccessTokens, OAuthAccess


@dataclass(frozen=True)
class DpopCaller:
    """A caller authenticated by a DPoP-bound OAuth access token."""

    access: OAuthAccess
    permissions: Permissions

    @property
    def did(self) -> str:
        return self.access.did


class ResourceRefusal(XRPCError):
    """A refused DPoP call: 401, named by its OAuth error, with the ``WWW-Authenticate`` to send."""

    status = 401

    def __init__(self, error: OAuthError) -> None:
        super().__init__(error.message, name=error.name, status=401)

    @property
    def www_authenticate(self) -> str:
        description = self.message.replace("\\", "").replace('"', "'")
        return f'DPoP algs="ES256", error="{self.name}", error_description="{description}"'


def check_dpop_call(
    tokens: AccessTokens, dpop: DpopVerifier, token: str, proof: str | None, method: str, url: str,
) -> DpopCaller:
    """
    The caller of a ``method`` request to ``url`` (its public URL) that
    presented ``Authorization: DPoP <token>`` and the ``DPoP`` header
    ``proof``: the proof first (a client without the current nonce learns
    it before anything else), with ``ath`` for this token, then the token,
    then that the proof's key is the one the token is bound to.  Raises
    :class:`ResourceRefusal`.
    """
    try:
        checked = dpop.verify(proof, method, url, access_token=token)
        access = tokens.verify(token)
    except (UseDpopNonce, InvalidDpopProof, InvalidToken) as e:
        raise ResourceRefusal(e) from None
    if checked.jkt != access.dpop_jkt:
        raise ResourceRefusal(InvalidToken("Access token is bound to another DPoP key"))
    return DpopCaller(access, permissions_of(access.scope))


# A grant's scope is the same on every call of the hour its token lives.
@functools.lru_cache(maxsize=1024)
def permissions_of(scope: str) -> Permissions:
    return Permissions(scope)
