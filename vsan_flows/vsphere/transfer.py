"""Import and export leases and the disk streams that go through them.

This is the one place where oslo.vmware's transfer pieces are wrapped, because three things
they do are wrong for us:

* ``rw_handles.VmdkWriteHandle.close()`` completes the lease and closes the socket without
  reading the HTTP answer to the PUT. The host may still be writing the last bytes; measured on
  the simulator, 7 of 14 "successful" nova imports stored a file 0.5-1.5 MB short. Our upload
  handle reads the answer first and fails unless it is a 2xx.
* Both VMDK handles create their lease in their constructor and release it in ``close()``. Our
  flows create the lease in one task (so its id is persisted before a byte moves, and a resumed
  flow can find and abort it) and complete it in another, so our handles attach to an existing
  lease and never release it.
* oslo's lease keep-alive runs on an eventlet looping call that never gets scheduled while a
  plain (non-monkey-patched) thread blocks in a socket send; our handles send
  ``HttpNfcLeaseProgress`` from the write/read path instead (oslo throttles it to once a minute).

The copy loop is ours, not oslo.vmware's ``image_transfer._start_transfer``: that loop reads a
64 KiB chunk, then writes it, so a transfer runs at 1/(1/read + 1/write) — measured on the
export, 153-194 MB/s where the GET alone did 598-668 MB/s and the image store alone 171-199.
Ours reads in a thread of its own (:class:`ReadAhead`), a few 1 MiB chunks ahead of the writer,
so a transfer runs at the pace of its slower end with memory bounded by the read-ahead. Both
directions go through it: an import as :func:`copy` (image -> lease PUT), an export as the
:class:`ReadAhead` that :func:`vsan_flows.vsphere.exports.open_export` returns, which the
image service's upload pulls from (lease GET -> image store or Glance).
"""

from __future__ import annotations

import collections
import functools
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import requests
from oslo_vmware import exceptions as vexc
from oslo_vmware import rw_handles, vim_util
from urllib3 import connection as urllib3_connection
from urllib3.util import ssl_ as urllib3_ssl

from vsan_flows import exceptions
from vsan_flows.vsphere import faults

LOG = logging.getLogger(__name__)

# How long a single socket operation may block before the transfer is declared dead. The
# whole-transfer bound is image_transfer_timeout_secs, checked by copy() between chunks.
SOCKET_TIMEOUT = 120.0

#: What the reader thread reads at a time, and how many such chunks it may hold ahead of the
#: writer: a transfer holds at most (READ_AHEAD + 2) chunks, whatever the disk size (one being
#: read, READ_AHEAD waiting, one being written). 1 MiB keeps the per-chunk Python work (progress,
#: the stream check, the lease-size check) out of the profile; oslo's 64 KiB did not.
CHUNK_SIZE = 1 << 20
READ_AHEAD = 4


@dataclass(frozen=True)
class LeaseDevice:
    """One disk URL of a ready lease. The URL is live data: never persist or log it."""

    url: str
    thumbprint: str | None
    target_id: str | None
    file_size: int | None
    # The lease's total disk capacity: what an export's progress is measured against when
    # vCenter announces no length (it generates the stream as it goes).
    capacity_bytes: int | None = None


def lease_state(session, lease) -> str:
    return session.invoke_api(vim_util, "get_object_property", session.vim, lease, "state")


def lease_properties(session, lease, *names: str) -> dict:
    """Several properties of a lease in one PropertyCollector round trip."""
    return session.invoke_api(vim_util, "get_object_properties_dict", session.vim, lease,
                              list(names))


def lease_error(session, lease) -> str:
    err = session.invoke_api(vim_util, "get_object_property", session.vim, lease, "error")
    return getattr(err, "localizedMessage", None) or str(err or "unknown error")


def wait_ready(session, lease) -> None:
    """Wait for initializing -> ready; a lease in error becomes a LeaseError naming why."""
    try:
        session.wait_for_lease_ready(lease)
    except vexc.VimException as exc:
        # oslo.vmware's message for a lease in error embeds the whole lease object over
        # several lines; the lease's own localized error says why in one.
        reason = exc.msg
        try:
            if lease_state(session, lease) == "error":
                reason = lease_error(session, lease)
        except vexc.VimException:
            pass
        reason = " ".join(str(reason).split())
        raise exceptions.LeaseError(
            f"lease {vim_util.get_moref_value(lease)} did not become ready: {reason}"
        ) from None


