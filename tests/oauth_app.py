"""
An OAuth client for the tests, as the official one behaves towards a real
leafpds's authorization server (``app.oauth``, its endpoints under
``/oauth/``): DPoP on every call, the server's nonce learnt and reused,
PKCE S256, ``private_key_jwt`` for a confidential client.  Consent (the
authorization page's part) is :meth:`App.consent`: what the page does once
the person signed in and allowed; :class:`Person` is a browser on the page
itself, over HTTP (tests/test_oauth_page.py).
"""

import base64
import hashlib
import html
import json
import re
import secrets
import time
from urllib.parse import quote, urlencode

import treq

from leafpds.oauth.assertions import ASSERTION_TYPE
from tests.oauth_keys import ClientKey
from tests.signin import Browser
from tests.test_accounts import PASSWORD

LOOPBACK_CLIENT = "http://localhost?redirect_uri=" + quote("http://127.0.0.1/callback", safe="") + \
    "&scope=" + quote("atproto transition:generic", safe="")


class Mounted:
    """A running leafpds as the tests' ``App`` client sees an authorization server."""

    def __init__(self, running) -> None:
        self.running = running
        self.app = running.service.app

    @property
    def issuer(self) -> str:
        return self.app.oauth.issuer

    @property
    def server(self):
        return self.app.oauth


class App:
    """An OAuth client as the official one behaves: DPoP on every call, the server's nonce learnt and reused."""

    def __init__(self, pds: Mounted, client_id=LOOPBACK_CLIENT, redirect_uri="http://127.0.0.1:4567/callback",
                 signer=None):
        self.pds = pds
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.key = ClientKey()
        self.signer = signer  # a ClientKey for private_key_jwt
        self.nonce = None
        self.verifier = secrets.token_urlsafe(48)
        self.challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()

    def assertion(self):
        now = int(time.time())
        return self.signer.sign({"iss": self.client_id, "sub": self.client_id, "aud": self.pds.issuer,
                                 "iat": now, "exp": now + 60, "jti": secrets.token_urlsafe(12)},
                                kid=self.signer.jwk["kid"])

    async def post(self, path, fields, *, proof=True, key=None, retry=True, claims=None):
        url = self.pds.issuer + path
        fields = {"client_id": self.client_id, **fields}
        if self.signer is not None and "client_assertion" not in fields:
            fields.update(client_assertion_type=ASSERTION_TYPE, client_assertion=self.assertion())
        fields = {k: v for k, v in fields.items() if v is not None}
        headers = {}
        if proof:
            headers["DPoP"] = (key or self.key).proof(nonce=self.nonce, **{"htm": "POST", "htu": url, **(claims or {})})
        response = await treq.post(url, data=fields, headers=headers)
        body = json.loads(await response.content())
        nonce = response.headers.getRawHeaders("dpop-nonce")
        if nonce:
            self.nonce = nonce[0]
        if retry and response.code == 400 and body.get("error") == "use_dpop_nonce":
            return await self.post(path, fields, proof=proof, key=key, retry=False, claims=claims)
        return response.code, body

    async def par(self, **changes):
        fields = {
            "response_type": "code", "redirect_uri": self.redirect_uri, "scope": "atproto transition:generic",
            "state": "st-1", "code_challenge": self.challenge, "code_challenge_method": "S256",
            "login_hint": "alice.test",
        }
        fields.update(changes)
        return await self.post("/oauth/par", fields)

    async def consent(self, request_uri: str, did: str) -> str:
        """
        The code the authorization page sends back once ``did`` signed in
        and allowed: it opens the pushed request, spends it and issues the
        code, as ``leafpds.web.authorize`` does.
        """
        request_id, request = self.pds.server.pending.open(request_uri, self.client_id)
        self.pds.server.pending.finish(request_id)
        return await self.pds.server.issue_code(request, did)

    async def authorize(self, did: str) -> str:
        code, body = await self.par()
        assert code == 201, body
        return await self.consent(body["request_uri"], did)

    async def exchange(self, code, *, key=None, claims=None, proof=True, **changes):
        fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                  "code_verifier": self.verifier}
        fields.update(changes)
        return await self.post("/oauth/token", fields, key=key, claims=claims, proof=proof)

    async def refresh(self, refresh_token, *, key=None, **changes):
        fields = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        fields.update(changes)
        return await self.post("/oauth/token", fields, key=key)


def refused(answer, status, error):
    """An RFC 6749 refusal: ``status``, ``error`` and a description."""
    code, body = answer
    assert (code, body.get("error")) == (status, error), body
    assert body.get("error_description")


def hidden(page, name: str) -> str:
    """The value of a page's hidden field ``name``."""
    found = re.search(rf'name="{name}" value="([^"]*)"', page.body.decode())
    assert found, page.body.decode()
    return html.unescape(found.group(1))


class Person(Browser):
    """A browser on the authorization page."""

    async def open(self, app: App, request_uri: str, client_id: str | None = None):
        params = {"request_uri": request_uri, "client_id": client_id or app.client_id}
        return await self.get("/oauth/authorize?" + urlencode(params))

    async def act(self, page, action: str, **fields: str):
        """Submit one of ``page``'s forms (they all carry the same request and token)."""
        form = {"request_uri": hidden(page, "request_uri"), "form_token": hidden(page, "form_token")}
        return await self.post_form("/oauth/authorize", {**form, "action": action, **fields})

    async def sign_in(self, page, identifier: str = "alice.test", password: str = PASSWORD, remember: bool = True):
        remembered = {"remember_device": "1"} if remember else {}
        return await self.act(page, "sign-in", identifier=identifier, password=password, **remembered)
