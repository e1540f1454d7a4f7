"""
Builds a running leafpds as Twisted services: :class:`PDSService` (the
database, the background jobs, the firehose, the embedded PLC directory, and
the site to serve it with — the API for running leafpds inside an
application of one's own, see docs/embedding.md) and :class:`LeafPDSService`
(``twistd leafpds``: the same on a port of its own).
"""

import os
from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

import leafpds
from leafpds.accounts.account_email import AccountEmail
from leafpds.accounts.accounts import Accounts
from leafpds.accounts.email_tokens import EmailTokens
from leafpds.accounts.keys import AccountKeys, open_vault, server_key
from leafpds.accounts.service_auth import ServiceAuth
from leafpds.accounts.sessions import TokenIssuer, revoked_sessions
from leafpds.app import AppContext
from leafpds.blobs.blobs import Blobs
from leafpds.blobs.store import BlobStore, DiskBlobStore
from leafpds.config import ConfigError, Settings, load_master_secret
from leafpds.db.pool import Database, connect
from leafpds.identity.handles import HandleResolver
from leafpds.identity.dids import DIDResolver
from leafpds.identity.plc import PLCClient
from leafpds.identity.plc_server import PLCService, make_plc_service
from leafpds.repo.transactor import RepoTransactor
from leafpds.sequencer.crawlers import CrawlerNotifier
from leafpds.sequencer.fanout import Sequencer
from leafpds.xrpc.ratelimit import METHOD_LIMITS, Limit, RateLimiter
from leafpds.lexicon import Lexicons
from leafpds.mail.queue import MailQueue
from leafpds.mail.smtp import LogSender, MailSender, SMTPSender, SMTPServer
from leafpds.metrics import Metrics
from leafpds.oauth.clients import ClientStore
from leafpds.oauth.dpop import DpopVerifier
from leafpds.oauth.metadata import issuer
from leafpds.oauth.nonces import DpopNonces
from leafpds.oauth.par import PendingRequests
from leafpds.oauth.replay import ReplayCache
from leafpds.oauth.server import AuthorizationServer
from leafpds.oauth.tokens import AccessTokens
from leafpds.outbound import SystemResolver
from leafpds.xrpc.resource import XRPCServer
from leafpds.xrpc.site import SharedSite, XRPCSite

log = Logger()


def open_app(settings: Settings, environ: Mapping[str, str], reactor: Any) -> AppContext:
    """
    Prepare everything that can fail before serving: the data folder, the
    master secret (a wrong one stops start-up here), the schema, the keys.
    Raises (and so stops ``twistd``) on any of it.
    """
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    master_secret = load_master_secret(settings.master_secret_file, environ)
    db = Database(settings.data_dir / "leafpds.sqlite")
    db.migrate()
    conn = connect(db.path)
    try:
        vault = open_vault(conn, master_secret)
        rotation_key = server_key(conn, vault, "plc-rotation")
        still_revoked = revoked_sessions(conn, reactor.seconds())
    finally:
        conn.close()
    keys = AccountKeys(db, vault)
    # Right for every setup but a localhost one without --public-url, whose
    # URL (and so DID) has the port bound in LeafPDSService._listening.
    public_url = settings.public_url_for_port(None)
    service_did = settings.service_did_for(public_url)
    tokens = TokenIssuer(vault.subkey("jwt"), service_did, reactor.seconds)
    tokens.revoke(still_revoked)
    oauth = authorization_server(settings, vault, tokens, db, public_url, service_did, reactor)
    transactor = RepoTransactor(db, keys)
    blob_root = settings.data_dir / "blobs"
    store = blob_store(settings, environ, reactor)
    # Uploads spool to the local disk in either case (hashed as they arrive).
    blobs = Blobs(db, store, blob_root / "tmp", settings.blob_grace, reactor)
    transactor.commit_hooks.append(blobs.commit_hook)
    # The embedded directory's URL is known once it listens.
    plc = PLCClient(settings.plc_url or "", reactor)
    app = AppContext(
        settings=settings,
        db=db,
        lexicons=Lexicons.load_default(),
        reactor=reactor,
        keys=keys,
        tokens=tokens,
        transactor=transactor,
        plc=plc,
        dids=DIDResolver(reactor, plc, allow_private=settings.allow_private_services),
        handle_resolver=HandleResolver(reactor),
        request_limits=_limiter(settings, settings.rate_limit_requests, reactor),
        write_limits=_limiter(settings, settings.rate_limit_writes, reactor),
        login_limits=_limiter(settings, settings.rate_limit_logins, reactor),
        method_limits={nsid: _limiter(settings, spec, reactor) for nsid, spec in METHOD_LIMITS.items()},
        blobs=blobs,
        service_auth=ServiceAuth(keys, reactor),
        public_url=public_url,
        service_did=service_did,
        oauth=oauth,
    )
    app.accounts = Accounts(
        db,
        keys,
        tokens,
        transactor,
        app.plc,
        rotation_key,
        [settings.handle_domain],
        public_url=lambda: app.public_url,
        now=reactor.seconds,
        resolve_handle=app.handle_resolver.resolve,
        dids=app.dids,
    )
    if settings.smtp_url:
        sender: MailSender = SMTPSender(SMTPServer.parse(settings.smtp_url), reactor, settings.hostname)
    else:
        sender = LogSender()
    app.mail = MailQueue(db, sender, settings.email_from, settings.hostname, reactor)
    app.account_email = AccountEmail(
        db,
        EmailTokens(vault.subkey("email-tokens")),
        app.mail,
        tokens,
        public_url=lambda: app.public_url,
        now=reactor.seconds,
    )
    app.sequencer = Sequencer(
        db, reactor, settings.firehose_window * 3600, settings.firehose_buffer
    )
    transactor.listeners.append(app.sequencer.committed)
    app.crawlers = CrawlerNotifier(list(settings.crawlers), lambda: settings.hostname, reactor)
    transactor.listeners.append(app.crawlers.committed)
    app.metrics = Metrics(app)
    return app


