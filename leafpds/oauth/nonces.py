"""
Server-issued DPoP nonces (RFC 9449 section 8), as the official PDS makes
them: an HMAC of the current minute's number, so they rotate every minute
without any state, survive a restart (the secret comes from the master
secret) and agree across processes.  The nonce handed out is the *next*
minute's, and the previous, current and next minutes' nonces are accepted,
so each one is good for about three minutes.
"""

import hashlib
import hmac
import struct

from jwt.utils import base64url_encode
from twisted.internet.interfaces import IReactorTime

ROTATION = 60.0


class DpopNonces:
    def __init__(self, secret: bytes, clock: IReactorTime, rotation: float = ROTATION) -> None:
        if len(secret) < 32:
            raise ValueError("the DPoP nonce secret needs at least 32 bytes")
        self._secret = secret
        self._clock = clock
        self._rotation = rotation
        # The three nonces accepted during the current step, made once per step.
        self._accepted: tuple[int, tuple[bytes, ...]] = (-1, ())

    def __repr__(self) -> str:
        return f"<DpopNonces rotation={self._rotation}s>"

    def _step(self) -> int:
        return int(self._clock.seconds() // self._rotation)

    def _nonce(self, step: int) -> str:
        mac = hmac.new(self._secret, struct.pack(">q", step), hashlib.sha256).digest()
        return base64url_encode(mac).decode("ascii")

    def next(self) -> str:
        """The nonce to send in ``DPoP-Nonce`` now."""
        return self._nonce(self._step() + 1)

    def check(self, nonce: str) -> bool:
        """Whether ``nonce`` is one this server handed out recently enough."""
        step = self._step()
        if self._accepted[0] != step:
            self._accepted = (step, tuple(self._nonce(s).encode("ascii") for s in (step - 1, step, step + 1)))
        given = nonce.encode("ascii", "replace")
        # Compare against all three, always, in constant time.
        matches = [hmac.compare_digest(given, accepted) for accepted in self._accepted[1]]
        return any(matches)
