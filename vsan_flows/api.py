"""The library's front door: spawn and snapshot by name, as the nova façade calls them."""

from __future__ import annotations

import uuid

from oslo_config import cfg

from vsan_flows import conf as vconf
from vsan_flows.images import ImageService, LocalImageService
from vsan_flows.policy import Policy
from vsan_flows.runtime import persistence, runner
from vsan_flows.vsphere.session import VSphere, connect

__all__ = ["connect", "live_handles", "resume_unfinished", "snapshot", "spawn"]

SPAWN_FACTORY = "vsan_flows.flows.spawn.make_spawn_flow"
SNAPSHOT_FACTORY = "vsan_flows.flows.snapshot.make_snapshot_flow"


def image_service(conf: cfg.ConfigOpts) -> ImageService:
    return LocalImageService(vconf.image_store_dir(conf))


def spawn(conf: cfg.ConfigOpts, instance_name: str, image_id: str, *,
          vsphere: VSphere | None = None, images: ImageService | None = None,
          backend=None, listeners: tuple = (), power_on: bool = False) -> dict:
    """Deploy ``image_id`` as the VM ``instance_name``; returns the flow's facts.

    Raises a VsanFlowsError subclass when it cannot; by then everything the flow created has
    been rolled back.
    """
    return _run("spawn", SPAWN_FACTORY, {"power_on": power_on},
                lambda token: {"import_vm_name": f"vsanflows-import-{token}"},
                conf, instance_name, image_id, vsphere, images, backend, listeners)


def snapshot(conf: cfg.ConfigOpts, instance_name: str, image_id: str, *,
             vsphere: VSphere | None = None, images: ImageService | None = None,
             backend=None, listeners: tuple = ()) -> dict:
    """Export ``instance_name``'s disk into the existing empty image ``image_id``.

    On failure everything temporary is removed and the image is marked killed (or deleted),
    so it can never be mistaken for a usable snapshot.
    """
    return _run("snapshot", SNAPSHOT_FACTORY, {},
                lambda token: {"snapshot_name": f"vsanflows-snapshot-{token}",
                               "clone_vm_name": f"vsanflows-export-{token}"},
                conf, instance_name, image_id, vsphere, images, backend, listeners)


def _run(operation, factory, factory_kwargs, names, conf, instance_name, image_id, vsphere,
         images, backend, listeners) -> dict:
    """Every name a flow gives things in vCenter carries its token, fixed before it runs, so
    a revert after a crash can find them by name."""
    token = uuid.uuid4().hex[:12]
    store = {"instance_name": instance_name, "image_id": image_id, "flow_token": token,
             **names(token)}
    return runner.run(
        factory, {"retries": conf.vsan_flows.import_retries, **factory_kwargs}, store,
        live_handles(conf, vsphere=vsphere, images=images),
        backend=backend or persistence.open_backend(conf),
        book_name=f"{operation} {instance_name}",
        book_meta={"operation": operation, "instance": instance_name, "image": image_id,
                   "on_restart": "resume"},
        engine=conf.vsan_flows.engine, listeners=listeners)


def live_handles(conf: cfg.ConfigOpts, *, vsphere: VSphere | None = None,
                 images: ImageService | None = None) -> dict:
    """The transient values every flow gets; rebuilt on each host, never persisted."""
    return {
        "vsphere": vsphere or connect(conf),
        "images": images or image_service(conf),
        "policy": Policy.from_conf(conf),
    }


def resume_unfinished(conf: cfg.ConfigOpts, *, vsphere: VSphere | None = None,
                      images: ImageService | None = None,
                      backend=None) -> list[tuple[str, str, str]]:
    """What a restarted compute service calls first: finish or roll back this host's flows."""
    backend = backend or persistence.open_backend(conf)
    return runner.resume_all(backend, lambda: live_handles(conf, vsphere=vsphere, images=images),
                             engine=conf.vsan_flows.engine)
