"""Generate the vSphere service WSDL that oslo.vmware needs but does not ship.

oslo.vmware ships only the vSphere *data-type* schema (``wsdl/8.0/vim-types.xsd`` and the three
schemas it pulls in). It expects the service WSDL (operations, messages, binding) to come from
the vCenter it talks to, at ``https://<vc>/sdk/vimService.wsdl``. vcsim serves none, so our test
harness and demo build one here from pyVmomi's type metadata, which knows every method's
parameters (with order, types and optionality), result and declared faults.

Design choices, and why:

* The generated schema targets the API version of the shipped xsd (``vim.version.v8_0_0_0``,
  the newest version whose data types are all in it). Methods or parameters newer than that
  would reference types suds cannot resolve, so they are left out; so are vim25-namespace
  methods whose types the xsd lacks (the vSAN health API, served from ``/vsanHealth``).
* The four xsd files are *copied* next to the WSDL instead of referenced by absolute path: the
  output directory is then self-contained, survives the venv moving, and two venvs with the same
  versions can share one cache.
* Output goes to ``out_dir/vim25-<key>/`` where ``<key>`` hashes the oslo.vmware and pyVmomi
  versions plus this generator's format number. It is written to a temporary sibling directory
  and renamed into place, so a reader never sees half-written files and two processes
  generating at once both end up with one complete copy.
* Every operation declares ``RuntimeFault`` plus its own faults, and every fault type gets one
  ``<Type>Fault`` element and ``<Type>FaultMsg`` message, as in VMware's own WSDL. (suds parses
  a SOAP fault's ``detail`` without the schema, so oslo.vmware's ``VimFaultException.fault_list``
  works regardless; the declarations keep the WSDL truthful for other tools.)
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

import pyVmomi
from pyVmomi import VmomiSupport

__all__ = [
    "STAMP_NAME",
    "VIM_VERSION",
    "WSDL_NAME",
    "XSD_FILES",
    "Operation",
    "Param",
    "collect_faults",
    "collect_operations",
    "generate",
    "main",
    "render_wsdl",
    "stamp",
    "xsd_dir",
]

#: pyVmomi version the generated API is cut at: the version of oslo.vmware's shipped 8.0 xsd.
VIM_VERSION = "vim.version.v8_0_0_0"
#: File name oslo.vmware's callers point ``wsdl_loc`` at.
WSDL_NAME = "vimService.wsdl"
#: Records what a cached directory was generated from.
STAMP_NAME = "stamp.json"
#: oslo.vmware's data-type schema files the WSDL needs (vim-types includes/imports the rest).
XSD_FILES = ("vim-types.xsd", "core-types.xsd", "query-types.xsd", "reflect-types.xsd")

# Bump when the generated output changes so that old caches are not reused.
_FORMAT = 1
_VIM_NS = "urn:vim25"
_XSD_NS = VmomiSupport.XMLNS_XSD
_SOAP_ADDRESS = "https://localhost/sdk"  # oslo.vmware always overrides the location.
_TYPE_NAME_RE = re.compile(r'<(?:complexType|simpleType)\s+name="([^"]+)"')


@dataclasses.dataclass(frozen=True)
class Param:
    """One element of a request or response sequence.

    ``xsd_type`` is a prefixed QName (``vim25:ImportSpec``, ``xsd:string``) so that it can be
    written into the schema unchanged.
    """

    name: str
    xsd_type: str
    optional: bool = False
    array: bool = False


@dataclasses.dataclass(frozen=True)
class Operation:
    """A SOAP operation: its request parameters (``_this`` first), result and fault types."""

    name: str
    params: tuple[Param, ...]
    result: Param | None
    faults: tuple[str, ...]


def xsd_dir() -> pathlib.Path:
    """Return oslo.vmware's installed 8.0 schema directory (the schema the WSDL must match).

    Located, not imported: only the vsphere layer imports oslo.vmware (importing it here would
    also pull in eventlet just to find some files).
    """
    spec = importlib.util.find_spec("oslo_vmware")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("oslo.vmware is not installed: its schema files are needed")
    return pathlib.Path(spec.submodule_search_locations[0]).resolve() / "wsdl" / "8.0"


def _known_types(schema_dir: pathlib.Path) -> frozenset[str]:
    """Names of all vim25 types the shipped xsd defines; anything else would not resolve."""
    names: set[str] = set()
    for name in XSD_FILES:
        names.update(_TYPE_NAME_RE.findall((schema_dir / name).read_text(encoding="utf-8")))
    return frozenset(names)


def _qname(typ: type, known: frozenset[str]) -> tuple[str, bool] | None:
    """Map a pyVmomi type to (prefixed QName, is_array), or None if the xsd lacks it.

    Managed objects travel as ``ManagedObjectReference``; vmodl ``type`` values (type names)
    travel as strings, exactly as in VMware's WSDL.
    """
    array = False
    if issubclass(typ, list):
        typ, array = typ.Item, True
    if typ is type:
        return "xsd:string", array
    if issubclass(typ, VmomiSupport.ManagedObject):
        return "vim25:ManagedObjectReference", array
    ns, name = VmomiSupport.GetQualifiedWsdlName(typ)
    if ns == _XSD_NS:
        return f"xsd:{name}", array
    if ns == _VIM_NS and name in known:
        return f"vim25:{name}", array
    return None


def _fault_name(vmodl_name: str, known: frozenset[str]) -> str | None:
    """WSDL name of a vim25 fault type, or None if the shipped xsd does not define it."""
    ns, name = VmomiSupport.GetQualifiedWsdlName(VmomiSupport.GetVmodlType(vmodl_name))
    return name if ns == _VIM_NS and name in known else None


def collect_operations(known: frozenset[str], version: str = VIM_VERSION) -> list[Operation]:
    """Build the vim25 operations available at ``version`` whose types all exist in ``known``.

    Sorted by name so that the output, and therefore the cache, is deterministic.
    """
    ops: dict[str, Operation] = {}
    for type_name in VmomiSupport.ListManagedTypes():
        mo_type = VmomiSupport.GetVmodlType(type_name)
        # _methodInfo holds the methods declared on this type only, not inherited ones.
        for info in mo_type._methodInfo.values():
            if VmomiSupport.GetWsdlNamespace(info.version) != _VIM_NS:
                continue
            if not VmomiSupport.IsChildVersion(version, info.version):
                continue
            op = _operation(info, known, version)
            if op is not None:
                ops[op.name] = op
    return [ops[name] for name in sorted(ops)]


def _operation(info: Any, known: frozenset[str], version: str) -> Operation | None:
    """Translate one pyVmomi method-info; None if any type it needs is missing from the xsd."""
    params = [Param("_this", "vim25:ManagedObjectReference")]
    for p in info.params:
        if not VmomiSupport.IsChildVersion(version, p.version):
            continue  # parameter added after `version`; an older server would reject it
        mapped = _qname(p.type, known)
        if mapped is None:
            return None
        optional = bool(p.flags & VmomiSupport.F_OPTIONAL)
        params.append(Param(p.name, mapped[0], optional, mapped[1]))
    result = None
    result_type = info.result
    if result_type is not type(None):
        mapped = _qname(result_type, known)
        if mapped is None:
            return None
        optional = bool(info.resultFlags & VmomiSupport.F_OPTIONAL)
        result = Param("returnval", mapped[0], optional, mapped[1])
    faults = {"RuntimeFault"}
    for vmodl_fault in info.faults:
        name = _fault_name(vmodl_fault, known)
        if name is not None:
            faults.add(name)
    return Operation(info.wsdlName, tuple(params), result, tuple(sorted(faults)))


def collect_faults(
    operations: Iterable[Operation], known: frozenset[str], version: str = VIM_VERSION
) -> list[str]:
    """Fault types that get an element and message: declared ones plus every RuntimeFault.

    Runtime faults (MethodNotFound, InvalidArgument, ManagedObjectNotFound, ...) can come back
    from any call without being declared, so they are all listed.
    """
    faults = {f for op in operations for f in op.faults}
    runtime_fault = VmomiSupport.GetVmodlType("vmodl.RuntimeFault")
    for type_name in VmomiSupport.ListDataTypes():
        typ = VmomiSupport.GetVmodlType(type_name)
        if not issubclass(typ, runtime_fault):
            continue
        if not VmomiSupport.IsChildVersion(version, typ._version):
            continue
        ns, name = VmomiSupport.GetQualifiedWsdlName(typ)
        if ns == _VIM_NS and name in known:
            faults.add(name)
    return sorted(faults)


def _element(p: Param, indent: str) -> str:
    attrs = f'name="{p.name}" type="{p.xsd_type}"'
    if p.optional:
        attrs += ' minOccurs="0"'
    if p.array:
        attrs += ' maxOccurs="unbounded"'
    return f"{indent}<element {attrs} />"


def render_wsdl(operations: Sequence[Operation], faults: Sequence[str], soap_action: str) -> str:
    """Render a document/literal WSDL whose schema includes ``vim-types.xsd`` next to it."""
    out: list[str] = [
        '<?xml version="1.0" encoding="UTF-8" ?>',
        "<!-- Generated by vsan_flows.simulator.wsdl from pyVmomi metadata; do not edit. -->",
        '<definitions targetNamespace="urn:vim25"',
        '   xmlns="http://schemas.xmlsoap.org/wsdl/"',
        '   xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"',
        '   xmlns:vim25="urn:vim25"',
        '   xmlns:xsd="http://www.w3.org/2001/XMLSchema"',
        ">",
        "   <types>",
        '      <schema targetNamespace="urn:vim25"',
        '         xmlns="http://www.w3.org/2001/XMLSchema"',
        '         xmlns:vim25="urn:vim25"',
        '         xmlns:xsd="http://www.w3.org/2001/XMLSchema"',
        '         elementFormDefault="qualified">',
        '         <include schemaLocation="vim-types.xsd" />',
    ]
    ind = " " * 9
    for op in operations:
        out.append(f'{ind}<complexType name="{op.name}RequestType">')
        out.append(f"{ind}   <sequence>")
        out.extend(_element(p, ind + "      ") for p in op.params)
        out.append(f"{ind}   </sequence>")
        out.append(f"{ind}</complexType>")
        out.append(f'{ind}<element name="{op.name}" type="vim25:{op.name}RequestType" />')
        out.append(f'{ind}<element name="{op.name}Response">')
        if op.result is None:
            out.append(f"{ind}   <complexType />")
        else:
            out.append(f"{ind}   <complexType>")
            out.append(f"{ind}      <sequence>")
            out.append(_element(op.result, ind + "         "))
            out.append(f"{ind}      </sequence>")
            out.append(f"{ind}   </complexType>")
        out.append(f"{ind}</element>")
    for fault in faults:
        out.append(f'{ind}<element name="{fault}Fault" type="vim25:{fault}" />')
    out.append("      </schema>")
    out.append("   </types>")

    for fault in faults:
        out.append(f'   <message name="{fault}FaultMsg">')
        out.append(f'      <part name="fault" element="vim25:{fault}Fault" />')
        out.append("   </message>")
    for op in operations:
        out.append(f'   <message name="{op.name}RequestMsg">')
        out.append(f'      <part name="parameters" element="vim25:{op.name}" />')
        out.append("   </message>")
        out.append(f'   <message name="{op.name}ResponseMsg">')
        out.append(f'      <part name="parameters" element="vim25:{op.name}Response" />')
        out.append("   </message>")

    out.append('   <portType name="VimPortType">')
    for op in operations:
        out.append(f'      <operation name="{op.name}">')
        out.append(f'         <input message="vim25:{op.name}RequestMsg" />')
        out.append(f'         <output message="vim25:{op.name}ResponseMsg" />')
        for fault in op.faults:
            out.append(f'         <fault name="{fault}Fault" message="vim25:{fault}FaultMsg" />')
        out.append("      </operation>")
    out.append("   </portType>")

    action = quoteattr(soap_action)
    out.append('   <binding name="VimBinding" type="vim25:VimPortType">')
    out.append(
        '      <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http" />'
    )
    for op in operations:
        out.append(f'      <operation name="{op.name}">')
        out.append(f"         <soap:operation soapAction={action} />")
        out.append('         <input><soap:body use="literal" /></input>')
        out.append('         <output><soap:body use="literal" /></output>')
        for fault in op.faults:
            out.append(
                f'         <fault name="{fault}Fault">'
                f'<soap:fault use="literal" name="{fault}Fault" /></fault>'
            )
        out.append("      </operation>")
    out.append("   </binding>")

    out.append('   <service name="VimService">')
    out.append('      <port binding="vim25:VimBinding" name="VimPort">')
    out.append(f"         <soap:address location={quoteattr(_SOAP_ADDRESS)} />")
    out.append("      </port>")
    out.append("   </service>")
    out.append("</definitions>")
    out.append("")
    return "\n".join(out)


def _dist_version(dist: str, module: object) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # e.g. run from a source checkout
        return str(getattr(module, "__version__", "unknown"))


def stamp() -> dict[str, object]:
    """What a generated directory depends on; a cache is reused only if this matches exactly."""
    return {
        "format": _FORMAT,
        "oslo.vmware": _dist_version("oslo.vmware", None),
        "pyvmomi": _dist_version("pyvmomi", pyVmomi),
        "vim_version": VIM_VERSION,
    }


def _stamp_text(data: dict[str, object]) -> str:
    return json.dumps(data, sort_keys=True, indent=1) + "\n"


def _is_complete(directory: pathlib.Path, expected: str) -> bool:
    """True if ``directory`` is a finished generation for the ``expected`` stamp."""
    try:
        current = (directory / STAMP_NAME).read_text(encoding="utf-8")
    except OSError:
        return False
    return current == expected and (directory / WSDL_NAME).is_file()


def _write_tree(target: pathlib.Path, expected_stamp: str) -> None:
    """Write the WSDL and copied xsd into ``target``; the stamp goes last as a commit marker."""
    schema_dir = xsd_dir()
    for name in XSD_FILES:
        shutil.copyfile(schema_dir / name, target / name)
    known = _known_types(schema_dir)
    operations = collect_operations(known)
    faults = collect_faults(operations, known)
    _ns, version_id = VmomiSupport.GetVersionNamespace(VIM_VERSION).split("/", 1)
    soap_action = f"{_VIM_NS}/{version_id}"
    (target / WSDL_NAME).write_text(render_wsdl(operations, faults, soap_action), encoding="utf-8")
    (target / STAMP_NAME).write_text(expected_stamp, encoding="utf-8")


def generate(out_dir: pathlib.Path) -> pathlib.Path:
    """Ensure a WSDL for the installed oslo.vmware/pyVmomi exists under ``out_dir``; return it.

    The returned absolute path is what ``VMwareAPISession(..., wsdl_loc='file://' + path)``
    takes. A matching earlier generation is returned untouched (no rewrite, mtimes kept), which
    keeps repeated test runs cheap and lets several processes share one directory.
    """
    out_dir = pathlib.Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = _stamp_text(stamp())
    key = hashlib.sha256(expected.encode()).hexdigest()[:12]
    final = out_dir / f"vim25-{key}"
    if _is_complete(final, expected):
        return final / WSDL_NAME

    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".vim25-tmp-", dir=out_dir))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; other users (e.g. the demo) must read it
        _write_tree(tmp, expected)
        while True:
            try:
                os.rename(tmp, final)  # atomic; fails if `final` exists and is non-empty
                break
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            if _is_complete(final, expected):
                break  # another process won the race with identical content
            # `final` exists but is not ours (e.g. hand-edited): move it aside, then retry.
            stale = pathlib.Path(tempfile.mkdtemp(prefix=".vim25-stale-", dir=out_dir))
            try:
                os.rename(final, stale / "old")
            except FileNotFoundError:
                pass  # someone else moved it already
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / WSDL_NAME


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m vsan_flows.simulator.wsdl OUT_DIR`` prints the WSDL path."""
    parser = argparse.ArgumentParser(
        prog="python -m vsan_flows.simulator.wsdl",
        description="Generate (or reuse) the vSphere service WSDL for oslo.vmware.",
    )
    parser.add_argument("out_dir", type=pathlib.Path, help="cache directory")
    args = parser.parse_args(argv)
    print(generate(args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
