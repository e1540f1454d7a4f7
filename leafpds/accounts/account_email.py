"""
An account's email address: confirming it, changing it, and resetting the
password through it, as the official PDS does (its error names and words).

Each request is one database transaction: the code is stored (as an HMAC) and
its mail queued together, so both happen or neither; the mail goes out later
from the queue (leafpds.mail.queue), so no request waits on the mail server.
Each use of a code is one transaction too: a code that is wrong, expired or
already used changes nothing.
"""

from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThread

from leafpds.accounts import email_tokens, sessions
from leafpds.accounts.accounts import Account, account_by, check_email, check_password
from leafpds.accounts.email_tokens import EmailTokens
from leafpds.accounts.passwords import hash_password
from leafpds.accounts.sessions import TokenIssuer
from leafpds.db.pool import Database
from leafpds.errors import InvalidRequest, XRPCError
from leafpds.mail import queue, templates
from leafpds.mail.queue import MailQueue
from leafpds.timestamps import iso_from_epoch


class AccountEmail:
    def __init__(
        self,
        db: Database,
        codes: EmailTokens,
        mail: MailQueue,
        tokens: TokenIssuer,
        public_url: Callable[[], str],
        now: Callable[[], float],
    ) -> None:
        self.db = db
        self.codes = codes
        self.mail = mail
        self.tokens = tokens
        self.public_url = public_url
        self.now = now

    # -- the generic part: what a later purpose (delete_account, plc_operation) uses --

    async def send_code(self, did: str, purpose: str) -> None:
        """Mail the account a new code for ``purpose`` (replacing its previous one)."""
        await self.db.write(self._send_code_unit, did, purpose, self.public_url(), self.now())
        self.mail.wake()

    async def check_code(self, did: str, purpose: str, token: str) -> None:
        """Like :meth:`use_code`, but the code stays good (checked before slow work, used after)."""
        await self.db.read(self.codes.check_unit, did, purpose, token, self.now())

    async def use_code(self, did: str, purpose: str, token: str) -> None:
        """Use up the account's code for ``purpose``: 400 ``InvalidToken``/``ExpiredToken`` if it is not that."""
        await self.db.write(self.codes.consume_unit, did, purpose, token, self.now())

    def _send_code_unit(self, conn: Any, did: str, purpose: str, service: str, now: float) -> None:
        account = account_by(conn, "did", did)
        if account is None:
            raise InvalidRequest("account not found")
        if not account.email:
            raise InvalidRequest("account does not have an email address")
        self._mail_code_unit(conn, account, purpose, service, now)

    def _mail_code_unit(self, conn: Any, account: Account, purpose: str, service: str, now: float) -> None:
        token = self.codes.issue_unit(conn, account.did, purpose, now)
        subject, body = templates.BY_PURPOSE[purpose].render(
            token=token, handle=account.handle, service=service
        )
        queue.enqueue_unit(
            conn, account.email, subject, body, now,
            lifetime=email_tokens.LIFETIME, did=account.did, purpose=purpose,
        )

    # -- com.atproto.admin.sendEmail -------------------------------------------

    async def send_message(self, did: str, subject: str, content: str) -> None:
        """An operator's message to the account's address (queued, like every mail)."""
        await self.db.write(self._send_message_unit, did, subject, content, self.now())
        self.mail.wake()

    def _send_message_unit(self, conn: Any, did: str, subject: str, content: str, now: float) -> None:
        account = account_by(conn, "did", did)
        if account is None:
            raise InvalidRequest("Recipient not found")
        if not account.email:
            raise InvalidRequest("account does not have an email address")
        # Marked as the account's, so that its deletion takes it back unsent.
        queue.enqueue_unit(conn, account.email, subject, content, now, did=account.did)

    # -- com.atproto.server.requestEmailConfirmation / confirmEmail --------------

    async def request_confirmation(self, did: str) -> None:
        await self.send_code(did, email_tokens.CONFIRM_EMAIL)

    async def confirm(self, did: str, email: str, token: str) -> None:
        await self.db.write(self._confirm_unit, did, email, token, self.now())

    def _confirm_unit(self, conn: Any, did: str, email: str, token: str, now: float) -> None:
        account = account_by(conn, "did", did)
        if account is None:
            raise XRPCError("user not found", name="AccountNotFound")
        if account.email != email.strip().lower():
            raise XRPCError("invalid email", name="InvalidEmail")
        self.codes.consume_unit(conn, did, email_tokens.CONFIRM_EMAIL, token, now)
        conn.execute(
            "UPDATE accounts SET email_confirmed_at = ? WHERE did = ?", (iso_from_epoch(now), did)
        )

    # -- com.atproto.server.requestEmailUpdate / updateEmail ---------------------

    async def request_update(self, did: str) -> bool:
        """Mail a code to the current address if it is confirmed; whether one is needed."""
        required = await self.db.write(self._request_update_unit, did, self.public_url(), self.now())
        if required:
            self.mail.wake()
        return required

    def _request_update_unit(self, conn: Any, did: str, service: str, now: float) -> bool:
        account = account_by(conn, "did", did)
        if account is None:
            raise InvalidRequest("account not found")
        if not account.email:
            raise InvalidRequest("account does not have an email address")
        if account.email_confirmed:
            self._mail_code_unit(conn, account, email_tokens.UPDATE_EMAIL, service, now)
        return account.email_confirmed

    async def update(self, did: str, email: str, token: str | None) -> None:
        email = check_email(email)
        await self.db.write(self._update_unit, did, email, token, self.now())

    def _update_unit(self, conn: Any, did: str, email: str, token: str | None, now: float) -> None:
        account = account_by(conn, "did", did)
        if account is None:
            raise InvalidRequest("account not found")
        # A confirmed address changes only with the code mailed to it.
        if account.email_confirmed and not token:
            raise XRPCError("confirmation token required", name="TokenRequired")
        if token:
            self.codes.check_unit(conn, did, email_tokens.UPDATE_EMAIL, token, now)
        if email == account.email:
            # Nothing to change (the official PDS would drop the confirmation).
            if token:
                self.codes.consume_unit(conn, did, email_tokens.UPDATE_EMAIL, token, now)
            return
        owner = account_by(conn, "email", email)
        if owner is not None:
            raise InvalidRequest("This email address is already in use, please use a different email.")
        conn.execute(
            "UPDATE accounts SET email = ?, email_confirmed_at = NULL WHERE did = ?", (email, did)
        )
        # Codes mailed to the old address (the update code among them) go;
        # an operator's message (no purpose) still goes to it.
        email_tokens.forget_all_unit(conn, did)
        conn.execute("DELETE FROM mail_queue WHERE did = ? AND purpose IS NOT NULL", (did,))

    # -- com.atproto.server.requestPasswordReset / resetPassword -----------------

    async def request_password_reset(self, email: str) -> None:
        """
        Mail a reset code if an account has this address.  Answered the same
        either way, after the same one trip to the writer, so the answer tells
        nobody whether an address has an account here.
        """
        sent = await self.db.write(
            self._request_reset_unit, email.strip().lower(), self.public_url(), self.now()
        )
        if sent:
            self.mail.wake()

    def _request_reset_unit(self, conn: Any, email: str, service: str, now: float) -> bool:
        account = account_by(conn, "email", email)
        if account is None:
            return False
        self._mail_code_unit(conn, account, email_tokens.RESET_PASSWORD, service, now)
        return True

    async def reset_password(self, token: str, password: str) -> None:
        """
        Set the password of the account whose reset code this is, and end
        every session of the account (app-password ones too): whoever got in
        with the old password is out.  The code is checked before the
        password is hashed (~50 ms of CPU), and again when it is used.
        """
        check_password(password)
        await self.db.read(self.codes.find_did_unit, email_tokens.RESET_PASSWORD, token, self.now())
        password_hash = await deferToThread(hash_password, password)
        ended = await self.db.write(self._reset_unit, token, password_hash, self.now())
        self.tokens.revoke(ended)

    def _reset_unit(self, conn: Any, token: str, password_hash: bytes, now: float) -> list[str]:
        did = self.codes.find_did_unit(conn, email_tokens.RESET_PASSWORD, token, now)
        self.codes.consume_unit(conn, did, email_tokens.RESET_PASSWORD, token, now)
        conn.execute("UPDATE accounts SET password_hash = ? WHERE did = ?", (password_hash, did))
        return sessions.end_all_sessions_unit(conn, did, now)
