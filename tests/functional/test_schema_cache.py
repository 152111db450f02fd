"""suds with a frozen schema (schema_cache) marshals and unmarshals exactly as suds alone.

The corpus is real: every SOAP call a spawn and a snapshot make against the simulator
(arguments as oslo.vmware passed them, replies as vCenter sent them, faults included). Each
is marshalled and each reply unmarshalled with the schema thawed (suds' own walk), then frozen
(answers cached as they are asked), then frozen again (answers from the cache), and from
several threads at once on a freshly frozen schema: the XML sent and the objects parsed
(their types included) must be the same every time.
"""

from __future__ import annotations

import random
import threading
import uuid

import pytest
import suds
import suds.client
from oslo_vmware.exceptions import VimFaultException
from suds.sudsobject import Object, items

from vsan_flows import api
from vsan_flows.simulator import disks
from vsan_flows.vsphere import schema_cache
from vsan_flows.vsphere.session import ref

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def small_vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "small.vmdk"
    disks.make_stream_optimized(path, 16 * MiB, data_mib=2)
    return path


def _dump(value):
    """A suds result as plain data: every field, every value and every schema type."""
    if isinstance(value, Object):
        sxtype = getattr(value.__metadata__, "sxtype", None)
        return (type(value).__name__, getattr(sxtype, "name", None),
                [(k, _dump(v)) for k, v in items(value)])
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    return type(value).__name__, str(value)


@pytest.fixture
def corpus(sim_conf, vsphere, images, small_vmdk, destroy_after, monkeypatch):
    """(calls, replies) of a spawn and a snapshot of the spawned instance."""
    calls, replies = [], []
    invoke, process_reply = suds.client._SoapClient.invoke, suds.client._SoapClient.process_reply

    def recording_invoke(self, args, kwargs):
        calls.append((self.client, self.method, tuple(args), dict(kwargs)))
        return invoke(self, args, kwargs)

    def recording_process_reply(self, reply, status, description):
        replies.append((self.client, self.method, reply, status))
        return process_reply(self, reply, status, description)

    monkeypatch.setattr(suds.client._SoapClient, "invoke", recording_invoke)
    monkeypatch.setattr(suds.client._SoapClient, "process_reply", recording_process_reply)
    name = f"schema-{uuid.uuid4().hex[:8]}"
    destroy_after.append(name)
    result = api.spawn(sim_conf, name, images.add_file(small_vmdk, name="base"),
                       vsphere=vsphere, images=images)
    destroy_after.append(result["shadow_vm"]["name"])
    snap = images.create({"name": f"snap-of-{name}"})
    api.snapshot(sim_conf, name, snap, vsphere=vsphere, images=images)
    # A fault reply too (unmarshalled through the same lookups).
    with pytest.raises(VimFaultException):
        vsphere.vim.Destroy_Task(ref("vm-no-such", "VirtualMachine"))
    monkeypatch.undo()
    return calls, replies, invoke, process_reply


def _replay(corpus, order=None) -> tuple[list, list]:
    calls, replies, _invoke, process_reply = corpus
    sent = []
    for _client, method, args, kwargs in calls:
        sent.append((method.name,
                     method.binding.input.get_message(method, args, dict(kwargs)).str()))
    parsed = []
    for client, method, reply, status in (replies if order is None else order):
        try:
            result = process_reply(suds.client._SoapClient(client, method), reply, status, None)
        except suds.WebFault as exc:
            result = ("fault", exc.fault)
        parsed.append((method.name, _dump(result)))
    return sent, parsed


def test_frozen_schema_marshals_and_unmarshals_as_suds(corpus, vsphere):
    client = vsphere.vim.client
    calls, replies = corpus[0], corpus[1]
    names = {m.name for _, m, _, _ in calls}
    assert {"RetrievePropertiesEx", "ImportVApp", "ExportVm", "CloneVM_Task",
            "CreateSnapshot_Task"} <= names, names
    assert any(b"ManagedObjectNotFound" in reply for *_, reply, _ in replies)  # a fault too
    try:
        schema_cache.thaw(client)
        suds_alone = _replay(corpus)
        assert schema_cache.cached_answers(client) == 0

        schema_cache.freeze(client)
        filling = _replay(corpus)
        filled = schema_cache.cached_answers(client)
        assert filled > 50  # the corpus is answered from the cache...
        from_cache = _replay(corpus)
        assert schema_cache.cached_answers(client) == filled  # ...all of it, second time

        assert filling[0] == suds_alone[0]
        assert from_cache[0] == suds_alone[0]
        assert filling[1] == suds_alone[1]
        assert from_cache[1] == suds_alone[1]
    finally:
        schema_cache.freeze(client)


def test_frozen_schema_filled_by_threads_at_once(corpus, vsphere):
    client = vsphere.vim.client
    try:
        schema_cache.thaw(client)
        expected = dict(zip(map(id, corpus[1]), _replay(corpus)[1], strict=True))
        schema_cache.freeze(client)  # empty caches, filled by the threads below
        results, errors = [], []
        start = threading.Barrier(4)

        def worker(seed: int) -> None:
            order = list(corpus[1])
            random.Random(seed).shuffle(order)
            try:
                start.wait()
                results.append((order, _replay(corpus, order)[1]))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(results) == 4
        for order, parsed in results:
            assert parsed == [expected[id(r)] for r in order]
    finally:
        schema_cache.freeze(client)
