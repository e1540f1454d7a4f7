"""
Accounts: creation (key, did:plc, genesis commit, all or nothing), login,
sessions, app passwords, handle changes.

Every change that the network must hear about is made in one database
transaction together with its firehose events (``#identity``, ``#account``,
the genesis ``#commit`` and ``#sync``).  Calls to the PLC directory happen
before that transaction: if the directory refuses or is unreachable, nothing
is stored and the next attempt starts afresh.
"""

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from leafpds import crypto
from leafpds.accounts import sessions
from leafpds.accounts.keys import AccountKeys
from leafpds.accounts.passwords import hash_password, verify_password
from leafpds.accounts.sessions import RefreshCredentials, Session, TokenIssuer, TokenPair
from leafpds.db.pool import Database
from leafpds.errors import AuthenticationRequired, InvalidRequest, XRPCError
from leafpds.identity.dids import DIDResolver, Unresolved
from leafpds.identity.handles import validate_new_handle
from leafpds.identity.plc import (
    ATPROTO_KEY,
    PLCClient,
    PLCError,
    build_operation,
    did_for_genesis,
    document_for,
    operation_cid,
    parse_document,
    sign_operation,
)
from leafpds.repo import events
from leafpds.repo.transactor import RepoTransactor
from leafpds.timestamps import iso_from_epoch

log = Logger()

_EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256
# A hash to check a password against when the account does not exist, so a
# failed login takes the same time either way.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Account:
    did: str
    handle: str
    email: str | None
    status: str
    has_password: bool
    email_confirmed: bool = False

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True)
class SignedIn:
    """An account with a fresh token pair (createAccount, createSession, refresh)."""

    account: Account
    tokens: TokenPair
    scope: str
    did_doc: dict[str, Any] | None = None


class UpstreamFailure(XRPCError):
    status = 502
    name = "UpstreamFailure"


