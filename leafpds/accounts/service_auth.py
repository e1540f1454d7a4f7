"""
Service auth: the short-lived JWTs an account's PDS signs so that another
service (an AppView, the chat service, a feed generator, another PDS during
a migration) can trust a request made on the account's behalf.

A token is an ES256K JWT (``{"typ": "JWT", "alg": "ES256K"}``) signed with
the account's repo signing key, the key its DID document publishes as
``#atproto``; claims ``iss`` (the account's DID), ``aud`` (the service),
``lxm`` (the one XRPC method it is good for, when bound), ``iat``, ``exp``
and a random ``jti``.  ``getServiceAuth`` hands them to clients and the
proxy mints one per forwarded call.

The method lists are the official PDS's: which methods no service token may
ever be minted or proxied for, and which ones a plain app password may not
reach through one.
"""

import base64
import json
import re
import secrets
from typing import Any

from leafpds.accounts.keys import AccountKeys
from leafpds.accounts.sessions import AccessCredentials
from leafpds.errors import InvalidToken

#: How long a token lives when the caller names no ``exp``.
DEFAULT_LIFETIME = 60

# Account management: these must be called on the PDS itself, by the account,
# never by a service holding a token (the official PROTECTED_METHODS).
PROTECTED_METHODS = frozenset(
    nsid.lower()
    for nsid in (
        "com.atproto.admin.sendEmail",
        "com.atproto.identity.requestPlcOperationSignature",
        "com.atproto.identity.signPlcOperation",
        "com.atproto.identity.updateHandle",
        "com.atproto.server.activateAccount",
        "com.atproto.server.confirmEmail",
        "com.atproto.server.createAppPassword",
        "com.atproto.server.deactivateAccount",
        "com.atproto.server.getAccountInviteCodes",
        "com.atproto.server.getSession",
        "com.atproto.server.listAppPasswords",
        "com.atproto.server.requestAccountDelete",
        "com.atproto.server.requestEmailConfirmation",
        "com.atproto.server.requestEmailUpdate",
        "com.atproto.server.revokeAppPassword",
        "com.atproto.server.updateEmail",
    )
)

# Methods only a full session or a privileged app password may use through a
# service token (the official PRIVILEGED_METHODS): direct messages and
# creating an account elsewhere with this DID.  The official list names the
# chat methods one by one; the whole chat.bsky namespace is refused here, so
# a chat method added later is not open to plain app passwords by omission.
PRIVILEGED_METHODS = frozenset({"com.atproto.server.createaccount"})
PRIVILEGED_NAMESPACES = ("chat.bsky.",)


def is_protected(lxm: str) -> bool:
    """Whether no service token may be minted or used for ``lxm`` (NSIDs compare case-insensitively)."""
    return lxm.lower() in PROTECTED_METHODS


def is_privileged(lxm: str) -> bool:
    """Whether ``lxm`` needs a full session or a privileged app password."""
    lxm = lxm.lower()
    return lxm in PRIVILEGED_METHODS or lxm.startswith(PRIVILEGED_NAMESPACES)


def check_proxied_method(credentials: AccessCredentials, lxm: str) -> None:
    """
    For the proxy: may these credentials have ``lxm`` forwarded with a
    service token?  Raises 400 ``InvalidToken`` "Bad token method", as the
    official PDS does, for a protected method (whoever asks) and for a
    privileged one asked by a plain app password.
    """
    if is_protected(lxm) or (is_privileged(lxm) and not credentials.privileged):
        raise InvalidToken("Bad token method")


# An audience: a did:plc or an atproto did:web (no path; a port only on
# localhost), optionally followed by one non-empty "#fragment".
_DID_PLC = re.compile(r"did:plc:[a-z2-7]{24}")
_DID_WEB = re.compile(r"did:web:(?:localhost(?:%3A[0-9]{1,5})?|[a-zA-Z0-9.-]*[a-zA-Z0-9])")
_FRAGMENT = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})+")


def is_service_audience(aud: str) -> bool:
    """Whether ``aud`` is an atproto DID, or a ``did#service`` reference to one."""
    did, hash_, fragment = aud.partition("#")
    if hash_ and not _FRAGMENT.fullmatch(fragment):
        return False
    return bool(_DID_PLC.fullmatch(did) or _DID_WEB.fullmatch(did))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_json(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


class ServiceAuth:
    """
    Mints service JWTs with the accounts' signing keys.  The keys come from
    :class:`AccountKeys`, which keeps the opened ones in memory (the
    transactor signs every commit with them): a token costs one signature
    (~40 µs), never a database trip once the account has written or signed
    anything.  Tokens themselves are not cached: each has its own ``jti``.
    """

    def __init__(self, keys: AccountKeys, clock: Any) -> None:
        """``clock`` is an ``IReactorTime`` (the reactor; a ``task.Clock`` in tests)."""
        self.keys = keys
        self.clock = clock

    def __repr__(self) -> str:
        return "<ServiceAuth>"

    async def token(self, did: str, aud: str, lxm: str | None, exp: int | None = None) -> str:
        """
        A JWT from ``did`` for ``aud`` (copied verbatim), bound to ``lxm``
        unless it is None, expiring at ``exp`` (default: 60 s from now).
        The caller decides what may be asked for; this only signs.
        Raises ``RepoNotFound`` for a DID with no key here.
        """
        key = await self.keys.signing_key(did)
        iat = int(self.clock.seconds())
        claims: dict[str, Any] = {"iat": iat, "iss": did, "aud": aud}
        claims["exp"] = iat + DEFAULT_LIFETIME if exp is None else exp
        if lxm is not None:
            claims["lxm"] = lxm
        claims["jti"] = secrets.token_hex(16)
        signing_input = f"{_b64_json({'typ': 'JWT', 'alg': key.jwt_alg})}.{_b64_json(claims)}"
        return f"{signing_input}.{_b64(key.sign(signing_input.encode('ascii')))}"
