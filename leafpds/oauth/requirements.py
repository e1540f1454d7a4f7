"""
What an OAuth-authenticated XRPC call needs its grant to allow, as the
official PDS asks it (``permissions.assert…`` in its handlers): record
writes need ``repo:`` for their collection and action (``putRecord`` both
create and update), ``uploadBlob`` ``blob:`` for its type, a proxied call
or a service-auth token ``rpc:`` for its method and audience, email and
address changes ``account:email?action=manage``, handle and PLC changes
``identity:``, the preferences (which the official PDS keeps for the
AppView) ``rpc:`` for the AppView.  A refusal is 403 ``ScopeMissingError``
naming the scope that would have allowed it.  What only the account's own
password may do (app passwords, deactivation, changing the email, deleting
the account) no grant allows: 403 ``Forbidden``, as the official PDS
answers OAuth credentials on its ``ACCESS_FULL`` methods.
"""

from typing import Any
from urllib.parse import quote

from leafpds.errors import XRPCError
from leafpds.oauth.scopes import Permissions

# Methods that change an account attribute: (attribute, action).
ACCOUNT_METHODS: dict[str, tuple[str, str]] = {
    "com.atproto.server.requestEmailUpdate": ("email", "manage"),
    "com.atproto.server.requestEmailConfirmation": ("email", "manage"),
    "com.atproto.server.confirmEmail": ("email", "manage"),
    "com.atproto.repo.importRepo": ("repo", "manage"),
}
# Methods that change the account's identity: the identity attribute.
IDENTITY_METHODS: dict[str, str] = {
    "com.atproto.identity.updateHandle": "handle",
    "com.atproto.identity.requestPlcOperationSignature": "*",
    "com.atproto.identity.signPlcOperation": "*",
    "com.atproto.identity.submitPlcOperation": "*",
}
# Credentials management an app must never do with a delegated grant.
NEVER: frozenset[str] = frozenset({
    "com.atproto.server.createAppPassword",
    "com.atproto.server.listAppPasswords",
    "com.atproto.server.revokeAppPassword",
    "com.atproto.server.updateEmail",
    "com.atproto.server.deactivateAccount",
    "com.atproto.server.activateAccount",
    "com.atproto.server.requestAccountDelete",
    "com.atproto.server.deleteAccount",
    "com.atproto.server.createInviteCode",
    "com.atproto.server.createInviteCodes",
})
# Methods served here that the official PDS treats as the AppView's: the
# grant must allow calling them there (``rpc:<method>?aud=<AppView>#bsky_appview``).
APPVIEW_METHODS: frozenset[str] = frozenset({
    "app.bsky.actor.getPreferences",
    "app.bsky.actor.putPreferences",
})
# applyWrites' write types and the repo action each is.
_WRITE_ACTIONS = {
    "com.atproto.repo.applyWrites#create": "create",
    "com.atproto.repo.applyWrites#update": "update",
    "com.atproto.repo.applyWrites#delete": "delete",
}


class ScopeMissing(XRPCError):
    status = 403
    name = "ScopeMissingError"

    def __init__(self, scope: str) -> None:
        super().__init__(f'Missing required scope "{scope}"')
        self.scope = scope


class OAuthForbidden(XRPCError):
    status = 403
    name = "Forbidden"

    def __init__(self) -> None:
        super().__init__("OAuth credentials are not supported for this endpoint")


def names_grant_for(nsid: str) -> bool:
    """
    Whether some grant may call ``nsid``, a method kept to privileged
    credentials: only those whose needs are stated here (account and
    identity changes).  Any other such method is no grant's, so a new one
    is refused to OAuth until its scope is decided.
    """
    return nsid in ACCOUNT_METHODS or nsid in IDENTITY_METHODS


def check_repo_write(permissions: Permissions, collection: str, action: str) -> None:
    if not permissions.allows_repo(collection, action):
        raise ScopeMissing(f"repo:{collection}?action={action}")


def check_blob(permissions: Permissions, mime: str) -> None:
    if not permissions.allows_blob(mime):
        raise ScopeMissing(f"blob:{mime}")


def check_rpc(permissions: Permissions, lxm: str, aud: str) -> None:
    """A proxied call to, or a service-auth token for, method ``lxm`` of service ``aud`` (``did#id``)."""
    if not permissions.allows_rpc(lxm, aud):
        raise ScopeMissing(f"rpc:{lxm}?aud={quote(aud, safe=':')}")


def repo_writes(nsid: str, body: Any) -> list[tuple[str, str]]:
    """The (collection, action) pairs a record-writing call makes; [] for any other call."""
    if not isinstance(body, dict):
        return []
    if nsid == "com.atproto.repo.createRecord":
        return [(str(body.get("collection")), "create")]
    if nsid == "com.atproto.repo.putRecord":
        # Create or update depends on what exists: the official PDS asks for both.
        return [(str(body.get("collection")), "create"), (str(body.get("collection")), "update")]
    if nsid == "com.atproto.repo.deleteRecord":
        return [(str(body.get("collection")), "delete")]
    if nsid == "com.atproto.repo.applyWrites":
        writes = body.get("writes")
        pairs = []
        for write in writes if isinstance(writes, list) else []:
            action = _WRITE_ACTIONS.get(write.get("$type")) if isinstance(write, dict) else None
            if action is not None:
                pairs.append((str(write.get("collection")), action))
        return pairs
    return []


def check_call(permissions: Permissions, nsid: str, body: Any = None, appview: str = "") -> None:
    """
    Refuse (:class:`ScopeMissing`, :class:`OAuthForbidden`) a call to one
    of the PDS's own methods that ``permissions`` do not allow; ``appview``
    is the AppView's ``did#bsky_appview``.  Blob uploads, proxied calls and
    service-auth tokens are checked where their type or audience is known
    (:func:`check_blob`, :func:`check_rpc`).
    """
    if nsid in NEVER:
        raise OAuthForbidden()
    if nsid in APPVIEW_METHODS:
        check_rpc(permissions, nsid, appview)
    for collection, action in repo_writes(nsid, body):
        check_repo_write(permissions, collection, action)
    account = ACCOUNT_METHODS.get(nsid)
    if account is not None and not permissions.allows_account(*account):
        raise ScopeMissing(f"account:{account[0]}?action={account[1]}")
    identity = IDENTITY_METHODS.get(nsid)
    if identity is not None and not permissions.allows_identity(identity):
        raise ScopeMissing(f"identity:{identity}")
