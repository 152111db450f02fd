"""Keep suds from handing one thread's SOAP reply to another.

suds parses every reply through its binding's ``MultiRef``, one instance per binding and so
one per client, shared by every thread of the process (we keep one oslo.vmware session per
process). ``MultiRef.process`` keeps the reply it works on in the instance
(``self.nodes = []`` ... ``body.children = self.nodes``): when two native threads parse replies
at once, one of them can get the other's body. Under the stress test this showed as
RetrievePropertiesEx answers "without objects" ('returnval' object has no attribute
'objects'), a task poll reading a plain string ('Text' object has no attribute 'state') and a
VM with "no virtual disk", with nothing wrong in the simulator's log (issue 11). Eventlet
greenthreads never switch inside ``process``, so nova-compute in eventlet mode did not see it.

The fix gives each reply a MultiRef of its own; what suds computes is unchanged.
"""

from __future__ import annotations

from suds.bindings.multiref import MultiRef


class PerReplyMultiRef(MultiRef):
    """A MultiRef whose ``process`` keeps its work in a fresh instance per reply."""

    def process(self, body):
        return MultiRef().process(body)


def isolate_replies(client) -> int:
    """Give every binding of suds ``client`` a PerReplyMultiRef; returns how many were changed."""
    changed = 0
    for service in client.wsdl.services:
        for port in service.ports:
            for method in port.methods.values():
                for binding in (method.binding.input, method.binding.output):
                    if not isinstance(binding.multiref, PerReplyMultiRef):
                        binding.multiref = PerReplyMultiRef()
                        changed += 1
    return changed
