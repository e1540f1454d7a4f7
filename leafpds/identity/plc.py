"""
did:plc: operations, DID derivation, DID documents, and a client for a PLC
directory's HTTP API (the public https://plc.directory or a local one).

An operation is signed by a rotation key over the DAG-CBOR of the operation
without ``sig``; the signature goes in ``sig`` as unpadded base64url.  The
DID is ``did:plc:`` + the first 24 characters of the base32 SHA-256 of the
signed genesis operation.  Each later operation names the CID of the one it
follows in ``prev``.  Three kinds exist: ``plc_operation`` (the whole state),
``plc_tombstone`` (deactivation) and the legacy ``create``, which only ever
starts a log and is still found in old ones.

The method is specified at https://github.com/did-method-plc/did-method-plc.
"""

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import treq
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import HTTPConnectionPool

from leafpds import crypto, syntax
from leafpds.ipld import codec
from leafpds.ipld.cid import CID, InvalidCID, cid_for_cbor, parse_cid

OPERATION = "plc_operation"
TOMBSTONE = "plc_tombstone"
LEGACY_CREATE = "create"
PDS_SERVICE = "atproto_pds"
PDS_TYPE = "AtprotoPersonalDataServer"
ATPROTO_KEY = "atproto"

# The public directory's limits on what it accepts (its constraints.ts).
MAX_OPERATION_BYTES = 4000
MAX_ALSO_KNOWN_AS = 10
MAX_ALSO_KNOWN_AS_LENGTH = 258  # "at://" + a 253-character handle
MAX_ROTATION_KEYS = 10
MAX_SERVICES = 10
MAX_VERIFICATION_METHODS = 10
MAX_ID_LENGTH = 32
MAX_SERVICE_TYPE_LENGTH = 256
MAX_ENDPOINT_LENGTH = 512
MAX_DID_KEY_LENGTH = 256

_FIELDS = {
    OPERATION: {"type", "rotationKeys", "verificationMethods", "alsoKnownAs", "services", "prev", "sig"},
    TOMBSTONE: {"type", "prev", "sig"},
    LEGACY_CREATE: {"type", "signingKey", "recoveryKey", "handle", "service", "prev", "sig"},
}

