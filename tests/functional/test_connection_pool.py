"""A session keeps a connection for every flow that may call vCenter at once.

oslo.vmware keeps 10 connections; max_concurrent_flows flows (each with a side thread during
transfers) call with more. urllib3 then opens a connection per call it cannot serve from the
pool and closes it after that one call: a TLS handshake per call, for the life of the load.
"""

from __future__ import annotations

import threading

from oslo_vmware import vim_util

from tests.functional.conftest import make_conf
from vsan_flows.vsphere import session as vsession
from vsan_flows.vsphere.session import connect


def _pools(vsphere) -> list:
    transport = vsphere.session.vim.client.options.transport
    return [adapter.poolmanager.pools[key] for adapter in transport.session.adapters.values()
            for key in adapter.poolmanager.pools.keys()]


def test_concurrent_flows_reuse_their_connections_instead_of_opening_one_per_call(
        simulator, wsdl_url, control, tmp_path):
    callers = 24  # more than oslo.vmware's 10, fewer than 2 x max_concurrent_flows
    conf = make_conf(simulator, wsdl_url, str(tmp_path))
    conf.set_override("max_concurrent_flows", 12, "vsan_flows")
    vsphere = connect(conf)
    try:
        s = vsphere.session
        hosts = s.invoke_api(vim_util, "get_objects", s.vim, "HostSystem", 1, ["name"])
        host = (hosts.objects if hasattr(hosts, "objects") else hosts)[0].obj
        # vCenter's 30-40 ms per read (the vcenter latency profile) keeps the callers' calls
        # overlapping, as a real vCenter does; the simulator alone answers too fast for it.
        control.set_latency("vcenter")
        start = threading.Barrier(callers)
        errors: list = []

        def caller() -> None:
            try:
                start.wait(30)
                for _ in range(8):
                    s.invoke_api(vim_util, "get_object_property", s.vim, host, "name")
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        threads = [threading.Thread(target=caller) for _ in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and not any(t.is_alive() for t in threads)
        (pool,) = _pools(vsphere)
        assert pool.pool.maxsize == vsession.connection_pool_size(12) == 24
        # One connection per caller at most (plus the login's); with oslo's 10 kept, every
        # call beyond them opened (and closed) a connection of its own: ~50 for these 192.
        assert pool.num_connections <= callers + 1, pool.num_connections
    finally:
        control.set_latency("none")
        vsphere.close()
