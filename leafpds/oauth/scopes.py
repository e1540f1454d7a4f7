"""
atproto OAuth scopes (atproto.com/specs/oauth, atproto.com/specs/permission).

A grant's ``scope`` is a space-separated set.  ``atproto`` is required;
``transition:generic`` grants what an app password grants (every
collection, every blob, every proxied method but ``chat.bsky.*``),
``transition:chat.bsky`` the ``chat.bsky.*`` methods, ``transition:email``
reading the account's email.  The granular permissions name what they
allow::

    repo:<collection>[?action=create|update|delete ...]   (default: all three)
    rpc:<lxm>?aud=<did#service>       (lxm or aud may be "*", not both)
    blob:<mime pattern> / blob?accept=<pattern>&accept=...
    account:<email|repo|status>[?action=read|manage]      (default read)
    identity:<handle|*>

The parameter after ``:`` is the positional one; any parameter may also be
given in the query (``repo?collection=a&collection=b``), but not both ways.
Permission sets (``include:``) are recognised and not supported yet: they
are refused as unknown scopes.
"""

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from leafpds.oauth.errors import InvalidScope
from leafpds.syntax import is_valid

ATPROTO = "atproto"
TRANSITION_GENERIC = "transition:generic"
TRANSITION_CHAT = "transition:chat.bsky"
TRANSITION_EMAIL = "transition:email"
STATIC = frozenset({ATPROTO, TRANSITION_GENERIC, TRANSITION_CHAT, TRANSITION_EMAIL})

REPO_ACTIONS = ("create", "update", "delete")
ACCOUNT_ATTRIBUTES = ("email", "repo", "status")
ACCOUNT_ACTIONS = ("read", "manage")
IDENTITY_ATTRIBUTES = ("handle", "*")
MAX_SCOPE_LENGTH = 4096


@dataclass(frozen=True)
class RepoPermission:
    collections: tuple[str, ...]
    actions: tuple[str, ...]

    def allows(self, collection: str, action: str) -> bool:
        return action in self.actions and ("*" in self.collections or collection in self.collections)


@dataclass(frozen=True)
class RpcPermission:
    lxms: tuple[str, ...]
    aud: str

    def allows(self, lxm: str, aud: str) -> bool:
        return (self.aud == "*" or self.aud == aud) and ("*" in self.lxms or lxm in self.lxms)


@dataclass(frozen=True)
class BlobPermission:
    accept: tuple[str, ...]

    def allows(self, mime: str) -> bool:
        return any(_mime_matches(pattern, mime.lower()) for pattern in self.accept)


@dataclass(frozen=True)
class AccountPermission:
    attr: str
    action: str

    def allows(self, attr: str, action: str) -> bool:
        # Managing an attribute includes reading it.
        return self.attr == attr and (self.action == "manage" or self.action == action)


@dataclass(frozen=True)
class IdentityPermission:
    attr: str

    def allows(self, attr: str) -> bool:
        return self.attr == "*" or self.attr == attr


Permission = RepoPermission | RpcPermission | BlobPermission | AccountPermission | IdentityPermission


def _mime_matches(pattern: str, mime: str) -> bool:
    if pattern == "*/*":
        return True
    if pattern.endswith("/*"):
        return mime.startswith(pattern[:-1])
    return pattern == mime


def _is_mime_pattern(value: str) -> bool:
    kind, slash, sub = value.partition("/")
    token = lambda s: bool(s) and all(c.isalnum() or c in "!#$&-^_.+" for c in s)  # noqa: E731
    if not slash:
        return False
    if kind == "*":
        return sub == "*"
    return token(kind) and (sub == "*" or token(sub)) and value == value.lower()


def _is_audience(value: str) -> bool:
    # A DID and a service fragment: did:web:api.bsky.app#bsky_appview.
    did, hash_, fragment = value.partition("#")
    return bool(hash_ and fragment) and is_valid("did", did) and all(
        c.isalnum() or c in "-._~" for c in fragment
    )


def _split(scope: str) -> tuple[str, str | None, list[tuple[str, str]]] | None:
    """``prefix``, the positional value and the query's pairs; None if malformed."""
    prefix_end = min((i for i in (scope.find("?"), scope.find(":")) if i != -1), default=len(scope))
    prefix = scope[:prefix_end]
    rest = scope[prefix_end:]
    positional = None
    if rest.startswith(":"):
        positional, _, query = rest[1:].partition("?")
        positional = unquote(positional)
    else:
        query = rest[1:]
    try:
        params = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        return None
    return prefix, positional, params


def _params(
    scope: str, positional_name: str, known: tuple[str, ...]
) -> dict[str, list[str]] | None:
    """The scope's parameters by name (the positional one included); None if malformed."""
    split = _split(scope)
    if split is None:
        return None
    _, positional, pairs = split
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in known:
            return None
        values.setdefault(name, []).append(value)
    if positional is not None:
        if positional_name in values:
            return None  # given both ways
        values[positional_name] = [positional]
    return values


