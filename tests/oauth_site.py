"""
leafpds.oauth's endpoints on a loopback site of their own, for tests: they
are not mounted in leafpds until the whole flow works.  The site also serves
what leafpds will serve around them (the two discovery documents, and a
``did:web`` document for the test account whose PDS is this site) and a
stand-in for the authorization page: ``GET /oauth/authorize`` consents at
once for the test account, the way the page will after sign-in and consent
(open the pushed request, issue the code, redirect back to the client).
"""

import secrets
import time
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.internet import reactor
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from leafpds.db.pool import Database
from leafpds.oauth.clients import ClientStore
from leafpds.oauth.dpop import DpopVerifier
from leafpds.oauth.endpoints import OAuthEndpoints
from leafpds.oauth.metadata import authorization_server, protected_resource
from leafpds.oauth.nonces import DpopNonces
from leafpds.oauth.par import PendingRequests
from leafpds.oauth.replay import ReplayCache
from leafpds.oauth.responses import redirect_to_client
from leafpds.oauth.server import AuthorizationServer
from leafpds.oauth.tokens import AccessTokens
from leafpds.web.layout import send_json, send_redirect
from tests.documents_server import DocumentsServer


class OAuthSite:
    app = Klein()

    def __init__(self, tmp_path: Path, hostname: str = "127.0.0.1", did: str | None = None) -> None:
        self.db = Database(tmp_path / "db.sqlite")
        self.db.migrate()
        self.db.start()
        self.docs = DocumentsServer.start()
        self.revoked: dict[str, float] = {}
        # Both stacks: "localhost" may resolve to ::1 or to 127.0.0.1.
        self.port = reactor.listenTCP(0, Site(self.app.resource()), interface="::")
        self.issuer = f"http://{hostname}:{self.port.getHost().port}"
        self.did = did or f"did:web:{hostname}%3A{self.port.getHost().port}"
        replay = ReplayCache(reactor)
        self.server = AuthorizationServer(
            issuer=self.issuer,
            db=self.db,
            clients=ClientStore(reactor, None, allow_local=True),
            dpop=DpopVerifier(reactor, DpopNonces(secrets.token_bytes(32), reactor), replay),
            pending=PendingRequests(reactor),
            access=AccessTokens(secrets.token_bytes(32), self.issuer, "did:web:pds.test", reactor, self.revoked),
            replay=replay,
            clock=reactor,
            revoked=lambda ids: self.revoked.update({i: time.time() + 3600 for i in ids}),
        )
        self.endpoints = OAuthEndpoints(self.server)

    async def add_account(self) -> None:
        await self.db.write(lambda conn: conn.execute(
            "INSERT INTO accounts (did, handle, created_at) VALUES (?, 'alice.test', '2025-01-01')", (self.did,)))

    async def stop(self) -> None:
        await self.port.stopListening()
        await self.docs.stop()
        self.db.close()

    @app.route("/oauth/", branch=True)
    def oauth(self, request: IRequest) -> Any:
        return self.endpoints.resource()

    @app.route("/oauth/authorize", methods=["GET"])
    async def authorize(self, request: IRequest) -> bytes:
        request_id, pushed = self.server.pending.open(
            request.args[b"request_uri"][0].decode(), request.args[b"client_id"][0].decode())
        self.server.pending.finish(request_id)
        code = await self.server.issue_code(pushed, self.did)
        return send_redirect(request, redirect_to_client(pushed, self.issuer, code=code))

    @app.route("/.well-known/oauth-protected-resource", methods=["GET"])
    def resource_document(self, request: IRequest) -> bytes:
        return send_json(request, 200, protected_resource(self.issuer))

    @app.route("/.well-known/oauth-authorization-server", methods=["GET"])
    def server_metadata(self, request: IRequest) -> bytes:
        return send_json(request, 200, authorization_server(self.issuer))

    @app.route("/.well-known/did.json", methods=["GET"])
    def did_document(self, request: IRequest) -> bytes:
        return send_json(request, 200, {
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": self.did,
            "alsoKnownAs": ["at://alice.test"],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": self.issuer}],
        })
