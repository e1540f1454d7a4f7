"""
An application of one's own with leafpds inside it: a Klein app with its own
page (``/``), a JSON route (``/hello``) and a script file, and leafpds
beside them — one process, one reactor, one port.  The page's script talks
to leafpds with ``@atproto/api`` on the same origin.

Run it from a clone, with leafpds installed (``pip install .``):

    .venv/bin/python docs/examples/embedded_app.py --bundle atproto-api.mjs

then open http://localhost:8080/.  ``--bundle`` is ``@atproto/api`` bundled
as one ES module for the browser (the page imports ``AtpAgent`` from it), for
example:

    npm install @atproto/api esbuild
    echo 'export { AtpAgent } from "@atproto/api"' > entry.mjs
    npx esbuild entry.mjs --bundle --format=esm --platform=browser --outfile=atproto-api.mjs

Options: ``--listen`` (a Twisted endpoint, default
``tcp:8080:interface=127.0.0.1``), ``--data-dir`` (default
``./embedded-example-data``); every other leafpds setting from ``LEAFPDS_*``
variables.  The PLC directory is leafpds's embedded one (development only).
"""

import argparse
import json
import sys
from pathlib import Path

from klein import Klein
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.iweb import IRequest

from leafpds.config import Settings
from leafpds.service import PDSService, build_pds

PAGE = Path(__file__).with_name("embedded_app.html")


class ExampleApp:
    """The application's own routes; leafpds serves its paths beside them."""

    app = Klein()

    def __init__(self, pds: PDSService, bundle: Path | None) -> None:
        self.pds = pds
        self.bundle = bundle

    @app.route("/", methods=["GET", "HEAD"])
    def page(self, request: IRequest) -> bytes:
        request.setHeader("content-type", "text/html; charset=utf-8")
        return PAGE.read_bytes()

    @app.route("/hello", methods=["GET", "HEAD"])
    def hello(self, request: IRequest) -> bytes:
        request.setHeader("content-type", "application/json")
        return json.dumps({"hello": "from the application", "pds": self.pds.public_url}).encode()

    @app.route("/static/atproto-api.mjs", methods=["GET", "HEAD"])
    def atproto_api(self, request: IRequest) -> bytes:
        if self.bundle is None:
            request.setResponseCode(404)
            request.setHeader("content-type", "text/plain; charset=utf-8")
            return b"No @atproto/api bundle: start the example with --bundle (see its docstring)."
        request.setHeader("content-type", "text/javascript; charset=utf-8")
        return self.bundle.read_bytes()


class ExampleService(MultiService):
    """The whole application: leafpds (a child service) and the one port."""

    def __init__(self, settings: Settings, bundle: Path | None = None, environ: dict[str, str] | None = None) -> None:
        super().__init__()
        self.pds = build_pds(settings, environ)
        self.pds.setServiceParent(self)
        # The application's root; leafpds's site sends it every path that
        # is not leafpds's.
        self.site = self.pds.make_site(ExampleApp(self.pds, bundle).app.resource())
        self.listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        # The port is leafpds's to open here (it learns its public URL from
        # it, and closes it when stopped); an application that opens its own
        # calls self.pds.serving(port) instead.
        opened = self.pds.listen(self.pds.app.settings.listen, self.site)
        self.listening = gatherResults([opened, self.pds.ready], consumeErrors=True).addCallback(
            lambda results: results[0]
        )


async def main(reactor, *argv: str) -> None:
    parser = argparse.ArgumentParser(description="leafpds inside a Klein application")
    parser.add_argument("--listen", default="tcp:8080:interface=127.0.0.1")
    parser.add_argument("--data-dir", default="./embedded-example-data")
    parser.add_argument("--bundle", type=Path, help="@atproto/api as one ES module")
    args = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    settings = Settings.from_keywords(
        listen=args.listen, data_dir=args.data_dir, plc_listen="tcp:0:interface=127.0.0.1"
    )
    service = ExampleService(settings, args.bundle)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    await service.listening
    print(f"Open {service.pds.public_url}/ (Ctrl-C stops)")
    await Deferred()  # until Ctrl-C stops the reactor


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
