"""
What a client sent, read as text: header values, cookies, the query string
and the path.

Twisted keeps them as the bytes that arrived, and ``Request.getHeader`` with
a ``str`` name decodes the value as UTF-8, so a hostile client's bytes
(``Authorization: Bearer caf\\xe9\\xff``) raise ``UnicodeDecodeError`` deep
in a handler: a 500.  Everything leafpds reads goes through here instead,
and the only thing raised is the :class:`XRPCError` the reference PDS gives
for a malformed value of that kind: XRPC answers it as usual (4xx), pages
render it (:func:`leafpds.web.layout.failure_page`).
"""

import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from twisted.web.iweb import IRequest

from leafpds.errors import InvalidRequest, InvalidToken, XRPCError

# Control characters (HTAB aside) have no place in a header value (RFC 9110
# section 5.5); Twisted itself refuses only NUL, CR and LF.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Credentials (JWTs, base64, DPoP proofs) are printable ASCII and spaces.
_CREDENTIAL = re.compile(rb"[\x20-\x7e\t]*")

# Headers whose value must be printable ASCII, and the error a value that is not gets.
CREDENTIALS: dict[str, Callable[[], XRPCError]] = {
    # As the reference answers an Authorization header or token it cannot parse.
    "authorization": lambda: InvalidToken("Malformed authorization header"),
    # As it answers a DPoP proof it cannot parse (REFERENCE-NOTES.md).
    "dpop": lambda: XRPCError("Invalid DPoP proof", name="invalid_dpop_proof", status=401),
}


def header(request: IRequest, name: str) -> str | None:
    """
    The (last) value of header ``name``, or ``None`` if absent.

    Raises the header's own error (:data:`CREDENTIALS`) when a credential is
    not printable ASCII, and ``InvalidRequest`` when any other value is not
    UTF-8 or holds control characters.
    """
    values = request.requestHeaders.getRawHeaders(name.encode("ascii"))
    if not values:
        return None
    raw = values[-1]
    malformed = CREDENTIALS.get(name.lower())
    if malformed is not None:
        if _CREDENTIAL.fullmatch(raw) is None:
            raise malformed()
        return raw.decode("ascii")
    if _CONTROL.search(raw) is None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    raise InvalidRequest(f"Invalid {name} header")


def cookie(request: IRequest, name: bytes) -> str | None:
    """
    The value of one of leafpds's own cookies, or ``None``.  They hold
    printable ASCII only; a value that is not is treated as no cookie, so a
    browser with a garbled one can still sign in again.
    """
    value = request.getCookie(name)
    if not value or _CREDENTIAL.fullmatch(value) is None:
        return None
    return value.decode("ascii")


def query_args(request: IRequest) -> dict[str, list[str]]:
    """The query string's parameters; ``InvalidRequest`` if one is not UTF-8."""
    try:
        return {
            key.decode("utf-8"): [v.decode("utf-8") for v in values]
            for key, values in request.args.items()
        }
    except UnicodeDecodeError:
        raise InvalidRequest("Query parameters must be UTF-8") from None


def query_arg(request: IRequest, name: str) -> str:
    """The first value of query parameter ``name``, or ``""``."""
    values = query_args(request).get(name)
    return values[0] if values else ""


def path(request: IRequest) -> str:
    """The path as sent (percent-encoded, without the query); ``InvalidRequest`` if it is not ASCII."""
    try:
        return request.path.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest("The path must be ASCII (percent-encoded)") from None


def check_url(request: IRequest) -> None:
    """
    ``InvalidRequest`` unless the path (percent-decoded, as routing reads it)
    and the Host header are UTF-8: Klein's routing would otherwise answer a
    plain-text 400 of its own and log a traceback.
    """
    try:
        unquote_to_bytes(request.path).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The path must be UTF-8") from None
    header(request, "host")
