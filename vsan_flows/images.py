"""The image service the flows read from (spawn) and write to (snapshot).

``ImageService`` is the small slice of Glance the flows use, so tasks can run against Glance in
production and against :class:`LocalImageService` (a directory) in tests, the demo and offline
setups. Both stream: disks are gigabytes, and a service that loads an image into memory fails
exactly on the images that matter.

An image becomes ``active`` only after every byte has landed and been fsynced: a snapshot export
that dies half way must leave an image that is visibly not usable (``queued``, or ``killed``
once the flow gives up), never an active image with half a disk in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from vsan_flows.exceptions import (
    ImageAlreadyHasData,
    ImageError,
    ImageNotFound,
    IncompleteTransfer,
)

CHUNK = 1 << 20

STATUS_QUEUED = "queued"
STATUS_SAVING = "saving"
STATUS_ACTIVE = "active"
STATUS_KILLED = "killed"

# Fields of ImageMeta that callers may set; anything else given to create()/upload() is a
# custom property, as Glance flattens them.
_SETTABLE = ("name", "disk_format", "container_format", "min_disk", "min_ram")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ImageMeta:
    """An image record. ``size`` is the stored file's byte count, not the disk's virtual size."""

    id: str
    name: str | None = None
    disk_format: str | None = None
    container_format: str | None = None
    size: int | None = None
    status: str = STATUS_QUEUED
    properties: Mapping[str, Any] = field(default_factory=dict)
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    min_disk: int = 0
    min_ram: int = 0
    created_at: str | None = None
    updated_at: str | None = None

    @property
    def vmware_disktype(self) -> str | None:
        return self.properties.get("vmware_disktype")

    @property
    def vmware_adaptertype(self) -> str | None:
        return self.properties.get("vmware_adaptertype")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["properties"] = dict(self.properties)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageMeta:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@runtime_checkable
class ImageService(Protocol):
    """What flows need from an image service. Implementations must stream, never buffer."""

    def show(self, image_id: str) -> ImageMeta: ...

    def open(self, image_id: str, length: int | None = None) -> BinaryIO:
        """A binary file-like over an active image's data; the caller closes it.

        ``length`` says only the first bytes are wanted (a header peek): a remote service
        fetches just those (Glance: a ranged GET) instead of opening a whole download.
        """
        ...

    def create(self, meta: Mapping[str, Any]) -> str:
        """A new empty image record (status queued); returns its id."""
        ...

    def upload(
        self,
        image_id: str,
        data: Iterable[bytes] | BinaryIO,
        meta: Mapping[str, Any] | None = None,
    ) -> ImageMeta:
        """Store the whole stream; the image turns active only when all of it has landed."""
        ...

    def delete(self, image_id: str) -> None: ...

    def mark_killed(self, image_id: str, reason: str) -> None:
        """Make an image that will never get data unusable for good: marked killed where the
        service lets a client do that (the local store), deleted where it does not (Glance)."""
        ...

    def list(self) -> list[ImageMeta]: ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _chunks(data: Iterable[bytes] | BinaryIO) -> Iterable[bytes]:
    read = getattr(data, "read", None)
    if read is None:
        yield from data  # type: ignore[misc]
        return
    while True:
        chunk = read(CHUNK)
        if not chunk:
            return
        yield chunk


def _libc_sync_file_range():
    """glibc's sync_file_range(2), or None: Python's os module has no binding for it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _libc_sync_file_range()
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4


class _WriteBehind:
    """Write-back of an upload as it is written, and its pages out of the cache once on disk.

    Without it a multi-GiB upload piles up as dirty page cache, the kernel writes it back when
    it chooses, and the final fsync waits for whatever is left; and every page of the upload
    is a page the kernel has to find and fill for the first time (measured on the benchmark
    machine, a VM: writing 540 MB into fresh page cache took 0.6-0.9 s of CPU, into recycled
    pages 0.09-0.14 s). Here each WINDOW's write-back starts as soon as it is written
    (``sync_file_range`` WRITE, asynchronous), the window before it is waited for and
    dropped (``posix_fadvise`` DONTNEED), so at most a few windows are dirty or cached at a
    time, the pages are recycled, the disk works while the stream goes on, and the final
    fsync finds almost nothing to do. That fsync stays the durability point: sync_file_range
    writes data, not metadata, and flushes no disk cache.

    Where sync_file_range is missing (not Linux/glibc) or the filesystem refuses it, this
    does nothing and the final fsync writes everything, as before.
    """

    WINDOW = 8 << 20

    def __init__(self, f) -> None:
        self._f = f
        self._fd = f.fileno()
        self._on = _SYNC_FILE_RANGE is not None and hasattr(os, "posix_fadvise")
        self._started = 0  # write-back started for [0, _started)
        self._dropped = 0  # on disk and out of the cache for [0, _dropped)

    def written(self, end: int) -> None:
        """``end`` bytes have been written to the file so far."""
        if not self._on or end - self._started < self.WINDOW:
            return
        self._f.flush()
        if not self._sync(self._started, end - self._started, _SFR_WRITE):
            return
        # The window before the one just started: wait until it is on disk, then drop it.
        if self._started - self._dropped >= self.WINDOW:
            if not self._sync(self._dropped, self._started - self._dropped,
                              _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER):
                return
            os.posix_fadvise(self._fd, self._dropped, self._started - self._dropped,
                             os.POSIX_FADV_DONTNEED)
            self._dropped = self._started
        self._started = end

    def drop_all(self) -> None:
        """After the final fsync: the stored upload leaves nothing of itself in the cache."""
        if self._on:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def _sync(self, offset: int, nbytes: int, flags: int) -> bool:
        if _SYNC_FILE_RANGE(self._fd, offset, nbytes, flags) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP):
            self._on = False  # not here: the final fsync writes everything
            return False
        raise OSError(err, f"sync_file_range: {os.strerror(err)}")


