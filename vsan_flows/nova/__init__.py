"""vsan_flows inside nova: an out-of-tree compute driver (``compute_driver =
vsan_flows.nova.driver.VsanVCDriver``) built on nova's own VMware driver.

Supported nova: 34.0.0 only (``SUPPORTED_NOVA``). The driver overrides three private methods of
nova's ``VMwareVMOps`` (see :mod:`vsan_flows.nova.vmops`); private methods change between nova
releases without notice, so each supported release is tested (tests/unit/test_nova_seams.py
checks their signatures) and the driver refuses to start on any other.
"""

SUPPORTED_NOVA = ("34.0.0",)
