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
* **Hosts sharing ZooKeeper.** When a jobboard is configured, the lock is also taken with
  kazoo's Lock recipe (an ephemeral sequential node per waiter under
  ``<jobboard_path>/image-locks/<hash of the image id>``): hosts that share the ZooKeeper
  import an image once. A holder that dies loses its session after the session timeout and
  its node with it, so a waiter on another host takes over. It is taken *after* the host's
  own locks, so at most one waiter per host queues in ZooKeeper. A holder whose session is
  lost while it imports no longer excludes anyone: a second import may then run, and the
  find-then-rename of RegisterShadowVM (under the same lock, taken again) keeps the cache
  at one entry per name.
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
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, LockTimeout

from vsan_flows.exceptions import ImageLockTimeout, ImageLockUnavailable

LOG = logging.getLogger(__name__)

#: Default bound on a wait, in seconds: one import of a large image over a slow link.
DEFAULT_TIMEOUT = 7200.0

# The thread half of every lock, per (directory, key), shared by every ImageLocks of this
# process: two handles objects on one host (api calls without shared handles) must still
# exclude each other, and fcntl locks would not (they belong to the process).
_THREAD_LOCKS: dict[tuple[str | None, str], threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


#: Seconds to wait for the first ZooKeeper connection of the cross-host locks.
CONNECT_TIMEOUT = 10.0


def _digest(key: str) -> str:
    # Image ids come from the image service: hash them into a safe file or node name.
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class ZooKeeperLocks:
    """The cross-host half: kazoo Lock recipes on the jobboard's ZooKeeper.

    The client connects on the first lock taken (a host that never imports never connects)
    and lives as long as this object; ``identifier`` (host name and process) is what the
    lock's node says, for whoever looks at ZooKeeper.
    """

    def __init__(self, hosts: str, path: str, identifier: str,
                 session_timeout: float = 10.0) -> None:
        self.hosts = hosts
        self.path = path.rstrip("/") + "/image-locks"
        self.identifier = identifier
        self.session_timeout = session_timeout
        self._client: KazooClient | None = None
        self._guard = threading.Lock()

    def lock(self, key: str):
        with self._guard:
            if self._client is None:
                client = KazooClient(hosts=self.hosts, timeout=self.session_timeout)
                try:
                    client.start(timeout=CONNECT_TIMEOUT)
                except BaseException:
                    client.stop()  # it would keep trying to connect in the background
                    client.close()
                    raise
                self._client = client
            return self._client.Lock(f"{self.path}/{_digest(key)}", self.identifier)

    def close(self) -> None:
        with self._guard:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.stop()
            finally:
                client.close()


class _Held:
    def __init__(self, thread_lock: threading.Lock, file_lock, zk_lock=None) -> None:
        self.thread_lock = thread_lock
        self.file_lock = file_lock
        self.zk_lock = zk_lock


class ImageLocks:
    """The per-image import locks of one host; a live handle, never persisted.

    ``directory`` is where the lock files live (every process of the host must use the same
    one); ``None`` means threads of this process only (tests, in-memory runs).
    """

    def __init__(self, directory: str | None, timeout: float = DEFAULT_TIMEOUT, *,
                 zookeeper: ZooKeeperLocks | None = None) -> None:
        self.directory = directory
        self.timeout = float(timeout)
        self.zookeeper = zookeeper
        self._guard = threading.Lock()
        self._held: dict[tuple[str, str], _Held] = {}  # (key, owner) -> what it holds
        if directory is not None:
            self.directory = os.path.abspath(directory)
            os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def _thread_lock(self, key: str) -> threading.Lock:
        with _THREAD_LOCKS_GUARD:
            return _THREAD_LOCKS.setdefault((self.directory, key), threading.Lock())

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, f"image-import-{_digest(key)}.lock")

    def holds(self, image_id: str, owner: str) -> bool:
        with self._guard:
            return (image_id, owner) in self._held

    def hold(self, image_id: str, owner: str, *, blocking: bool = True) -> bool:
        """Make ``owner`` (a flow token) hold the lock; waits at most ``timeout`` seconds.

        A no-op when ``owner`` holds it already in this process. With ``blocking=False`` it
        does not wait: False when someone else holds the lock (nothing is then held).
        """
        key = image_id
        if self.holds(image_id, owner):
            return True
        deadline = time.monotonic() + self.timeout
        thread_lock = self._thread_lock(key)
        t0 = time.monotonic()
        if not thread_lock.acquire(blocking, self.timeout if blocking else -1):
            if not blocking:
                return False
            raise ImageLockTimeout(image_id, self.timeout)
        file_lock = zk_lock = None
        try:
            if self.directory is not None:
                file_lock = fasteners.InterProcessLock(self._path(key))
                left = max(0.0, deadline - time.monotonic())
                if not file_lock.acquire(blocking=blocking, timeout=left, delay=0.05,
                                         max_delay=0.5):
                    if not blocking:
                        thread_lock.release()
                        return False
                    raise ImageLockTimeout(image_id, self.timeout)
            if self.zookeeper is not None:
                zk_lock = self._zk_acquire(image_id, deadline, blocking)
                if zk_lock is None:
                    if file_lock is not None:
                        file_lock.release()
                    thread_lock.release()
                    return False
        except BaseException:
            if file_lock is not None and file_lock.acquired:
                file_lock.release()
            thread_lock.release()
            raise
        with self._guard:
            self._held[(key, owner)] = _Held(thread_lock, file_lock, zk_lock)
        waited = time.monotonic() - t0
        if waited > 1.0:
            LOG.info("import lock of image %s acquired by flow %s after %.1f s", image_id, owner,
                     waited)
        return True

    def wait_free(self, image_id: str, owner: str) -> None:
        """Wait until nobody holds the image's lock, without keeping it.

        Why: the spawns that queue behind an import only need to know it ended; they then
        look at the cache *together*. Holding the lock for that look serialised them (19
        waiters of a burst passed one at a time). Bounded by ``timeout`` like :meth:`hold`.
        """
        waiter = f"{owner}:waiting"
        self.hold(image_id, waiter)
        self.release(image_id, waiter)

    def _zk_acquire(self, image_id: str, deadline: float, blocking: bool = True):
        where = f"on the hosts sharing ZooKeeper {self.zookeeper.hosts}"
        try:
            lock = self.zookeeper.lock(image_id)
            left = max(0.0, deadline - time.monotonic())
            # kazoo removes its waiting node when the wait times out or fails.
            if not lock.acquire(blocking=blocking, timeout=left if blocking else None):
                return None
        except LockTimeout:
            raise ImageLockTimeout(image_id, self.timeout, where) from None
        except Exception as exc:  # noqa: BLE001 - kazoo's connect timeout is no KazooException
            raise ImageLockUnavailable(image_id, self.zookeeper.hosts, exc) from None
        return lock

    def close(self) -> None:
        """Drop the ZooKeeper connection (its locks go with its session)."""
        if self.zookeeper is not None:
            self.zookeeper.close()

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
            if held.zk_lock is not None:
                try:
                    held.zk_lock.release()
                except KazooException:  # the session went: its node went with it
                    LOG.warning("import lock of image %s: ZooKeeper node not released by "
                                "flow %s (session lost; the node went with it)", image_id,
                                owner, exc_info=True)
            if held.file_lock is not None:
                held.file_lock.release()
        finally:
            held.thread_lock.release()
        return True
