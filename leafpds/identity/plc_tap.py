"""``twistd leafpds-plc``: a PLC directory on its own, for development and tests."""

import os
from collections.abc import Mapping
from pathlib import Path

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from leafpds.identity.plc_server import make_plc_service

log = Logger()

ENV_PREFIX = "LEAFPDS_PLC_"

# name -> (default, help).  The option is --name; the variable LEAFPDS_PLC_NAME.
OPTIONS: dict[str, tuple[str, str]] = {
    "listen": ("tcp:2582:interface=127.0.0.1", "Twisted endpoint to listen on for HTTP."),
    "data-dir": ("./leafpds-plc-data", "Folder for the directory's database (created on first run)."),
}


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


def resolve(given: Mapping[str, str | None], environ: Mapping[str, str]) -> dict[str, str]:
    """Command-line values (None when not given) win over the environment, then the defaults."""
    return {
        name: given.get(name) or environ.get(env_name(name)) or default
        for name, (default, _help) in OPTIONS.items()
    }


class Options(usage.Options):
    """Every option can also be set as LEAFPDS_PLC_<NAME>; the command line wins."""

    synopsis = "[options]"
    longdesc = (
        "Run a did:plc directory that speaks the public directory's HTTP API and "
        "checks every operation as it does.  For development and tests: its DIDs "
        "are not visible to the network."
    )
    optParameters = [
        [name, None, None, f"{text} [default: {default}] (env {env_name(name)})"]
        for name, (default, text) in OPTIONS.items()
    ]

    def postOptions(self) -> None:
        values = resolve({name: self[name] for name in OPTIONS}, os.environ)
        self.listen = values["listen"]
        self.data_dir = Path(values["data-dir"]).expanduser()


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    service = make_plc_service(options.listen, options.data_dir, reactor)
    service.listening.addErrback(_cannot_listen, reactor)
    return service


def _cannot_listen(failure, reactor) -> None:
    log.failure("The PLC directory cannot listen", failure)
    if reactor.running:
        reactor.stop()
