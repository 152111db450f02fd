"""The image import lock's two ways of waiting: holding it, and waiting for it to be free.

A burst of spawns of one new image queues behind one import; the waiters must learn that the
import ended without taking the lock one after another (each then looks at the cache at once).
"""

from __future__ import annotations

import threading
import time

import pytest

from vsan_flows.exceptions import ImageLockTimeout
from vsan_flows.imagelocks import ImageLocks


@pytest.fixture(params=["threads-only", "host-files"])
def locks(request, tmp_path):
    directory = None if request.param == "threads-only" else str(tmp_path / "locks")
    return lambda timeout=5.0: ImageLocks(directory, timeout)


def test_a_non_blocking_hold_fails_while_another_flow_holds_and_then_succeeds(locks):
    a, b = locks(), locks()  # two handles of one host, as two api calls without shared handles
    assert a.hold("img", "flow-a")
    assert b.hold("img", "flow-b", blocking=False) is False
    assert not b.holds("img", "flow-b")
    a.release("img", "flow-a")
    assert b.hold("img", "flow-b", blocking=False) is True
    assert b.holds("img", "flow-b")
    assert a.hold("img", "flow-a", blocking=False) is False
    b.release("img", "flow-b")


def test_waiters_wait_for_the_import_to_end_then_all_go_at_once_without_holding(locks):
    holder = locks()
    holder.hold("img", "importer")
    inside, gone = [], threading.Barrier(9, timeout=10)
    errors = []

    def waiter(i: int) -> None:
        mine = locks()
        try:
            mine.wait_free("img", f"flow-{i}")
            assert not mine.holds("img", f"flow-{i}")
            inside.append(time.monotonic())
            gone.wait()  # all 8 must be past the lock at the same time
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert inside == [], "a waiter went past the lock while the import held it"
    holder.release("img", "importer")
    gone.wait()
    for t in threads:
        t.join(10)
    assert errors == []
    assert len(inside) == 8
    # Nobody holds it afterwards: an import that still has to happen can take it at once.
    assert holder.hold("img", "next", blocking=False)
    holder.release("img", "next")


def test_wait_free_is_bounded_like_hold(locks):
    holder = locks()
    holder.hold("img", "importer")
    with pytest.raises(ImageLockTimeout):
        locks(timeout=0.2).wait_free("img", "flow-x")
    holder.release("img", "importer")
