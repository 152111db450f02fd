"""Tests for the generated vSphere service WSDL (vsan_flows.simulator.wsdl).

The WSDL is what every oslo.vmware session in the harness and demo is built from, so these
check what suds (oslo.vmware's SOAP client) actually sees: that it parses, that the operations
our flows call are there with the right request shape, and that the on-disk cache is reused
instead of rewritten. Talking to a live simulator is the functional suite's job.
"""

from __future__ import annotations

import json
import pathlib
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest
import suds.client

from vsan_flows.simulator import wsdl

NEEDED_OPERATIONS = (
    "RetrievePropertiesEx",
    "RetrieveServiceContent",
    "ImportVApp",
    "ExportVm",
    "HttpNfcLeaseComplete",
    "HttpNfcLeaseAbort",
    "HttpNfcLeaseProgress",
    "CreateVM_Task",
    "ReconfigVM_Task",
    "CloneVM_Task",
    "Destroy_Task",
    "UnregisterVM",
    "CreateSnapshot_Task",
    "RemoveSnapshot_Task",
    "SearchDatastore_Task",
    "DeleteDatastoreFile_Task",
    "DeleteVirtualDisk_Task",
    "CopyVirtualDisk_Task",
    "Login",
    "Logout",
    "SessionIsActive",
    "WaitForUpdatesEx",
    "CreateContainerView",
)

_WSDL_NS = "{http://schemas.xmlsoap.org/wsdl/}"
_XSD_NS = "{http://www.w3.org/2001/XMLSchema}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return wsdl.generate(tmp_path_factory.mktemp("wsdl"))


@pytest.fixture(scope="module")
def suds_port(generated: pathlib.Path):
    # cache=None: exercise the real parse, not suds' on-disk object cache.
    client = suds.client.Client("file://" + str(generated), cache=None)
    return client, client.wsdl.services[0].ports[0]


def _tree(path: pathlib.Path) -> ET.Element:
    return ET.parse(path).getroot()


def test_generate_layout(generated: pathlib.Path) -> None:
    assert generated.name == wsdl.WSDL_NAME
    assert generated.is_absolute()
    for name in wsdl.XSD_FILES:
        assert (generated.parent / name).is_file()
    assert json.loads((generated.parent / wsdl.STAMP_NAME).read_text()) == wsdl.stamp()
    # Nothing temporary is left behind next to the final directory.
    assert [p.name for p in generated.parent.parent.iterdir()] == [generated.parent.name]


@pytest.mark.slow
def test_suds_parses_and_has_needed_operations(suds_port) -> None:
    client, port = suds_port
    assert client.wsdl.services[0].name == "VimService"
    assert port.name == "VimPort"
    missing = [op for op in NEEDED_OPERATIONS if op not in port.methods]
    assert missing == []
    assert port.methods["Login"].soap.action.strip('"') == "urn:vim25/8.0.0.0"


@pytest.mark.slow
def test_import_vapp_request_shape(suds_port) -> None:
    _client, port = suds_port
    method = port.methods["ImportVApp"]
    params = [
        (name, element.type, element.optional(), element.multi_occurrence())
        for name, element, *_rest in method.binding.input.param_defs(method)
    ]
    mor = ("ManagedObjectReference", "urn:vim25")
    assert params == [
        ("_this", mor, False, False),
        ("spec", ("ImportSpec", "urn:vim25"), False, False),
        ("folder", mor, True, False),
        ("host", mor, True, False),
    ]


@pytest.mark.slow
def test_array_parameter_and_declared_faults(suds_port) -> None:
    client, port = suds_port
    method = port.methods["RetrievePropertiesEx"]
    params = {name: el for name, el, *_ in method.binding.input.param_defs(method)}
    assert params["specSet"].multi_occurrence()
    assert not params["options"].optional()
    login_faults = {f.name for f in port.methods["Login"].soap.faults}
    assert {"InvalidLoginFault", "RuntimeFaultFault"} <= login_faults
    # Undeclared runtime faults still get elements (vcsim's MethodNotFound, for one).
    assert client.wsdl.schema.elements.get(("MethodNotFoundFault", "urn:vim25")) is not None


def test_request_types_in_wsdl_xml(generated: pathlib.Path) -> None:
    root = _tree(generated)
    schema = root.find(f"{_WSDL_NS}types/{_XSD_NS}schema")
    assert schema is not None
    types = {ct.get("name"): ct for ct in schema.findall(f"{_XSD_NS}complexType")}
    seq = types["CreateContainerViewRequestType"].find(f"{_XSD_NS}sequence")
    assert seq is not None
    elements = {e.get("name"): e.attrib for e in seq}
    # vmodl `type` parameters travel as strings, as in VMware's own WSDL.
    assert elements["type"]["type"] == "xsd:string"
    assert elements["type"]["maxOccurs"] == "unbounded"
    # Every operation has a binding entry, and operation names are unique.
    port_ops = [op.get("name") for op in root.iter(f"{_WSDL_NS}operation")]
    assert len(port_ops) == 2 * len(set(port_ops))


def test_cache_reused_without_rewrite(tmp_path: pathlib.Path) -> None:
    first = wsdl.generate(tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.parent.iterdir()}
    second = wsdl.generate(tmp_path)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in second.parent.iterdir()} == mtimes


def test_version_change_regenerates(tmp_path: pathlib.Path, monkeypatch) -> None:
    first = wsdl.generate(tmp_path)
    changed = dict(wsdl.stamp(), pyvmomi="0.0-test")
    monkeypatch.setattr(wsdl, "stamp", lambda: changed)
    second = wsdl.generate(tmp_path)
    assert second != first
    assert json.loads((second.parent / wsdl.STAMP_NAME).read_text()) == changed
    assert first.is_file()  # another venv may still be using the old one


def test_damaged_cache_is_replaced(tmp_path: pathlib.Path) -> None:
    first = wsdl.generate(tmp_path)
    (first.parent / wsdl.STAMP_NAME).write_text("{}")
    again = wsdl.generate(tmp_path)
    assert again == first
    assert json.loads((again.parent / wsdl.STAMP_NAME).read_text()) == wsdl.stamp()
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.parent.name]


def test_concurrent_generation_yields_one_complete_copy(tmp_path: pathlib.Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        paths = list(pool.map(lambda _i: wsdl.generate(tmp_path), range(4)))
    assert len(set(paths)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [paths[0].parent.name]
    assert paths[0].read_text(encoding="utf-8").rstrip().endswith("</definitions>")


def test_main_prints_path(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert wsdl.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out.strip()
    assert pathlib.Path(printed) == wsdl.generate(tmp_path)
