"""
The errors every layer raises, named as XRPC clients expect them.

A layer below ``leafpds.xrpc`` raises :class:`XRPCError` (or a subclass) when
a request cannot be served; the XRPC layer turns it into the JSON body
``{"error": name, "message": message}`` with ``status``.  Anything else that
escapes a handler is a bug and is answered 500 ``InternalServerError``.
"""


class XRPCError(Exception):
    """An error with an XRPC name and an HTTP status."""

    status: int = 400
    name: str = "InvalidRequest"

    def __init__(
        self, message: str, name: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if name is not None:
            self.name = name
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, str]:
        return {"error": self.name, "message": self.message}


class InvalidRequest(XRPCError):
    name = "InvalidRequest"


class AuthMissing(XRPCError):
    status = 401
    name = "AuthMissing"


class AuthenticationRequired(XRPCError):
    status = 401
    name = "AuthenticationRequired"


class InvalidToken(XRPCError):
    name = "InvalidToken"


class ExpiredToken(XRPCError):
    name = "ExpiredToken"


class MethodNotImplemented(XRPCError):
    status = 501
    name = "MethodNotImplemented"


class PayloadTooLarge(XRPCError):
    status = 413
    name = "PayloadTooLarge"


class RateLimitExceeded(XRPCError):
    status = 429
    name = "RateLimitExceeded"


class InternalServerError(XRPCError):
    status = 500
    name = "InternalServerError"


class RangeNotSatisfiable(XRPCError):
    status = 416
    name = "RangeNotSatisfiable"


class InvalidSwap(XRPCError):
    name = "InvalidSwap"


class RecordNotFound(XRPCError):
    name = "RecordNotFound"


class RepoNotFound(XRPCError):
    name = "RepoNotFound"


class BlobNotFound(XRPCError):
    name = "BlobNotFound"


class InvalidMimeType(XRPCError):
    name = "InvalidMimeType"


class InvalidSize(XRPCError):
    name = "InvalidSize"


class UpstreamFailure(XRPCError):
    """A service this PDS forwards to could not be reached or failed."""

    status = 502
    name = "UpstreamFailure"


class InsufficientStorage(XRPCError):
    """
    The data folder's disk is full: the write is refused, nothing of it is
    stored.  XRPC names no error for this; the name is HTTP 507's reason
    phrase, as XRPC names its other status errors (docs/operating.md).
    """

    status = 507
    name = "InsufficientStorage"