def authorization_server(
    settings: Settings, vault: Any, tokens: TokenIssuer, db: Database, public_url: str, service_did: str,
    reactor: Any,
) -> AuthorizationServer:
    """
    The OAuth authorization server (:mod:`leafpds.oauth`).  Its access
    tokens have a secret of their own and share the session tokens'
    revoked set; DPoP nonces come from the master secret, so they survive a
    restart.
    """
    replay = ReplayCache(reactor)
    access = AccessTokens(vault.subkey("oauth-access"), issuer(public_url), service_did, reactor, tokens.revoked)
    return AuthorizationServer(
        issuer=issuer(public_url),
        db=db,
        clients=ClientStore(reactor, SystemResolver(reactor), allow_local=settings.oauth_allow_local_clients),
        dpop=DpopVerifier(reactor, DpopNonces(vault.subkey("dpop-nonce"), reactor), replay),
        pending=PendingRequests(reactor),
        access=access,
        replay=replay,
        clock=reactor,
        revoked=tokens.revoke,
    )


def blob_store(settings: Settings, environ: Mapping[str, str], reactor: Any) -> BlobStore:
    """The store ``--blobstore`` names: the disk (default) or an S3 bucket."""
    if settings.s3_bucket is None:
        return DiskBlobStore(settings.data_dir / "blobs", reactor)
    # botocore is imported only by servers that use S3.
    from leafpds.blobs.s3 import S3BlobStore, S3Config

    config = S3Config.from_settings(settings, environ)
    try:
        store = S3BlobStore(config, reactor)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    log.info("Blobs are kept in {where}", where=config.describe())
    return store


def raise_open_file_limit() -> None:
    """
    Raise this process's soft limit on open files to its hard limit, and log
    the number.  Every relay, app and firehose subscriber holds a connection
    (a file descriptor), and the common soft default of 1,024 runs out long
    before the machine does.
    """
    try:
        import resource
    except ImportError:  # not a POSIX system: no such limits
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            # An unlimited hard limit may exceed what the kernel allows.
            log.warn("Cannot raise the open-file limit to {hard}: {error}", hard=hard, error=str(e))
    shown = "unlimited" if soft == resource.RLIM_INFINITY else soft
    log.info("Open files: up to {limit} at once", limit=shown)


