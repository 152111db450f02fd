"""Watch a VMDK stream go by and decide, at its end, whether all of it went by.

A byte count alone cannot tell a complete streamOptimized disk from one cut at a grain
boundary; its structure can (vmdk.check_stream_end). This tap keeps only the head (the header
and, for qemu-style files, the grain tables) and a bounded tail, so memory stays flat whatever
the disk size.
"""

from __future__ import annotations

from typing import BinaryIO

from vsan_flows import vmdk

_PROBE = 64 * 1024


class StreamTap:
    """A read-through wrapper: ``read(n)`` as the wrapped file, remembering head and tail."""

    def __init__(self, source: BinaryIO, header: vmdk.VmdkHeader | None = None,
                 image_id: str | None = None) -> None:
        self._src = source
        self.header = header
        self.image_id = image_id
        # Without a header yet, keep enough to parse one; then keep what its overhead says.
        self._head_limit = header.overhead_bytes if header is not None else _PROBE
        self._head = bytearray()
        self._tail = bytearray()
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if not data:
            return data
        start = self.bytes_read
        self.bytes_read += len(data)
        self._keep_head(data, start)
        self._tail += data
        if len(self._tail) > 2 * vmdk.TAIL_BYTES:
            del self._tail[: len(self._tail) - vmdk.TAIL_BYTES]
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

    def close(self) -> None:
        self._src.close()

    def check_complete(self) -> vmdk.VmdkHeader:
        """Raise InvalidImage unless a whole streamOptimized disk went through."""
        header = self.header or vmdk.read_header(bytes(self._head), image_id=self.image_id)
        tail = bytes(self._tail[-vmdk.TAIL_BYTES:])
        vmdk.check_stream_end(tail, header=header, total_bytes=self.bytes_read,
                              head=bytes(self._head), image_id=self.image_id)
        return header