def disk_device(session, lease, host: str, port: int) -> LeaseDevice:
    """The first disk URL of a ready lease, with '*' replaced by the vCenter host."""
    info = session.invoke_api(vim_util, "get_object_property", session.vim, lease, "info")
    for dev in getattr(info, "deviceUrl", None) or []:
        if getattr(dev, "disk", False):
            return LeaseDevice(
                url=rw_handles.VmdkHandle._fix_esx_url(dev.url, host, port),
                thumbprint=getattr(dev, "sslThumbprint", None),
                target_id=getattr(dev, "targetId", None),
                file_size=getattr(dev, "fileSize", None),
                capacity_bytes=int(getattr(info, "totalDiskCapacityInKB", 0) or 0) * 1024
                or None,
            )
    raise exceptions.LeaseError(
        f"lease {vim_util.get_moref_value(lease)} offers no disk URL; the VM has no disk to "
        "transfer"
    )


def abort(session, lease) -> bool:
    """Abort a lease; False when it is already gone (completed, aborted or never existed)."""
    try:
        session.invoke_api(session.vim, "HttpNfcLeaseAbort", lease)
    except vexc.VimException as exc:
        if faults.is_gone(exc):
            return False
        raise
    return True


def complete(session, lease, state: str | None = None) -> None:
    """HttpNfcLeaseComplete, only on a ready lease. ``state``: the lease's state as the
    caller has just read it (one property read per completion, not two)."""
    if state is None:
        state = lease_state(session, lease)
    if state != "ready":
        detail = lease_error(session, lease) if state == "error" else state
        raise exceptions.LeaseError(
            f"lease {vim_util.get_moref_value(lease)} cannot be completed: it is {state} "
            f"({detail})"
        )
    session.invoke_api(session.vim, "HttpNfcLeaseComplete", lease)


@functools.lru_cache(maxsize=8)
def _verifying_context(cafile: str | None, pinned: bool) -> ssl.SSLContext:
    """A TLS context that verifies the host against ``cafile`` (None: certifi's bundle, what
    oslo uses for ``cacerts=True``), made once per process and shared by every transfer.

    ``pinned`` keys the contexts apart: urllib3 turns hostname checking off on the context it
    is given when a thumbprint pins the certificate, and that must not leak to a transfer
    that relies on the hostname check.
    """
    ctx = urllib3_ssl.create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    ctx.load_verify_locations(cafile or requests.certs.where())
    if pinned:
        ctx.check_hostname = False
    return ctx


def open_lease_request(method: str, url: str, *, cacerts: bool | str, thumbprint: str | None,
                       headers: dict[str, str]) -> urllib3_connection.HTTPConnection:
    """Open the HTTPS connection to a lease's disk URL and send the request's headers.

    What oslo's ``FileHandle._create_connection`` sends, the same TLS checks (a CA when
    ``cacerts`` says so, the lease's SSL thumbprint when it gives one), without its cost: oslo
    loads certifi's whole CA bundle into a new TLS context on every connection, even when it
    verifies nothing (``cacerts=False``: ~40 ms of CPU per transfer, measured on the benchmark
    machine, about a sixth of a 256 MiB import). Here an unverified context costs nothing to
    make, and a verifying one is made once per process (:func:`_verifying_context`).
    """
    u = urllib.parse.urlsplit(url)
    path = u.path + (f"?{u.query}" if u.query else "")
    headers = {"User-Agent": rw_handles.USER_AGENT, **headers}
    if u.scheme == "http":  # oslo allows it; a vCenter's NFC URLs are https
        conn = urllib3_connection.HTTPConnection(u.hostname, u.port, timeout=SOCKET_TIMEOUT)
        conn.request(method, path, headers=headers, preload_content=False)
        return conn
    if u.scheme != "https":
        raise ValueError(f"a lease URL must be http(s), not {u.scheme or 'schemeless'}")
    if cacerts:
        cafile = cacerts if isinstance(cacerts, str) else None
        context = _verifying_context(cafile, thumbprint is not None)
        cert_reqs = ssl.CERT_REQUIRED
    else:
        context = urllib3_ssl.create_urllib3_context(cert_reqs=ssl.CERT_NONE)
        cert_reqs = ssl.CERT_NONE
    conn = urllib3_connection.HTTPSConnection(
        u.hostname, u.port, timeout=SOCKET_TIMEOUT, ssl_context=context, cert_reqs=cert_reqs,
        assert_fingerprint=thumbprint)
    conn.request(method, path, headers=headers, preload_content=False)
    return conn


