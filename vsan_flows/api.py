"""The library's front door and composition root: plans, live handles, spawn and snapshot.

Everything that decides *what* runs is made here (a :class:`~vsan_flows.runtime.plan.Plan`:
factory, JSON arguments, token-derived names); the runtime only runs plans. The live objects
a flow needs (vSphere session, image service, policy) come as one closeable :class:`Handles`,
so callers never touch a vSphere session themselves.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable

from oslo_config import cfg

from vsan_flows import conf as vconf
from vsan_flows import exceptions, names
from vsan_flows.imagelocks import ImageLocks, ZooKeeperLocks
from vsan_flows.images import ImageService, LocalImageService
from vsan_flows.policy import Policy
from vsan_flows.runtime import fencing, flowlock, jobs, persistence, runner
from vsan_flows.runtime.conductor import conductor_name
from vsan_flows.runtime.plan import Plan
from vsan_flows.vsphere.session import VSphere, connect

__all__ = ["Handles", "Plan", "open_handles", "plan", "resume_unfinished", "snapshot",
           "spawn"]

SPAWN_FACTORY = "vsan_flows.flows.spawn.make_spawn_flow"
SNAPSHOT_FACTORY = "vsan_flows.flows.snapshot.make_snapshot_flow"
ROOT_DISK_FACTORY = "vsan_flows.flows.root_disk.make_root_disk_flow"


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
OPERATIONS: dict[str, tuple[str, Callable[[str], dict]]] = {
    "spawn": (SPAWN_FACTORY,
              lambda token: {names.IMPORT_VM_NAME: f"vsanflows-import-{token}"}),
    "snapshot": (SNAPSHOT_FACTORY,
                 lambda token: {names.SNAPSHOT_NAME: f"vsanflows-snapshot-{token}",
                                names.CLONE_VM_NAME: f"vsanflows-export-{token}"}),
    # nova's spawn on vSAN (vsan_flows.nova): nova builds the VM, we cache and link its disk.
    "nova-root-disk": (ROOT_DISK_FACTORY,
                       lambda token: {names.IMPORT_VM_NAME: f"vsanflows-import-{token}"}),
}


#: vSphere's limit on a VM name; the instance VM is named after the instance.
MAX_INSTANCE_NAME = 80
#: Image ids are Glance UUIDs or local store names; anything longer is not an id.
MAX_IMAGE_ID = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_name(what: str, value: object, limit: int) -> None:
    """Refuse at the edge what vCenter, the image store or the flow database cannot take."""
    if not isinstance(value, str) or not value.strip():
        raise exceptions.InvalidInput(what, value, "it must be a non-empty string")
    if len(value) > limit:
        raise exceptions.InvalidInput(what, value, f"it is {len(value)} characters long; the "
                                      f"limit is {limit}")
    if _CONTROL.search(value):
        raise exceptions.InvalidInput(what, value, "it contains control characters (a newline "
                                      "or tab pasted with it?)")


def plan(conf: cfg.ConfigOpts, operation: str, instance_name: str, image_id: str, *,
         on_restart: str = "resume", **factory_kwargs) -> Plan:
    """The flow for ``operation`` on this instance and image, run here or by a conductor.

    ``on_restart`` says what a restarted host does with it if it was interrupted: "resume"
    (finish it) or "revert" (roll it back: nova, for one, gives up on what it was building).
    """
    if operation not in OPERATIONS:
        raise exceptions.FlowError(operation, "is not an operation",
                                   f"Use one of: {', '.join(sorted(OPERATIONS))}.")
    _check_name("instance name", instance_name, MAX_INSTANCE_NAME)
    _check_name("image id", image_id, MAX_IMAGE_ID)
    factory, token_names = OPERATIONS[operation]
    token = uuid.uuid4().hex[:12]
    return Plan(
        operation=operation, factory=factory,
        factory_kwargs={"retries": conf.vsan_flows.import_retries, **factory_kwargs},
        store={names.INSTANCE_NAME: instance_name, names.IMAGE_ID: image_id,
               names.FLOW_TOKEN: token, **token_names(token)},
        book_meta={"operation": operation, "instance": instance_name, "image": image_id,
                   "on_restart": on_restart})


# --------------------------------------------------------------------------- live handles


class Handles:
    """The live objects every flow gets as transient values; rebuilt per host, never stored.

    Closing logs out of vCenter, but only a session these handles opened themselves: a
    session passed in belongs to its caller.
    """

    def __init__(self, vsphere: VSphere, images: ImageService, policy: Policy, *,
                 owns_vsphere: bool = False, image_locks: ImageLocks | None = None,
                 owns_image_locks: bool = False) -> None:
        self.vsphere = vsphere
        self.images = images
        self.policy = policy
        # Without a directory: threads of this process only (open_handles gives the host's).
        self.image_locks = image_locks or ImageLocks(None)
        self._owns_vsphere = owns_vsphere
        self._owns_image_locks = owns_image_locks

    def transients(self) -> dict:
        # In the caller's process no jobboard claim can be lost: the runner's per-flow lock
        # keeps a second local runner away. A conductor injects its job's fence instead.
        return {names.VSPHERE: self.vsphere, names.IMAGES: self.images,
                names.POLICY: self.policy, names.IMAGE_LOCKS: self.image_locks,
                names.FENCE: fencing.UNFENCED}

    def close(self) -> None:
        if self._owns_image_locks:  # its ZooKeeper connection, if it made one
            self._owns_image_locks = False
            self.image_locks.close()
        if self._owns_vsphere:
            self._owns_vsphere = False
            self.vsphere.close()

    def __enter__(self) -> Handles:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def image_locks(conf: cfg.ConfigOpts) -> ImageLocks:
    """The import locks: every process with this state_dir shares them, and every host that
    shares the jobboard's ZooKeeper when one is configured."""
    shared = None
    if conf.vsan_flows.jobboard_hosts:
        shared = ZooKeeperLocks(jobs.board_hosts(conf), jobs.board_path(conf),
                                f"{conductor_name(conf)}:{os.getpid()}",
                                conf.vsan_flows.jobboard_session_timeout)
    return ImageLocks(os.path.join(vconf.state_dir(conf), "locks"),
                      conf.vsan_flows.image_lock_timeout, zookeeper=shared)


