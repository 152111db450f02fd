"""Everything that talks SOAP to vCenter (the only package that imports oslo.vmware).

Importing it first settles which concurrency model oslo.vmware's loops use (see ``loops``):
oslo.vmware fixes that when it is imported, so it has to happen here, before any of it.
Then every session's suds client is made to parse the WSDL once per process (``wsdlcache``).
"""

from vsan_flows.vsphere import loops

loops.install_default()

from vsan_flows.vsphere import wsdlcache  # noqa: E402 - oslo.vmware only after the loops

wsdlcache.install()