def _limiter(settings: Settings, spec: str, reactor: Any) -> RateLimiter:
    if not settings.rate_limits:
        return RateLimiter([], reactor.seconds)
    try:
        limits = [Limit.parse(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"invalid rate limit: {spec!r} (expected points/seconds)") from None
    return RateLimiter(limits, reactor.seconds)


def build_pds(
    settings: Settings, environ: Mapping[str, str] | None = None, reactor: Any = None
) -> "PDSService":
    """
    leafpds, ready to start, for an application to run in its reactor:
    :func:`open_app` (which raises on anything that stops start-up: a wrong
    master secret, a database from a newer leafpds) and the service.
    ``environ`` (the process's unless given) may hold the master secret.
    """
    if reactor is None:
        from twisted.internet import reactor
    return PDSService(open_app(settings, os.environ if environ is None else environ, reactor))


class PDSService(MultiService):
    """
    The whole PDS but the port: starting it starts the database, the
    background jobs (children of this service), the firehose and, without a
    PLC URL, the embedded PLC directory (on ``--plc-listen``).  It serves
    HTTP through the site :meth:`make_site` builds, on a port the
    application opens (then calls :meth:`serving`) or :meth:`listen` opens.
    Stopping it closes the ports it opened, the outgoing connections and
    the database.
    """

    def __init__(self, app: AppContext) -> None:
        super().__init__()
        self.app = app
        self.xrpc = XRPCServer(app)
        #: leafpds's root resource.  Serve it through :meth:`make_site`: the
        #: body limits and the upload spool are the site's.
        self.resource: IResource = self.xrpc.resource()
        #: Fires once leafpds can serve (the embedded PLC directory listens).
        self.ready: Deferred[None] = succeed(None)
        self.ports: list[IListeningPort] = []
        #: The sites :meth:`make_site` built: their connections close when the service stops.
        self.sites: list[XRPCSite] = []
        self._plc: PLCService | None = None
        app.blobs.collector().setServiceParent(self)
        app.sequencer.service().setServiceParent(self)
        app.mail.setServiceParent(self)

    @property
    def metrics(self) -> Metrics:
        """This server's metrics; ``metrics.registry`` is its Prometheus registry."""
        return self.app.metrics

    def metrics_resource(self) -> IResource:
        """
        A ``twisted.web`` resource that answers GET with this server's
        metrics in Prometheus's text format, wherever the application mounts
        it (best on a port of its own, as ``--metrics-listen`` does: they are
        for the operator, not the public).
        """
        return self.app.metrics.resource()

    @property
    def public_url(self) -> str:
        """The URL clients and DID documents use ("" until :meth:`serving`)."""
        return self.app.public_url

    def make_site(self, host: IResource | None = None, *, host_max_body_size: int | None = None) -> XRPCSite:
        """
        The ``twisted.web`` site to serve leafpds with: leafpds alone, or
        beside ``host`` (an application's root resource, e.g. a Klein app's
        ``.resource()``), which then serves every path leafpds does not:
        leafpds keeps ``/xrpc/``, ``/account/``, ``/auth/``, ``/oauth/`` and its
        ``/.well-known/`` names (:meth:`XRPCServer.serves`).  The host's
        request bodies are held to ``host_max_body_size`` bytes (default:
        ``--max-json-body``).
        """
        settings = self.app.settings
        limits: dict[str, Any] = dict(
            max_body_size=settings.max_json_body,
            max_blob_size=settings.max_blob_size,
            max_import_size=settings.max_import_size,
            spool=self.app.blobs.new_spool,
            space=self.app.db.space,
        )
        if host is None:
            site = XRPCSite(self.resource, **limits)
        else:
            site = SharedSite(
                self.resource, host, self.xrpc.serves, **limits, host_max_body_size=host_max_body_size
            )
        self.sites.append(site)
        return site

    def startService(self) -> None:
        self.app.db.start()
        settings = self.app.settings
        if settings.cpu_pairing:
            cpu = self.app.db.share_cpu_with_caller(self.app.reactor.getThreadPool())
            if cpu is not None:
                log.info("The reactor and the database writer share CPU {cpu}", cpu=cpu)
        if not settings.plc_url:
            # One per run: stopping the service lets it go (see stopService).
            plc = self._plc = make_plc_service(settings.plc_listen, settings.data_dir / "plc", self.app.reactor)
            plc.setServiceParent(self)
            self.ready = plc.listening.addCallback(self._embedded_plc_listening)
        else:
            log.info("Using the PLC directory at {url}", url=settings.plc_url)
        if settings.smtp_url:
            log.info(
                "Sending mail from {sender} through {server}",
                sender=settings.email_from, server=str(SMTPServer.parse(settings.smtp_url)),
            )
        else:
            log.warn(
                "No --smtp-url: account mails (codes to confirm an address, reset a password) "
                "are written to this log instead of sent (development only)"
            )
        super().startService()

    def _embedded_plc_listening(self, port: IListeningPort) -> None:
        self.app.plc.base_url = f"http://127.0.0.1:{port.getHost().port}"
        log.info(
            "Using the embedded PLC directory at {url} (development only: its DIDs are "
            "not visible to the network; pass --plc-url https://plc.directory in production)",
            url=self.app.plc.base_url,
        )

    def listen(self, endpoint: str | IStreamServerEndpoint, site: Site) -> "Deferred[IListeningPort]":
        """
        Listen on ``endpoint`` (a Twisted endpoint or its description) with
        ``site``, then :meth:`serving` on that port; stopping the service
        closes it.
        """
        if isinstance(endpoint, str):
            endpoint = serverFromString(self.app.reactor, endpoint)
        return endpoint.listen(site).addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.ports.append(port)
        self.serving(port)
        return port

    def serving(self, port: IListeningPort | None = None) -> str:
        """
        Tell leafpds that its site now listens on ``port`` (an application
        that opened the port itself calls this): the public URL is settled —
        ``--public-url``, else derived from the hostname (and, for
        ``localhost``, the port) — and relays are asked to crawl.  Returns
        the public URL.
        """
        settings = self.app.settings
        address = port.getHost() if port is not None else None
        self.app.public_url = settings.public_url_for_port(getattr(address, "port", None))
        self.app.service_did = self.app.tokens.service_did = settings.service_did_for(self.app.public_url)
        self.app.oauth.serve_at(self.app.public_url, self.app.service_did)
        where = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}" if address else "the application's port"
        log.info(
            "leafpds {version} serving {url} as {did} (listening on {address}), data in {data_dir}",
            version=leafpds.__version__,
            url=self.app.public_url,
            did=self.app.service_did,
            address=where,
            data_dir=str(settings.data_dir.resolve()),
        )
        self.app.crawlers.start()
        return self.app.public_url

    def stopService(self) -> Deferred:
        d = maybeDeferred(super().stopService)
        ports, self.ports = self.ports, []
        d.addCallback(lambda _: gatherResults([maybeDeferred(port.stopListening) for port in ports]))
        # A client's kept-alive connection would otherwise go on reaching
        # this stopped service (and its closed database), even once another
        # listens on the same port; the requests under way finish first.
        d.addCallback(lambda _: gatherResults([site.close_connections() for site in self.sites]))
        d.addCallback(lambda _: ensureDeferred(self._stop_outgoing()))
        d.addBoth(self._close_db)
        return d

    async def _stop_outgoing(self) -> None:
        # Idle connections and DNS timers would outlive the service in the
        # reactor of an application that goes on running.
        await self.xrpc.proxy.stop()
        self.app.handle_resolver.stop()
        self.app.dids.stop()
        await self.app.plc.close()
        await self.app.blobs.store.close()
        self.app.oauth.clients.stop()

    def _close_db(self, result):
        self.app.db.close()
        if self._plc is not None:
            # Stopped with the other children; the next start makes its own.
            self._plc.disownServiceParent()
            self._plc = None
        return result