class Accounts:
    def __init__(
        self,
        db: Database,
        keys: AccountKeys,
        tokens: TokenIssuer,
        transactor: RepoTransactor,
        plc: PLCClient,
        rotation_key: crypto.Keypair,
        handle_domains: list[str],
        public_url: Callable[[], str],
        now: Callable[[], float],
        dids: DIDResolver,
        resolve_handle: Callable[..., Awaitable[str | None]] | None = None,
    ) -> None:
        self.db = db
        self.keys = keys
        self.tokens = tokens
        self.transactor = transactor
        self.plc = plc
        self.rotation_key = rotation_key
        self.handle_domains = handle_domains
        self.public_url = public_url
        self.now = now
        #: Handles to DIDs (the handle resolver's ``resolve(handle, fresh=False)``),
        #: for accounts arriving with their DID and for identity refreshes.
        self.resolve_handle = resolve_handle
        #: Resolves the documents of did:web accounts (whose owners publish them).
        self.dids = dids

    # -- creating ------------------------------------------------------------

    async def create(
        self,
        handle: str,
        email: str,
        password: str | None,
        invite_code: str | None = None,
        invite_required: bool = False,
        oauth_identity: tuple[str, str] | None = None,
        did: str | None = None,
        did_doc: dict[str, Any] | None = None,
    ) -> SignedIn:
        """
        A new account; ``password`` None makes it passwordless (signed up
        through a provider, whose ``(provider, subject)`` is then
        ``oauth_identity``, stored in the same transaction).

        With ``did``, an account arriving from another PDS (the caller has
        checked that PDS's service token for it; ``did_doc`` is its current
        document): it is created deactivated, with a fresh signing key and an
        empty repo, and nothing is told to the PLC directory or the firehose
        until it is activated.  Its handle may also be one outside this
        PDS's domains that resolves to ``did``.
        """
        handle = await self._check_handle(handle, did)
        email = check_email(email)
        if password is not None:
            check_password(password)
        if invite_required and not invite_code:
            raise XRPCError("No invite code provided", name="InvalidInviteCode")
        await self.db.read(_check_available, handle, email, invite_code if invite_required else None, did)
        if oauth_identity is not None and await self.did_for_identity(*oauth_identity):
            raise InvalidRequest("This sign-in already has an account; sign in again to use it")

        signing_key = crypto.K256Keypair.generate()
        password_hash = await deferToThread(hash_password, password) if password else None
        if did is not None:
            now = self.now()
            session, _ = await self.db.write(
                self._create_unit, did, handle, email, password_hash, signing_key, invite_code, now,
                oauth_identity, False,
            )
            account = Account(did, handle, email, "deactivated", password_hash is not None)
            return SignedIn(account, self.tokens.pair(did, session), session.scope, did_doc)

        op = sign_operation(
            build_operation(
                rotation_keys=[self.rotation_key.did()],
                signing_key=signing_key.did(),
                handle=handle,
                pds_endpoint=self.public_url(),
                prev=None,
            ),
            self.rotation_key,
        )
        did = did_for_genesis(op)
        try:
            await self.plc.submit(did, op)
        except PLCError as e:
            log.warn("PLC directory refused or failed account creation: {error}", error=str(e))
            raise UpstreamFailure(f"Could not register the DID with the PLC directory: {e}") from None

        now = self.now()
        session, result = await self.db.write(
            self._create_unit,
            did,
            handle,
            email,
            password_hash,
            signing_key,
            invite_code,
            now,
            oauth_identity,
        )
        self.transactor.notify(result)
        account = Account(did, handle, email, "active", password_hash is not None, oauth_identity is not None)
        return SignedIn(account, self.tokens.pair(did, session), session.scope, document_for(did, op))

    def _create_unit(
        self,
        conn: Any,
        did: str,
        handle: str,
        email: str,
        password_hash: bytes | None,
        signing_key: crypto.Keypair,
        invite_code: str | None,
        now: float,
        oauth_identity: tuple[str, str] | None,
        active: bool = True,
    ) -> tuple[Session, list[tuple[int, bytes]]]:
        # Checked again inside the transaction: another request may have taken
        # the handle or email (or the DID) since the first check.
        _check_available(conn, handle, email, invite_code, did)
        created = iso_from_epoch(now)
        # An address from GitHub or Google is one they verified: confirmed.
        conn.execute(
            "INSERT INTO accounts (did, handle, email, password_hash, status, created_at,"
            " email_confirmed_at, deactivated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                did, handle, email, password_hash, "active" if active else "deactivated", created,
                created if oauth_identity else None, None if active else created,
            ),
        )
        self.keys.store_unit(conn, did, signing_key)
        if oauth_identity is not None:
            # One account per identity, even when two sign-ups race (two tabs).
            if conn.execute(
                "SELECT 1 FROM oauth_identities WHERE provider = ? AND subject = ?", oauth_identity
            ).fetchone():
                raise InvalidRequest("This sign-in already has an account; sign in again to use it")
            conn.execute(
                "INSERT INTO oauth_identities (provider, subject, did, created_at) VALUES (?, ?, ?, ?)",
                (*oauth_identity, did, created),
            )
        if invite_code:
            conn.execute(
                "INSERT INTO invite_code_uses (code, used_by, used_at) VALUES (?, ?, ?)",
                (invite_code, did, created),
            )
        if not active:
            # An account migrating in: silent until activateAccount.
            self.transactor.create_repo_unit(conn, did, signing_key, announce=False)
            return sessions.start_session_unit(conn, did, now), []
        appended = [
            events.append_identity(conn, did, handle, created),
            events.append_event(conn, did, "#account", {"did": did, "active": True, "time": created}, created),
        ]
        appended += self.transactor.create_repo_unit(conn, did, signing_key).events
        return sessions.start_session_unit(conn, did, now), appended

    async def _check_handle(self, handle: str, did: str | None) -> str:
        """
        The normalized handle for a new account: one under this PDS's
        domains, or, for an account arriving with its DID, one that
        resolves to that DID (as the official PDS).
        """
        try:
            return validate_new_handle(handle, self.handle_domains)
        except XRPCError as e:
            if did is None or e.name != "UnsupportedDomain" or self.resolve_handle is None:
                raise
        normalized = handle.strip().lower()
        if await self.resolve_handle(normalized) != did:
            raise InvalidRequest("External handle did not resolve to DID")
        return normalized

    # -- signing in ----------------------------------------------------------

    async def sign_in(self, identifier: str, password: str) -> SignedIn:
        found = await self.db.read(_login_candidates, identifier.strip().lower())
        if found is None:
            await deferToThread(verify_password, password, _DUMMY_HASH)
            raise AuthenticationRequired("Invalid identifier or password")
        account, password_hash, app_passwords = found
        matched = await deferToThread(_match_password, password, password_hash, app_passwords)
        if matched is None:
            raise AuthenticationRequired("Invalid identifier or password")
        if account.status == "takendown":
            # After the password check, as the official PDS: a wrong
            # password learns nothing about the account.
            raise AuthenticationRequired("Account has been taken down", name="AccountTakedown")
        app_password_name, privileged = matched
        session = await self.db.write(
            _start_session, account.did, self.now(), app_password_name, privileged
        )
        return SignedIn(account, self.tokens.pair(account.did, session), session.scope)

    async def did_for_identity(self, provider: str, subject: str) -> str | None:
        """The account a provider's identity signs in to, if any."""
        return await self.db.read(_did_for_identity, provider, subject)

    async def start_session(self, did: str) -> SignedIn:
        """A full session for an account whose owner proved who they are elsewhere."""
        account = await self.get(did)
        if not account.active:
            raise AuthenticationRequired("Account is not active")
        session = await self.db.write(_start_session, did, self.now(), None, False)
        return SignedIn(account, self.tokens.pair(did, session), session.scope)

    async def refresh(self, credentials: RefreshCredentials) -> SignedIn:
        session = await self.db.write(sessions.rotate_session_unit, credentials, self.now())
        account = await self.get(credentials.did)
        return SignedIn(account, self.tokens.pair(account.did, session), session.scope)

    async def sign_out(self, credentials: RefreshCredentials) -> None:
        await self.end_session(credentials.did, credentials.session_id)

    async def end_session(self, did: str, session_id: str) -> None:
        """End one session: its refresh tokens go, its access tokens are refused from now on."""
        await self.db.write(sessions.end_sessions_unit, did, [session_id], self.now())
        self.tokens.revoke([session_id])

    async def set_password(self, did: str, password: str, keep_session: str) -> None:
        """
        Give an account (e.g. one created by sign-in) a password, or a new
        one.  Every other full session ends: whoever knew the old password is
        signed out.  App-password sessions stay (they have secrets of their own).
        """
        check_password(password)
        password_hash = await deferToThread(hash_password, password)
        ended = await self.db.write(_set_password, did, password_hash, keep_session, self.now())
        self.tokens.revoke(ended)

    # -- identities at GitHub or Google ------------------------------------------

    async def linked_identities(self, did: str) -> list[str]:
        """The providers whose identities sign in to this account."""
        return await self.db.read(_linked_providers, did)

    async def link_identity(self, did: str, provider: str, subject: str) -> None:
        """Let (provider, subject) sign in to ``did`` too; refused if it belongs to another account."""
        await self.db.write(_link_identity, did, provider, subject, iso_from_epoch(self.now()))

    async def email_in_use(self, email: str) -> bool:
        return await self.db.read(account_by, "email", email.strip().lower()) is not None

    async def get(self, did: str) -> Account:
        account = await self.db.read(account_by, "did", did)
        if account is None:
            raise AuthenticationRequired("Account not found")
        return account

    async def did_for_handle(self, handle: str) -> str | None:
        account = await self.db.read(account_by, "handle", handle.lower())
        return account.did if account else None

    async def resolve_local_handle(self, handle: str) -> str | None:
        """
        The DID a handle of this server resolves to for the world: only an
        active account's (a deactivated or taken-down one's handle does not
        resolve, as on the official PDS; the handle stays the account's).
        """
        account = await self.db.read(account_by, "handle", handle.lower())
        return account.did if account and account.active else None

    # -- app passwords ---------------------------------------------------------

    async def create_app_password(self, did: str, name: str, privileged: bool) -> dict[str, Any]:
        name = name.strip()
        if not name or len(name) > 64:
            raise InvalidRequest("App password names must be 1 to 64 characters")
        password = "-".join(
            "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(4))
            for _ in range(4)
        )
        password_hash = await deferToThread(hash_password, password)
        created = iso_from_epoch(self.now())
        await self.db.write(_store_app_password, did, name, password_hash, privileged, created)
        return {"name": name, "password": password, "createdAt": created, "privileged": privileged}

    async def list_app_passwords(self, did: str) -> list[dict[str, Any]]:
        rows = await self.db.read(_app_passwords, did)
        return [
            {"name": name, "createdAt": created, "privileged": bool(privileged)}
            for name, created, privileged in rows
        ]

    async def revoke_app_password(self, did: str, name: str) -> None:
        ended = await self.db.write(_revoke_app_password, did, name, self.now())
        self.tokens.revoke(ended)

    # -- handles ---------------------------------------------------------------

    async def update_handle(self, did: str, handle: str) -> None:
        handle = validate_new_handle(handle, self.handle_domains)
        account = await self.get(did)
        if account.handle == handle:
            return
        owner = await self.did_for_handle(handle)
        if owner is not None:
            raise InvalidRequest("Handle already taken")
        if did.startswith("did:plc:"):
            await self._update_did(did, handle)
        else:
            await self._check_published_handle(did, handle)
        appended = await self.db.write(_change_handle, did, handle, iso_from_epoch(self.now()))
        self.transactor.notify(appended)

    async def refresh_identity(self, did: str) -> tuple[str, dict[str, Any]]:
        """
        Re-read the account's DID document afresh (its owner may have changed
        it where it is published, or a did:plc's other rotation keys did),
        verify the handle it names both ways, store that handle if it
        changed, and announce the identity with ``#identity`` so relays
        re-resolve it.  Returns the handle and the document.  A document that
        does not resolve or a handle that does not verify changes nothing.
        """
        account = await self.db.read(account_by, "did", did)
        if account is None:
            raise XRPCError(f"{did} has no account on this PDS", name="DidNotFound")
        try:
            doc = await self.dids.refresh(did)
        except Unresolved as e:
            if e.gone:
                raise XRPCError(f"{did} has been deactivated: {e.message}", name="DidDeactivated") from None
            if e.confirmed:
                raise XRPCError(f"{did} has no DID document: {e.message}", name="DidNotFound") from None
            raise UpstreamFailure(f"Could not read the DID document of {did}: {e.message}") from None
        handle = parse_document(doc).handle
        if handle is None:
            raise XRPCError("The DID document names no valid handle (at://...)", name="HandleNotFound")
        if not await self._handle_verifies(did, handle):
            raise XRPCError(f"Handle {handle} does not resolve to {did}", name="HandleNotFound")
        now = iso_from_epoch(self.now())
        appended = await self.db.write(_refresh_identity, did, account.handle, handle, now)
        self.transactor.notify(appended)
        return handle, doc

    async def _handle_verifies(self, did: str, handle: str) -> bool:
        """
        Whether ``handle`` resolves to ``did``, asked afresh: this PDS answers
        for its own domains (a handle there is an account's only once it has
        claimed it with updateHandle); DNS or the well-known URL for others.
        """
        if any(handle.endswith("." + domain.lower().lstrip(".")) for domain in self.handle_domains):
            return await self.did_for_handle(handle) == did
        if self.resolve_handle is None:
            return False
        return await self.resolve_handle(handle, fresh=True) == did

    async def update_signing_key(self, did: str, signing_key: str) -> None:
        """
        Name ``signing_key`` (a did:key) as the account's atproto key in its
        DID document (the admin's updateAccountSigningKey: the key this PDS
        signs commits with stays, as on the official PDS), then announce the
        new document with ``#identity``.
        """
        account = await self.get(did)
        await self._update_did(did, account.handle, signing_key)
        now = iso_from_epoch(self.now())
        appended = await self.db.write(lambda conn: [events.append_identity(conn, did, account.handle, now)])
        self.transactor.notify(appended)

    async def _check_published_handle(self, did: str, handle: str) -> None:
        """
        A did:web's owner publishes its document: the handle is the
        account's only once the document, fetched afresh, names it.
        """
        doc = await self.dids.resolve(did, fresh=True)
        if doc is None or parse_document(doc).handle != handle:
            raise InvalidRequest(f"DID is not properly configured for handle: its document must name at://{handle}")

    async def _update_did(self, did: str, handle: str, signing_key: str | None = None) -> None:
        """
        A PLC operation after the DID's last one naming ``handle``, this PDS,
        and ``signing_key`` (by default the atproto key the last operation
        named, so a handle change keeps an admin's key change).
        """
        if not did.startswith("did:plc:"):
            raise InvalidRequest(f"{did} is not a did:plc: its owner changes its document where it is published")
        try:
            last = await self.plc.last_operation(did)
        except PLCError as e:
            raise UpstreamFailure(f"Could not read the DID from the PLC directory: {e}") from None
        if signing_key is None:
            signing_key = (last.get("verificationMethods") or {}).get(ATPROTO_KEY)
        if signing_key is None:
            signing_key = (await self.keys.signing_key(did)).did()
        op = sign_operation(
            build_operation(
                rotation_keys=last.get("rotationKeys") or [self.rotation_key.did()],
                signing_key=signing_key,
                handle=handle,
                pds_endpoint=self.public_url(),
                prev=operation_cid(last).encode(),
            ),
            self.rotation_key,
        )
        try:
            await self.plc.submit(did, op)
        except PLCError as e:
            raise UpstreamFailure(f"The PLC directory refused the change: {e}") from None
        finally:
            self.dids.forget(did)


