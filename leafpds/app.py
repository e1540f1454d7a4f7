"""The long-lived parts of a running leafpds, handed to every handler."""

from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

from leafpds.config import Settings
from leafpds.db.pool import Database
from leafpds.lexicon import Lexicons


@dataclass
class AppContext:
    settings: Settings
    db: Database
    lexicons: Lexicons
    reactor: IReactorTime
    master_secret: bytes = field(repr=False)
    # Known once the listening port is bound (the default public URL for
    # localhost includes the port).
    public_url: str = ""
