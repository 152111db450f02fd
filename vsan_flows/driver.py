"""A nova-shaped façade: nova's spawn/snapshot signatures in, flows run, nova-like errors out.

Inside nova, use the real compute driver instead: :mod:`vsan_flows.nova.driver` (nova builds the
VM, our flows cache the image and link its root disk, nova's exception classes). This façade
stays for callers without nova (scripts, the standalone library tests); it creates the whole VM
itself, without nova's identity, so nova could not manage what it makes.

It works with any objects carrying nova's attribute names (``instance.uuid``,
``image_meta.id``...) and imports nothing from nova, so the vmwareapi driver can delegate to
it and tests can call it with plain objects. Like nova's vmwareapi driver, the VM of an
instance is named after ``instance.uuid``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from vsan_flows import api, exceptions, names
from vsan_flows.images import ImageService
from vsan_flows.runtime import persistence

# nova.compute.task_states values the vmwareapi driver reports during a snapshot.
IMAGE_PENDING_UPLOAD = "image_pending_upload"
IMAGE_UPLOADING = "image_uploading"


class NovaError(Exception):
    """Shaped like nova.exception.NovaException: msg_fmt, kwargs, code."""

    msg_fmt = "An unknown exception occurred."
    code = 500

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = {"code": self.code, **kwargs}
        super().__init__(self.msg_fmt % kwargs)


class InstanceDeployFailure(NovaError):
    msg_fmt = "Failed to deploy instance: %(reason)s"


class ImageUnacceptable(NovaError):
    msg_fmt = "Image %(image_id)s is unacceptable: %(reason)s"
    code = 400


class ImageNotFound(NovaError):
    msg_fmt = "Image %(image_id)s could not be found."
    code = 404


class InstanceNotFound(NovaError):
    msg_fmt = "Instance %(instance_id)s could not be found."
    code = 404


class ImageAlreadyHasData(NovaError):
    msg_fmt = "Image %(image_id)s already has data: %(reason)s"
    code = 409


class SnapshotFailure(NovaError):
    msg_fmt = "Snapshot of instance %(instance_id)s failed: %(reason)s"


class VsanFlowsDriver:
    """One vCenter session and one flow store per driver, as nova keeps one per process.

    Both are opened on first use (no login and no schema check until there is work) and
    released by :meth:`close`.
    """

    def __init__(self, conf: cfg.ConfigOpts, *, handles: api.Handles | None = None,
                 images: ImageService | None = None, backend=None) -> None:
        self.conf = conf
        self._handles = handles
        self._images = images
        self._backend = backend
        self._owns_backend = backend is None

    def _live(self) -> api.Handles:
        if self._handles is None:
            self._handles = api.open_handles(self.conf, images=self._images)
        return self._handles

    def _store(self):
        if self._backend is None:
            self._backend = persistence.open_backend(self.conf)
        return self._backend

    def close(self) -> None:
        if self._handles is not None:
            self._handles.close()
        if self._owns_backend and self._backend is not None:
            self._backend.close()
            self._backend = None

    def init_host(self, host: str | None = None) -> list[tuple[str, str, str]]:
        """nova calls this when nova-compute starts: finish what a restart interrupted."""
        return api.resume_unfinished(self.conf, handles=self._handles, images=self._images,
                                     backend=self._store())

    def spawn(self, context, instance, image_meta, injected_files, admin_password,
              allocations, network_info=None, block_device_info=None, power_on=True,
              accel_info=None) -> None:
        image_id = _image_id(image_meta)
        try:
            api.spawn(self.conf, instance.uuid, image_id, handles=self._live(),
                      backend=self._store(), power_on=power_on,
                      context=context)  # Glance is called as the requesting user
        except (exceptions.InvalidImage, exceptions.InvalidInput) as exc:
            raise ImageUnacceptable(image_id=image_id, reason=str(exc)) from exc
        except exceptions.ImageNotFound as exc:
            raise ImageNotFound(image_id=image_id) from exc
        except exceptions.VsanFlowsError as exc:
            raise InstanceDeployFailure(reason=str(exc)) from exc

    def snapshot(self, context, instance, image_id: str,
                 update_task_state: Callable[..., Any]) -> None:
        update_task_state(task_state=IMAGE_PENDING_UPLOAD)
        try:
            api.snapshot(self.conf, instance.uuid, image_id, handles=self._live(),
                         backend=self._store(),
                         listeners=(_on_upload_start(update_task_state),), context=context)
        except exceptions.InstanceNotFound as exc:
            raise InstanceNotFound(instance_id=instance.uuid) from exc
        except exceptions.ImageNotFound as exc:
            raise ImageNotFound(image_id=image_id) from exc
        except exceptions.ImageAlreadyHasData as exc:
            raise ImageAlreadyHasData(image_id=image_id, reason=str(exc)) from exc
        except exceptions.VsanFlowsError as exc:
            raise SnapshotFailure(instance_id=instance.uuid, reason=str(exc)) from exc


def _image_id(image_meta) -> str:
    if isinstance(image_meta, dict):
        return str(image_meta["id"])
    return str(image_meta.id)


def _on_upload_start(update_task_state: Callable[..., Any]):
    """Report IMAGE_UPLOADING once, when the first byte is about to move (as nova does)."""
    from contextlib import contextmanager

    from taskflow import states

    @contextmanager
    def listener(engine):
        told = []

        def on_event(state, details):
            if (state == states.RUNNING and not told
                    and details.get("task_name") == names.STREAM_DISK_TO_IMAGE):
                told.append(True)
                update_task_state(task_state=IMAGE_UPLOADING,
                                  expected_state=IMAGE_PENDING_UPLOAD)

        engine.atom_notifier.register("*", on_event)
        try:
            yield
        finally:
            engine.atom_notifier.deregister("*", on_event)

    return listener
