"""
Builds a running leafpds: the data folder, the database, the lexicons, and
the HTTP site on the configured endpoint, as one Twisted service.
"""

from collections.abc import Mapping

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

import leafpds
from leafpds.app import AppContext
from leafpds.config import Settings, load_master_secret
from leafpds.db.pool import Database
from leafpds.lexicon import Lexicons
from leafpds.xrpc.resource import XRPCServer
from leafpds.xrpc.site import XRPCSite

log = Logger()


def open_app(settings: Settings, environ: Mapping[str, str], reactor) -> AppContext:
    """
    Prepare everything that can fail before serving: the data folder, the
    master secret, the schema.  Raises (and so stops ``twistd``) on any of it.
    """
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    master_secret = load_master_secret(settings.master_secret_file, environ)
    db = Database(settings.data_dir / "leafpds.sqlite")
    db.migrate()
    return AppContext(
        settings=settings,
        db=db,
        lexicons=Lexicons.load_default(),
        reactor=reactor,
        master_secret=master_secret,
    )


class LeafPDSService(MultiService):
    """The whole PDS; child services (background jobs) hang off it."""

    port: IListeningPort | None = None

    def __init__(self, app: AppContext) -> None:
        super().__init__()
        self.app = app
        self.site = XRPCSite(XRPCServer(app).resource(), app.settings.max_json_body)
        self.listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        self.app.db.start()
        super().startService()
        endpoint = serverFromString(self.app.reactor, self.app.settings.listen)
        self.listening = endpoint.listen(self.site)
        self.listening.addCallbacks(self._listening, self._cannot_listen)

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
        return port

    def _cannot_listen(self, failure):
        log.failure("Cannot listen on {listen}", failure, listen=self.app.settings.listen)
        if self.app.reactor.running:
            self.app.reactor.stop()
        return failure

    def stopService(self) -> Deferred:
        d = maybeDeferred(super().stopService)
        if self.port is not None:
            port, self.port = self.port, None
            d.addCallback(lambda _: port.stopListening())
        d.addBoth(self._close_db)
        return d

    def _close_db(self, result):
        self.app.db.close()
        return result