def _split_meta(meta: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate record fields from custom properties (Glance-style flat or nested)."""
    fields: dict[str, Any] = {}
    props: dict[str, Any] = dict(meta.get("properties") or {})
    for key, value in meta.items():
        if key in _SETTABLE:
            fields[key] = value
        elif key in ("id", "properties", "size", "status", "os_hash_algo", "os_hash_value"):
            continue
        elif key in ("created_at", "updated_at", "checksum"):
            continue
        else:
            props[key] = value
    return fields, props


def _write_atomic(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalImageService:
    """Images in a directory: ``<id>.data`` (the bytes) and ``<id>.json`` (the record).

    Upload rules, chosen for retried exports: ``queued`` and ``saving`` images accept an
    upload (``saving`` is what a crashed upload leaves, and the export subflow's retry must be
    able to write again); ``active`` raises ``ImageAlreadyHasData``; ``killed`` is final.
    If ``meta`` carries ``size``, the received byte count must equal it.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ paths and records

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        if not isinstance(image_id, str) or not _ID_RE.fullmatch(image_id):
            raise ImageNotFound(str(image_id))
        return self.directory / f"{image_id}.data", self.directory / f"{image_id}.json"

    def _load(self, image_id: str) -> ImageMeta:
        _, meta_path = self._paths(image_id)
        try:
            raw = meta_path.read_text()
        except FileNotFoundError:
            raise ImageNotFound(image_id) from None
        return ImageMeta.from_dict(json.loads(raw))

    def _save(self, meta: ImageMeta) -> None:
        _, meta_path = self._paths(meta.id)
        payload = json.dumps(meta.to_dict(), indent=2, sort_keys=True).encode()
        _write_atomic(meta_path, payload)

    # ------------------------------------------------------------------ protocol

    def show(self, image_id: str) -> ImageMeta:
        return self._load(image_id)

    def open(self, image_id: str, length: int | None = None) -> BinaryIO:
        # A local file costs nothing to leave unread: ``length`` needs no special handling.
        meta = self._load(image_id)
        if meta.status != STATUS_ACTIVE:
            raise ImageError(
                f"Image {image_id} has no data to read (status {meta.status}); only active "
                "images can be deployed. Wait for its upload to finish or upload it again."
            )
        data_path, _ = self._paths(image_id)
        try:
            return open(data_path, "rb")  # the caller owns and closes it
        except FileNotFoundError:
            raise ImageError(
                f"Image {image_id} is active but its data file {data_path} is missing; the "
                "local image store is damaged. Delete the image and upload it again."
            ) from None

    def create(self, meta: Mapping[str, Any]) -> str:
        image_id = str(meta.get("id") or uuid.uuid4())
        if not _ID_RE.fullmatch(image_id):
            raise ImageError(
                f"Image id {image_id!r} is not allowed; use letters, digits, '-', '_' or '.' "
                "(or omit it to get a UUID)."
            )
        fields, props = _split_meta(meta)
        with self._lock:
            if self._paths(image_id)[1].exists():
                raise ImageError(f"Image {image_id} already exists; choose another id.")
            now = _now()
            self._save(
                ImageMeta(
                    id=image_id,
                    properties=props,
                    status=STATUS_QUEUED,
                    created_at=now,
                    updated_at=now,
                    **fields,
                )
            )
        return image_id

    def upload(
        self,
        image_id: str,
        data: Iterable[bytes] | BinaryIO,
        meta: Mapping[str, Any] | None = None,
    ) -> ImageMeta:
        data_path, _ = self._paths(image_id)
        with self._writer(image_id):
            return self._upload(image_id, data_path, data, meta)

    @contextlib.contextmanager
    def _writer(self, image_id: str):
        """Be the one writer of ``image_id`` for the whole upload, or refuse at once.

        An advisory lock on ``<id>.lock``, which the kernel drops when its holder dies: a
        crashed upload never blocks the next one, and two live ones never interleave (the
        slower would replace, or on failure reset, the faster one's finished image).
        """
        lock_path = self.directory / f"{image_id}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ImageAlreadyHasData(
                    image_id, "saving (another upload is writing it right now)") from None
            # Whatever a crashed writer left half-written is nobody's any more.
            for part in self.directory.glob(f"{image_id}.*.part"):
                part.unlink(missing_ok=True)
            yield
        finally:
            os.close(fd)

    def _upload(self, image_id: str, data_path: Path, data: Iterable[bytes] | BinaryIO,
                meta: Mapping[str, Any] | None) -> ImageMeta:
        with self._lock:
            current = self._load(image_id)
            if current.status == STATUS_ACTIVE:
                raise ImageAlreadyHasData(image_id, current.status)
            if current.status == STATUS_KILLED:
                raise ImageError(
                    f"Image {image_id} was killed and cannot take data; create a new image."
                )
            self._save(replace(current, status=STATUS_SAVING, updated_at=_now()))

        expected = (meta or {}).get("size")
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f"{image_id}.", suffix=".part")
        digest = hashlib.sha256()
        received = 0
        try:
            with os.fdopen(fd, "wb") as f:
                behind = _WriteBehind(f)
                for chunk in _chunks(data):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    behind.written(received)
                f.flush()
                os.fsync(f.fileno())
                behind.drop_all()
            if expected is not None and received != expected:
                raise IncompleteTransfer(
                    f"Upload of image {image_id}",
                    bytes_sent=received,
                    bytes_expected=expected,
                    bytes_stored=0,
                )
            with self._lock:  # checked again at commit, not only at the start
                status = self._load(image_id).status
                if status != STATUS_SAVING:
                    raise ImageAlreadyHasData(image_id, status)
                os.replace(tmp, data_path)
            _fsync_dir(self.directory)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            with self._lock:
                try:  # back to queued so a retry may upload again
                    self._save(
                        replace(self._load(image_id), status=STATUS_QUEUED, updated_at=_now())
                    )
                except ImageNotFound:
                    pass  # deleted meanwhile; the original error is what matters
            raise

        fields, props = _split_meta(meta or {})
        with self._lock:
            current = self._load(image_id)
            done = replace(
                current,
                size=received,
                status=STATUS_ACTIVE,
                os_hash_algo="sha256",
                os_hash_value=digest.hexdigest(),
                properties={**current.properties, **props},
                updated_at=_now(),
                **fields,
            )
            self._save(done)
        return done

    def delete(self, image_id: str) -> None:
        """Remove the image; ``ImageNotFound`` if it is already gone (reverts may ignore that)."""
        data_path, meta_path = self._paths(image_id)
        with self._lock:
            if not meta_path.exists():
                raise ImageNotFound(image_id)
            data_path.unlink(missing_ok=True)
            for part in self.directory.glob(f"{image_id}.*.part"):
                part.unlink(missing_ok=True)
            meta_path.unlink()
            (self.directory / f"{image_id}.lock").unlink(missing_ok=True)

    def mark_killed(self, image_id: str, reason: str) -> None:
        """Mark an image that will never get data, keeping the reason for the operator."""
        data_path, _ = self._paths(image_id)
        with self._lock:
            current = self._load(image_id)
            if current.status == STATUS_ACTIVE:
                raise ImageAlreadyHasData(image_id, current.status)
            data_path.unlink(missing_ok=True)
            self._drop_stale_parts(image_id)
            props = {**current.properties, "vsan_flows_kill_reason": reason}
            self._save(
                replace(current, status=STATUS_KILLED, properties=props, updated_at=_now())
            )

    def _drop_stale_parts(self, image_id: str) -> None:
        """Remove what a writer that died left half-written, unless a writer is live now."""
        lock_path = self.directory / f"{image_id}.lock"
        if not lock_path.exists():
            return
        fd = os.open(lock_path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a live upload owns its .part; it removes it itself on failure
            for part in self.directory.glob(f"{image_id}.*.part"):
                part.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def list(self) -> list[ImageMeta]:
        images = []
        for meta_path in self.directory.glob("*.json"):
            try:
                images.append(self._load(meta_path.stem))
            except (ImageNotFound, ValueError):
                continue  # deleted meanwhile, or a stray file that is not ours
        return sorted(images, key=lambda m: (m.name or "", m.id))

    # ------------------------------------------------------------------ helpers

    def add_file(
        self,
        path: str | os.PathLike[str],
        name: str,
        disk_format: str = "vmdk",
        vmware_disktype: str | None = "streamOptimized",
        *,
        container_format: str = "bare",
        vmware_adaptertype: str | None = "lsiLogic",
        vmware_ostype: str | None = "otherGuest",
        vmware_image_version: int | None = 1,
        properties: Mapping[str, Any] | None = None,
        image_id: str | None = None,
    ) -> str:
        """Register a local disk file as an active image (tests, demo); returns the id."""
        props: dict[str, Any] = {
            k: v
            for k, v in (
                ("vmware_disktype", vmware_disktype),
                ("vmware_adaptertype", vmware_adaptertype),
                ("vmware_ostype", vmware_ostype),
                ("vmware_image_version", vmware_image_version),
            )
            if v is not None
        }
        props.update(properties or {})
        meta: dict[str, Any] = {
            "name": name,
            "disk_format": disk_format,
            "container_format": container_format,
            "properties": props,
        }
        if image_id:
            meta["id"] = image_id
        new_id = self.create(meta)
        with open(path, "rb") as f:
            self.upload(new_id, f)
        return new_id
