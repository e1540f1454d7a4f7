"""
The outgoing mail queue.

A request that mails someone only adds a row to ``mail_queue`` — in its own
transaction, beside the code the mail carries — and wakes the queue: it never
waits on the mail server.  :class:`MailQueue`, a service on the reactor, sends
what is due one mail at a time and deletes each row once the server has taken
it.  A failed attempt is retried after 10 s, 20 s, 40 s, … at most every 10
minutes, until the mail expires (a code's mail with its code: a late code is
no use), when it is dropped with a warning.  Rows survive a restart, and a
start tries every waiting mail at once (the operator may just have fixed the
SMTP settings).

A mail carrying a code names its (account, purpose): queuing a newer one
replaces the unsent older one, whose code no longer works anyway.
"""

from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from leafpds.db.pool import Database
from leafpds.mail.smtp import MailSender, describe_failure
from leafpds.timestamps import epoch_from_iso, iso_from_epoch

log = Logger()

FIRST_RETRY = 10.0  # seconds after the first failure
MAX_RETRY = 600.0  # the back-off's cap
POLL = 60.0  # the longest the queue sleeps, in case a wake-up was missed
BATCH = 20  # rows read at a time
DEFAULT_LIFETIME = 24 * 3600.0  # a mail that carries no code

# Twisted's SMTP client turns "\n" into "\r\n" itself.
_POLICY = default_policy.clone(linesep="\n")


def enqueue_unit(
    conn: Any,
    recipient: str,
    subject: str,
    body: str,
    now: float,
    lifetime: float = DEFAULT_LIFETIME,
    did: str | None = None,
    purpose: str | None = None,
) -> None:
    """Queue a mail (inside the caller's transaction); call :meth:`MailQueue.wake` after the commit."""
    if did is not None and purpose is not None:
        conn.execute("DELETE FROM mail_queue WHERE did = ? AND purpose = ?", (did, purpose))
    queued = iso_from_epoch(now)
    conn.execute(
        "INSERT INTO mail_queue (did, purpose, recipient, subject, body, queued_at, expires_at,"
        " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (did, purpose, recipient, subject, body, queued, iso_from_epoch(now + lifetime), queued),
    )


def retry_delay(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt."""
    return min(FIRST_RETRY * 2 ** (attempts - 1), MAX_RETRY)


def build_message(
    from_address: str, recipient: str, subject: str, body: str, message_id: str, date: float
) -> bytes:
    """A plain-text (UTF-8) mail, headers and body."""
    message = EmailMessage(policy=_POLICY)
    message["From"] = from_address
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = formatdate(date, usegmt=True)
    message["Message-ID"] = message_id
    message.set_content(body)
    return message.as_bytes()


class MailQueue(Service):
    name = "mail-queue"

    def __init__(
        self, db: Database, sender: MailSender, from_address: str, hostname: str, clock: Any
    ) -> None:
        self.db = db
        self.sender = sender
        self.from_address = from_address
        self.hostname = hostname
        self.clock = clock  # the reactor, or a task.Clock in tests
        self._call: Any = None  # the next scheduled run
        self._running: Deferred | None = None
        self._sending: Deferred | None = None
        self._again = False

    def __repr__(self) -> str:
        return f"<MailQueue via {self.sender!r}>"

    def startService(self) -> None:
        super().startService()
        self._start_run(everything=True)

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._sending is not None:
            # The row stays as it is; the next start sends it.
            self._sending.cancel()
        return self._running

    def wake(self) -> None:
        """Something was queued: send it now (or right after the run under way)."""
        if not self.running:
            return
        if self._running is not None:
            self._again = True
            return
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self.clock.callLater(delay, self._start_run)

    def _start_run(self, everything: bool = False) -> None:
        self._call = None
        running = Deferred.fromCoroutine(self._run(everything))
        if not running.called:
            self._running = running

    async def _run(self, everything: bool) -> None:
        try:
            while self.running:
                self._again = False
                # At start-up every waiting mail is due, whatever its back-off.
                until = float("inf") if everything else self.clock.seconds()
                everything = False
                rows = await self.db.read(_due, until, BATCH)
                for row in rows:
                    if not self.running:
                        return
                    await self._send(*row)
                if len(rows) < BATCH and not self._again:
                    break
            if self.running:
                next_at = await self.db.read(_next_attempt)
                delay = POLL if next_at is None else max(0.0, min(next_at - self.clock.seconds(), POLL))
                if self._again:  # woken while that was read
                    delay = 0
                if self.running and self._call is None:
                    self._schedule(delay)
        except Exception:
            log.failure("The mail queue failed; it tries again in {poll} s", poll=POLL)
            if self.running and self._call is None:
                self._schedule(POLL)
        finally:
            self._running = None

    async def _send(
        self, mail_id: int, recipient: str, subject: str, body: str, queued_at: str,
        expires_at: str, attempts: int, last_error: str | None,
    ) -> None:
        if epoch_from_iso(expires_at) <= self.clock.seconds():
            await self.db.write(_delete, mail_id)
            log.warn(
                "Mail {id} to {recipient} ({subject!r}) dropped unsent: it expired after {attempts} "
                "attempts (last: {error})",
                id=mail_id, recipient=recipient, subject=subject, attempts=attempts, error=last_error,
            )
            return
        queued = epoch_from_iso(queued_at)
        message = build_message(
            self.from_address, recipient, subject, body,
            f"<leafpds.{mail_id}.{int(queued)}@{self.hostname}>", queued,
        )
        self._sending = self.sender.send(self.from_address, recipient, message)
        try:
            await self._sending
        except CancelledError:
            return  # stopping
        except Exception as e:
            attempts += 1
            delay = retry_delay(attempts)
            reason = describe_failure(e)
            await self.db.write(_failed, mail_id, attempts, self.clock.seconds() + delay, reason)
            log.warn(
                "Mail {id} to {recipient} not sent (attempt {attempts}): {reason}; next try in {delay:.0f} s",
                id=mail_id, recipient=recipient, attempts=attempts, reason=reason, delay=delay,
            )
        else:
            await self.db.write(_delete, mail_id)
            log.info("Mail {id} ({subject!r}) sent to {recipient}", id=mail_id, subject=subject, recipient=recipient)
        finally:
            self._sending = None


def _due(conn: Any, until: float, limit: int) -> list[tuple]:
    bound = "9999" if until == float("inf") else iso_from_epoch(until)
    return conn.execute(
        "SELECT id, recipient, subject, body, queued_at, expires_at, attempts, last_error"
        " FROM mail_queue WHERE next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
        (bound, limit),
    ).fetchall()


def _next_attempt(conn: Any) -> float | None:
    row = conn.execute("SELECT min(next_attempt_at) FROM mail_queue").fetchone()
    return epoch_from_iso(row[0]) if row and row[0] else None


def _failed(conn: Any, mail_id: int, attempts: int, next_attempt: float, reason: str) -> None:
    conn.execute(
        "UPDATE mail_queue SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
        (attempts, iso_from_epoch(next_attempt), reason, mail_id),
    )


def _delete(conn: Any, mail_id: int) -> None:
    conn.execute("DELETE FROM mail_queue WHERE id = ?", (mail_id,))