def check_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise InvalidRequest("This email address is not supported, please use a different email.")
    return email


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise XRPCError(
            f"Password must be at least {MIN_PASSWORD} characters", name="InvalidPassword"
        )
    if len(password) > MAX_PASSWORD:
        raise XRPCError(
            f"Password must be at most {MAX_PASSWORD} characters", name="InvalidPassword"
        )


class AlreadyExists(InvalidRequest):
    name = "AlreadyExists"


def _check_available(
    conn: Any, handle: str, email: str, invite_code: str | None, did: str | None = None
) -> None:
    if did is not None and conn.execute(
        "SELECT 1 FROM accounts WHERE did = ? UNION ALL SELECT 1 FROM repo_roots WHERE did = ?", (did, did)
    ).fetchone():
        raise AlreadyExists(f"Repo already exists: {did}")
    if conn.execute("SELECT 1 FROM accounts WHERE handle = ?", (handle,)).fetchone():
        raise InvalidRequest("Handle already taken")
    if conn.execute("SELECT 1 FROM accounts WHERE email = ?", (email,)).fetchone():
        raise InvalidRequest(f"Email already taken: {email}")
    if invite_code is not None:
        row = conn.execute(
            "SELECT available_uses, disabled,"
            " (SELECT count(*) FROM invite_code_uses u WHERE u.code = c.code)"
            " FROM invite_codes c WHERE code = ?",
            (invite_code,),
        ).fetchone()
        if row is None or row[1] or row[2] >= row[0]:
            raise XRPCError("Provided invite code not available", name="InvalidInviteCode")


