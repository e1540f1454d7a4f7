"""
Secrets at rest.

Every private key leafpds stores (account signing keys, the PDS's PLC
rotation key) is sealed with a NaCl SecretBox whose key is derived from the
operator's master secret with Argon2id and a per-installation salt.  A sealed
check value in the database tells at start-up whether the master secret is
the one the database was sealed with: with the wrong one leafpds refuses to
start, and never overwrites anything.
"""

import hashlib
import hmac
from collections import OrderedDict
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from leafpds import crypto
from leafpds.db.pool import Database
from leafpds.errors import RepoNotFound

_CHECK_NAME = "master-check"
_CHECK_PLAINTEXT = b"leafpds master secret check v1"
_SALT_BYTES = nacl.pwhash.argon2id.SALTBYTES


class WrongMasterSecret(RuntimeError):
    """The master secret does not open what this database was sealed with."""


class Vault:
    """Seal and open secrets with the key derived from the master secret."""

    def __init__(self, key: bytes) -> None:
        self._box = nacl.secret.SecretBox(key)
        self._key = key

    def __repr__(self) -> str:
        return "<Vault>"

    @classmethod
    def derive(cls, master_secret: bytes, salt: bytes) -> "Vault":
        key = nacl.pwhash.argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE,
            master_secret,
            salt,
            opslimit=nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
            memlimit=nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
        )
        return cls(key)

    def seal(self, plaintext: bytes) -> bytes:
        return bytes(self._box.encrypt(plaintext))

    def open(self, sealed: bytes) -> bytes:
        try:
            return self._box.decrypt(sealed)
        except nacl.exceptions.CryptoError:
            raise WrongMasterSecret("a sealed secret cannot be opened with this master secret") from None

    def subkey(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose (e.g. signing JWTs), independent of the others."""
        return hmac.new(self._key, b"leafpds subkey: " + purpose.encode(), hashlib.sha256).digest()


def open_vault(conn: Any, master_secret: bytes) -> Vault:
    """
    At start-up (plain connection, migrated schema): derive the vault key and
    check it against the stored check value, creating that on first run.
    """
    row = conn.execute(
        "SELECT encrypted_key FROM server_keys WHERE name = ?", (_CHECK_NAME,)
    ).fetchone()
    if row is None:
        salt = nacl.utils.random(_SALT_BYTES)
        vault = Vault.derive(master_secret, salt)
        conn.execute(
            "INSERT INTO server_keys (name, algorithm, encrypted_key) VALUES (?, ?, ?)",
            (_CHECK_NAME, "argon2id+secretbox", salt + vault.seal(_CHECK_PLAINTEXT)),
        )
        return vault
    stored = row[0]
    vault = Vault.derive(master_secret, stored[:_SALT_BYTES])
    try:
        ok = vault.open(stored[_SALT_BYTES:]) == _CHECK_PLAINTEXT
    except WrongMasterSecret:
        ok = False
    if not ok:
        raise WrongMasterSecret(
            "the master secret does not match the one this data folder was created with; "
            "refusing to start (check --master-secret-file / LEAFPDS_MASTER_SECRET)"
        )
    return vault


def server_key(conn: Any, vault: Vault, name: str) -> crypto.K256Keypair:
    """A PDS-wide secp256k1 key (e.g. the PLC rotation key), made on first use."""
    row = conn.execute(
        "SELECT algorithm, encrypted_key FROM server_keys WHERE name = ?", (name,)
    ).fetchone()
    if row is not None:
        return crypto.K256Keypair.from_private_bytes(vault.open(row[1]))
    key = crypto.K256Keypair.generate()
    conn.execute(
        "INSERT INTO server_keys (name, algorithm, encrypted_key) VALUES (?, ?, ?)",
        (name, key.jwt_alg, vault.seal(key.private_bytes())),
    )
    return key


class AccountKeys:
    """
    The accounts' signing keys: sealed in ``signing_keys``, opened on demand
    and kept in a bounded cache (the transactor asks for one per commit).
    """

    def __init__(self, db: Database, vault: Vault, cache_size: int = 10_000) -> None:
        self.db = db
        self.vault = vault
        self._cache: OrderedDict[str, crypto.Keypair] = OrderedDict()
        self._cache_size = cache_size

    def store_unit(self, conn: Any, did: str, key: crypto.Keypair) -> None:
        """Store a new account's key, inside the account-creation transaction."""
        conn.execute(
            "INSERT INTO signing_keys (did, algorithm, encrypted_key) VALUES (?, ?, ?)",
            (did, key.jwt_alg, self.vault.seal(key.private_bytes())),
        )

    async def signing_key(self, did: str) -> crypto.Keypair:
        key = self._cache.get(did)
        if key is not None:
            self._cache.move_to_end(did)
            return key
        row = await self.db.read(_sealed_key, did)
        if row is None:
            raise RepoNotFound(f"Could not find repo: {did}")
        algorithm, sealed = row
        opened = self.vault.open(sealed)
        key = (
            crypto.K256Keypair.from_private_bytes(opened)
            if algorithm == crypto.ES256K
            else crypto.P256Keypair.from_private_bytes(opened)
        )
        self._cache[did] = key
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return key

    def forget(self, did: str) -> None:
        self._cache.pop(did, None)


def _sealed_key(conn: Any, did: str) -> tuple[str, bytes] | None:
    return conn.execute(
        "SELECT algorithm, encrypted_key FROM signing_keys WHERE did = ?", (did,)
    ).fetchone()
