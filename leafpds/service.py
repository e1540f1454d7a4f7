"""
Builds a running leafpds: the data folder, the database, the lexicons, and
the HTTP site on the configured endpoint, as one Twisted service.
"""

from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

import leafpds
from leafpds.accounts.accounts import Accounts
from leafpds.accounts.keys import AccountKeys, open_vault, server_key
from leafpds.accounts.service_auth import ServiceAuth
from leafpds.accounts.sessions import TokenIssuer, revoked_sessions
from leafpds.app import AppContext
from leafpds.blobs.blobs import Blobs
from leafpds.blobs.store import BlobStore, DiskBlobStore
from leafpds.config import ConfigError, Settings, load_master_secret
from leafpds.db.pool import Database, connect
from leafpds.identity.handles import HandleResolver
from leafpds.identity.plc import PLCClient
from leafpds.identity.plc_server import make_plc_service
from leafpds.repo.transactor import RepoTransactor
from leafpds.sequencer.crawlers import CrawlerNotifier
from leafpds.sequencer.fanout import Sequencer
from leafpds.xrpc.ratelimit import Limit, RateLimiter
from leafpds.lexicon import Lexicons
from leafpds.xrpc.resource import XRPCServer
from leafpds.xrpc.site import XRPCSite

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
    tokens = TokenIssuer(vault.subkey("jwt"), settings.service_did, reactor.seconds)
    tokens.revoke(still_revoked)
    transactor = RepoTransactor(db, keys)
    blob_root = settings.data_dir / "blobs"
    store = blob_store(settings, environ, reactor)
    # Uploads spool to the local disk in either case (hashed as they arrive).
    blobs = Blobs(db, store, blob_root / "tmp", settings.blob_grace, reactor)
    transactor.commit_hooks.append(blobs.commit_hook)
    app = AppContext(
        settings=settings,
        db=db,
        lexicons=Lexicons.load_default(),
        reactor=reactor,
        keys=keys,
        tokens=tokens,
        transactor=transactor,
        # The embedded directory's URL is known once it listens.
        plc=PLCClient(settings.plc_url or "", reactor),
        handle_resolver=HandleResolver(reactor),
        request_limits=_limiter(settings, settings.rate_limit_requests, reactor),
        write_limits=_limiter(settings, settings.rate_limit_writes, reactor),
        login_limits=_limiter(settings, settings.rate_limit_logins, reactor),
        blobs=blobs,
        service_auth=ServiceAuth(keys, reactor),
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
    )
    app.sequencer = Sequencer(
        db, reactor, settings.firehose_window * 3600, settings.firehose_buffer
    )
    transactor.listeners.append(app.sequencer.committed)
    app.crawlers = CrawlerNotifier(list(settings.crawlers), lambda: settings.hostname, reactor)
    transactor.listeners.append(app.crawlers.committed)
    return app


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


class LeafPDSService(MultiService):
    """The whole PDS; child services (background jobs) hang off it."""

    port: IListeningPort | None = None

    def __init__(self, app: AppContext) -> None:
        super().__init__()
        self.app = app
        self.xrpc = XRPCServer(app)
        self.site = XRPCSite(
            self.xrpc.resource(),
            app.settings.max_json_body,
            max_blob_size=app.settings.max_blob_size,
            spool=app.blobs.new_spool,
        )
        app.blobs.collector().setServiceParent(self)
        app.sequencer.service().setServiceParent(self)
        self.listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        self.app.db.start()
        settings = self.app.settings
        if settings.cpu_pairing:
            cpu = self.app.db.share_cpu_with_caller(self.app.reactor.getThreadPool())
            if cpu is not None:
                log.info("The reactor and the database writer share CPU {cpu}", cpu=cpu)
        plc_ready: Deferred = succeed(None)
        if not settings.plc_url:
            plc = make_plc_service(settings.plc_listen, settings.data_dir / "plc", self.app.reactor)
            plc.setServiceParent(self)
            plc_ready = plc.listening.addCallback(self._embedded_plc_listening)
        else:
            log.info("Using the PLC directory at {url}", url=settings.plc_url)
        super().startService()
        endpoint = serverFromString(self.app.reactor, settings.listen)
        site_ready = endpoint.listen(self.site).addCallback(self._listening)
        self.listening = gatherResults([site_ready, plc_ready], consumeErrors=True).addCallbacks(
            lambda results: results[0], self._cannot_listen
        )

    def _embedded_plc_listening(self, port: IListeningPort) -> IListeningPort:
        self.app.plc.base_url = f"http://127.0.0.1:{port.getHost().port}"
        log.info(
            "Using the embedded PLC directory at {url} (development only: its DIDs are "
            "not visible to the network; pass --plc-url https://plc.directory in production)",
            url=self.app.plc.base_url,
        )
        return port

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        settings = self.app.settings
        self.app.public_url = settings.public_url_for_port(getattr(port.getHost(), "port", None))
        log.info(
            "leafpds {version} serving {url} (listening on {listen}), data in {data_dir}",
            version=leafpds.__version__,
            url=self.app.public_url,
            listen=settings.listen,
            data_dir=str(settings.data_dir.resolve()),
        )
        self.app.crawlers.start()
        return port

    def _cannot_listen(self, failure):
        log.failure("Cannot listen", failure)
        if self.app.reactor.running:
            self.app.reactor.stop()
        return failure

    def stopService(self) -> Deferred:
        d = maybeDeferred(super().stopService)
        if self.port is not None:
            port, self.port = self.port, None
            d.addCallback(lambda _: port.stopListening())
        d.addCallback(lambda _: ensureDeferred(self.xrpc.proxy.stop()))
        d.addCallback(lambda _: ensureDeferred(self.app.blobs.store.close()))
        d.addBoth(self._close_db)
        return d

    def _close_db(self, result):
        self.app.db.close()
        return result