def _single(values: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    found = values.get(name)
    if found is None:
        return default
    return found[0] if len(found) == 1 else None


def parse_permission(scope: str) -> Permission | None:
    """The granular permission ``scope`` states, or None if it is not a valid one."""
    prefix = scope.split(":", 1)[0].split("?", 1)[0]
    if prefix == "repo":
        values = _params(scope, "collection", ("collection", "action"))
        if not values or not values.get("collection"):
            return None
        collections = values["collection"]
        if not all(c == "*" or is_valid("nsid", c) for c in collections):
            return None
        actions = values.get("action", list(REPO_ACTIONS))
        if not actions or not all(a in REPO_ACTIONS for a in actions):
            return None
        collections = ["*"] if "*" in collections else sorted(set(collections))
        return RepoPermission(tuple(collections), tuple(a for a in REPO_ACTIONS if a in actions))
    if prefix == "rpc":
        values = _params(scope, "lxm", ("lxm", "aud"))
        if not values or not values.get("lxm"):
            return None
        lxms = values["lxm"]
        aud = _single(values, "aud")
        if aud is None or not (aud == "*" or _is_audience(aud)):
            return None
        if not all(m == "*" or is_valid("nsid", m) for m in lxms):
            return None
        if aud == "*" and "*" in lxms:
            return None  # the spec forbids rpc:*?aud=*
        return RpcPermission(tuple(["*"] if "*" in lxms else sorted(set(lxms))), aud)
    if prefix == "blob":
        values = _params(scope, "accept", ("accept",))
        if not values or not values.get("accept"):
            return None
        if not all(_is_mime_pattern(p) for p in values["accept"]):
            return None
        return BlobPermission(tuple(sorted(set(values["accept"]))))
    if prefix == "account":
        values = _params(scope, "attr", ("attr", "action"))
        if not values:
            return None
        attr = _single(values, "attr")
        action = _single(values, "action", "read")
        if attr not in ACCOUNT_ATTRIBUTES or action not in ACCOUNT_ACTIONS:
            return None
        return AccountPermission(attr, action)  # type: ignore[arg-type]
    if prefix == "identity":
        values = _params(scope, "attr", ("attr",))
        if not values:
            return None
        attr = _single(values, "attr")
        if attr not in IDENTITY_ATTRIBUTES:
            return None
        return IdentityPermission(attr)  # type: ignore[arg-type]
    return None


def is_known(scope: str) -> bool:
    """Whether leafpds understands ``scope`` (and so may grant it)."""
    return scope in STATIC or parse_permission(scope) is not None


def split_scope(scope: str) -> list[str]:
    """The scope values of a ``scope`` parameter, in order, without repeats."""
    if len(scope) > MAX_SCOPE_LENGTH:
        raise InvalidScope("Scope too long")
    seen: dict[str, None] = {}
    for value in scope.split(" "):
        if value:
            seen.setdefault(value, None)
    return list(seen)


def check_request(requested: str | None, declared: str | None) -> str:
    """
    The scope a client may ask for: ``requested`` (or, without it, the
    ``declared`` scope of its metadata), which must include ``atproto``
    and name only scopes leafpds knows and the client declared.  Raises
    :class:`InvalidScope`.
    """
    declared_values = set(split_scope(declared or ""))
    values = split_scope(requested) if requested is not None else split_scope(declared or "")
    if ATPROTO not in values:
        raise InvalidScope('The "atproto" scope is required')
    for value in values:
        if not is_known(value):
            raise InvalidScope(f"Unsupported scope {value[:100]!r}")
        if value not in declared_values:
            raise InvalidScope(f"Scope {value[:100]!r} was not declared in the client metadata")
    return " ".join(values)


class Permissions:
    """What a granted ``scope`` allows: the questions every call asks."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.values = frozenset(split_scope(scope))
        self.permissions = [p for p in map(parse_permission, self.values) if p is not None]
        self._generic = TRANSITION_GENERIC in self.values
        self._chat = TRANSITION_CHAT in self.values

    def __repr__(self) -> str:
        return f"<Permissions {self.scope!r}>"

    def _granted(self, kind: type) -> list:
        return [p for p in self.permissions if isinstance(p, kind)]

    def allows_rpc(self, lxm: str, aud: str) -> bool:
        """May this grant call method ``lxm`` of service ``aud`` (proxied or by service auth)?"""
        is_chat = lxm.startswith("chat.bsky.")
        if self._generic and not is_chat:
            return True
        if self._chat and is_chat:
            return True
        return any(p.allows(lxm, aud) for p in self._granted(RpcPermission))

    def allows_repo(self, collection: str, action: str) -> bool:
        """May this grant ``action`` (create, update, delete) records of ``collection``?"""
        if self._generic:
            return True
        return any(p.allows(collection, action) for p in self._granted(RepoPermission))

    def allows_blob(self, mime: str) -> bool:
        """May this grant upload a blob of type ``mime``?"""
        if self._generic:
            return True
        return any(p.allows(mime) for p in self._granted(BlobPermission))

    def allows_account(self, attr: str, action: str) -> bool:
        """May this grant ``action`` (read, manage) the account's ``attr`` (email, repo, status)?"""
        if attr == "email" and action == "read" and TRANSITION_EMAIL in self.values:
            return True
        return any(p.allows(attr, action) for p in self._granted(AccountPermission))

    def allows_identity(self, attr: str) -> bool:
        """May this grant change the account's ``attr`` (handle) or its whole DID document (``*``)?"""
        return any(p.allows(attr) for p in self._granted(IdentityPermission))
