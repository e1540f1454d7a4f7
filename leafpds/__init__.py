"""leafpds: an AT Protocol Personal Data Server on Twisted."""

__version__ = "0.1.0"
