"""
did:plc: operations, DID derivation, DID documents, and a client for a PLC
directory's HTTP API (the public https://plc.directory or the embedded one).

An operation is signed by a rotation key over the DAG-CBOR of the operation
without ``sig``; the signature goes in ``sig`` as unpadded base64url.  The
DID is ``did:plc:`` + the first 24 characters of the base32 SHA-256 of the
signed genesis operation.  Each later operation names the CID of the one it
follows in ``prev``.
"""

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import treq
from twisted.logger import Logger

from leafpds import crypto, syntax
from leafpds.ipld import codec
from leafpds.ipld.cid import CID, cid_for_cbor, parse_cid

log = Logger()

OPERATION = "plc_operation"
TOMBSTONE = "plc_tombstone"
LEGACY_CREATE = "create"
PDS_SERVICE = "atproto_pds"
PDS_TYPE = "AtprotoPersonalDataServer"
MAX_ROTATION_KEYS = 5
MAX_OPERATION_BYTES = 7500


class PLCOperationError(ValueError):
    """An operation that is malformed or not properly signed."""


class PLCError(Exception):
    """The PLC directory refused a request, failed, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def build_operation(
    *,
    rotation_keys: list[str],
    signing_key: str,
    handle: str,
    pds_endpoint: str,
    prev: str | None,
) -> dict[str, Any]:
    """An unsigned ``plc_operation`` naming this PDS and the account's key and handle."""
    return {
        "type": OPERATION,
        "rotationKeys": list(rotation_keys),
        "verificationMethods": {"atproto": signing_key},
        "alsoKnownAs": [f"at://{handle}"],
        "services": {PDS_SERVICE: {"type": PDS_TYPE, "endpoint": pds_endpoint}},
        "prev": prev,
    }


def _unsigned(op: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in op.items() if k != "sig"}


def sign_operation(op: dict[str, Any], rotation_key: crypto.Keypair) -> dict[str, Any]:
    signature = rotation_key.sign(codec.encode(_unsigned(op)))
    return {**_unsigned(op), "sig": base64.urlsafe_b64encode(signature).rstrip(b"=").decode()}


def operation_cid(op: dict[str, Any]) -> CID:
    return cid_for_cbor(codec.encode(op))


def did_for_genesis(signed_op: dict[str, Any]) -> str:
    digest = hashlib.sha256(codec.encode(signed_op)).digest()
    return "did:plc:" + base64.b32encode(digest).decode().lower()[:24]


