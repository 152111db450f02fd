"""Watch a VMDK stream go by and decide, at its end, whether all of it went by.

A byte count alone cannot tell a complete streamOptimized disk from one cut at a grain
boundary; its structure can (vmdk.check_stream_end). This tap keeps only the head (the header
and, for qemu-style files, the grain tables) and a bounded tail, so memory stays flat whatever
the disk size.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import BinaryIO

from vsan_flows import exceptions, vmdk

_PROBE = 64 * 1024


class BackgroundHash:
    """A hashlib hash fed from the transfer's thread and computed in a thread of its own.

    hashlib releases the GIL while it hashes a large buffer, so the hash runs beside the
    transfer's I/O instead of in its way: hashed inline, sha512 halved the Glance -> lease
    stream on the benchmark machine, and sha256 in the import's reader thread cost a 256 MiB
    import 15-20 % against a bare PUT (a thread that reads *and* hashes is the slowest stage
    of the pipeline as soon as the two cores are shared). What waits to be hashed is bounded
    in bytes (PENDING_LIMIT), not in chunks, so memory stays flat whatever chunk size the
    caller reads; the chunks are referenced, never copied.
    """

    PENDING_LIMIT = 4 << 20

    def __init__(self, algo: str) -> None:
        self._hash = hashlib.new(algo)
        self.name = self._hash.name
        self._chunks: collections.deque[bytes | None] = collections.deque()
        self._pending = 0
        self._finished = False
        self._cv = threading.Condition()
        # Started by the first update: a hash never fed (a transfer that failed before its
        # first byte) leaves no thread behind.
        self._thread = threading.Thread(target=self._run, name=f"vsan-flows-{algo}",
                                        daemon=True)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._chunks:
                    self._cv.wait()
                data = self._chunks.popleft()
            if data is None:
                return
            self._hash.update(data)
            with self._cv:
                self._pending -= len(data)
                self._cv.notify_all()

    def _put(self, data: bytes | None) -> None:
        size = len(data) if data else 0
        with self._cv:
            while self._pending and self._pending + size > self.PENDING_LIMIT:
                self._cv.wait()
            self._pending += size
            self._chunks.append(data)
            self._cv.notify_all()

    def update(self, data: bytes) -> None:
        if self._finished:
            raise ValueError("update() after the hash was finished")
        if self._thread.ident is None:
            self._thread.start()
        self._put(data)

    def hexdigest(self) -> str:
        self.stop()
        return self._hash.hexdigest()

    def finish(self) -> None:
        """No more data: the thread hashes what is queued and ends, without being waited for
        (a transfer's close does not wait for its hash; :meth:`hexdigest` does)."""
        if not self._finished:
            self._finished = True
            if self._thread.ident is not None:
                self._put(None)

    def stop(self) -> None:
        self.finish()
        if self._thread.ident is not None:
            self._thread.join()


class StreamTap:
    """A read-through wrapper: ``read(n)`` as the wrapped file, remembering head and tail."""

    def __init__(self, source: BinaryIO, header: vmdk.VmdkHeader | None = None,
                 image_id: str | None = None, *, verify_at_eof: bool = False,
                 expected_bytes: int | None = None, timeout_secs: float | None = None,
                 on_progress: Callable[[int], None] | None = None,
                 expected_hash: tuple[str, str] | None = None) -> None:
        """``verify_at_eof`` makes the final read raise instead of returning b'' when the
        stream is not whole, so a consumer that pulls until EOF (an image upload) fails
        before it commits anything. ``timeout_secs`` bounds the whole read.
        ``expected_hash`` (algorithm, hex digest), as the image service recorded it at upload,
        is checked by :meth:`check_complete`: a disk corrupted at rest is as whole as a good
        one by structure, and only its hash tells them apart."""
        self._src = source
        self._verify_at_eof = verify_at_eof
        self._expected = expected_bytes
        self._timeout = timeout_secs
        self._deadline = time.monotonic() + timeout_secs if timeout_secs else None
        self._on_progress = on_progress
        self._expected_hash = expected_hash
        # Hashed in a thread of its own (see BackgroundHash), not in the reader's.
        self._digest = BackgroundHash(expected_hash[0]) if expected_hash else None
        self.header = header
        self.image_id = image_id
        # Without a header yet, keep enough to parse one; then keep what its overhead says.
        self._head_limit = header.overhead_bytes if header is not None else _PROBE
        self._head = bytearray()
        # For files with their grain tables up front: where the last grain sits (known once
        # the head is in) and its bytes as they pass, so any padding may follow it.
        self._grain_pos: int | None = None
        self._grain_known = False
        self._grain = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise exceptions.TransferTimeout("The disk export", self._timeout or 0,
                                             self.bytes_read, self._expected)
        data = self._src.read(n)
        if not data:
            if self._verify_at_eof:
                self._verify()
            return data
        start = self.bytes_read
        self.bytes_read += len(data)
        if self._digest is not None:
            self._digest.update(data)
        self._keep_head(data, start)
        self._keep_last_grain(data, start)
        if self._on_progress is not None:
            self._on_progress(self.bytes_read)
        # Keep references to the last chunks, not copies: the hot loop must not copy bytes.
        self._tail.append(data)
        self._tail_len += len(data)
        while self._tail_len - len(self._tail[0]) >= vmdk.TAIL_BYTES:
            self._tail_len -= len(self._tail.popleft())
        return data

    def _keep_head(self, data: bytes, start: int) -> None:
        if start >= self._head_limit:
            return
        self._head += data[: self._head_limit - start]
        if self.header is None and len(self._head) >= _PROBE:
            self.header = vmdk.read_header(bytes(self._head), image_id=self.image_id)
            wanted = max(self.header.overhead_bytes, _PROBE)
            if wanted > self._head_limit:
                self._head += data[self._head_limit - start : wanted - start]
                self._head_limit = wanted

    def _keep_last_grain(self, data: bytes, start: int) -> None:
        if not self._grain_known:
            if self.header is None or len(self._head) < self._head_limit:
                return
            self._grain_known = True
            if not self.header.gd_at_end:
                last = vmdk.last_grain_sector(bytes(self._head), self.header)
                self._grain_pos = None if last is None else last * vmdk.SECTOR
        pos = self._grain_pos
        if pos is None:
            return
        want = vmdk.last_grain_span(self.header) - len(self._grain)
        at = pos + len(self._grain)
        if want > 0 and start <= at < start + len(data):
            self._grain += data[at - start: at - start + want]

    def close(self) -> None:
        if self._digest is not None:
            self._digest.finish()  # its thread ends; check_complete still has the digest
        self._src.close()

    def _verify(self) -> None:
        if self._expected is not None and self.bytes_read != self._expected:
            raise exceptions.IncompleteTransfer("The disk export", bytes_sent=self.bytes_read,
                                                bytes_expected=self._expected)
        self.check_complete()

    def check_complete(self) -> vmdk.VmdkHeader:
        """Raise InvalidImage unless a whole streamOptimized disk went through."""
        header = self.header or vmdk.read_header(bytes(self._head), image_id=self.image_id)
        tail = b"".join(self._tail)[-vmdk.TAIL_BYTES:]
        vmdk.check_stream_end(tail, header=header, total_bytes=self.bytes_read,
                              head=bytes(self._head), image_id=self.image_id,
                              last_grain=bytes(self._grain) if self._grain_pos is not None
                              else None)
        if self._digest is not None and self._expected_hash is not None:
            algo, want = self._expected_hash
            got = self._digest.hexdigest()
            if got.lower() != str(want).lower():
                raise exceptions.InvalidImage(
                    "the image's data does not match the hash the image service recorded "
                    "when it was uploaded: it is corrupt where it is stored",
                    image_id=self.image_id, found=f"{algo} {got}, recorded {want}",
                    fix="Upload the image again from a good copy.")
        return header
