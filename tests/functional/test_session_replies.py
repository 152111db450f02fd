"""Every session we log in shares its suds client safely between threads (suds_replies).

Threads of a compute host share one session; suds' per-binding MultiRef swapped replies
between them (issue 11). This checks the session connect() hands out carries the fix on every
binding, so a refactoring of the login path cannot drop it silently.
"""

from __future__ import annotations

from vsan_flows.vsphere.suds_replies import PerReplyMultiRef


def test_a_connected_session_parses_each_reply_on_its_own(vsphere):
    client = vsphere.session.vim.client
    bindings = [b for service in client.wsdl.services for port in service.ports
                for method in port.methods.values()
                for b in (method.binding.input, method.binding.output)]
    assert len(bindings) > 1000  # every vSphere method, both directions
    shared = [b for b in bindings if not isinstance(b.multiref, PerReplyMultiRef)]
    assert not shared, f"{len(shared)} bindings still share one MultiRef between threads"