_ACCOUNT_COLUMNS = (
    "did, handle, email, status, password_hash IS NOT NULL, email_confirmed_at IS NOT NULL"
)


def _account(row: tuple) -> Account:
    """An Account from the first columns of a row that selected _ACCOUNT_COLUMNS."""
    return Account(*row[:4], bool(row[4]), bool(row[5]))


def account_by(conn: Any, column: str, value: str) -> Account | None:
    """The account whose ``did``, ``handle`` or ``email`` is ``value`` (in a unit of work)."""
    assert column in ("did", "handle", "email")
    row = conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE {column} = ?", (value,)).fetchone()
    return _account(row) if row else None


def _login_candidates(conn: Any, identifier: str) -> tuple[Account, bytes | None, list] | None:
    if identifier.startswith("did:"):
        column = "did"
    elif "@" in identifier:
        column = "email"
    else:
        column = "handle"
    row = conn.execute(
        f"SELECT {_ACCOUNT_COLUMNS}, password_hash FROM accounts WHERE {column} = ?", (identifier,)
    ).fetchone()
    if row is None:
        return None
    account = _account(row)
    app_passwords = conn.execute(
        "SELECT name, password_hash, privileged FROM app_passwords WHERE did = ? ORDER BY created_at",
        (account.did,),
    ).fetchall()
    return account, row[6], app_passwords


