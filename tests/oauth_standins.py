"""
Local stand-ins for GitHub and Google that speak their OAuth wire protocols
over real HTTP on loopback, so leafpds's production provider code can be
pointed at them with ``--github-url`` / ``--github-api-url`` / ``--google-issuer``.

Both show an authorize page whose form, when approved, redirects back to the
callback with ``code`` and ``state``; both check PKCE (S256) at the token
endpoint.  Attributes such as ``user``, ``emails`` and ``claims`` can be
changed by a test to play a different user or a misbehaving provider.
"""

import base64
import hashlib
import html
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from klein import Klein
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

CLIENT_ID = "standin-client"
CLIENT_SECRET = "standin-secret"


def _arg(request: Any, name: str) -> str:
    values = request.args.get(name.encode())
    return values[0].decode() if values else ""


def _json(request: Any, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader("content-type", "application/json")
    return json.dumps(value).encode()


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class _Reachable(Resource):
    """A stand-in's pages, or a dropped connection once it has gone down."""

    isLeaf = True

    def __init__(self, stand_in: "_StandIn") -> None:
        super().__init__()
        self.stand_in = stand_in
        self.pages = stand_in.app.resource()

    def render(self, request: Any) -> Any:
        if self.stand_in.down:
            request.transport.abortConnection()
            return NOT_DONE_YET
        return self.pages.render(request)


class _StandIn:
    """The authorize page and the code bookkeeping both providers share."""

    authorize_path = ""

    def __init__(self) -> None:
        self.port: Any = None
        self.url = ""
        # Set by go_down(): the provider is unreachable.
        self.down = False
        # code -> the authorize request it answers
        self.codes: dict[str, dict[str, str]] = {}
        self.authorize_requests: list[dict[str, str]] = []

    def listen(self) -> "_StandIn":
        self.port = reactor.listenTCP(0, Site(_Reachable(self)), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        return self

    async def go_down(self) -> None:
        """Refuse new connections and drop every request on the open ones."""
        self.down = True
        await self.stop()

    async def stop(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()

    def _authorize_page(self, request: Any) -> bytes:
        fields = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.authorize_requests.append(fields)
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in fields.items()
        )
        return (
            f"<!doctype html><title>Authorize</title><form method=post action={self.authorize_path}>"
            f'{hidden}<button name="decision" value="approve">Authorize</button>'
            f'<button name="decision" value="deny">Cancel</button></form>'
        ).encode()

    def _decide(self, request: Any) -> bytes:
        back = _arg(request, "redirect_uri")
        state = _arg(request, "state")
        if _arg(request, "decision") != "approve":
            query = {"error": "access_denied", "state": state}
        else:
            code = secrets.token_urlsafe(16)
            self.codes[code] = {k.decode(): v[0].decode() for k, v in request.args.items()}
            query = {"code": code, "state": state}
        request.redirect(f"{back}?{urlencode(query)}".encode())
        return b""

    def _redeem(self, request: Any) -> dict[str, str] | None:
        """The authorize request for a valid code exchange, else None."""
        asked = self.codes.pop(_arg(request, "code"), None)
        if (
            asked is None
            or _arg(request, "client_id") != CLIENT_ID
            or _arg(request, "client_secret") != CLIENT_SECRET
            or _arg(request, "redirect_uri") != asked.get("redirect_uri")
            or asked.get("code_challenge_method") != "S256"
            or _challenge(_arg(request, "code_verifier")) != asked.get("code_challenge")
        ):
            return None
        return asked


class GitHubStandIn(_StandIn):
    """``/login/oauth/authorize``, ``/login/oauth/access_token``, and the REST API under ``/api``."""

    app = Klein()
    authorize_path = "/login/oauth/authorize"

    def __init__(self) -> None:
        super().__init__()
        self.user: dict[str, Any] = {"id": 583231, "login": "Octo-Cat"}
        self.emails: list[dict[str, Any]] = [
            {"email": "old@example.com", "primary": False, "verified": True},
            {"email": "octo@example.com", "primary": True, "verified": True},
        ]
        self.tokens: set[str] = set()

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    @app.route("/login/oauth/authorize", methods=["GET"])
    def authorize(self, request):
        return self._authorize_page(request)

    @app.route("/login/oauth/authorize", methods=["POST"])
    def decide(self, request):
        return self._decide(request)

    @app.route("/login/oauth/access_token", methods=["POST"])
    def access_token(self, request):
        if self._redeem(request) is None:
            # GitHub answers a bad code with 200 and an error object.
            return _json(request, {"error": "bad_verification_code"})
        token = "gho_" + secrets.token_urlsafe(16)
        self.tokens.add(token)
        return _json(request, {"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"})

    def _authorized(self, request) -> bool:
        given = (request.getHeader("authorization") or "").removeprefix("Bearer ")
        return given in self.tokens and bool(request.getHeader("user-agent"))

    @app.route("/api/user")
    def user_info(self, request):
        if not self._authorized(request):
            return _json(request, {"message": "Bad credentials"}, 401)
        return _json(request, self.user)

    @app.route("/api/user/emails")
    def user_emails(self, request):
        if not self._authorized(request):
            return _json(request, {"message": "Bad credentials"}, 401)
        return _json(request, self.emails)


class GoogleStandIn(_StandIn):
    """OpenID discovery, authorize, token endpoint with an RS256 ``id_token``, and JWKS."""

    app = Klein()
    authorize_path = "/o/oauth2/v2/auth"

    def __init__(self) -> None:
        super().__init__()
        self.jwks_fetches = 0
        self.rotate_key()
        self.sub = "109876543210987654321"
        # Claims and header fields merged over the real ones in the next
        # id_tokens (to misbehave).
        self.claims: dict[str, Any] = {}
        self.header: dict[str, Any] = {}

    def rotate_key(self) -> None:
        """Sign from now on with a new key (a new ``kid``), as Google does every few days."""
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)

    @app.route("/.well-known/openid-configuration")
    def discovery(self, request):
        return _json(request, {
            "issuer": self.url,
            "authorization_endpoint": self.url + self.authorize_path,
            "token_endpoint": self.url + "/token",
            "jwks_uri": self.url + "/oauth2/v3/certs",
            "response_types_supported": ["code"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })

    @app.route("/oauth2/v3/certs")
    def jwks(self, request):
        self.jwks_fetches += 1
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return _json(request, {"keys": [jwk]})

    @app.route("/o/oauth2/v2/auth", methods=["GET"])
    def authorize(self, request):
        return self._authorize_page(request)

    @app.route("/o/oauth2/v2/auth", methods=["POST"])
    def decide(self, request):
        return self._decide(request)

    @app.route("/token", methods=["POST"])
    def token(self, request):
        asked = self._redeem(request)
        if asked is None or _arg(request, "grant_type") != "authorization_code":
            return _json(request, {"error": "invalid_grant"}, 400)
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "sub": self.sub,
            "email": "ada.lovelace@example.org",
            "email_verified": True,
            "nonce": asked.get("nonce"),
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(self.claims)
        id_token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid, **self.header})
        return _json(request, {
            "access_token": "ya29." + secrets.token_urlsafe(16),
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": 3599,
        })