def _signature(op: dict[str, Any]) -> bytes:
    sig = op.get("sig")
    if not isinstance(sig, str) or "=" in sig:
        raise PLCOperationError("sig must be unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    except ValueError:
        raise PLCOperationError("sig is not base64url") from None
    if len(raw) != 64:
        raise PLCOperationError("sig must be a 64-byte compact signature")
    return raw


def _check_did_key(value: Any, what: str) -> None:
    if not isinstance(value, str):
        raise PLCOperationError(f"{what} must be a did:key")
    try:
        crypto.parse_did_key(value)
    except crypto.InvalidKey as e:
        raise PLCOperationError(f"{what}: {e}") from None


def validate_operation_shape(op: Any) -> None:
    """Check an operation's fields and formats (not its signature or place in the log)."""
    if not isinstance(op, dict):
        raise PLCOperationError("operation must be a JSON object")
    kind = op.get("type")
    try:
        encoded = codec.encode(op)
    except Exception:
        raise PLCOperationError("operation is not valid DAG-CBOR data") from None
    if len(encoded) > MAX_OPERATION_BYTES:
        raise PLCOperationError("operation too large")
    _signature(op)
    prev = op.get("prev")
    if prev is not None:
        if not isinstance(prev, str):
            raise PLCOperationError("prev must be a CID string or null")
        try:
            parse_cid(prev)
        except ValueError:
            raise PLCOperationError("prev is not a valid CID") from None
    if kind == TOMBSTONE:
        if set(op) != {"type", "prev", "sig"} or prev is None:
            raise PLCOperationError("a tombstone has exactly type, prev and sig")
        return
    if kind == LEGACY_CREATE:
        required = {"type", "signingKey", "recoveryKey", "handle", "service", "prev", "sig"}
        if set(op) != required or prev is not None:
            raise PLCOperationError("malformed legacy create operation")
        _check_did_key(op["signingKey"], "signingKey")
        _check_did_key(op["recoveryKey"], "recoveryKey")
        if not isinstance(op["handle"], str) or not isinstance(op["service"], str):
            raise PLCOperationError("handle and service must be strings")
        return
    if kind != OPERATION:
        raise PLCOperationError(f"unknown operation type {kind!r}")
    required = {"type", "rotationKeys", "verificationMethods", "alsoKnownAs", "services", "prev", "sig"}
    if set(op) != required:
        raise PLCOperationError(f"operation must have exactly the fields {sorted(required)}")
    keys = op["rotationKeys"]
    if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_ROTATION_KEYS:
        raise PLCOperationError(f"rotationKeys must list 1 to {MAX_ROTATION_KEYS} keys")
    if len(set(keys)) != len(keys):
        raise PLCOperationError("rotationKeys has duplicates")
    for key in keys:
        _check_did_key(key, "rotation key")
    methods = op["verificationMethods"]
    if not isinstance(methods, dict) or len(methods) > 10:
        raise PLCOperationError("verificationMethods must be an object")
    for name, key in methods.items():
        _check_did_key(key, f"verification method {name}")
    aka = op["alsoKnownAs"]
    if not isinstance(aka, list) or len(aka) > 10 or not all(isinstance(a, str) for a in aka):
        raise PLCOperationError("alsoKnownAs must be a list of URIs")
    for uri in aka:
        if uri.startswith("at://"):
            try:
                syntax.validate_handle(uri[len("at://"):])
            except syntax.InvalidSyntax as e:
                raise PLCOperationError(f"alsoKnownAs: {e}") from None
        elif not syntax.is_valid("uri", uri):
            raise PLCOperationError(f"alsoKnownAs: invalid URI {uri!r}")
    services = op["services"]
    if not isinstance(services, dict) or len(services) > 10:
        raise PLCOperationError("services must be an object")
    for name, service in services.items():
        if (
            not isinstance(service, dict)
            or set(service) != {"type", "endpoint"}
            or not isinstance(service["type"], str)
            or not isinstance(service["endpoint"], str)
            or not service["endpoint"].startswith(("https://", "http://"))
            or not syntax.is_valid("uri", service["endpoint"])
        ):
            raise PLCOperationError(f"service {name} must have a type and an http(s) endpoint")


def rotation_keys_of(op: dict[str, Any]) -> list[str]:
    """The keys that may sign the operation after ``op``."""
    if op["type"] == LEGACY_CREATE:
        return [op["recoveryKey"], op["signingKey"]]
    if op["type"] == TOMBSTONE:
        return []
    return list(op["rotationKeys"])


def verify_operation(op: dict[str, Any], rotation_keys: list[str]) -> str:
    """Check the signature by one of ``rotation_keys``; returns the key that signed."""
    data = codec.encode(_unsigned(op))
    signature = _signature(op)
    for key in rotation_keys:
        if crypto.verify_signature(key, data, signature):
            return key
    raise PLCOperationError("invalid signature: not signed by a current rotation key")


def document_for(did: str, op: dict[str, Any]) -> dict[str, Any]:
    """The DID document an operation describes."""
    if op["type"] == LEGACY_CREATE:
        aka = [f"at://{op['handle']}"]
        methods = {"atproto": op["signingKey"]}
        services = {PDS_SERVICE: {"type": PDS_TYPE, "endpoint": op["service"]}}
    else:
        aka, methods, services = op["alsoKnownAs"], op["verificationMethods"], op["services"]
    return {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1",
        ],
        "id": did,
        "alsoKnownAs": list(aka),
        "verificationMethod": [
            {
                "id": f"{did}#{name}",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": crypto.multikey(key),
            }
            for name, key in methods.items()
        ],
        "service": [
            {"id": f"#{name}", "type": service["type"], "serviceEndpoint": service["endpoint"]}
            for name, service in services.items()
        ],
    }


