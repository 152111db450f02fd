"""The flows nova's driver runs: one vCenter session (nova's), one flow store, nova's host.

Flows run in the calling thread (nova's own worker), persisted under nova's ``[DEFAULT] host``
so that only this compute service picks them up after a restart, and marked "revert on
restart": nova sets a build interrupted by a restart ERROR (its init_host; no reschedule), and
deletes the image of an interrupted snapshot, so finishing either late would only leave
something nobody wants.
"""

from __future__ import annotations

import contextlib
import threading

from oslo_config import cfg

from vsan_flows import api
from vsan_flows import conf as vconf
from vsan_flows.images import LocalImageService
from vsan_flows.nova import cache_aging
from vsan_flows.policy import Policy
from vsan_flows.runtime import persistence, runner
from vsan_flows.vsphere import identity, schema_cache, suds_replies
from vsan_flows.vsphere.session import VSphere, settle_environment

GiB = 1024 ** 3


class NovaRuns:
    def __init__(self, conf: cfg.ConfigOpts, session) -> None:
        self.conf = conf
        # nova's session, shared by the threads of nova-compute (native threads by default):
        # the same suds reply isolation our own sessions get (see suds_replies).
        suds_replies.isolate_replies(session.vim.client)
        # Built by nova (WSDL loaded), so as safe to freeze as ours (see schema_cache).
        schema_cache.freeze(session.vim.client)
        # nova's session trusts the environment on every call as ours did; nova-compute's
        # environment is fixed at start, so it is read once here (see settle_environment).
        settle_environment(session.vim)
        v = conf.vmware
        self.vsphere = VSphere(session, v.host_ip, v.host_port, v.cluster_name,
                               conf.vsan_flows.image_transfer_timeout_secs,
                               cacerts=v.ca_file or not v.insecure)
        self.policy = Policy(
            datastore_types=[t.strip() for t in conf.vsan_flows.datastore_types if t.strip()],
            datastore_regex=vconf.datastore_pattern(conf),
            verify_stored_size=conf.vsan_flows.verify_stored_size)
        # The host's import locks (a file per image under state_dir): every nova-compute
        # worker and vsan-flows process on this host takes the same ones.
        self.image_locks = api.image_locks(conf)
        self.flow_locks = api.flow_locks(conf)
        self._backend = None
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return self.conf.host

    def backend(self):
        with self._lock:
            if self._backend is None:
                self._backend = persistence.open_backend(self.conf)
            return self._backend

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    def images(self, context):
        if self.conf.vsan_flows.nova_image_service == "local":
            return LocalImageService(vconf.image_store_dir(self.conf))
        from vsan_flows.nova.images import NovaImageService

        return NovaImageService(context)

    def handles(self, context) -> api.Handles:
        return api.Handles(self.vsphere, self.images(context), self.policy,
                           image_locks=self.image_locks)

    # ----------------------------------------------------------------- what nova asks

    def runs_on(self, datastore_ref) -> bool:
        """Is this a datastore our flows serve (by its summary.type)?"""
        kind = identity.datastore_type(self.vsphere, datastore_ref) or ""
        return kind.casefold() in {t.casefold() for t in self.policy.datastore_types}

    def instance_vm(self, instance_uuid: str) -> str | None:
        return identity.find_instance(self.vsphere, instance_uuid)

    def runs_on_vm(self, vm_id: str) -> bool:
        """Is the VM on a datastore our flows serve?"""
        return self.runs_on(identity.datastore_of(self.vsphere, vm_id)["moref"])

    def root_disk(self, context, instance_uuid: str, image_id: str, root_gb: int) -> dict:
        """Cache ``image_id`` on the VM's datastore and give the VM its linked root disk."""
        plan = api.plan(self.conf, "nova-root-disk", instance_uuid, image_id,
                        on_restart="revert", root_bytes=int(root_gb) * GiB)
        return self._run(plan, context)

    def snapshot(self, context, instance_uuid: str, image_id: str) -> dict:
        plan = api.plan(self.conf, "snapshot", instance_uuid, image_id, on_restart="revert")
        return self._run(plan, context)

    def age_image_cache(self, all_instances) -> dict[str, list[str]]:
        """Evict cache entries unused for nova's minimum age (vsan_flows.nova.cache_aging)."""
        ic = self.conf.image_cache
        return cache_aging.age(self.vsphere, self.image_locks, all_instances,
                               enabled=ic.remove_unused_base_images,
                               min_age_s=ic.remove_unused_original_minimum_age_seconds)

    def revert_interrupted(self, context) -> list[tuple[str, str, str]]:
        """Roll back every flow of this host that a crash interrupted (see module doc)."""
        return runner.resume_all(self.backend(),
                                 lambda: self.handles(context).transients(),
                                 engine=self.conf.vsan_flows.engine,
                                 max_workers=self.conf.vsan_flows.max_workers, host=self.host,
                                 locks=self.flow_locks,
                                 concurrency=self.conf.vsan_flows.max_concurrent_flows)

    def _run(self, plan, context) -> dict:
        with contextlib.closing(self.handles(context)) as live:
            return runner.run(plan, live.transients(), backend=self.backend(),
                              engine=self.conf.vsan_flows.engine,
                              max_workers=self.conf.vsan_flows.max_workers, host=self.host,
                              locks=self.flow_locks)

