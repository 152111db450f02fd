"""The local vCenter simulator: our patched vcsim, its WSDL, its fault knobs and disk fixtures.

The demo and the functional tests need a real SOAP peer; vcsim is the closest thing to a
vCenter that runs on loopback. Nothing under vsan_flows/ outside this package imports it.
"""
