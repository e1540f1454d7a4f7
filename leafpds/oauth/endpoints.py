"""
The authorization server's JSON endpoints over HTTP, for mounting under
``/oauth/``: ``POST par``, ``POST token``, ``POST revoke``, ``GET jwks``
(leafpds.xrpc.resource mounts it; the authorization page is in ``web/``).

Every answer carries ``Cache-Control: no-store`` and a fresh ``DPoP-Nonce``
(exposed to browser clients by CORS: these endpoints are called from any
origin, without cookies).  Refusals are RFC 6749 JSON ``{error,
error_description}``; a missing or stale nonce is 400 ``use_dpop_nonce``.
"""

from typing import Any
from urllib.parse import parse_qs

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException

from leafpds.errors import XRPCError
from leafpds.oauth.errors import InvalidRequest, OAuthError
from leafpds.oauth.server import AuthorizationServer
from leafpds.web import incoming
from leafpds.web.layout import send_json

log = Logger()

MAX_FORM = 64 * 1024


def form(request: IRequest) -> dict[str, list[str]]:
    """The urlencoded body's parameters, every value of each (RFC 6749 forbids repeats; callers check)."""
    content_type = (incoming.header(request, "content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("Expected an application/x-www-form-urlencoded body")
    request.content.seek(0)
    body = request.content.read(MAX_FORM + 1)
    if len(body) > MAX_FORM:
        raise InvalidRequest("Request body too large")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise InvalidRequest("Request body is not UTF-8") from None


class OAuthEndpoints:
    app = Klein()

    def __init__(self, server: AuthorizationServer) -> None:
        self.server = server

    def resource(self) -> IResource:
        return self.app.resource()

    def _headers(self, request: IRequest) -> None:
        request.setHeader("access-control-allow-origin", "*")
        request.setHeader("access-control-expose-headers", "DPoP-Nonce, WWW-Authenticate")
        nonce = self.server.next_nonce()
        if nonce is not None:
            request.setHeader("dpop-nonce", nonce)

    def _answer(self, request: IRequest, code: int, value: Any) -> bytes:
        self._headers(request)
        return send_json(request, code, value)

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        if isinstance(error, OAuthError):
            return self._answer(request, error.status, error.to_oauth_json())
        if isinstance(error, XRPCError):  # a malformed header, read through incoming
            return self._answer(request, 400, {"error": "invalid_request", "error_description": error.message})
        if isinstance(error, HTTPException):  # no such endpoint, or not with this method
            return self._answer(request, error.code or 400, {"error": "invalid_request",
                                                            "error_description": error.name})
        log.failure("OAuth endpoint failed", failure)
        return self._answer(request, 500, {"error": "server_error", "error_description": "Internal error"})

    @app.route("/<path:_any>", methods=["OPTIONS"])
    def preflight(self, request: IRequest, _any: str) -> bytes:
        self._headers(request)
        request.setHeader("access-control-allow-methods", "GET, POST, OPTIONS")
        request.setHeader("access-control-allow-headers", "Content-Type, DPoP")
        request.setHeader("access-control-max-age", "86400")
        request.setResponseCode(204)
        return b""

    @app.route("/par", methods=["POST"])
    async def par(self, request: IRequest) -> bytes:
        answer = await self.server.push(form(request), incoming.header(request, "dpop"))
        return self._answer(request, 201, answer)

    @app.route("/token", methods=["POST"])
    async def token(self, request: IRequest) -> bytes:
        answer = await self.server.token(form(request), incoming.header(request, "dpop"))
        return self._answer(request, 200, answer)

    @app.route("/revoke", methods=["POST"])
    async def revoke(self, request: IRequest) -> bytes:
        await self.server.revoke(form(request))
        return self._answer(request, 200, {})

    @app.route("/jwks", methods=["GET"])
    def jwks(self, request: IRequest) -> bytes:
        # Access tokens are checked only by this server (HS256): no public keys.
        return self._answer(request, 200, {"keys": []})
