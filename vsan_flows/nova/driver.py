"""The compute driver: ``[DEFAULT] compute_driver = vsan_flows.nova.driver.VsanVCDriver``.

It is nova's ``VMwareVCDriver`` (nova keeps building, finding, powering and destroying VMs by
the identity it manages: config.instanceUuid and nvp.vm-uuid), with four changes:

* spawn of a streamOptimized VMDK on a datastore our flows serve (``[vsan_flows]
  datastore_types``) runs the image-cache and root-disk steps as our persisted, revertible
  flow (:mod:`vsan_flows.nova.vmops`);
* snapshot of a VM on such a datastore runs our snapshot flow (VM found by instance uuid);
* ``init_host`` rolls back the flows a crash of this compute service interrupted;
* a re-login of nova's vCenter session is bounded (``api_retry_count``), never endless.

Everything else is nova's code and nova's configuration: ``[vmware]`` is nova's group, ours
is ``[vsan_flows]``; the vCenter session is nova's.
"""

from __future__ import annotations

import logging

import nova.conf
from nova import context as nova_context
from nova.compute import task_states
from nova.virt.vmwareapi import driver as vmware_driver

from vsan_flows import conf as vconf
from vsan_flows import exceptions
from vsan_flows.nova import SUPPORTED_NOVA, errors, vmops
from vsan_flows.nova.runs import NovaRuns
from vsan_flows.vsphere import session as vsession

LOG = logging.getLogger(__name__)
CONF = nova.conf.CONF


def _check_nova_version() -> None:
    from importlib.metadata import version

    found = version("nova")
    if found not in SUPPORTED_NOVA:
        raise RuntimeError(
            f"vsan_flows.nova.driver supports nova {', '.join(SUPPORTED_NOVA)}, not {found}: "
            "it overrides private methods of nova's VMware driver that change between "
            "releases. Install a supported nova or a vsan_flows release for yours.")


def _check_vcenter(scheme: str) -> None:
    """Stop the start with one line naming what to set, before nova's session logs in.

    nova's session (oslo.vmware) first fetches vCenter's WSDL over the verified transport; an
    untrusted certificate or a refused connection fails there at once, but as requests' own
    exception (``HTTPSConnectionPool(...): Max retries exceeded ... SSLError``) naming no
    option. What can be known without SOAP (TCP, and the TLS handshake verified as nova's
    session verifies it) is checked here, as our own sessions check it: a certificate failure
    stops nova-compute at once naming ``[vmware] ca_file``, an unanswered vCenter after
    ``api_retry_count`` retries. Settings nova itself refuses (no host_ip) are left to nova.

    nova's first login (in nova's session's constructor) is nova's own: oslo.vmware's
    ``_create_session`` retries connection errors for ever, but only those of SOAP calls, which
    at start come after the (unretried) WSDL fetch this check mirrors; only a vCenter failing
    between the two still meets that retry. Every later login of nova's session (a re-login
    after vCenter dropped the session or went away, in a spawn, a periodic task, init_host) is
    bounded as ours are: ``VsanVCDriver.__init__`` gives the session our bounded login
    (``vsphere.session.bound_logins``), see docs/nova.md.
    """
    v = CONF.vmware
    if not v.host_ip:
        return
    try:
        vsession.check_before_login(v.host_ip, v.host_port, ca_file=v.ca_file,
                                    insecure=v.insecure, retries=v.api_retry_count,
                                    scheme=scheme)
    except exceptions.VsanFlowsError as exc:
        raise errors.for_start(exc) from None


class VsanVCDriver(vmware_driver.VMwareVCDriver):
    """nova's VMware driver with vSAN image-cache, root-disk and snapshot steps as flows."""

    def __init__(self, virtapi, scheme: str = "https") -> None:
        _check_nova_version()
        vconf.register_nova_opts(CONF)
        _check_vcenter(scheme)
        super().__init__(virtapi, scheme=scheme)
        # nova's session keeps 10 connections while our flows call it up to
        # 2 x max_concurrent_flows at a time: at least that many (vsphere.session).
        vsession.bound_answer_wait(self._session, vsession.NOVA_CONNECTION_TIMEOUT)
        vsession.keep_connections(self._session, max(
            CONF.vmware.connection_pool_size,
            vsession.connection_pool_size(CONF.vsan_flows.max_concurrent_flows)))
        # nova's session logged in (nova's way) in the line above; from now on a re-login
        # after vCenter dropped the session is bounded, not retried for ever (_check_vcenter).
        v = CONF.vmware
        vsession.bound_logins(self._session, host=v.host_ip, port=v.host_port,
                              username=v.host_username, retries=v.api_retry_count,
                              ca_file=v.ca_file)
        self._runs = NovaRuns(CONF, self._session)
        vmops.adopt(self._vmops, self._runs)

    def init_host(self, host):
        super().init_host(host)
        outcomes = self._runs.revert_interrupted(nova_context.get_admin_context())
        for flow_id, name, outcome in outcomes:
            LOG.warning("flow %s (%s) interrupted by a restart of %s: %s", flow_id, name,
                        self._runs.host, outcome)

    def cleanup_host(self, host):
        self._runs.close()
        super().cleanup_host(host)

    def manage_image_cache(self, context, all_instances):
        """nova's pass over its own cache (``vmware_base`` folders), then over ours."""
        super().manage_image_cache(context, all_instances)
        self.age_vsan_image_cache(all_instances)

    def age_vsan_image_cache(self, all_instances) -> dict[str, list[str]]:
        """Our part of nova's image-cache pass: evict shadow VMs no instance uses any more
        once nova's minimum age has passed (vsan_flows.nova.cache_aging)."""
        done = self._runs.age_image_cache(all_instances)
        if any(done.values()):
            LOG.info("image cache pass on %s: %s", self._runs.host,
                     {k: v for k, v in done.items() if v})
        return done

    def snapshot(self, context, instance, image_id, update_task_state):
        vm_id = self._runs.instance_vm(instance.uuid)
        if vm_id is None or not self._runs.runs_on_vm(vm_id):
            return super().snapshot(context, instance, image_id, update_task_state)
        # Both states are reported before the flow starts, not between its steps: nova raises
        # from update_task_state when the instance is being deleted meanwhile, and a raise
        # here stops the snapshot before it made anything (inside a TaskFlow notifier it would
        # be swallowed and the snapshot would run on).
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        update_task_state(task_state=task_states.IMAGE_UPLOADING,
                          expected_state=task_states.IMAGE_PENDING_UPLOAD)
        try:
            self._runs.snapshot(context, instance.uuid, image_id)
        except exceptions.VsanFlowsError as exc:
            raise errors.for_snapshot(exc, instance_uuid=instance.uuid,
                                      image_id=image_id) from exc