class LeaseUploadHandle(rw_handles.VmdkWriteHandle):
    """PUT a disk stream to an existing import lease and insist on the server's answer."""

    def __init__(self, session, lease, device: LeaseDevice, size: int,
                 on_progress: Callable[[int], None] | None = None,
                 timeout_secs: float | None = None, cacerts: bool | str = False,
                 while_storing: Callable[[], None] | None = None) -> None:
        """``while_storing`` runs in a thread of its own while :meth:`close` waits for the
        host to store the last bytes and answer (on the simulator that wait is over half of a
        256 MiB import); whatever it raises is raised from :meth:`close` once the answer was a
        success. It is for checks that do not depend on the answer."""
        # Deliberately not calling VmdkWriteHandle.__init__: it would create a second lease.
        self._while_storing = while_storing
        self._keepalive: _SideCall | None = None
        self._timeout_secs = timeout_secs
        self._deadline = time.monotonic() + timeout_secs if timeout_secs else None
        self._vmdk_size = size
        self._bytes_written = 0
        self._vm_ref = None
        self._on_progress = on_progress
        # Not oslo's _create_write_connection: see open_lease_request.
        headers = {"Content-Length": str(size), "Overwrite": "t",
                   "Content-Type": "binary/octet-stream"}
        cookie = self._build_vim_cookie_header(session.vim.client.cookiejar)
        if cookie:
            headers["Cookie"] = cookie
        self._conn = open_lease_request("PUT", device.url, cacerts=cacerts,
                                        thumbprint=device.thumbprint, headers=headers)
        rw_handles.VmdkHandle.__init__(self, session, lease, device.url, self._conn)
        self.response_status: int | None = None

    def write(self, data: bytes) -> None:
        if self._bytes_written + len(data) > self._vmdk_size:
            raise exceptions.IncompleteTransfer(
                "the upload (the image holds more bytes than its recorded size)",
                bytes_sent=self._bytes_written + len(data), bytes_expected=self._vmdk_size)
        super().write(data)
        self.update_progress()
        if self._on_progress:
            self._on_progress(self._bytes_written)

    def update_progress(self) -> None:
        """The lease's keep-alive (HttpNfcLeaseProgress, at the first write and then once a
        minute, as oslo throttles it), sent from a thread of its own: the writer never waits
        for vCenter's answer to it (one SOAP round trip on the first chunk, tens of ms on a
        loaded host). A failed keep-alive is raised from the next write, or from close."""
        pending = self._keepalive
        if pending is not None:
            if pending.running():
                return
            self._keepalive = None
            pending.result()
        now = time.time()
        if now - self._last_progress_udpate < rw_handles.MIN_UPDATE_INTERVAL:
            return
        self._last_progress_udpate = now
        percent = int(self._get_progress())
        session, lease = self._session, self._lease
        self._keepalive = _SideCall(lambda: session.invoke_api(
            session.vim, "HttpNfcLeaseProgress", lease, percent=percent))

    def close(self) -> None:
        """Read the answer (only when every byte went out), never touch the lease.

        Raises when the answer is missing or not a success: this is the moment nova's path
        (oslo's close) skips, and where a cut or short upload shows itself. Waiting for the
        answer counts against the transfer's deadline like the bytes before it.
        """
        side = None
        try:
            if self._bytes_written != self._vmdk_size:
                return  # the copy loop failed earlier and is raising its own error (the
                # keep-alive, if still on its way, is waited for below, never raised)
            if self._while_storing is not None:
                side = _SideCall(self._while_storing)
            if self._deadline is not None:
                # urllib3's getresponse() re-applies conn.timeout to the socket, so set both.
                self._conn.timeout = max(0.5, self._deadline - time.monotonic())
                if self._conn.sock is not None:
                    self._conn.sock.settimeout(self._conn.timeout)
            try:
                resp = self._conn.getresponse()
                resp.read()
                self.response_status = resp.status
            except TimeoutError:
                raise exceptions.TransferTimeout(
                    "The upload (waiting for vCenter to accept the last bytes)",
                    self._timeout_secs or 0, self._bytes_written, self._vmdk_size) from None
            except Exception as exc:  # noqa: BLE001 - any failure here means "not stored"
                raise exceptions.IncompleteTransfer(
                    f"The upload (vCenter gave no answer: {type(exc).__name__})",
                    bytes_sent=self._bytes_written, bytes_expected=self._vmdk_size) from None
            if not 200 <= resp.status < 300:
                raise exceptions.IncompleteTransfer(
                    f"The upload (vCenter answered HTTP {resp.status})",
                    bytes_sent=self._bytes_written, bytes_expected=self._vmdk_size)
            for pending in (side, self._keepalive):
                if pending is not None:
                    pending.result()
            side = self._keepalive = None
        finally:
            for pending in (side, self._keepalive):
                if pending is not None:
                    pending.wait()  # the answer's own error is the one raised
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass

    def __str__(self) -> str:
        return "upload to import lease " + vim_util.get_moref_value(self._lease)


