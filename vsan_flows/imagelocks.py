"""One import per image on a host: the lock spawns of an uncached image share.

Without it, N concurrent spawns of a new image each missed the cache, each imported the whole
image, and two of them could rename their import to the same cache name (issue 11). With it,
the first spawn that misses the cache imports while holding the image's lock; the others wait,
then choose a datastore and look the cache up again, and link to what it made. The lock is per
image, not per (image, datastore): placement prefers a datastore that caches the image, so
the waiters must see the first import before they choose, or free space would send them to
another datastore and another import.

Why this shape:

* **Threads and processes.** A lock file per key under ``<state_dir>/locks`` (fasteners'
  inter-process lock, an fcntl lock the kernel drops when its holder dies, so a SIGKILLed
  holder releases it and a waiter imports) plus a thread lock per key, because fcntl locks
  belong to a process and do not exclude its own threads.
* **Owned by a flow, not by a thread.** The parallel engine may run a flow's tasks on
  different threads, so the holder is the flow token; :meth:`ImageLocks.hold` is idempotent
  for that token, and every task of the critical section calls it. A flow resumed after a
  crash therefore re-acquires the lock at its next such task: it never assumes it still holds
  one from before (this object is a live handle, rebuilt per process, never persisted).
* **A bounded wait.** A waiter gives up after ``timeout`` seconds with
  :class:`~vsan_flows.exceptions.ImageLockTimeout`; waiting creates nothing in vCenter, so a
  waiter that gives up or is killed leaves nothing to undo.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time

import fasteners

from vsan_flows.exceptions import ImageLockTimeout

LOG = logging.getLogger(__name__)

#: Default bound on a wait, in seconds: one import of a large image over a slow link.
DEFAULT_TIMEOUT = 7200.0

# The thread half of every lock, per (directory, key), shared by every ImageLocks of this
# process: two handles objects on one host (api calls without shared handles) must still
# exclude each other, and fcntl locks would not (they belong to the process).
_THREAD_LOCKS: dict[tuple[str | None, str], threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class _Held:
    def __init__(self, thread_lock: threading.Lock, file_lock) -> None:
        self.thread_lock = thread_lock
        self.file_lock = file_lock


class ImageLocks:
    """The per-image import locks of one host; a live handle, never persisted.

    ``directory`` is where the lock files live (every process of the host must use the same
    one); ``None`` means threads of this process only (tests, in-memory runs).
    """

    def __init__(self, directory: str | None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.directory = directory
        self.timeout = float(timeout)
        self._guard = threading.Lock()
        self._held: dict[tuple[str, str], _Held] = {}  # (key, owner) -> what it holds
        if directory is not None:
            self.directory = os.path.abspath(directory)
            os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def _thread_lock(self, key: str) -> threading.Lock:
        with _THREAD_LOCKS_GUARD:
            return _THREAD_LOCKS.setdefault((self.directory, key), threading.Lock())

    def _path(self, key: str) -> str:
        # Image ids come from the image service: hash them into a safe file name.
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return os.path.join(self.directory, f"image-import-{digest}.lock")

    def holds(self, image_id: str, owner: str) -> bool:
        with self._guard:
            return (image_id, owner) in self._held

    def hold(self, image_id: str, owner: str) -> None:
        """Make ``owner`` (a flow token) hold the lock; waits at most ``timeout`` seconds.

        A no-op when ``owner`` holds it already in this process.
        """
        key = image_id
        if self.holds(image_id, owner):
            return
        deadline = time.monotonic() + self.timeout
        thread_lock = self._thread_lock(key)
        t0 = time.monotonic()
        if not thread_lock.acquire(timeout=self.timeout):
            raise ImageLockTimeout(image_id, self.timeout)
        file_lock = None
        try:
            if self.directory is not None:
                file_lock = fasteners.InterProcessLock(self._path(key))
                left = max(0.0, deadline - time.monotonic())
                if not file_lock.acquire(timeout=left, delay=0.05, max_delay=0.5):
                    raise ImageLockTimeout(image_id, self.timeout)
        except BaseException:
            thread_lock.release()
            raise
        with self._guard:
            self._held[(key, owner)] = _Held(thread_lock, file_lock)
        waited = time.monotonic() - t0
        if waited > 1.0:
            LOG.info("import lock of image %s acquired by flow %s after %.1f s", image_id, owner,
                     waited)

    def release_owner(self, owner: str) -> int:
        """Release every lock ``owner`` holds (its engine stopped, however it ended)."""
        with self._guard:
            keys = [key for key, who in self._held if who == owner]
        for image_id in keys:
            self.release(image_id, owner)
        return len(keys)

    def release(self, image_id: str, owner: str) -> bool:
        """Release what ``owner`` holds; False (and nothing done) when it holds nothing."""
        with self._guard:
            held = self._held.pop((image_id, owner), None)
        if held is None:
            return False
        try:
            if held.file_lock is not None:
                held.file_lock.release()
        finally:
            held.thread_lock.release()
        return True