def flow_locks(conf: cfg.ConfigOpts) -> flowlock.FlowLocks:
    """The host's flow locks: a flow runs in at most one live process of this host."""
    return flowlock.for_conf(conf)


def open_handles(conf: cfg.ConfigOpts, *, vsphere: VSphere | None = None,
                 images: ImageService | None = None) -> Handles:
    """Live handles from config; pieces passed in are used as they are (and not closed)."""
    return Handles(vsphere or connect(conf), images or image_service(conf),
                   Policy.from_conf(conf), owns_vsphere=vsphere is None,
                   image_locks=image_locks(conf), owns_image_locks=True)


# --------------------------------------------------------------------------- operations


def spawn(conf: cfg.ConfigOpts, instance_name: str, image_id: str, *,
          vsphere: VSphere | None = None, images: ImageService | None = None,
          handles: Handles | None = None, backend=None, listeners: tuple = (),
          power_on: bool = False, context=None) -> dict:
    """Deploy ``image_id`` as the VM ``instance_name``; returns the flow's facts.

    Raises a VsanFlowsError subclass when it cannot; by then everything the flow created has
    been rolled back.
    """
    return _run(conf, plan(conf, "spawn", instance_name, image_id, power_on=power_on),
                handles, vsphere, images, backend, listeners, context)


def snapshot(conf: cfg.ConfigOpts, instance_name: str, image_id: str, *,
             vsphere: VSphere | None = None, images: ImageService | None = None,
             handles: Handles | None = None, backend=None, listeners: tuple = (),
             context=None) -> dict:
    """Export ``instance_name``'s disk into the existing empty image ``image_id``.

    On failure everything temporary is removed and the image is marked killed (or deleted),
    so it can never be mistaken for a usable snapshot (Glance cannot mark it killed: it is
    deleted there).
    """
    return _run(conf, plan(conf, "snapshot", instance_name, image_id), handles, vsphere,
                images, backend, listeners, context)


@contextlib.contextmanager
def _backend(conf: cfg.ConfigOpts, backend):
    """The caller's backend, or one opened for this call and closed after it."""
    if backend is not None:
        yield backend
        return
    own = persistence.open_backend(conf)
    try:
        yield own
    finally:
        own.close()


def _run(conf, p: Plan, handles, vsphere, images, backend, listeners, context=None) -> dict:
    with contextlib.ExitStack() as stack:
        if images is None and context is not None:
            # A user's context makes a per-run image service: Glance is called as that user.
            images = image_service(conf, context)
        if handles is None:
            handles = stack.enter_context(open_handles(conf, vsphere=vsphere, images=images))
        elif images is not None:
            handles = Handles(handles.vsphere, images, handles.policy,  # owns nothing
                              image_locks=handles.image_locks)
        store = stack.enter_context(_backend(conf, backend))
        # However the engine ends (done, reverted, suspended, crashed in here), the locks its
        # flow took are not needed by anyone in this process any more.
        stack.callback(handles.image_locks.release_owner, p.store[names.FLOW_TOKEN])
        return runner.run(p, handles.transients(), backend=store,
                          engine=conf.vsan_flows.engine,
                          max_workers=conf.vsan_flows.max_workers, listeners=listeners,
                          locks=flow_locks(conf))


def resume_unfinished(conf: cfg.ConfigOpts, *, vsphere: VSphere | None = None,
                      images: ImageService | None = None, handles: Handles | None = None,
                      backend=None) -> list[tuple[str, str, str]]:
    """What a restarted compute service calls first: finish or roll back this host's flows.

    No vCenter login unless there is something to resume.
    """
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(_backend(conf, backend))

        def make_transients() -> dict:
            live = handles or stack.enter_context(
                open_handles(conf, vsphere=vsphere, images=images))
            return live.transients()

        return runner.resume_all(store, make_transients, engine=conf.vsan_flows.engine,
                                 max_workers=conf.vsan_flows.max_workers,
                                 locks=flow_locks(conf))