_PLC_DID = re.compile(r"did:plc:[a-z2-7]{24}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

_CONTEXT = ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"]
_KEY_CONTEXT = {
    crypto.ES256K: "https://w3id.org/security/suites/secp256k1-2019/v1",
    crypto.ES256: "https://w3id.org/security/suites/ecdsa-2019/v1",
}


class PLCOperationError(ValueError):
    """An operation that is malformed, badly signed, or out of place in its log."""


# -- building and signing ------------------------------------------------------


def build_operation(
    *,
    rotation_keys: list[str],
    signing_key: str,
    handle: str,
    pds_endpoint: str,
    prev: str | None,
) -> dict[str, Any]:
    """An unsigned ``plc_operation`` naming an account's key, handle and PDS."""
    return {
        "type": OPERATION,
        "rotationKeys": list(rotation_keys),
        "verificationMethods": {ATPROTO_KEY: signing_key},
        "alsoKnownAs": [f"at://{handle}"],
        "services": {PDS_SERVICE: {"type": PDS_TYPE, "endpoint": pds_endpoint}},
        "prev": prev,
    }


def build_tombstone(prev: str) -> dict[str, Any]:
    """An unsigned ``plc_tombstone``: deactivates the DID for good."""
    return {"type": TOMBSTONE, "prev": prev}


def _unsigned(op: dict[str, Any]) -> dict[str, Any]:
    # Signatures cover the operation without the sig field at all (not null).
    return {key: value for key, value in op.items() if key != "sig"}


def sign_operation(op: dict[str, Any], rotation_key: crypto.Keypair) -> dict[str, Any]:
    """``op`` (any previous ``sig`` dropped) signed by ``rotation_key``."""
    unsigned = _unsigned(op)
    signature = rotation_key.sign(codec.encode(unsigned))
    return {**unsigned, "sig": _base64url(signature)}


def operation_cid(op: dict[str, Any]) -> CID:
    """The CID a later operation names in ``prev``."""
    return cid_for_cbor(codec.encode(op))


def did_for_genesis(signed_op: dict[str, Any]) -> str:
    digest = hashlib.sha256(codec.encode(signed_op)).digest()
    return "did:plc:" + base64.b32encode(digest).decode("ascii").lower()[:24]


def validate_plc_did(did: str) -> None:
    """:raises PLCOperationError: unless ``did`` is a well-formed did:plc."""
    if not isinstance(did, str) or not _PLC_DID.fullmatch(did):
        raise PLCOperationError(f"not a valid did:plc: {did!r:.80}")


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_signature(sig: Any) -> bytes:
    """
    The bytes of an operation's ``sig``.  Only canonical unpadded base64url:
    no ``=``, no stray characters (Python's decoder would skip them), no
    non-zero padding bits, so one signature has exactly one spelling.
    """
    if (
        not isinstance(sig, str)
        or not _BASE64URL.fullmatch(sig)
        or len(sig) % 4 == 1
    ):
        raise PLCOperationError("sig is not unpadded base64url")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    if _base64url(raw) != sig:
        raise PLCOperationError("sig is not canonical base64url (non-zero padding bits)")
    return raw


def verify_operation(op: dict[str, Any], rotation_keys: list[str]) -> str:
    """
    Check that one of ``rotation_keys`` signed ``op``; return that key (the
    first that verifies, in priority order).

    :raises PLCOperationError: if none did.
    """
    signature = decode_signature(op.get("sig"))
    data = codec.encode(_unsigned(op))
    for key in rotation_keys:
        if crypto.verify_signature(key, data, signature):
            return key
    raise PLCOperationError("invalid signature: not signed by a current rotation key")


# -- shape -------------------------------------------------------------------


def check_structure(op: Any) -> str:
    """
    Check that ``op`` has the fields and JSON types of one of the three
    kinds of operation and return its type.  This is all a log requires of
    an operation already in it; :func:`validate_operation_shape` adds the
    directory's rules for new ones.
    """
    if not isinstance(op, dict):
        raise PLCOperationError("operation must be a JSON object")
    kind = op.get("type")
    if kind not in _FIELDS:
        raise PLCOperationError(f"unknown operation type {kind!r:.40}")
    if set(op) != _FIELDS[kind]:
        raise PLCOperationError(f"a {kind} operation has exactly the fields {sorted(_FIELDS[kind])}")
    if not isinstance(op["sig"], str):
        raise PLCOperationError("sig must be a string")
    prev = op["prev"]
    if kind == OPERATION:
        if prev is not None and not isinstance(prev, str):
            raise PLCOperationError("prev must be a CID string or null")
        if not _strings(op["rotationKeys"]):
            raise PLCOperationError("rotationKeys must be a list of strings")
        if not _strings(op["alsoKnownAs"]):
            raise PLCOperationError("alsoKnownAs must be a list of strings")
        methods = op["verificationMethods"]
        if not isinstance(methods, dict) or not _strings(list(methods.values())):
            raise PLCOperationError("verificationMethods must map names to did:key strings")
        services = op["services"]
        if not isinstance(services, dict) or not all(
            isinstance(s, dict) and set(s) == {"type", "endpoint"} and _strings([s["type"], s["endpoint"]])
            for s in services.values()
        ):
            raise PLCOperationError("services must map names to {type, endpoint} strings")
    elif kind == TOMBSTONE:
        if not isinstance(prev, str):
            raise PLCOperationError("a tombstone's prev must be a CID string")
    else:
        if prev is not None:
            raise PLCOperationError("a legacy create operation has prev null")
        if not _strings([op["signingKey"], op["recoveryKey"], op["handle"], op["service"]]):
            raise PLCOperationError("signingKey, recoveryKey, handle and service must be strings")
    if isinstance(prev, str):
        try:
            parse_cid(prev)
        except InvalidCID:
            raise PLCOperationError(f"prev is not a valid CID: {prev!r:.80}") from None
    return kind


def _strings(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def validate_operation_shape(op: Any) -> None:
    """
    Check a new operation's fields and formats, as a directory does before
    looking at its signature and place in the log: size, counts and lengths
    (the public directory's limits), rotation and verification keys
    (secp256k1 or P-256 ``did:key``), handles in ``at://`` aliases, and
    http(s) service endpoints.

    :raises PLCOperationError: naming the first problem found.
    """
    kind = check_structure(op)
    try:
        size = len(codec.encode(op))
    except (TypeError, ValueError, OverflowError):
        raise PLCOperationError("operation is not valid DAG-CBOR data") from None
    if size > MAX_OPERATION_BYTES:
        raise PLCOperationError(f"operation too large ({MAX_OPERATION_BYTES} bytes maximum as DAG-CBOR)")
    decode_signature(op["sig"])
    if kind == LEGACY_CREATE:
        _check_did_key(op["signingKey"], "signingKey")
        _check_did_key(op["recoveryKey"], "recoveryKey")
        _check_handle(op["handle"], "handle")
        _check_length(op["service"], MAX_ENDPOINT_LENGTH, "service")
    elif kind == OPERATION:
        _check_operation(op)


def _check_operation(op: dict[str, Any]) -> None:
    rotation_keys = op["rotationKeys"]
    if len(rotation_keys) > MAX_ROTATION_KEYS:
        raise PLCOperationError(f"too many rotationKeys (at most {MAX_ROTATION_KEYS})")
    for key in rotation_keys:
        _check_did_key(key, "rotation key")

    methods = op["verificationMethods"]
    if len(methods) > MAX_VERIFICATION_METHODS:
        raise PLCOperationError(f"too many verificationMethods (at most {MAX_VERIFICATION_METHODS})")
    for name, key in methods.items():
        _check_length(name, MAX_ID_LENGTH, "verification method id")
        _check_length(key, MAX_DID_KEY_LENGTH, f"verification method {name}")
        _check_did_key(key, f"verification method {name}")

    aliases = op["alsoKnownAs"]
    if len(aliases) > MAX_ALSO_KNOWN_AS:
        raise PLCOperationError(f"too many alsoKnownAs entries (at most {MAX_ALSO_KNOWN_AS})")
    if len(set(aliases)) != len(aliases):
        raise PLCOperationError("duplicate alsoKnownAs entry")
    for alias in aliases:
        _check_length(alias, MAX_ALSO_KNOWN_AS_LENGTH, "alsoKnownAs entry")
        if alias.startswith("at://"):
            _check_handle(alias[len("at://"):], "alsoKnownAs")
        elif not syntax.is_valid("uri", alias):
            raise PLCOperationError(f"alsoKnownAs: not a URI: {alias!r:.80}")

    services = op["services"]
    if len(services) > MAX_SERVICES:
        raise PLCOperationError(f"too many services (at most {MAX_SERVICES})")
    for name, service in services.items():
        _check_length(name, MAX_ID_LENGTH, "service id")
        _check_length(service["type"], MAX_SERVICE_TYPE_LENGTH, f"service {name} type")
        _check_length(service["endpoint"], MAX_ENDPOINT_LENGTH, f"service {name} endpoint")
        if not is_http_url(service["endpoint"]):
            raise PLCOperationError(f"service {name}: endpoint is not an http(s) URL: {service['endpoint']!r:.80}")


def _check_did_key(value: str, what: str) -> None:
    try:
        crypto.parse_did_key(value)
    except crypto.InvalidKey as e:
        raise PLCOperationError(f"{what}: {e}") from None


def _check_handle(value: str, what: str) -> None:
    try:
        syntax.validate_handle(value)
    except syntax.InvalidSyntax as e:
        raise PLCOperationError(f"{what}: {e}") from None


def _check_length(value: str, limit: int, what: str) -> None:
    if len(value) > limit:
        raise PLCOperationError(f"{what} too long (at most {limit} characters)")


def is_http_url(value: str) -> bool:
    """An absolute http or https URL with a host (and a valid port, if any)."""
    if not syntax.is_valid("uri", value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# -- state and documents -------------------------------------------------------


def _ensure_prefix(value: str, prefixes: tuple[str, ...], prefix: str) -> str:
    return value if value.startswith(prefixes) else prefix + value


def normalize_operation(op: dict[str, Any]) -> dict[str, Any]:
    """A legacy ``create`` rewritten as the equivalent ``plc_operation``; others unchanged."""
    if op["type"] != LEGACY_CREATE:
        return op
    handle = op["handle"]
    if not handle.startswith("at://"):
        handle = "at://" + handle.replace("http://", "", 1).replace("https://", "", 1)
    return {
        "type": OPERATION,
        "rotationKeys": [op["recoveryKey"], op["signingKey"]],
        "verificationMethods": {ATPROTO_KEY: op["signingKey"]},
        "alsoKnownAs": [handle],
        "services": {
            PDS_SERVICE: {
                "type": PDS_TYPE,
                "endpoint": _ensure_prefix(op["service"], ("http://", "https://"), "https://"),
            }
        },
        "prev": op["prev"],
        "sig": op["sig"],
    }


def rotation_keys_of(op: dict[str, Any]) -> list[str]:
    """The keys that may sign the operation that follows ``op`` (none after a tombstone)."""
    if op["type"] == TOMBSTONE:
        return []
    return list(normalize_operation(op)["rotationKeys"])


def data_for(did: str, op: dict[str, Any]) -> dict[str, Any]:
    """The DID's state after ``op``, as a directory's ``/:did/data`` shows it."""
    if op["type"] == TOMBSTONE:
        raise PLCOperationError(f"{did} is tombstoned")
    state = normalize_operation(op)
    return {
        "did": did,
        "verificationMethods": state["verificationMethods"],
        "rotationKeys": state["rotationKeys"],
        "alsoKnownAs": state["alsoKnownAs"],
        "services": state["services"],
    }


def document_for(did: str, op: dict[str, Any]) -> dict[str, Any]:
    """The DID document the state after ``op`` describes."""
    state = data_for(did, op)
    context = list(_CONTEXT)
    methods = []
    for name, key in state["verificationMethods"].items():
        suite = _key_context(key)
        if suite is not None and suite not in context:
            context.append(suite)
        methods.append(
            {
                "id": f"{did}#{name}",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": key.removeprefix(crypto.DID_KEY_PREFIX),
            }
        )
    return {
        "@context": context,
        "id": did,
        "alsoKnownAs": list(state["alsoKnownAs"]),
        "verificationMethod": methods,
        "service": [
            {"id": f"#{name}", "type": service["type"], "serviceEndpoint": service["endpoint"]}
            for name, service in state["services"].items()
        ],
    }


def _key_context(did_key: str) -> str | None:
    # Keys in an old log may be of a kind we do not verify; they are shown
    # as they are, without a suite context.
    try:
        jwt_alg, _ = crypto.parse_did_key(did_key)
    except crypto.InvalidKey:
        return None
    return _KEY_CONTEXT[jwt_alg]


@dataclass(frozen=True)
class AtprotoIdentity:
    did: str
    handle: str | None
    signing_key: str | None  # did:key
    pds_endpoint: str | None


def parse_document(doc: dict[str, Any]) -> AtprotoIdentity:
    """
    The atproto parts of a DID document: the handle (the first ``at://``
    alias, if a valid handle), the ``#atproto`` signing key (``Multikey`` or
    a legacy ``EcdsaSecp256k1VerificationKey2019`` /
    ``EcdsaSecp256r1VerificationKey2019`` method) and the ``#atproto_pds``
    endpoint.  A part that is missing or malformed is None.

    :raises PLCOperationError: if the document has no ``id``.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise PLCOperationError("DID document has no id")
    did = doc["id"]
    return AtprotoIdentity(did, _handle(doc), _signing_key(did, doc), _pds_endpoint(did, doc))


def _entries(doc: dict[str, Any], field: str) -> Iterator[dict[str, Any]]:
    values = doc.get(field)
    if isinstance(values, list):
        yield from (value for value in values if isinstance(value, dict))


def _is_fragment(did: str, value: Any, fragment: str) -> bool:
    # Ids may be relative ("#atproto") or absolute ("did:plc:...#atproto").
    return value in (fragment, did + fragment)


def _handle(doc: dict[str, Any]) -> str | None:
    aliases = doc.get("alsoKnownAs")
    if not isinstance(aliases, list):
        return None
    for alias in aliases:
        if isinstance(alias, str) and alias.startswith("at://"):
            handle = alias[len("at://"):]
            return handle.lower() if syntax.is_valid("handle", handle) else None
    return None


def _signing_key(did: str, doc: dict[str, Any]) -> str | None:
    for method in _entries(doc, "verificationMethod"):
        if _is_fragment(did, method.get("id"), "#" + ATPROTO_KEY):
            try:
                jwt_alg, point = crypto.parse_multibase_key(method.get("publicKeyMultibase"), method.get("type"))
            except crypto.InvalidKey:
                return None
            return crypto.format_did_key(jwt_alg, point)
    return None


def _pds_endpoint(did: str, doc: dict[str, Any]) -> str | None:
    for service in _entries(doc, "service"):
        if _is_fragment(did, service.get("id"), "#" + PDS_SERVICE):
            endpoint = service.get("serviceEndpoint")
            if service.get("type") == PDS_TYPE and isinstance(endpoint, str) and is_http_url(endpoint):
                return endpoint
            return None
    return None


# -- the client ----------------------------------------------------------------


class PLCError(Exception):
    """
    The PLC directory refused a request (``status`` is its HTTP code), failed,
    or could not be reached (``status`` None).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class PLCClient:
    """
    Talks to a PLC directory over HTTP with treq.  Resolved documents are
    cached for ``cache_ttl`` seconds of ``clock`` (the reactor unless given);
    each request, body included, must finish within ``timeout`` seconds.
    """

    # Enough for every account of a PDS; past it, expired entries are dropped
    # and then the oldest.
    max_cached = 10_000

    def __init__(
        self,
        base_url: str,
        reactor: Any,
        *,
        timeout: float = 10.0,
        cache_ttl: float = 300.0,
        clock: IReactorTime | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        # Its own pool (not treq's shared one): close() ends its connections.
        self._pool = HTTPConnectionPool(reactor, persistent=True)

    async def close(self) -> None:
        """Close the idle connections to the directory."""
        await self._pool.closeCachedConnections()

    async def submit(self, did: str, op: dict[str, Any]) -> None:
        """POST a signed operation; the DID's cached document is dropped either way."""
        try:
            await self._request("POST", did, json.dumps(op).encode("utf-8"))
        finally:
            self.forget(did)

    async def resolve(self, did: str, *, fresh: bool = False) -> dict[str, Any]:
        """The DID document, from the cache unless expired or ``fresh``."""
        now = self.clock.seconds()
        cached = self._cache.get(did)
        if cached is not None and not fresh and now < cached[0]:
            return cached[1]
        doc = await self._get_json(did, dict)
        self._remember(did, doc, now)
        return doc

    async def last_operation(self, did: str) -> dict[str, Any]:
        return await self._get_json(f"{did}/log/last", dict)

    async def audit_log(self, did: str) -> list[dict[str, Any]]:
        return await self._get_json(f"{did}/log/audit", list)

    def forget(self, did: str) -> None:
        """Drop ``did`` from the cache (after changing it)."""
        self._cache.pop(did, None)

    def _remember(self, did: str, doc: dict[str, Any], now: float) -> None:
        self._cache.pop(did, None)  # re-inserted last: the dict stays oldest-first
        self._cache[did] = (now + self.cache_ttl, doc)
        if len(self._cache) > self.max_cached:
            for key in [key for key, (expiry, _) in self._cache.items() if expiry <= now]:
                del self._cache[key]
            while len(self._cache) > self.max_cached:
                del self._cache[next(iter(self._cache))]

    async def _get_json(self, path: str, kind: type) -> Any:
        body = await self._request("GET", path)
        try:
            value = json.loads(body)
        except ValueError:
            raise PLCError(f"PLC directory at {self.base_url} answered {path} with something that is not JSON") from None
        if not isinstance(value, kind):
            raise PLCError(f"PLC directory at {self.base_url} answered {path} with an unexpected JSON {type(value).__name__}")
        return value

    async def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        url = f"{self.base_url}/{path}"
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            d = treq.request(method, url, data=body, headers=headers, reactor=self.reactor, pool=self._pool)
            d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=self._timed_out)
            response = await d
            content = treq.content(response)
            content.addTimeout(self.timeout, self.reactor, onTimeoutCancel=self._timed_out)
            data = await content
        except PLCError:
            raise
        except ConnectError as e:
            raise PLCError(f"PLC directory at {self.base_url} is unreachable: {e.__class__.__name__}") from None
        except Exception as e:
            raise PLCError(f"request to the PLC directory at {self.base_url} failed: {e!r:.200}") from None
        if response.code >= 400:
            what = "refused the request" if response.code < 500 else "failed"
            raise PLCError(f"PLC directory {what} ({response.code}): {_message(data)}", response.code)
        return data

    def _timed_out(self, result: Any, timeout: float) -> NoReturn:
        # Called instead of the default CancelledError-to-TimeoutError
        # conversion, which misses the CancelledError that an HTTP request
        # cancelled mid-way wraps in ResponseNeverReceived.
        raise PLCError(f"PLC directory at {self.base_url} did not answer within {timeout:g} s")


def _message(body: bytes) -> str:
    """The directory's ``{"message": ...}``, or the start of whatever it sent."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str):
        return message[:500]
    return body[:200].decode("utf-8", "replace") or "(no message)"
