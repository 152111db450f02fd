"""One live runner per flow on a host: the lock a process holds while it runs a flow.

Why: the store records a flow's state, not whether a process is executing it, so a RUNNING flow
looks the same whether its process is alive or died. ``resume_unfinished`` in a second process
(or ``vsan-flows flows resume --force``) then ran a flow its live owner was still running: five
ImportVApp calls, three destroys and an orphan folder (issue 11). With this lock, a process
runs, resumes or reverts a flow only while holding the flow's lock, and the lock dies with the
process, so "RUNNING and locked" means a live owner, "RUNNING and free" a dead one.

Why this shape:

* **flock on a file per flow** under ``<state_dir>/flows``: the kernel releases it when the
  holder dies however it dies (SIGKILL included), it excludes separate opens in one process too
  (threads), and it needs no service. Across hosts the jobboard claim is the lock (conductors)
  and a flow's logbook names its host, which the admin guards check (runtime/admin.py).
* **Never waits.** A busy flow is someone else's work, not a queue: callers skip it (resume on
  restart) or refuse with :class:`~vsan_flows.exceptions.FlowBusy` naming the holder.
* **Holder recorded in the file** (pid, host, since) so a refusal can say who runs the flow.
* **The file is removed on release**, and an acquirer checks that the file it locked is still
  the one at the path (a process that opened it just before the unlink would otherwise hold a
  lock on a dead file while a third locks a new one).
* Keyed by the flow's logbook uuid: every caller knows the book (one flow per book), and a new
  flow's book uuid exists before anything is saved, so a new flow is locked before another
  process can see it in the store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import re
import socket
import threading
from collections.abc import Iterator

from oslo_config import cfg

from vsan_flows import conf as vconf
from vsan_flows.exceptions import FlowBusy

_SAFE = re.compile(r"^[A-Za-z0-9-]{1,64}$")

# Locks held by this process, per (directory, key): a second runner in this process is refused
# without touching the file system (and tests without a directory still get thread exclusion).
_HELD: dict[tuple[str | None, str], int | None] = {}
_HELD_GUARD = threading.Lock()


class FlowLocks:
    """The flow locks of one host (``directory``; ``None``: this process only)."""

    def __init__(self, directory: str | None) -> None:
        self.directory = None if directory is None else os.path.abspath(directory)
        if self.directory is not None:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def _path(self, key: str) -> str:
        if not _SAFE.match(key):
            raise ValueError(f"not a flow lock key: {key!r}")
        return os.path.join(self.directory, f"{key}.lock")

    @contextlib.contextmanager
    def hold(self, key: str, flow: str | None = None) -> Iterator[None]:
        """Hold ``key``'s lock for the block; FlowBusy at once when a live runner has it."""
        self.acquire(key, flow)
        try:
            yield
        finally:
            self.release(key)

    def acquire(self, key: str, flow: str | None = None) -> None:
        with _HELD_GUARD:
            if (self.directory, key) in _HELD:
                raise FlowBusy(flow or key, f"another thread of this process (pid {os.getpid()})")
            _HELD[(self.directory, key)] = None
        try:
            fd = self._lock_file(key, flow) if self.directory is not None else None
        except BaseException:
            with _HELD_GUARD:
                _HELD.pop((self.directory, key), None)
            raise
        with _HELD_GUARD:
            _HELD[(self.directory, key)] = fd

    def release(self, key: str) -> None:
        with _HELD_GUARD:
            fd = _HELD.pop((self.directory, key), None)
        if fd is None:
            return
        # Unlink while still holding it: whoever opens the path next gets a new file, and
        # whoever opened the old one sees the swap (see _lock_file) and starts over.
        # Emptied first: closing the last descriptor of an unlinked file that still holds
        # data makes ext4 free it then, through its orphan list: measured 0.14 ms per flow
        # on an idle disk and 1-3 ms on a busy one, against 0.01 ms for truncate, unlink and
        # close. (A `holder` reading in between sees no record and says "a live process of
        # this host", which it still is.)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))
        os.close(fd)

    def holder(self, key: str) -> str | None:
        """Who holds ``key`` right now (a description), or None when no live process does."""
        with _HELD_GUARD:
            if (self.directory, key) in _HELD:
                return f"this process (pid {os.getpid()})"
        if self.directory is None:
            return None
        try:
            fd = os.open(self._path(key), os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                return _describe(fd)
            return None  # a file nobody holds: left by a holder that died
        finally:
            os.close(fd)

    def _lock_file(self, key: str, flow: str | None) -> int:
        path = self._path(key)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _describe(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) \
                    else None
                os.close(fd)
                if holder is None:
                    raise
                raise FlowBusy(flow or key, holder) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:  # released and unlinked between our open and our lock
                os.close(fd)
                continue
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            return fd


def _describe(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {int(record['pid'])} on {record['host']} (since {record['since']})"
    except (ValueError, KeyError, TypeError, OSError):
        return "a live process of this host"


_PROCESS_ONLY = FlowLocks(None)


def process_only() -> FlowLocks:
    """Locks that exclude threads of this process only (callers without a state_dir)."""
    return _PROCESS_ONLY


def for_conf(conf: cfg.ConfigOpts) -> FlowLocks:
    """The host's flow locks: every process with this state_dir shares them."""
    return FlowLocks(os.path.join(vconf.state_dir(conf), "flows"))