def _did_for_identity(conn: Any, provider: str, subject: str) -> str | None:
    row = conn.execute(
        "SELECT did FROM oauth_identities WHERE provider = ? AND subject = ?", (provider, subject)
    ).fetchone()
    return row[0] if row else None


def _linked_providers(conn: Any, did: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT provider FROM oauth_identities WHERE did = ? ORDER BY provider", (did,)
        )
    ]


def _link_identity(conn: Any, did: str, provider: str, subject: str, now: str) -> None:
    owner = _did_for_identity(conn, provider, subject)
    if owner == did:
        return
    if owner is not None:
        raise InvalidRequest("That sign-in already belongs to another account on this server")
    if conn.execute(
        "SELECT 1 FROM oauth_identities WHERE did = ? AND provider = ?", (did, provider)
    ).fetchone():
        raise InvalidRequest("This account is already linked to another identity at that provider")
    conn.execute(
        "INSERT INTO oauth_identities (provider, subject, did, created_at) VALUES (?, ?, ?, ?)",
        (provider, subject, did, now),
    )


def _set_password(
    conn: Any, did: str, password_hash: bytes, keep_session: str, now: float
) -> list[str]:
    conn.execute("UPDATE accounts SET password_hash = ? WHERE did = ?", (password_hash, did))
    others = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT session_id FROM refresh_tokens"
            " WHERE did = ? AND app_password_name IS NULL AND session_id != ?",
            (did, keep_session),
        )
    ]
    sessions.end_sessions_unit(conn, did, others, now)
    return others


