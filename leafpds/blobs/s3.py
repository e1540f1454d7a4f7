"""
Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, R2, B2…).

Every request is signed with botocore's SigV4 signer (pure computation, on
the reactor) and sent with treq over a persistent connection pool: no SDK
call blocks the reactor and no request takes a thread.

Layout: ``<prefix>blocks/<did>/<cid>``, the official PDS's permanent keys.
The official store streams an upload to ``tmp/<did>/<random>`` (it learns
the CID only at the end), then copies it to ``blocks/`` and deletes it when a
record references it.
leafpds already holds the whole upload in its spool, hashed, before the
store sees it, so it uploads once, straight to the final key: an object is
only ever complete under its name (a single PUT or a completed multipart
upload is atomic on S3), and whether the blob is temporary stays the
database's business, as with the disk store.  Nothing moves on commit: no
server-side copy (one request less per blob, no multipart copy above 5 GB),
and the spool file is deleted as soon as S3 has the blob.

Faults: each request has an idle timeout (no bytes moved for ``timeout``
seconds cancels it); connection errors, timeouts, 5xx, 429 and S3's
``SlowDown``/``InternalError`` are retried with exponential back-off and
jitter; a request that still fails raises :class:`BlobStoreUnavailable`
(503, named), after aborting a multipart upload it started.  Streaming a
blob to a client is not retried once bytes have gone out.
"""

import hashlib
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import treq
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from treq.client import HTTPClient
from twisted.internet import task
from twisted.internet.defer import (
    CancelledError, Deferred, DeferredList, DeferredSemaphore, FirstError, ensureDeferred,
    gatherResults, succeed,
)
from twisted.internet.error import ConnectError, ConnectionLost, TimeoutError as TCPTimeoutError
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from leafpds.blobs.store import MissingBlobFile, check_did
from leafpds.config import Settings
from leafpds.errors import XRPCError
from leafpds.ipld.cid import CID, RAW_PREFIX

log = Logger()

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
T = TypeVar("T")


class BlobStoreUnavailable(XRPCError):
    """The blob store could not be reached or refused to work (after retries)."""

    status = 503
    name = "BlobStoreUnavailable"


class S3Error(Exception):
    """One failed S3 request; ``retryable`` if trying again may help."""

    def __init__(self, message: str, retryable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


@dataclass(frozen=True)
class S3Config:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # None: AWS, https://s3.<region>.amazonaws.com
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    force_path_style: bool = False
    presigned_get: bool = False
    #: Seconds a presigned getBlob URL stays valid.
    presigned_expires: int = 300
    #: Blobs of at least this many bytes go up as multipart uploads.
    multipart_threshold: int = 16 * 1024 * 1024
    part_size: int = 8 * 1024 * 1024
    #: Parts uploaded at once.
    part_concurrency: int = 4
    #: Seconds without progress before a request is given up (and retried).
    timeout: float = 20.0
    #: Tries per request, the first included.
    attempts: int = 4
    backoff: float = 0.2
    max_backoff: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str]) -> "S3Config":
        """
        The store ``--blobstore s3://…`` names; credentials, region and
        endpoint fall back to the usual ``AWS_*`` variables.
        """
        return cls(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint=(settings.s3_endpoint or environ.get("AWS_ENDPOINT_URL_S3")
                      or environ.get("AWS_ENDPOINT_URL") or None),
            region=(settings.s3_region or environ.get("AWS_REGION")
                    or environ.get("AWS_DEFAULT_REGION") or "us-east-1"),
            access_key_id=settings.s3_access_key_id or environ.get("AWS_ACCESS_KEY_ID"),
            secret_access_key=(settings.s3_secret_access_key
                               or environ.get("AWS_SECRET_ACCESS_KEY")),
            session_token=None if settings.s3_access_key_id else environ.get("AWS_SESSION_TOKEN"),
            force_path_style=settings.s3_force_path_style,
            presigned_get=settings.s3_presigned_get,
        )

    def describe(self) -> str:
        """For the log: where, never the secret."""
        where = self.endpoint or f"AWS {self.region}"
        return f"s3://{self.bucket}/{self.prefix} at {where}"


class _PayloadSigner(S3SigV4Auth):
    # The payload hash comes with the request (the blob's own sha-256, known
    # from its CID; a part's, hashed beforehand): botocore would otherwise
    # read the body, on the reactor, to hash it.
    def payload(self, request: AWSRequest) -> str:
        return request.context["payload_sha256"]


