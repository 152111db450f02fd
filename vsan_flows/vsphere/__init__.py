"""Everything that talks SOAP to vCenter (the only package that imports oslo.vmware).

Importing it first settles which concurrency model oslo.vmware's loops use (see ``loops``):
oslo.vmware fixes that when it is imported, so it has to happen here, before any of it.
"""

from vsan_flows.vsphere import loops

loops.install_default()