def _match_password(
    password: str, password_hash: bytes | None, app_passwords: list
) -> tuple[str | None, bool] | None:
    """(app password name or None, privileged) for the matching secret, else None."""
    if password_hash is not None and verify_password(password, password_hash):
        return None, False
    for name, app_hash, privileged in app_passwords:
        if verify_password(password, app_hash):
            return name, bool(privileged)
    return None


def _start_session(
    conn: Any, did: str, now: float, app_password_name: str | None, privileged: bool
) -> Session:
    # Checked again in the writer: an admin may have taken the account down
    # while its password was being checked.
    row = conn.execute("SELECT status FROM accounts WHERE did = ?", (did,)).fetchone()
    if row is not None and row[0] == "takendown":
        raise AuthenticationRequired("Account has been taken down", name="AccountTakedown")
    return sessions.start_session_unit(conn, did, now, app_password_name, privileged)


def _store_app_password(
    conn: Any, did: str, name: str, password_hash: bytes, privileged: bool, created: str
) -> None:
    if conn.execute("SELECT 1 FROM app_passwords WHERE did = ? AND name = ?", (did, name)).fetchone():
        raise InvalidRequest("An app password with that name already exists")
    conn.execute(
        "INSERT INTO app_passwords (did, name, password_hash, privileged, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (did, name, password_hash, int(privileged), created),
    )


def _app_passwords(conn: Any, did: str) -> list[tuple]:
    return conn.execute(
        "SELECT name, created_at, privileged FROM app_passwords WHERE did = ? ORDER BY created_at",
        (did,),
    ).fetchall()


def _revoke_app_password(conn: Any, did: str, name: str, now: float) -> list[str]:
    session_ids = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT session_id FROM refresh_tokens WHERE did = ? AND app_password_name = ?",
            (did, name),
        )
    ]
    conn.execute("DELETE FROM app_passwords WHERE did = ? AND name = ?", (did, name))
    sessions.end_sessions_unit(conn, did, session_ids, now)
    return session_ids


def _change_handle(conn: Any, did: str, handle: str, now: str) -> list[tuple[int, bytes]]:
    conn.execute("UPDATE accounts SET handle = ? WHERE did = ?", (handle, did))
    return [events.append_identity(conn, did, handle, now)]


def _refresh_identity(conn: Any, did: str, known: str, handle: str, now: str) -> list[tuple[int, bytes]]:
    if account_by(conn, "did", did) is None:
        raise XRPCError(f"{did} has no account on this PDS", name="DidNotFound")
    if handle != known:
        # Checked in the transaction: another account here may hold it (stale, as it now points here).
        if conn.execute("SELECT 1 FROM accounts WHERE handle = ? AND did != ?", (handle, did)).fetchone():
            raise InvalidRequest(f"Handle {handle} is held by another account on this PDS")
        conn.execute("UPDATE accounts SET handle = ? WHERE did = ?", (handle, did))
    return [events.append_identity(conn, did, handle, now)]
