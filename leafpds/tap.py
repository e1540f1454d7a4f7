"""``twistd leafpds``: the command-line options and the service they build."""

import gc
import os

from twisted.application.service import IService
from twisted.python import usage

from leafpds.config import FLAGS, LIST_OPTIONS, OPTIONS, ConfigError, Settings, env_name, resolve
from leafpds.logs import use_log_format
from leafpds.service import LeafPDSService, open_app, raise_open_file_limit


def _describe(name: str, default: str | None, text: str) -> str:
    shown = f" [default: {default}]" if default is not None else ""
    return f"{text}{shown} (env {env_name(name)})"


class Options(usage.Options):
    """
    Every option can also be set from the environment as LEAFPDS_<NAME>
    (e.g. LEAFPDS_DATA_DIR); the command line wins.
    """

    synopsis = "[options]"
    longdesc = "Run leafpds, an AT Protocol Personal Data Server."
    # None marks "not given on the command line", so the environment and the
    # embedded defaults can be applied in postOptions.
    optParameters = [
        [name, None, None, _describe(name, default, text)]
        for name, (default, text) in OPTIONS.items()
        if name not in LIST_OPTIONS
    ]

    optFlags = [[name, None, f"{text} (env {env_name(name)}=true)"] for name, text in FLAGS.items()]

    def __init__(self) -> None:
        super().__init__()
        for name in LIST_OPTIONS:
            self[name] = None

    # Options that take lists: given again, a value adds to the list (usage
    # would keep only the last one).

    def opt_crawlers(self, value: str) -> None:
        self._add("crawlers", value)

    def opt_app_redirect_uri(self, value: str) -> None:
        self._add("app-redirect-uri", value)

    opt_crawlers.__doc__ = _describe("crawlers", *OPTIONS["crawlers"]) + " (may be repeated)"
    opt_app_redirect_uri.__doc__ = _describe("app-redirect-uri", *OPTIONS["app-redirect-uri"]) + " (may be repeated)"

    def _add(self, name: str, value: str) -> None:
        self[name] = value if self[name] is None else f"{self[name]},{value}"

    def postOptions(self) -> None:
        given = {name: self[name] for name in [*OPTIONS, *FLAGS]}
        values = resolve(given, os.environ)
        try:
            self.settings = Settings.from_options(values)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        # The runner (twistd, twist) starts logging after this, as its
        # options now say.
        use_log_format(getattr(self, "parent", None), self.settings.log_format)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    # The process is twistd's: its limits are ours to set (an embedding
    # application decides its own).
    raise_open_file_limit()
    service = LeafPDSService(open_app(options.settings, os.environ, reactor))
    # What start-up built (modules, lexicons, the app) lives as long as the
    # process: keep the cyclic garbage collector from walking it again and
    # again.
    gc.freeze()
    return service
