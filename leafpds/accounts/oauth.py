"""
Sign-in with an outside identity provider (GitHub, Google) by the OAuth 2.0
authorization-code flow with PKCE, and the short-lived state around it.

A provider answers with an :class:`Identity`: the provider's name and its
*stable* subject id (GitHub's numeric user id, Google's ``sub``), never the
login name or email, which can change hands.  The email is only a hint (and
must be verified by the provider).
"""

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

import jwt
import treq

# How long a request to a provider may take before the sign-in fails.
HTTP_TIMEOUT = 15
PENDING_LIFETIME = 10 * 60
HANDOFF_LIFETIME = 60
# Google rotates its signing keys every few days; a key id not yet seen
# makes leafpds fetch the set again at once.
JWKS_LIFETIME = 6 * 60 * 60
USER_AGENT = "leafpds"


class OAuthError(Exception):
    """A sign-in that cannot go on; the message is safe to show the user."""


@dataclass(frozen=True)
class Identity:
    provider: str
    subject: str
    email: str
    # A starting point for the handle chooser, e.g. the GitHub login.
    handle_hint: str


@dataclass(frozen=True)
class PKCE:
    verifier: str
    challenge: str

    @classmethod
    def generate(cls) -> "PKCE":
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"))


T = TypeVar("T")


class Expiring(Generic[T]):
    """
    Values behind random one-time tokens that expire: pending logins,
    hand-off codes.  In memory on purpose: they live for seconds to minutes
    and a restart merely makes the user start again.
    """

    def __init__(self, lifetime: float, now: Callable[[], float]) -> None:
        self.lifetime = lifetime
        self.now = now
        self._values: dict[str, tuple[float, T]] = {}

    def add(self, value: T) -> str:
        self._prune()
        token = secrets.token_urlsafe(32)
        self._values[token] = (self.now() + self.lifetime, value)
        return token

    def get(self, token: str) -> T | None:
        """The value if its token is known and fresh, leaving it in place."""
        self._prune()
        found = self._values.get(token)
        return found[1] if found else None

    def take(self, token: str) -> T | None:
        """The value if its token is known and fresh; the token is then spent."""
        self._prune()
        found = self._values.pop(token, None)
        return found[1] if found else None

    def _prune(self) -> None:
        now = self.now()
        for token in [t for t, (expires, _) in self._values.items() if expires <= now]:
            del self._values[token]


@dataclass(frozen=True)
class PendingLogin:
    """What leafpds remembers between sending the user to a provider and the callback."""

    provider: str
    pkce: PKCE
    nonce: str
    # Where the user goes afterwards: an allow-listed app, or "" for
    # leafpds's own account pages.
    redirect_uri: str
    app_state: str
    # Set when a signed-in user links this provider to their account.
    link_to: str | None = None
    # Set when the sign-in started on the OAuth authorization page: the
    # pending authorization request it goes back to (leafpds.web.authorize).
    resume: str = ""


@dataclass(frozen=True)
class HandOff:
    did: str
    redirect_uri: str


def _check_redirect_uri(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class HandOffCodes:
    """One-time codes (≤ 60 s) that an app trades, with its redirect_uri, for a session."""

    def __init__(self, now: Callable[[], float], lifetime: float = HANDOFF_LIFETIME) -> None:
        self._codes: Expiring[HandOff] = Expiring(lifetime, now)

    def issue(self, did: str, redirect_uri: str) -> str:
        return self._codes.add(HandOff(did, redirect_uri))

    def redeem(self, code: str, redirect_uri: str) -> str | None:
        """The DID, once; a code presented with another redirect_uri is spent too."""
        found = self._codes.take(code)
        if found is None or not _check_redirect_uri(redirect_uri, found.redirect_uri):
            return None
        return found.did


async def _fetch_json(what: str, method: str, url: str, **kwargs: Any) -> Any:
    """The JSON a provider answers to one request; any failure is an :class:`OAuthError`."""
    try:
        response = await treq.request(method, url, timeout=HTTP_TIMEOUT, **kwargs)
        content = await response.content()
    except Exception as e:  # refused, reset, timed out, TLS: the provider cannot be reached
        raise OAuthError(f"{what} failed: the provider could not be reached ({type(e).__name__})") from None
    if response.code != 200:
        raise OAuthError(f"{what} failed (HTTP {response.code})")
    try:
        return json.loads(content)
    except ValueError:
        raise OAuthError(f"{what} did not answer with JSON") from None


def handle_hint(text: str) -> str:
    """A handle label from a login name or email local part: a-z, 0-9 and hyphens."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:63].strip("-")


class GitHub:
    """GitHub OAuth apps: https://docs.github.com/en/apps/oauth-apps"""

    name = "github"
    title = "GitHub"

    def __init__(self, client_id: str, client_secret: str, web_url: str, api_url: str) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.web_url = web_url
        self.api_url = api_url

    def __repr__(self) -> str:
        return f"<GitHub {self.web_url} client {self.client_id}>"

    async def authorize_url(self, callback: str, state: str, pending: PendingLogin) -> str:
        query = {
            "client_id": self.client_id,
            "redirect_uri": callback,
            "scope": "read:user user:email",
            "state": state,
            "code_challenge": pending.pkce.challenge,
            "code_challenge_method": "S256",
            "allow_signup": "true",
        }
        return f"{self.web_url}/login/oauth/authorize?{urlencode(query)}"

    async def identify(self, code: str, callback: str, pending: PendingLogin) -> Identity:
        answer = await _fetch_json(
            "GitHub token exchange",
            "POST",
            f"{self.web_url}/login/oauth/access_token",
            data={
                "client_id": self.client_id,
                "client_secret": self._client_secret,
                "code": code,
                "redirect_uri": callback,
                "code_verifier": pending.pkce.verifier,
            },
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        )
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str):
            raise OAuthError("GitHub did not grant access")
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "User-Agent": USER_AGENT,
        }
        user = await _fetch_json("Reading the GitHub user", "GET", f"{self.api_url}/user", headers=headers)
        emails = await _fetch_json(
            "Reading the GitHub user's emails", "GET", f"{self.api_url}/user/emails", headers=headers
        )
        if not isinstance(user, dict) or not isinstance(user.get("id"), int):
            raise OAuthError("GitHub answered without a user id")
        primary = [
            e.get("email")
            for e in emails if isinstance(e, dict) and e.get("primary") and e.get("verified") is True
        ] if isinstance(emails, list) else []
        if not primary or not isinstance(primary[0], str):
            raise OAuthError("Your GitHub account has no verified primary email address")
        login = user.get("login") if isinstance(user.get("login"), str) else ""
        return Identity(self.name, str(user["id"]), primary[0], handle_hint(login))


