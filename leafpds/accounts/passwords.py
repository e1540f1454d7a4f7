"""
Password hashing: scrypt (from ``cryptography``) with a per-password random
salt, compared in constant time.  Hashing costs ~50 ms of CPU on purpose, so
callers run it in a thread (``deferToThread``), never on the reactor.
"""

import hmac
import os

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

_N, _R, _P = 2**14, 8, 1
_PREFIX = b"scrypt"


def hash_password(password: str) -> bytes:
    salt = os.urandom(16)
    digest = Scrypt(salt=salt, length=32, n=_N, r=_R, p=_P).derive(password.encode("utf-8"))
    return b"$".join([_PREFIX, b"%d" % _N, b"%d" % _R, b"%d" % _P, salt.hex().encode(), digest.hex().encode()])


def verify_password(password: str, stored: bytes) -> bool:
    try:
        prefix, n, r, p, salt, digest = stored.split(b"$")
        if prefix != _PREFIX:
            return False
        computed = Scrypt(
            salt=bytes.fromhex(salt.decode()), length=32, n=int(n), r=int(r), p=int(p)
        ).derive(password.encode("utf-8"))
    except (ValueError, UnicodeError):
        return False
    return hmac.compare_digest(computed, bytes.fromhex(digest.decode()))
