"""Sessions of one process share one parsed WSDL (vsphere/wsdlcache.py) and stay separate."""

from __future__ import annotations

import time

from vsan_flows.vsphere import inventory, wsdlcache
from vsan_flows.vsphere.session import connect


def test_second_login_reuses_the_parsed_wsdl_and_keeps_its_own_session(sim_conf, simulator):
    first = connect(sim_conf)
    try:
        cpu = time.process_time()
        second = connect(sim_conf)
        cpu = time.process_time() - cpu
    except BaseException:
        first.close()
        raise
    try:
        assert second.vim.client.wsdl is first.vim.client.wsdl
        assert second.vim.client.options.transport is not first.vim.client.options.transport
        assert set(first.cookies()).isdisjoint(second.cookies())
        first.close()
        # Logging one session out leaves the other one working on its own cookie.
        assert {d.name for d in inventory.datastores(second.session)} >= {"vsanDatastore"}
        print(f"second login: {cpu:.2f}s CPU")
    finally:
        second.close()


def test_pbm_clients_are_not_shared():
    # Their SOAP headers carry the vCenter session cookie: never shared between sessions.
    assert wsdlcache._is_pbm("file:///usr/lib/oslo_vmware/wsdl/8.0/pbmService.wsdl")
    assert wsdlcache._is_pbm("https://vc.example.org/pbm/pbmService.wsdl")
    assert not wsdlcache._is_pbm("https://vc.example.org/sdk/vimService.wsdl")
    assert not wsdlcache._is_pbm("file:///build/wsdl/vimService.wsdl")