class _SideCall:
    """``fn()`` in a thread of its own (a green thread under eventlet), started at once."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._exc: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vsan-flows-side-call",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # noqa: BLE001 - raised by result() in the caller
            self._exc = exc

    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> None:
        self.wait()
        if self._exc is not None:
            raise self._exc


class LeaseDownloadHandle(rw_handles.VmdkReadHandle):
    """GET a disk stream from an existing export lease without releasing it on close."""

    def __init__(self, session, lease, device: LeaseDevice, size: int | None = None,
                 cacerts: bool | str = False) -> None:
        # Deliberately not calling VmdkReadHandle.__init__: it would create a second lease.
        self._vmdk_size = size or device.file_size or 0
        # No length announced: progress (which keeps the lease alive) is estimated against
        # the disk's capacity and held below 100% until the stream ends.
        self._estimated = not self._vmdk_size
        if self._estimated:
            self._vmdk_size = device.capacity_bytes or 0
        self._bytes_read = 0
        self._conn = self._create_read_connection(
            device.url, cookies=session.vim.client.cookiejar, cacerts=cacerts,
            ssl_thumbprint=device.thumbprint)
        self._conn.timeout = SOCKET_TIMEOUT
        if self._conn.sock is not None:
            self._conn.sock.settimeout(SOCKET_TIMEOUT)
        resp = self._conn.getresponse()
        if resp.status != 200:
            self._conn.close()
            raise exceptions.LeaseError(
                f"export lease {vim_util.get_moref_value(lease)} refused the download "
                f"(HTTP {resp.status})")
        length = resp.headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None
        if self._estimated and self.content_length:
            self._vmdk_size, self._estimated = self.content_length, False
        rw_handles.VmdkHandle.__init__(self, session, lease, device.url, resp)

    def _get_progress(self) -> float:
        progress = super()._get_progress()
        return min(progress, 99.0) if self._estimated else progress

    def read(self, chunk_size: int = rw_handles.READ_CHUNKSIZE) -> bytes:
        # Not oslo's read(): it logs and raises with the lease URL in the message, and the
        # URL is a credential for as long as the lease lives.
        try:
            data = self._file_handle.read(chunk_size)
        except Exception as exc:  # noqa: BLE001 - every read failure means a cut stream
            raise exceptions.IncompleteTransfer(
                f"The disk export (the connection broke: {type(exc).__name__})",
                bytes_sent=self._bytes_read, bytes_expected=self._vmdk_size or None) from None
        self._bytes_read += len(data)
        if self._vmdk_size:
            self.update_progress()
        return data

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            rw_handles.FileHandle.close(self)

    def __str__(self) -> str:
        return "download from export lease " + vim_util.get_moref_value(self._lease)


class ReadAhead:
    """A read handle whose source is read in a thread of its own, up to ``depth`` chunks ahead.

    Whoever consumes it (our :func:`copy` loop, an image service's upload) writes while the
    next chunks are being read, instead of the two taking turns. The source's failure is
    raised to the consumer in order, where the bytes stop (what was read before it is still
    delivered first); the consumer's failure ends in :meth:`close`, which stops the reader and
    waits for it, then closes the source: no thread outlives the transfer.

    The thread is started on the first read, so a handle never read from costs nothing and
    leaves nothing running. It is a ``threading.Thread`` looked up at run time, so under
    eventlet monkey-patching it is a greenthread, and the source's green socket is read from
    a green thread as it must be.
    """

    def __init__(self, source, *, chunk_size: int = CHUNK_SIZE, depth: int = READ_AHEAD,
                 deadline: float | None = None, what: str = "The disk transfer") -> None:
        self._src = source
        self._chunk = chunk_size
        self._depth = max(1, depth)
        self._deadline = deadline
        self._what = what
        self._cv = threading.Condition()
        # Chunks read and not yet handed out; the last item may be b"" (end) or _Failure.
        self._queue: collections.deque = collections.deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._leftover = b""
        self._end: object | None = None  # b"" at the end of the stream, or the _Failure
        self.bytes_read = 0  # handed to the consumer
        # What the source announced (an export's Content-Length), for the caller's checks.
        self.content_length = getattr(source, "content_length", None)

    # ---------------------------------------------------------------- the reader thread

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while len(self._queue) >= self._depth and not self._stopping:
                        self._cv.wait()
                    if self._stopping:
                        return
                data = self._src.read(self._chunk)
                with self._cv:
                    if self._stopping:
                        return
                    self._queue.append(data)
                    self._cv.notify_all()
                if not data:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            with self._cv:
                self._queue.append(_Failure(exc))
                self._cv.notify_all()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vsan-flows-read-ahead",
                                        daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the consumer's side

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (a whole read-ahead chunk when ``n`` is -1 or larger)."""
        if not self._leftover:
            self._leftover = self._next()
        data = self._leftover
        if 0 <= n < len(data):
            data, self._leftover = data[:n], data[n:]
        else:
            self._leftover = b""
        self.bytes_read += len(data)
        return data

    def _next(self) -> bytes:
        if self._end is not None:
            return self._raise_end()
        if self._thread is None:
            self._start()
        with self._cv:
            while not self._queue:
                wait = None
                if self._deadline is not None:
                    wait = self._deadline - time.monotonic()
                    if wait <= 0:
                        raise _Timeout()
                self._cv.wait(wait)
            item = self._queue.popleft()
            self._cv.notify_all()
        if isinstance(item, _Failure) or not item:
            self._end = item
            return self._raise_end()
        return item

    def _raise_end(self) -> bytes:
        if isinstance(self._end, _Failure):
            raise self._end.exc
        return b""

    def close(self) -> None:
        """Stop the reader, wait until it has stopped, then close the source.

        A reader blocked in the source's read stops when that read returns: a healthy source
        answers at once, a dead one within its socket timeout (SOCKET_TIMEOUT for the
        lease, Glance's own for an image download).
        """
        with self._cv:
            self._stopping = True
            self._queue.clear()
            self._cv.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(SOCKET_TIMEOUT + 10)
            if thread.is_alive():
                LOG.warning("%s: the reader thread is still blocked in a read after %.0f s",
                            self._what, SOCKET_TIMEOUT + 10)
        self._leftover = b""
        self._src.close()

    def __str__(self) -> str:
        return f"read-ahead of {self._src}"


class _Failure:
    """The source's exception, queued after the chunks read before it."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Timeout(Exception):
    """The transfer's deadline passed while the writer waited for the reader."""


def copy(read_handle, write_handle, timeout_secs: int, what: str = "The disk transfer",
         total: int | None = None) -> None:
    """Write what ``read_handle`` gives to ``write_handle`` while the next chunks are read.

    Bounded by ``timeout_secs`` (checked between chunks and while waiting for the reader);
    both handles are closed whatever happens, the write handle last (ours reads vCenter's
    answer there and may raise). Our errors pass through as they are; anything else from
    either end becomes a TransferError that says what broke.
    """
    deadline = time.monotonic() + timeout_secs
    source = ReadAhead(read_handle, deadline=deadline, what=what)
    try:
        try:
            while True:
                if time.monotonic() > deadline:
                    raise _Timeout()
                data = source.read()
                if not data:
                    break
                write_handle.write(data)
        except _Timeout:
            raise exceptions.TransferTimeout(what, timeout_secs, _done(read_handle),
                                             total) from None
        except exceptions.VsanFlowsError:
            raise
        except Exception as exc:  # noqa: BLE001 - either end's failure, said in one line
            raise exceptions.TransferError(
                f"the disk transfer broke: {_describe(exc)}") from None
        finally:
            source.close()
    finally:
        write_handle.close()


def _done(handle) -> int | None:
    done = getattr(handle, "bytes_read", None)
    return done if done is not None else getattr(handle, "_bytes_read", None)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    inner = getattr(exc, "cause", None)
    text = f"{type(exc).__name__}: {exc}"
    return text + (f" ({_describe(inner)})" if inner is not None and inner is not exc else "")


class ImageStreamReader:
    """Adapts an image file object to oslo's read-handle shape (read(n) / close())."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        self.bytes_read = 0

    def read(self, n: int) -> bytes:
        data = self._f.read(n)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        self._f.close()

    def __str__(self) -> str:
        return "image stream"


def create_import_lease(session, pool, folder, spec):
    """ResourcePool.ImportVApp: returns the lease; its entity is the new (shadow) VM."""
    return session.invoke_api(session.vim, "ImportVApp", pool, spec=spec, folder=folder)


def create_export_lease(session, vm_ref):
    return session.invoke_api(session.vim, "ExportVm", vm_ref)


def lease_entity(session, lease):
    info = session.invoke_api(vim_util, "get_object_property", session.vim, lease, "info")
    return getattr(info, "entity", None)
