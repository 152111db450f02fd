"""The library's front door: spawn and snapshot by name, as the nova façade calls them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from oslo_config import cfg

from vsan_flows import conf as vconf
from vsan_flows import exceptions
from vsan_flows.images import ImageService, LocalImageService
from vsan_flows.policy import Policy
from vsan_flows.runtime import persistence, runner
from vsan_flows.vsphere.session import VSphere, connect

__all__ = ["connect", "live_handles", "resume_unfinished", "snapshot", "spawn"]

SPAWN_FACTORY = "vsan_flows.flows.spawn.make_spawn_flow"
SNAPSHOT_FACTORY = "vsan_flows.flows.snapshot.make_snapshot_flow"


def image_service(conf: cfg.ConfigOpts, context=None) -> ImageService:
    """The configured image service ([vsan_flows] image_service); the one place that chooses.

    ``context`` (a user's request context or token) is used by Glance for the calls of this
    run; without one, Glance is used as the [glance] service user, which is what a resumed flow
    or a conductor has. The local store has no users and ignores it.
    """
    if conf.vsan_flows.image_service == "glance":
        from vsan_flows.glance import GlanceImageService  # glanceclient only when configured

        return GlanceImageService.from_conf(conf, context)
    return LocalImageService(vconf.image_store_dir(conf))


# operation -> (flow factory, the names a flow gives things in vCenter, from its token).
# Every such name carries the token, fixed before the flow runs, so a revert after a crash
# finds things by these persisted names.
OPERATIONS = {
    "spawn": (SPAWN_FACTORY,
              lambda token: {"import_vm_name": f"vsanflows-import-{token}"}),
    "snapshot": (SNAPSHOT_FACTORY,
                 lambda token: {"snapshot_name": f"vsanflows-snapshot-{token}",
                                "clone_vm_name": f"vsanflows-export-{token}"}),
}


@dataclass(frozen=True)
class Plan:
    """Everything that defines one flow run, all JSON-able facts: what is persisted."""

    operation: str
    factory: str
    factory_kwargs: dict
    store: dict
    book_meta: dict

    @property
    def book_name(self) -> str:
        return f"{self.operation} {self.store['instance_name']}"


def plan(conf: cfg.ConfigOpts, operation: str, instance_name: str, image_id: str,
         **factory_kwargs) -> Plan:
    """The flow for ``operation`` on this instance and image, run here or by a conductor."""
    if operation not in OPERATIONS:
        raise exceptions.FlowError(operation, "is not an operation",
                                   f"Use one of: {', '.join(sorted(OPERATIONS))}.")
    factory, names = OPERATIONS[operation]
    token = uuid.uuid4().hex[:12]
    return Plan(
        operation=operation, factory=factory,
        factory_kwargs={"retries": conf.vsan_flows.import_retries, **factory_kwargs},
        store={"instance_name": instance_name, "image_id": image_id, "flow_token": token,
               **names(token)},
        book_meta={"operation": operation, "instance": instance_name, "image": image_id,
                   "on_restart": "resume"})


def spawn(conf: cfg.ConfigOpts, instance_name: str, image_id: str, *,
          vsphere: VSphere | None = None, images: ImageService | None = None,
          backend=None, listeners: tuple = (), power_on: bool = False, context=None) -> dict:
    """Deploy ``image_id`` as the VM ``instance_name``; returns the flow's facts.

    Raises a VsanFlowsError subclass when it cannot; by then everything the flow created has
    been rolled back.
    """
    return _run(conf, plan(conf, "spawn", instance_name, image_id, power_on=power_on),
                vsphere, images or _images_for(conf, context), backend, listeners)


def snapshot(conf: cfg.ConfigOpts, instance_name: str, image_id: str, *,
             vsphere: VSphere | None = None, images: ImageService | None = None,
             backend=None, listeners: tuple = (), context=None) -> dict:
    """Export ``instance_name``'s disk into the existing empty image ``image_id``.

    On failure everything temporary is removed and the image is marked killed (or deleted),
    so it can never be mistaken for a usable snapshot (Glance cannot mark it killed: it is
    deleted there).
    """
    return _run(conf, plan(conf, "snapshot", instance_name, image_id), vsphere,
                images or _images_for(conf, context), backend, listeners)


def _images_for(conf: cfg.ConfigOpts, context) -> ImageService | None:
    """A user's context makes a per-run image service; without one the default is built."""
    return image_service(conf, context) if context is not None else None


def _run(conf, p: Plan, vsphere, images, backend, listeners) -> dict:
    return runner.run(
        p.factory, p.factory_kwargs, p.store, live_handles(conf, vsphere=vsphere, images=images),
        backend=backend or persistence.open_backend(conf), book_name=p.book_name,
        book_meta=p.book_meta, engine=conf.vsan_flows.engine, listeners=listeners)


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