class S3BlobStore:
    """A :class:`~leafpds.blobs.store.BlobStore` on S3."""

    def __init__(self, config: S3Config, reactor: Any, rand: Callable[[], float] = random.random) -> None:
        if not config.access_key_id or not config.secret_access_key:
            raise ValueError(
                "S3 credentials missing: give --s3-access-key-id and --s3-secret-access-key "
                "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if config.part_size < 5 * 1024 * 1024:
            raise ValueError("S3 parts are at least 5 MiB")
        self.config = config
        self.reactor = reactor
        self._random = rand
        self._credentials = Credentials(
            config.access_key_id, config.secret_access_key, config.session_token
        )
        self._signer = _PayloadSigner(self._credentials, "s3", config.region)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 8
        self.pool.retryAutomatically = False  # we retry, counting attempts
        self.http = HTTPClient(Agent(reactor, connectTimeout=config.timeout, pool=self.pool))
        endpoint = (config.endpoint or f"https://s3.{config.region}.amazonaws.com").rstrip("/")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an S3 endpoint URL: {endpoint!r}")
        if config.force_path_style:
            self._base = f"{endpoint}/{config.bucket}/"
        else:
            self._base = f"{parts.scheme}://{config.bucket}.{parts.netloc}{parts.path}/"

    def __repr__(self) -> str:
        return f"<S3BlobStore {self.config.describe()}>"

    # --- the BlobStore interface ------------------------------------------------

    def key(self, did: str, cid: CID) -> str:
        check_did(did)
        return f"{self.config.prefix}blocks/{did}/{cid.encode()}"

    async def put(self, did: str, cid: CID, source: Path) -> None:
        key = self.key(did, cid)
        size = os.stat(source).st_size
        if size >= self.config.multipart_threshold:
            await self._put_multipart(key, source, size)
        else:
            # The CID is the sha-256 of the bytes: S3 checks them against it.
            digest = cid.cid_bytes[len(RAW_PREFIX):].hex()
            await self._retrying("PUT " + key, lambda: self._call(
                "PUT", key, body=_FileSlice(source, 0, size), payload=digest,
                headers={"content-type": "application/octet-stream"},
            ))
        source.unlink(missing_ok=True)  # consumed: the disk keeps no copy

    async def open(
        self, did: str, cid: CID, offset: int = 0, length: int | None = None
    ) -> "S3BlobReader":
        key = self.key(did, cid)
        headers, expected = {}, 200
        if offset or length is not None:
            # Passed through: S3 sends only the span.
            end = "" if length is None else str(offset + length - 1)
            headers, expected = {"range": f"bytes={offset}-{end}"}, 206

        async def get() -> S3BlobReader:
            response = await self._send("GET", key, headers=headers)
            if response.code == 404:
                await _drain(response)
                raise MissingBlobFile(f"{did} {cid.encode()}")
            if response.code != expected:
                raise await self._error(response)
            return S3BlobReader(response, self.reactor, self.config.timeout)

        return await self._retrying("GET " + key, get)

    async def delete(self, did: str, cid: CID) -> None:
        key = self.key(did, cid)
        await self._retrying("DELETE " + key, lambda: self._call("DELETE", key, ok=(200, 204, 404)))

    async def delete_all(self, did: str) -> None:
        """Nothing is left: S3 has no folders, and each blob was deleted by its key."""

    async def exists(self, did: str, cid: CID) -> bool:
        key = self.key(did, cid)

        async def head() -> bool:
            response = await self._send("HEAD", key)
            await _drain(response)
            if response.code in (200, 404):
                return response.code == 200
            raise _status_error(response.code, None)

        return await self._retrying("HEAD " + key, head)

    def redirect_url(self, did: str, cid: CID, mime_type: str) -> str | None:
        """With ``--s3-presigned-get``, a presigned URL getBlob redirects to."""
        if not self.config.presigned_get:
            return None
        url = self._url(self.key(did, cid), {"response-content-type": mime_type})
        request = AWSRequest("GET", url)
        S3SigV4QueryAuth(
            self._credentials, "s3", self.config.region, expires=self.config.presigned_expires
        ).add_auth(request)
        return request.url

    async def close(self) -> None:
        await self.pool.closeCachedConnections()

    # --- multipart ------------------------------------------------------------------

    async def _put_multipart(self, key: str, source: Path, size: int) -> None:
        created = await self._retrying("CreateMultipartUpload " + key, lambda: self._call(
            "POST", key, {"uploads": ""}, headers={"content-type": "application/octet-stream"},
            read=True,
        ))
        upload_id = _xml_text(created, "UploadId")
        if not upload_id:
            raise BlobStoreUnavailable("The blob store is unavailable")
        try:
            etags = await self._put_parts(key, upload_id, source, size)
            manifest = "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                for n, etag in enumerate(etags, start=1)
            )
            body = f"<CompleteMultipartUpload>{manifest}</CompleteMultipartUpload>".encode()
            await self._retrying("CompleteMultipartUpload " + key,
                                 lambda: self._complete(key, upload_id, body, size))
        except BaseException:
            try:
                await self._retrying("AbortMultipartUpload " + key, lambda: self._call(
                    "DELETE", key, {"uploadId": upload_id}, ok=(200, 204, 404),
                ))
            except Exception:
                # Left for a bucket lifecycle rule (docs/operating.md).
                log.failure("Could not abort the multipart upload of {key}", key=key)
            raise

    async def _put_parts(self, key: str, upload_id: str, source: Path, size: int) -> list[str]:
        """Upload the parts, a few at once (a connection's speed is capped by its round trips)."""
        part_size = self.config.part_size
        limit = DeferredSemaphore(self.config.part_concurrency)

        async def part(number: int, offset: int) -> str:
            length = min(part_size, size - offset)
            query = {"partNumber": str(number), "uploadId": upload_id}
            # Hashed in the thread pool (~5 ms a part) so S3 checks each
            # part's bytes as it checks a single PUT's.
            digest = await deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), _sha256, source, offset, length
            )
            return await self._retrying(f"UploadPart {number} {key}", lambda: self._call(
                "PUT", key, query, body=_FileSlice(source, offset, length),
                payload=digest, etag=True,
            ))

        parts = [
            limit.run(lambda n=number, o=offset: ensureDeferred(part(n, o)))
            for number, offset in enumerate(range(0, size, part_size), start=1)
        ]
        try:
            return await gatherResults(parts, consumeErrors=True)
        except FirstError as e:
            # One part failed for good: stop the others before the abort.
            for d in parts:
                d.cancel()
            await DeferredList(parts, consumeErrors=True)
            raise e.subFailure.value from None

    async def _complete(self, key: str, upload_id: str, body: bytes, size: int) -> None:
        response = await self._send(
            "POST", key, {"uploadId": upload_id}, body=body,
            payload=hashlib.sha256(body).hexdigest(), headers={"content-type": "application/xml"},
        )
        content = await self._read(response)
        if response.code == 404 and b"NoSuchUpload" in content:
            # A retry after a completion whose answer was lost: done if the
            # object is there, whole.
            head = await self._send("HEAD", key)
            await _drain(head)
            if head.code == 200 and head.headers.getRawHeaders("content-length") == [str(size)]:
                return
        if response.code != 200:
            raise _status_error(response.code, content)
        # S3 may answer 200 and report an error in the body.
        if _xml_root(content) == "Error":
            raise _status_error(500, content)

    # --- requests ------------------------------------------------------------------------

    def _url(self, key: str, query: Mapping[str, str] | None = None) -> str:
        url = self._base + quote(key, safe="/~")
        if query:
            # Sub-resources (?uploads) have no value and no "=".
            url += "?" + "&".join(
                quote(k, safe="~") + ("=" + quote(v, safe="~") if v else "")
                for k, v in sorted(query.items())
            )
        return url

    async def _send(
        self,
        method: str,
        key: str,
        query: Mapping[str, str] | None = None,
        body: "bytes | _FileSlice | None" = None,
        payload: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> IResponse:
        """One signed request; its response once the headers have arrived."""
        url = self._url(key, query)
        request = AWSRequest(method, url, headers=dict(headers or {}))
        request.context["payload_sha256"] = payload or EMPTY_SHA256
        self._signer.add_auth(request)
        sent_headers = {name: [value] for name, value in request.headers.items()}
        if isinstance(body, bytes):
            body = _BytesBody(body)
        d = self.http.request(method, url, headers=sent_headers, data=body, unbuffered=True)
        watchdog = _Watchdog(self.reactor, self.config.timeout, d.cancel)
        if isinstance(body, _FileSlice):
            body.progress = watchdog.reset
        try:
            return await d
        except Exception as e:
            if watchdog.fired:
                raise S3Error(f"{method} timed out", retryable=True) from None
            if _cancelled(e):
                # Cancelled by our caller (another part failed): not to retry.
                raise CancelledError() from None
            raise
        finally:
            watchdog.stop()

    async def _call(
        self,
        method: str,
        key: str,
        query: Mapping[str, str] | None = None,
        *,
        ok: tuple[int, ...] = (200,),
        read: bool = False,
        etag: bool = False,
        **kwargs: Any,
    ) -> Any:
        """A request whose answer is small: its body if ``read``, its ETag if ``etag``."""
        response = await self._send(method, key, query, **kwargs)
        if response.code not in ok:
            raise await self._error(response)
        content = await self._read(response)
        if etag:
            value = (response.headers.getRawHeaders("etag") or [""])[0]
            if not value:
                raise S3Error("no ETag for a part", retryable=True)
            return value
        return content if read else None

    async def _read(self, response: IResponse, limit: int = 1024 * 1024) -> bytes:
        # Its S3Errors stay S3Errors: the caller decides on retrying.
        body = _BodyProtocol(self.reactor, self.config.timeout)
        response.deliverBody(body)
        chunks, size = [], 0
        try:
            while chunk := await body.read(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise S3Error("S3 answered more than expected", retryable=False)
        finally:
            body.abandon()
        return b"".join(chunks)

    async def _error(self, response: IResponse) -> S3Error:
        try:
            content = await self._read(response, 65536)
        except Exception:
            content = b""
        return _status_error(response.code, content)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, tried again after retryable failures; raises BlobStoreUnavailable."""
        config = self.config
        for number in range(1, config.attempts + 1):
            try:
                return await attempt()
            except (MissingBlobFile, CancelledError):
                raise
            except Exception as e:
                error = _classify(e)
                if not error.retryable or number == config.attempts:
                    log.error(
                        "S3 {what} failed ({attempts} attempts): {error}",
                        what=what, attempts=number, error=str(error),
                    )
                    raise BlobStoreUnavailable("The blob store is unavailable") from e
                delay = min(config.max_backoff, config.backoff * 2 ** (number - 1))
                delay *= 0.5 + self._random() / 2  # jitter: retries do not march in step
                log.warn(
                    "S3 {what} failed ({error}); trying again in {delay:.2f}s",
                    what=what, error=str(error), delay=delay,
                )
                await task.deferLater(self.reactor, delay)
        raise AssertionError("unreachable")


class S3BlobReader:
    """
    A response body read at the reader's pace: the connection is paused while
    more than ``HIGH_WATER`` bytes wait, so a slow client never makes leafpds
    buffer a blob.  A body that stops arriving for ``timeout`` seconds fails.
    """

    HIGH_WATER = 1024 * 1024

    def __init__(self, response: IResponse, reactor: Any, timeout: float) -> None:
        self._protocol = _BodyProtocol(reactor, timeout)
        response.deliverBody(self._protocol)

    async def read(self, size: int) -> bytes:
        try:
            return await self._protocol.read(size)
        except S3Error as e:
            # Named for the client if nothing has been sent to it yet.
            log.error("S3 body failed: {error}", error=str(e))
            raise BlobStoreUnavailable("The blob store is unavailable") from e

    async def close(self) -> None:
        self._protocol.abandon()


class _BodyProtocol(Protocol):
    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.buffer = bytearray()
        self.paused = False
        self.done: Failure | None = None  # ResponseDone at a clean end
        self.waiting: Deferred | None = None
        self.timer: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > S3BlobReader.HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pauseProducing()
        self._wake()

    def connectionLost(self, reason: Failure) -> None:
        self.done = reason
        self._wake()

    def _wake(self) -> None:
        waiting, self.waiting = self.waiting, None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if waiting is not None:
            waiting.callback(None)

    async def read(self, size: int) -> bytes:
        while not self.buffer and self.done is None:
            self.waiting = Deferred()
            self.timer = self.reactor.callLater(self.timeout, self._stalled)
            await self.waiting
        if self.buffer:
            chunk = bytes(self.buffer[:size])
            del self.buffer[:size]
            if self.paused and len(self.buffer) < S3BlobReader.HIGH_WATER // 4:
                self.paused = False
                self.transport.resumeProducing()
            return chunk
        if self.done.check(ResponseDone):
            return b""
        raise S3Error(f"the body was cut short: {self.done.getErrorMessage()}", retryable=True)

    def _stalled(self) -> None:
        self.timer = None
        self.abandon()
        if self.done is None:
            self.done = Failure(S3Error("the body stopped arriving", retryable=True))
        self._wake()

    def abandon(self) -> None:
        """Stop reading: the connection is closed unless the body is all here."""
        if self.done is None and self.transport is not None:
            self.transport.stopProducing()


class _Watchdog:
    """Calls ``expire`` after ``timeout`` seconds without a ``reset``."""

    def __init__(self, reactor: Any, timeout: float, expire: Callable[[], Any]) -> None:
        self._call = reactor.callLater(timeout, self._expire, expire)
        self._timeout = timeout
        self.fired = False

    def _expire(self, expire: Callable[[], Any]) -> None:
        self.fired = True
        expire()

    def reset(self) -> None:
        if self._call.active():
            self._call.reset(self._timeout)

    def stop(self) -> None:
        if self._call.active():
            self._call.cancel()


@implementer(IBodyProducer)
class _FileSlice:
    """
    ``length`` bytes of a file from ``offset``, produced in chunks at the
    pace the connection takes them (a new one per attempt).  Reads of the
    spool file are local and small, so they run on the reactor, as
    ``FileBodyProducer``'s do.
    """

    CHUNK = 256 * 1024

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self.path = path
        self.offset = offset
        self.length = length
        self.progress: Callable[[], None] = lambda: None
        self._task: task.CooperativeTask | None = None

    def startProducing(self, consumer: IConsumer) -> Deferred:
        f = open(self.path, "rb")
        f.seek(self.offset)
        self._task = task.cooperate(self._chunks(f, consumer))
        d = self._task.whenDone()
        d.addBoth(lambda result: (f.close(), result)[1])
        return d.addCallback(lambda _: None)

    def _chunks(self, f: Any, consumer: IConsumer) -> Any:
        left = self.length
        while left > 0:
            chunk = f.read(min(self.CHUNK, left))
            if not chunk:
                raise OSError("the spool file is shorter than expected")
            left -= len(chunk)
            consumer.write(chunk)
            self.progress()
            yield None

    def pauseProducing(self) -> None:
        if self._task is not None:
            self._task.pause()

    def resumeProducing(self) -> None:
        if self._task is not None:
            self._task.resume()

    def stopProducing(self) -> None:
        if self._task is not None:
            try:
                self._task.stop()
            except task.TaskFinished:
                pass


@implementer(IBodyProducer)
class _BytesBody:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _sha256(path: Path, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            chunk = f.read(min(1024 * 1024, length))
            if not chunk:
                break
            digest.update(chunk)
            length -= len(chunk)
    return digest.hexdigest()


async def _drain(response: IResponse) -> None:
    # HEAD and error answers have small (or no) bodies; read them so the
    # connection goes back to the pool.
    d = treq.content(response)
    try:
        await d
    except Exception:
        pass


def _xml_root(content: bytes) -> str | None:
    try:
        return _local(ElementTree.fromstring(content).tag)
    except ElementTree.ParseError:
        return None


def _xml_text(content: bytes, name: str) -> str | None:
    try:
        root = ElementTree.fromstring(content)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if _local(element.tag) == name:
            return element.text
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


_RETRYABLE_CODES = {"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable"}


def _status_error(status: int, content: bytes | None) -> S3Error:
    code = _xml_text(content, "Code") if content else None
    retryable = status >= 500 or status == 429 or code in _RETRYABLE_CODES
    return S3Error(f"HTTP {status} {code or ''}".strip(), retryable, code)


def _cancelled(e: Exception) -> bool:
    # Twisted's client reports a cancelled request as itself, or wrapped in
    # ResponseNeverReceived / RequestTransmissionFailed.
    if isinstance(e, CancelledError):
        return True
    return any(reason.check(CancelledError) for reason in getattr(e, "reasons", []))


def _classify(e: Exception) -> S3Error:
    if isinstance(e, S3Error):
        return e
    if isinstance(e, (ConnectError, ConnectionLost, TCPTimeoutError, ResponseFailed)):
        return S3Error(f"{type(e).__name__}: {e}", retryable=True)
    # RequestTransmissionFailed, ResponseNeverReceived and the like.
    if type(e).__module__.startswith("twisted."):
        return S3Error(f"{type(e).__name__}: {e}", retryable=True)
    return S3Error(f"{type(e).__name__}: {e}", retryable=False)
