"""
What the authorization page sends the browser back to the client with
(RFC 6749 section 4.1.2, RFC 9207): the redirect URI with ``code`` (or
``error``), the request's ``state`` and this server's ``iss``, in the query
or the fragment as the request's ``response_mode`` asked.  And the words
the consent screen uses for what a client asks for.
"""

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from leafpds.oauth.par import AuthorizationRequest
from leafpds.oauth.scopes import (
    ATPROTO,
    TRANSITION_CHAT,
    TRANSITION_EMAIL,
    TRANSITION_GENERIC,
    AccountPermission,
    BlobPermission,
    IdentityPermission,
    RepoPermission,
    RpcPermission,
    parse_permission,
    split_scope,
)


def redirect_to_client(
    request: AuthorizationRequest, issuer: str, *, code: str | None = None,
    error: str | None = None, description: str | None = None,
) -> str:
    """The URL to send the browser to: with ``code`` on success, else ``error`` (e.g. ``access_denied``)."""
    if (code is None) == (error is None):
        raise ValueError("exactly one of code and error")
    params: list[tuple[str, str]] = []
    if code is not None:
        params.append(("code", code))
    else:
        params.append(("error", error or ""))
        if description:
            params.append(("error_description", description))
    params += [("state", request.state), ("iss", issuer)]
    parts = urlsplit(request.redirect_uri)
    if request.response_mode == "fragment":
        return urlunsplit(parts._replace(fragment=urlencode(params)))
    query = parse_qsl(parts.query, keep_blank_values=True) + params
    return urlunsplit(parts._replace(query=urlencode(query)))


_STATIC_WORDS = {
    ATPROTO: "Know your account's identity (its DID and handle)",
    TRANSITION_GENERIC: "Read and write everything in your account that an app password can, except private messages",
    TRANSITION_CHAT: "Read and send your private messages (Bluesky chat)",
    TRANSITION_EMAIL: "See your email address",
}
_ACTIONS = {"create": "create", "update": "change", "delete": "delete"}


def describe_scope(scope: str) -> list[str]:
    """One sentence per scope value, for the consent screen; unknown values are shown as they are."""
    lines = []
    for value in split_scope(scope):
        if value in _STATIC_WORDS:
            lines.append(_STATIC_WORDS[value])
            continue
        permission = parse_permission(value)
        if isinstance(permission, RepoPermission):
            what = "records of any kind" if "*" in permission.collections else \
                "records of kind " + ", ".join(permission.collections)
            verbs = [_ACTIONS[a] for a in permission.actions]
            phrase = verbs[0] if len(verbs) == 1 else ", ".join(verbs[:-1]) + " and " + verbs[-1]
            lines.append(f"{phrase.capitalize()} {what} in your repository")
        elif isinstance(permission, RpcPermission):
            methods = "any method" if "*" in permission.lxms else ", ".join(permission.lxms)
            service = "any service" if permission.aud == "*" else permission.aud
            lines.append(f"Call {methods} on {service} in your name")
        elif isinstance(permission, BlobPermission):
            lines.append("Upload files (" + ", ".join(permission.accept) + ")")
        elif isinstance(permission, AccountPermission):
            verb = "Change" if permission.action == "manage" else "See"
            lines.append(f"{verb} your account's {permission.attr}")
        elif isinstance(permission, IdentityPermission):
            lines.append("Change your handle" if permission.attr == "handle" else
                         "Change your identity (handle, keys and services in your DID document)")
        else:
            lines.append(value)
    return lines