class LeafPDSService(PDSService):
    """``twistd leafpds``: a :class:`PDSService` on a site of its own, listening on ``--listen``."""

    port: IListeningPort | None = None
    #: Where the metrics are served (with ``--metrics-listen``).
    metrics_port: IListeningPort | None = None

    def __init__(self, app: AppContext) -> None:
        super().__init__(app)
        self.site = self.make_site()
        self.listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        settings = self.app.settings
        site_ready = self.listen(settings.listen, self.site).addCallback(self._keep_port)
        waits = [site_ready, self.ready]
        if settings.metrics_listen:
            waits.append(self._listen_metrics(settings.metrics_listen))
        self.listening = gatherResults(waits, consumeErrors=True).addCallbacks(
            lambda results: results[0], self._cannot_listen
        )

    def _listen_metrics(self, description: str) -> "Deferred[IListeningPort]":
        root = Resource()
        root.putChild(b"metrics", self.metrics_resource())
        site = Site(root)
        site.log = lambda request: None  # scrapes are no news for the access log
        site.noisy = False
        endpoint = serverFromString(self.app.reactor, description)

        def listening(port: IListeningPort) -> IListeningPort:
            self.ports.append(port)
            self.metrics_port = port
            address = port.getHost()
            log.info("Metrics at http://{host}:{port}/metrics", host=address.host, port=address.port)
            return port

        return endpoint.listen(site).addCallback(listening)

    def _keep_port(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def _cannot_listen(self, failure):
        log.failure("Cannot listen", failure)
        if self.app.reactor.running:
            self.app.reactor.stop()
        return failure

    def stopService(self) -> Deferred:
        self.port = None
        return super().stopService()