@dataclass(frozen=True)
class AtprotoIdentity:
    did: str
    handle: str | None
    signing_key: str | None  # did:key
    pds_endpoint: str | None


def parse_document(doc: dict[str, Any]) -> AtprotoIdentity:
    """The atproto parts of a DID document: handle, signing key, PDS endpoint."""
    did = doc.get("id")
    if not isinstance(did, str):
        raise PLCOperationError("DID document has no id")
    handle = next(
        (a[len("at://"):] for a in doc.get("alsoKnownAs", []) if isinstance(a, str) and a.startswith("at://")),
        None,
    )
    signing_key = None
    for method in doc.get("verificationMethod", []):
        if isinstance(method, dict) and str(method.get("id", "")).endswith("#atproto"):
            try:
                alg, key = crypto.parse_multibase_key(method.get("publicKeyMultibase", ""), method.get("type"))
                signing_key = crypto.format_did_key(alg, key)
            except (crypto.InvalidKey, ValueError):
                signing_key = None
            break
    endpoint = None
    for service in doc.get("service", []):
        if isinstance(service, dict) and str(service.get("id", "")).endswith("#atproto_pds"):
            endpoint = service.get("serviceEndpoint") if isinstance(service.get("serviceEndpoint"), str) else None
            break
    return AtprotoIdentity(did, handle, signing_key, endpoint)


class PLCClient:
    """Talks to a PLC directory with treq; caches resolved documents for ``cache_ttl`` seconds."""

    def __init__(self, base_url: str, reactor: Any, *, timeout: float = 10.0, cache_ttl: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.reactor = reactor
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}/{path}"
        try:
            if body is None:
                d = treq.request(method, url)
            else:
                d = treq.request(method, url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            d.addTimeout(self.timeout, self.reactor)
            response = await d
            content_d = response.content()
            content_d.addTimeout(self.timeout, self.reactor)
            content = await content_d
        except Exception as e:
            raise PLCError(f"PLC directory unreachable ({type(e).__name__})") from None
        if response.code >= 400:
            message = content.decode("utf-8", "replace")[:300]
            try:
                message = json.loads(content).get("message", message)
            except (ValueError, AttributeError):
                pass
            raise PLCError(f"PLC directory answered {response.code}: {message}", response.code)
        if not content:
            return None
        try:
            return json.loads(content)
        except ValueError:
            raise PLCError("PLC directory answered something that is not JSON", response.code) from None

    async def submit(self, did: str, op: dict[str, Any]) -> None:
        await self._request("POST", did, op)
        self.forget(did)

    async def resolve(self, did: str, *, fresh: bool = False) -> dict[str, Any]:
        now = self.reactor.seconds()
        cached = self._cache.get(did)
        if cached is not None and not fresh and cached[0] > now:
            return cached[1]
        doc = await self._request("GET", did)
        if not isinstance(doc, dict):
            raise PLCError("PLC directory returned no document")
        self._cache[did] = (now + self.cache_ttl, doc)
        if len(self._cache) > 10_000:
            for key in [k for k, (expiry, _) in self._cache.items() if expiry <= now]:
                del self._cache[key]
        return doc

    async def last_operation(self, did: str) -> dict[str, Any]:
        op = await self._request("GET", f"{did}/log/last")
        if not isinstance(op, dict):
            raise PLCError("PLC directory returned no operation")
        return op

    async def audit_log(self, did: str) -> list[dict[str, Any]]:
        entries = await self._request("GET", f"{did}/log/audit")
        if not isinstance(entries, list):
            raise PLCError("PLC directory returned no audit log")
        return entries

    def forget(self, did: str) -> None:
        self._cache.pop(did, None)
