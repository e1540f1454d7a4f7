"""
The authorization server's endpoints as plain async methods: what
``/oauth/par``, ``/oauth/token`` and ``/oauth/revoke`` do with a request's
form parameters and DPoP proof, independent of HTTP (see
:mod:`leafpds.oauth.endpoints` for that).  The authorization page (in
``web/``) sits between ``push`` and ``token``: it opens the pushed request,
signs the person in, asks for consent and issues the code
(:meth:`AuthorizationServer.issue_code`).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from leafpds.oauth import assertions
from leafpds.oauth.clients import Client, ClientStore
from leafpds.oauth.dpop import DpopVerifier, Proof
from leafpds.oauth.errors import InvalidDpopProof, InvalidRequest, UnsupportedGrantType
from leafpds.oauth.metadata import issuer
from leafpds.oauth.par import AuthorizationRequest, PendingRequests, parse_request, single
from leafpds.oauth.replay import ReplayCache
from leafpds.oauth.tokens import (
    AccessTokens,
    Consent,
    Issued,
    Refusal,
    exchange_code_unit,
    issue_code_unit,
    refresh_unit,
    revoke_token_unit,
)


@dataclass
class AuthorizationServer:
    issuer: str
    db: Any  # leafpds.db.pool.Database
    clients: ClientStore
    dpop: DpopVerifier
    pending: PendingRequests
    access: AccessTokens
    replay: ReplayCache
    clock: IReactorTime
    # Called with revoked grant ids once the revocation commits
    # (TokenIssuer.revoke: the in-memory revoked set).
    revoked: Callable[[list[str]], None]

    def serve_at(self, public_url: str, service_did: str) -> None:
        """
        Settle the issuer (the public URL) and the access tokens' audience
        (this PDS's DID): a localhost server without ``--public-url`` knows
        them only once its port is bound.
        """
        self.issuer = self.access.issuer = issuer(public_url)
        self.access.audience = service_did

    def endpoint(self, path: str) -> str:
        return self.issuer + path

    def next_nonce(self) -> str | None:
        """The ``DPoP-Nonce`` every answer carries."""
        return self.dpop.nonces.next() if self.dpop.nonces is not None else None

    async def _client(self, params: dict[str, list[str]], path: str) -> tuple[Client, str]:
        """The client the request names, authenticated, and its authentication method."""
        client_ids = params.get("client_id") or []
        if len(client_ids) != 1 or not client_ids[0]:
            raise InvalidRequest('"client_id" is required')
        client = await self.clients.get(client_ids[0])
        audiences = [self.issuer, self.endpoint(path)]
        method = await assertions.authenticate(self.clients, client, params, audiences, self.clock, self.replay)
        return client, method

    async def push(self, params: dict[str, list[str]], proof: str | None) -> dict[str, Any]:
        """``POST /oauth/par``: the answer's JSON (status 201)."""
        # The proof first: a client without the nonce learns it before anything else is checked.
        checked = self.dpop.verify(proof, "POST", self.endpoint("/oauth/par")) if proof else None
        client, _ = await self._client(params, "/oauth/par")
        request = parse_request(params, client, checked.jkt if checked else None)
        request_uri = self.pending.push(request)
        return {"request_uri": request_uri, "expires_in": int(self.pending.lifetime)}

    async def issue_code(self, request: AuthorizationRequest, did: str) -> str:
        """A code for ``request``, consented to by ``did`` (the authorization page's last step)."""
        consent = Consent(did, request.client_id, request.scope, request.redirect_uri,
                          request.code_challenge, request.dpop_jkt)
        return await self.db.write(issue_code_unit, consent, self.clock.seconds())

    async def token(self, params: dict[str, list[str]], proof: str | None) -> dict[str, Any]:
        """``POST /oauth/token``: the answer's JSON."""
        if not proof:
            raise InvalidDpopProof("DPoP proof required")
        checked: Proof = self.dpop.verify(proof, "POST", self.endpoint("/oauth/token"))
        client, method = await self._client(params, "/oauth/token")
        grant_type = single(params, "grant_type")
        now = self.clock.seconds()
        if grant_type == "authorization_code":
            code = single(params, "code")
            if not code:
                raise InvalidRequest('"code" is required')
            result = await self.db.write(
                exchange_code_unit, code, client.client_id, method, single(params, "redirect_uri"),
                single(params, "code_verifier"), checked.jkt, now,
            )
        elif grant_type == "refresh_token":
            refresh_token = single(params, "refresh_token")
            if not refresh_token:
                raise InvalidRequest('"refresh_token" is required')
            result = await self.db.write(
                refresh_unit, refresh_token, client.client_id, method, checked.jkt, single(params, "scope"), now,
            )
        else:
            raise UnsupportedGrantType("Unsupported grant_type")
        if isinstance(result, Refusal):
            if result.revoked is not None:
                # A replay revoked the grant: its access tokens die now too.
                self.revoked([result.revoked])
            raise result.error
        return self._answer(result)

    def _answer(self, issued: Issued) -> dict[str, Any]:
        access_token, lifetime = self.access.issue(issued.grant, issued.scope)
        return {
            "access_token": access_token,
            "token_type": "DPoP",
            "refresh_token": issued.refresh_token,
            "scope": issued.scope,
            "expires_in": lifetime,
            "sub": issued.grant.did,
        }

    async def revoke(self, params: dict[str, list[str]]) -> None:
        """``POST /oauth/revoke`` (RFC 7009): revoke the token's grant; unknown tokens are no error."""
        client, _ = await self._client(params, "/oauth/revoke")
        token = single(params, "token")
        if not token:
            raise InvalidRequest('"token" is required')
        named = self.access.grant_of(token)
        grant_id = await self.db.write(
            revoke_token_unit, token, client.client_id, self.clock.seconds(), named[0] if named else None,
        )
        if grant_id is not None:
            self.revoked([grant_id])