class Google:
    """Google's OpenID Connect: endpoints and keys from the issuer's discovery document."""

    name = "google"
    title = "Google"

    def __init__(
        self, client_id: str, client_secret: str, issuer: str, now: Callable[[], float]
    ) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.issuer = issuer
        self.now = now
        self._discovery: dict[str, Any] | None = None
        # kid -> key, and when the set was fetched
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_fetched = float("-inf")

    def __repr__(self) -> str:
        return f"<Google {self.issuer} client {self.client_id}>"

    async def _endpoints(self) -> dict[str, Any]:
        if self._discovery is None:
            document = await _fetch_json(
                "Reading Google's OpenID configuration",
                "GET",
                f"{self.issuer}/.well-known/openid-configuration",
            )
            needed = ("authorization_endpoint", "token_endpoint", "jwks_uri")
            if not isinstance(document, dict) or not all(
                isinstance(document.get(k), str) for k in needed
            ):
                raise OAuthError("Google's OpenID configuration is incomplete")
            self._discovery = document
        return self._discovery

    async def authorize_url(self, callback: str, state: str, pending: PendingLogin) -> str:
        endpoints = await self._endpoints()
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": callback,
            "scope": "openid email",
            "state": state,
            "nonce": pending.nonce,
            "code_challenge": pending.pkce.challenge,
            "code_challenge_method": "S256",
        }
        return f"{endpoints['authorization_endpoint']}?{urlencode(query)}"

    async def identify(self, code: str, callback: str, pending: PendingLogin) -> Identity:
        endpoints = await self._endpoints()
        answer = await _fetch_json(
            "Google token exchange",
            "POST",
            endpoints["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": callback,
                "client_id": self.client_id,
                "client_secret": self._client_secret,
                "code_verifier": pending.pkce.verifier,
            },
            headers={"Accept": "application/json"},
        )
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str):
            raise OAuthError("Google did not return an ID token")
        claims = await self._verify(id_token, endpoints["jwks_uri"])
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(
            claims["nonce"].encode(), pending.nonce.encode()
        ):
            raise OAuthError("Google's ID token is not for this sign-in")
        email = claims.get("email")
        if not isinstance(email, str) or claims.get("email_verified") not in (True, "true"):
            raise OAuthError("Your Google account's email address is not verified")
        return Identity(self.name, str(claims["sub"]), email, handle_hint(email.split("@")[0]))

    async def _key(self, kid: Any, jwks_uri: str) -> jwt.PyJWK:
        """Google's key ``kid``, from the cached set, fetched again when stale or missing."""
        if not isinstance(kid, str):
            raise OAuthError("Google's ID token names no signing key")
        if kid not in self._keys or self.now() - self._keys_fetched > JWKS_LIFETIME:
            keys = await _fetch_json("Reading Google's keys", "GET", jwks_uri)
            try:
                key_set = jwt.PyJWKSet.from_dict(keys)
            except (jwt.PyJWTError, ValueError, TypeError) as e:
                raise OAuthError(f"Google's keys are not usable: {e}") from None
            self._keys = {k.key_id: k for k in key_set.keys if k.key_id}
            self._keys_fetched = self.now()
        try:
            return self._keys[kid]
        except KeyError:
            raise OAuthError("Google's ID token is signed with an unknown key") from None

    async def _verify(self, id_token: str, jwks_uri: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
        except jwt.PyJWTError as e:
            raise OAuthError(f"Google's ID token is not valid: {e}") from None
        key = await self._key(kid, jwks_uri)
        # Google writes its issuer with or without the scheme.
        bare = self.issuer.split("://", 1)[-1]
        try:
            return jwt.decode(
                id_token,
                key,
                algorithms=["RS256"],
                audience=self.client_id,
                issuer=[self.issuer, bare],
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise OAuthError(f"Google's ID token is not valid: {e}") from None


Provider = GitHub | Google


def configured_providers(settings: Any, now: Callable[[], float]) -> dict[str, Provider]:
    """The providers the operator configured; one without a client id is not offered."""
    providers: dict[str, Provider] = {}
    if settings.github_client_id:
        providers["github"] = GitHub(
            settings.github_client_id,
            settings.github_client_secret or "",
            settings.github_url,
            settings.github_api_url,
        )
    if settings.google_client_id:
        providers["google"] = Google(
            settings.google_client_id, settings.google_client_secret or "", settings.google_issuer, now
        )
    return providers
