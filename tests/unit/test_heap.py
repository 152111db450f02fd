"""The one-time freeze of long-lived objects after the first login (vsphere/heap.py).

Process-wide, so each case runs in a child interpreter of its own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import gc, weakref
    from vsan_flows.vsphere import heap

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return a

    freed = []
    garbage = cycle()                       # garbage already when the freeze comes
    weakref.finalize(garbage, freed.append, "before")
    del garbage
    kept = cycle()                          # alive at the freeze: frozen, not freed
    weakref.finalize(kept, freed.append, "kept")
    first = heap.freeze_long_lived()
    second = heap.freeze_long_lived()
    frozen = gc.get_freeze_count()
    later = cycle()                         # made after the freeze: collected as ever
    weakref.finalize(later, freed.append, "later")
    del later
    gc.collect()
    print(first, second, frozen > 0, sorted(freed))
""")


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


def test_freezes_once_after_clearing_garbage_and_later_garbage_is_still_collected():
    assert run(CHILD) == "True False True ['before', 'later']"


def test_leaves_a_process_alone_that_froze_or_disabled_the_collector_itself():
    code = CHILD.replace("first = heap", "gc.freeze(); first = heap")
    assert run(code).startswith("False False True")
    code = CHILD.replace("first = heap", "gc.disable(); first = heap")
    first, second, frozen = run(code).split()[:3]
    assert (first, second, frozen) == ("False", "False", "False")


def test_the_collector_is_paused_while_a_client_is_built_and_restored_after():
    import gc

    from vsan_flows.vsphere import wsdlcache
    assert gc.isenabled()
    with wsdlcache._collector_paused():
        assert not gc.isenabled()
        with wsdlcache._collector_paused():  # a second builder (another thread)
            assert not gc.isenabled()
        assert not gc.isenabled()  # the first is still building
    assert gc.isenabled()
    gc.disable()
    try:
        with wsdlcache._collector_paused():
            pass
        assert not gc.isenabled()  # left as the process had it
    finally:
        gc.enable()
