"""
An account's PLC operations: the identity half of moving an account between
PDSes (com.atproto.identity.requestPlcOperationSignature, signPlcOperation,
submitPlcOperation), as the official PDS answers them.

Leaving, on the old PDS: a code is mailed to the account; with it, the old
PDS signs the DID's next operation with its rotation key — the keys, handle
and PDS the account asks for, each by default as the DID's last operation
has it — and hands it back unsubmitted.  Arriving, on the new PDS: the
account submits that operation once it points here (this PDS's rotation key
and endpoint, the account's signing key here, its handle), and the network
hears of it with ``#identity``.

A refused request changes nothing: the code stays good until an operation
has been signed with it, and the directory is asked to change nothing until
every check has passed.
"""

from typing import TYPE_CHECKING, Any

from leafpds.accounts.accounts import UpstreamFailure
from leafpds.accounts.email_tokens import PLC_OPERATION
from leafpds.errors import InvalidRequest, XRPCError
from leafpds.identity.plc import (
    ATPROTO_KEY,
    OPERATION,
    PDS_SERVICE,
    PDS_TYPE,
    TOMBSTONE,
    PLCError,
    PLCOperationError,
    check_structure,
    normalize_operation,
    operation_cid,
    sign_operation,
    validate_operation_shape,
)
from leafpds.repo import events
from leafpds.timestamps import iso_from_epoch

if TYPE_CHECKING:
    from leafpds.app import AppContext

#: The fields of an operation signPlcOperation lets the account choose.
CHOSEN_FIELDS = ("rotationKeys", "alsoKnownAs", "verificationMethods", "services")


async def request_signature(app: "AppContext", did: str) -> None:
    """Mail the account a code for :func:`sign` ("PLC Update Operation Requested")."""
    _require_plc(did)
    await app.account_email.send_code(did, PLC_OPERATION)


async def sign(app: "AppContext", did: str, token: str | None, chosen: dict[str, Any]) -> dict[str, Any]:
    """
    The DID's next operation, signed with this PDS's rotation key, with the
    fields of ``chosen`` (see :data:`CHOSEN_FIELDS`) that are given and the
    last operation's for the others.  The code is used up only once the
    operation is signed.
    """
    if not token:
        raise InvalidRequest("email confirmation token required to sign PLC operations")
    await app.account_email.check_code(did, PLC_OPERATION, token)
    _require_plc(did)
    last = await _last_operation(app, did)
    if last["type"] == TOMBSTONE:
        raise InvalidRequest("Did is tombstoned")
    state = normalize_operation(last)
    rotation_key = app.accounts.rotation_key
    # The directory takes the next operation only from a key the last one names.
    if rotation_key.did() not in state["rotationKeys"]:
        raise InvalidRequest(
            "This server's rotation key is not among the DID's rotation keys:"
            " it cannot sign the DID's next operation"
        )
    unsigned: dict[str, Any] = {"type": OPERATION}
    for field in CHOSEN_FIELDS:
        value = chosen.get(field)
        unsigned[field] = state[field] if value is None else value
    unsigned["prev"] = operation_cid(last).encode()
    try:
        # The structure first: only strings, lists and maps are signed.
        check_structure({**unsigned, "sig": ""})
        operation = sign_operation(unsigned, rotation_key)
        validate_operation_shape(operation)
    except PLCOperationError as e:
        raise InvalidRequest(f"Invalid operation: {e}") from None
    await app.account_email.use_code(did, PLC_OPERATION, token)
    return operation


async def submit(app: "AppContext", did: str, operation: Any) -> None:
    """
    Post ``operation`` to the PLC directory if it keeps the DID pointing
    here, then forget the cached document and emit ``#identity``.  Works for
    a deactivated account: that is how an account arrives.
    """
    _require_plc(did)
    try:
        kind = check_structure(operation)
    except PLCOperationError as e:
        raise InvalidRequest(f"Invalid operation: {e}") from None
    if kind != OPERATION:
        raise InvalidRequest(f"Invalid operation: a {kind} cannot be submitted here, only a {OPERATION}")
    account = await app.accounts.get(did)
    signing_key = (await app.keys.signing_key(did)).did()
    problem = _points_elsewhere(app, operation, signing_key, account.handle)
    if problem is not None:
        raise InvalidRequest(problem)
    try:
        await app.plc.submit(did, operation)
    except PLCError as e:
        if e.status is not None and e.status < 500:
            raise XRPCError(e.message, name="InvalidRequest") from None
        raise UpstreamFailure(f"Could not submit the operation: {e}") from None
    finally:
        app.dids.forget(did)
    appended = await app.db.write(_identity_unit, did, iso_from_epoch(app.reactor.seconds()))
    app.transactor.notify(appended)


def _points_elsewhere(app: "AppContext", op: dict[str, Any], signing_key: str, handle: str) -> str | None:
    """
    Why the DID would no longer be served from here after ``op``, in the
    official PDS's words (and what was expected), or None.
    """
    rotation_key = app.accounts.rotation_key.did()
    if rotation_key not in op["rotationKeys"]:
        return f"Rotation keys do not include server's rotation key ({rotation_key})"
    service = op["services"].get(PDS_SERVICE)
    if service is None or service["type"] != PDS_TYPE:
        return f"Incorrect type on {PDS_SERVICE} service (expected {PDS_TYPE})"
    if service["endpoint"] != app.public_url:
        return f"Incorrect endpoint on {PDS_SERVICE} service (expected {app.public_url})"
    if op["verificationMethods"].get(ATPROTO_KEY) != signing_key:
        return f"Incorrect signing key (expected {signing_key} as {ATPROTO_KEY})"
    # The handle a document presents is its first at:// alias.
    aliases = [alias for alias in op["alsoKnownAs"] if alias.startswith("at://")]
    if aliases[:1] != [f"at://{handle}"]:
        return f"Incorrect handle in alsoKnownAs (expected at://{handle} first)"
    return None


def _identity_unit(conn: Any, did: str, time: str) -> list[tuple[int, bytes]]:
    (handle,) = conn.execute("SELECT handle FROM accounts WHERE did = ?", (did,)).fetchone()
    return [events.append_identity(conn, did, handle, time)]


def _require_plc(did: str) -> None:
    if not did.startswith("did:plc:"):
        raise InvalidRequest(f"Only a did:plc has PLC operations; {did} is changed where it is published")


async def _last_operation(app: "AppContext", did: str) -> dict[str, Any]:
    try:
        last = await app.plc.last_operation(did)
        check_structure(last)
    except PLCError as e:
        raise UpstreamFailure(f"Could not read the DID from the PLC directory: {e}") from None
    except PLCOperationError as e:
        raise UpstreamFailure(f"The PLC directory's last operation for {did} is malformed: {e}") from None
    return last
