"""Keep the operator guide (docs/*.md) true: run its commands, check its quotes, links, options.

Conventions in the Markdown (HTML comments do not show when the page is rendered):

* ``<!-- test -->`` on the line directly above a fenced ```` ```console ```` block marks it
  for running. In it, a line starting with ``$ `` is a command (a trailing ``\\`` continues it on
  the next line); the lines after a command up to the next ``$ `` are its expected output.
  Expected output is matched against stdout+stderr, stripped line by line: the lines must
  appear in this order and consecutively, except that a line ``...`` skips any number of lines
  and ``...`` inside a line matches any text. No expected lines: only the exit status counts.
  A marked ```` ```sh ```` block is run as one bash script.
* ``<!-- test: exit=N -->``: every command of the block must exit with N (default 0).
  ``<!-- test: if-importable=MODULE -->``: run the block only when MODULE imports (for commands
  a colleague is still writing); never use it for the blocks the guide cannot do without.
* ``<!-- test-file: NAME -->`` above any fenced block: its content is written to NAME in the
  working directory before the page's commands run (e.g. a script the page then runs).
* ``<!-- error: NAME -->`` above a ```` ```text ```` block, or directly before an inline code
  span: a quoted error message. The block must equal (whitespace-normalised) the message the
  code produces for the case NAME in :data:`ERROR_CASES`; an inline span must occur in it.

Unmarked blocks are shown only (they need vCenter, Glance, ovftool, vmware-vdiskmanager...).

All marked blocks of one page run in order in one temporary directory that holds the inputs
the pages name (:func:`_prepare_inputs`), with ``.venv/bin`` first on PATH and
``OS_VSAN_FLOWS__STATE_DIR`` pointing into that directory so nothing is written to
/var/lib/vsan-flows. ``vsan-flows demo`` starts the local simulator (tools/test-setup.sh
builds it) and takes about half a minute.
"""

from __future__ import annotations

import dataclasses
import filecmp
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vsan_flows import conf as vconf
from vsan_flows import exceptions, vmdk
from vsan_flows.simulator import disks

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MIB = 1 << 20
INPUT_SIZE = 64 * MIB
IMAGE_ID = "b7a3c1d2-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
COMMAND_TIMEOUT = 300

_FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*(test|test-file|error)(?::\s*(.*?))?\s*-->\s*$")
_INLINE_ERROR = re.compile(r"<!--\s*error:\s*([\w-]+)\s*-->\s*`([^`]+)`")


# --------------------------------------------------------------------------- parsing


@dataclasses.dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str
    marker: str | None  # "test", "test-file" or "error"
    arg: str  # what follows the marker's colon

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def options(self) -> dict[str, str]:
        return dict(kv.split("=", 1) for kv in self.arg.split() if "=" in kv)


def parse_blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start = i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        marker = arg = None
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        mm = _MARKER.match(lines[j]) if j >= 0 else None
        if mm and j == start - 1:
            marker, arg = mm.group(1), mm.group(2) or ""
        blocks.append(Block(page, start + 1, lang, "\n".join(body) + "\n", marker, arg or ""))
    return blocks


@dataclasses.dataclass
class Command:
    cmd: str
    expected: list[str]


def parse_console(text: str) -> list[Command]:
    commands: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            cmd = line[2:]
            while cmd.endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd = cmd[:-1] + " " + lines[i].strip()
            commands.append(Command(cmd, []))
        elif commands:
            commands[-1].expected.append(line)
        elif line.strip():
            raise AssertionError(f"output line before any command: {line!r}")
        i += 1
    for c in commands:
        while c.expected and not c.expected[-1].strip():
            c.expected.pop()
    return commands


def expected_pattern(expected: list[str]) -> re.Pattern[str]:
    parts = []
    for line in expected:
        s = line.strip()
        if s == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[ \t]*" + ".*?".join(re.escape(p) for p in s.split("...")) +
                         r"[ \t]*\n")
    return re.compile("^" + "".join(parts), re.MULTILINE)


def marked(blocks: list[Block], marker: str) -> list[Block]:
    return [b for b in blocks if b.marker == marker]


ALL_BLOCKS = {page.name: parse_blocks(page) for page in PAGES}


# --------------------------------------------------------------------------- running


def _prepare_inputs(work: Path) -> None:
    """Every input file a marked command of the guide names, made with real tools."""
    disks.make_raw(work / "in.raw", INPUT_SIZE)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(work / "in.raw"),
                    str(work / "in.qcow2")], check=True)
    disks.make_monolithic_sparse(work / "old-sparse.vmdk", INPUT_SIZE)
    disks.make_flat(work / "old-flat.vmdk", INPUT_SIZE)
    gen = work / "etc" / "vsan-flows"
    gen.mkdir(parents=True)
    shutil.copy(ROOT / "etc/vsan-flows/vsan-flows-config-generator.conf", gen)


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OS_VSAN_FLOWS__STATE_DIR"] = str(work / "state")
    env.pop("PYTHONPATH", None)
    return env


@dataclasses.dataclass
class Ran:
    block: Block
    cmd: str
    status: int
    output: str


def run_page(page: str, work: Path) -> list[Ran]:
    blocks = ALL_BLOCKS[page]
    _prepare_inputs(work)
    for b in marked(blocks, "test-file"):
        (work / b.arg.strip()).write_text(b.text)
    env = _env(work)
    ran: list[Ran] = []
    for b in marked(blocks, "test"):
        module = b.options.get("if-importable")
        if module and importlib.util.find_spec(module) is None:
            continue
        want = int(b.options.get("exit", "0"))
        if b.lang == "sh":
            items = [Command(b.text, [])]
        elif b.lang == "console":
            items = parse_console(b.text)
        else:
            raise AssertionError(f"{b.where}: <!-- test --> on a ```{b.lang} block")
        assert items, f"{b.where}: marked block has no command"
        for c in items:
            proc = subprocess.run(["bash", "-o", "pipefail", "-c", c.cmd], cwd=work, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=COMMAND_TIMEOUT, check=False)
            out = proc.stdout
            ran.append(Ran(b, c.cmd, proc.returncode, out))
            assert proc.returncode == want, (
                f"{b.where}: `{c.cmd}` exited {proc.returncode}, the guide expects {want}:\n"
                f"{out[-4000:]}")
            if c.expected:
                normalised = "\n".join(line.rstrip() for line in out.splitlines()) + "\n"
                assert expected_pattern(c.expected).search(normalised), (
                    f"{b.where}: output of `{c.cmd}` does not match the guide.\nExpected:\n"
                    + "\n".join(c.expected) + f"\nGot:\n{out[-4000:]}")
    return ran


def _ran_matching(ran: list[Ran], pattern: str) -> list[Ran]:
    return [r for r in ran if re.search(pattern, r.cmd)]


def _check_images(ran: list[Ran], work: Path) -> None:
    """The conversion and validation blocks really ran, and what they made is deployable."""
    converts = _ran_matching(ran, r"^qemu-img convert .*subformat=streamOptimized")
    assert len(converts) >= 4, "images.md: the qemu-img conversion blocks were not run"
    assert _ran_matching(ran, r"^qemu-img info "), "images.md: qemu-img info was not run"
    checks = _ran_matching(ran, r"check-vmdk\.py ")
    assert any(r.status == 0 for r in checks) and any(r.status == 1 for r in checks), \
        "images.md: check-vmdk.py was not run on a good and a bad file"
    for name in ("out.vmdk", "from-raw.vmdk", "from-sparse.vmdk", "from-flat.vmdk"):
        path = work / name
        with open(path, "rb") as f:
            header = vmdk.inspect_stream_optimized(f, declared_size=path.stat().st_size)
        assert header.capacity_bytes == INPUT_SIZE
        assert header.adapter_type == "lsilogic"
        assert "create type: streamOptimized" in disks.qemu_img_info(path)
        assert disks.images_identical(work / "in.raw", path), f"{name} lost data"


def _check_configure(ran: list[Ran], work: Path) -> None:
    assert _ran_matching(ran, r"^oslo-config-generator "), "the generator block was not run"
    made = work / "etc/vsan-flows/vsan-flows.conf.sample"
    committed = ROOT / "etc/vsan-flows/vsan-flows.conf.sample"
    assert filecmp.cmp(made, committed, shallow=False), (
        "etc/vsan-flows/vsan-flows.conf.sample is stale: regenerate it with "
        "`oslo-config-generator --config-file etc/vsan-flows/vsan-flows-config-generator.conf`")


def _check_operations(ran: list[Ran], work: Path) -> None:
    assert _ran_matching(ran, r"^vsan-flows demo"), "the demo block was not run"
    assert (work / "state" / "flows.sqlite").exists(), "the demo did not use the test state_dir"


POST_CHECKS: dict[str, Callable[[list[Ran], Path], None]] = {
    "images.md": _check_images,
    "configure.md": _check_configure,
    "operations.md": _check_operations,
}


@pytest.mark.parametrize("page", [p for p, bs in ALL_BLOCKS.items() if marked(bs, "test")])
def test_guide_commands(page, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    ran = run_page(page, work)
    assert ran, f"{page}: no command ran"
    if page in POST_CHECKS:
        POST_CHECKS[page](ran, work)


def test_required_blocks_are_marked():
    """The guide cannot pass by testing nothing: its key commands are marked and unconditional."""
    for page in POST_CHECKS:
        assert page in ALL_BLOCKS, f"docs/{page} is missing"
    images = [b for b in marked(ALL_BLOCKS["images.md"], "test")
              if "if-importable" not in b.options]
    text = "\n".join(b.text for b in images)
    assert "qemu-img convert -O vmdk -o subformat=streamOptimized" in text
    assert "$ qemu-img info out.vmdk" in text and "create type: streamOptimized" in text
    assert "check-vmdk.py" in text
    assert marked(ALL_BLOCKS["images.md"], "test-file")
    for blocks in ALL_BLOCKS.values():
        for b in blocks:
            if b.marker == "test":
                assert b.lang in ("console", "sh"), f"{b.where}: test marker on ```{b.lang}"
                if b.lang == "console":
                    assert parse_console(b.text), f"{b.where}: no `$ ` command in block"
            if b.lang == "console" and b.marker != "test":
                # shown-only commands must be ones this machine cannot run
                for c in parse_console(b.text):
                    tool = c.cmd.split()[0]
                    assert tool in SHOWN_ONLY_TOOLS, (
                        f"{b.where}: `{c.cmd}` is not marked <!-- test --> but "
                        f"{tool!r} is not a tool we lack; mark the block for testing")


# Commands a guide may show without running them: they need VMware tools, Glance/Keystone or a
# real vCenter/nova configuration that the test machine does not have. (vsan-flows itself is
# run where it can be: the demo and `flows --help` blocks are marked.)
SHOWN_ONLY_TOOLS = {"ovftool", "vmware-vdiskmanager", "openstack", "govc", "vsan-flows"}


# --------------------------------------------------------------------------- quoted errors


def _validate_file(path: Path, *, disk_format="vmdk", disktype="streamOptimized") -> str:
    from vsan_flows.images import LocalImageService
    from vsan_flows.tasks.image import ValidateStreamOptimizedImage

    svc = LocalImageService(path.parent / f"images-{path.name}")
    meta = {"id": IMAGE_ID, "disk_format": disk_format, "container_format": "bare"}
    if disktype:
        meta["vmware_disktype"] = disktype
    svc.create(meta)
    with open(path, "rb") as f:
        svc.upload(IMAGE_ID, f)
    with pytest.raises(exceptions.InvalidImage) as info:
        ValidateStreamOptimizedImage().execute(svc, IMAGE_ID)
    return str(info.value)


def _stream_file(path: Path) -> str:
    """What the import's stream check says (the file passes the up-front validation)."""
    from vsan_flows.streamcheck import StreamTap

    assert _validate_passes(path), "the up-front validation must pass for this case"
    with open(path, "rb") as f:
        tap = StreamTap(f, image_id=IMAGE_ID)
        while tap.read(MIB):
            pass
        with pytest.raises(exceptions.InvalidImage) as info:
            tap.check_complete()
    return str(info.value)


def _validate_passes(path: Path) -> bool:
    from vsan_flows.images import LocalImageService
    from vsan_flows.tasks.image import ValidateStreamOptimizedImage

    svc = LocalImageService(path.parent / f"ok-{path.name}")
    svc.create({"id": "x", "disk_format": "vmdk", "vmware_disktype": "streamOptimized"})
    with open(path, "rb") as f:
        svc.upload("x", f)
    ValidateStreamOptimizedImage().execute(svc, "x")
    return True


def _good(tmp: Path) -> Path:
    path = tmp / "good.vmdk"
    if not path.exists():
        disks.make_stream_optimized(path, INPUT_SIZE)
    return path


def _qcow2(tmp: Path) -> str:
    raw = disks.make_raw(tmp / "q.raw", INPUT_SIZE)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                    str(tmp / "q.qcow2")], check=True)
    return _validate_file(tmp / "q.qcow2")


def _no_datastore(tmp: Path) -> str:
    from vsan_flows.vsphere.placement import DatastoreInfo, choose_datastore

    gib = 1 << 30
    candidates = [
        DatastoreInfo("vsanDatastore", "datastore-11", "vsan", 20 * gib, 500 * gib, True),
        DatastoreInfo("vsanDatastore-2", "datastore-12", "vsan", 900 * gib, 1000 * gib, True,
                      "inMaintenance"),
        DatastoreInfo("LocalDS_0", "datastore-13", "VMFS", 800 * gib, 900 * gib, True),
        DatastoreInfo("nfs-archive", "datastore-14", "NFS", 500 * gib, 900 * gib, False),
    ]
    with pytest.raises(exceptions.NoSuitableDatastore) as info:
        choose_datastore(candidates, allowed_types=["vsan"], name_regex=re.compile("vsan"),
                         required_bytes=40 * gib)
    return str(info.value)


ERROR_CASES: dict[str, Callable[[Path], str]] = {
    "qcow2": _qcow2,
    "raw": lambda t: _validate_file(disks.make_raw_renamed(t / "raw.vmdk", INPUT_SIZE)),
    "monolithic-sparse": lambda t: _validate_file(
        disks.make_monolithic_sparse(t / "sparse.vmdk", INPUT_SIZE)),
    "flat": lambda t: _validate_file(disks.make_flat(t / "flat.vmdk", INPUT_SIZE)),
    "metadata": lambda t: _validate_file(_good(t), disktype=None),
    "truncated": lambda t: _validate_file(
        disks.make_truncated(_good(t), t / "half.vmdk", _good(t).stat().st_size // 2)),
    "truncated-header": lambda t: _validate_file(
        disks.make_truncated(_good(t), t / "head.vmdk", 4096)),
    "cut-last-grain": lambda t: _stream_file(
        disks.make_truncated(_good(t), t / "cut.vmdk", _good(t).stat().st_size - 512)),
    "newline": lambda t: _validate_file(
        disks.make_corrupt_header(_good(t), t / "nl.vmdk", "newline")),
    "grain-size": lambda t: _validate_file(
        disks.make_corrupt_header(_good(t), t / "gs.vmdk", "grain_size")),
    "size-lying": lambda t: _validate_file(disks.make_size_lying(_good(t), t / "lie.vmdk")),
    "no-suitable-datastore": _no_datastore,
    "timeout-import": lambda t: str(exceptions.TransferTimeout(
        "The image upload", 7200, 38 * (1 << 30) + 12345, 40 * (1 << 30))),
}


def _quoted_errors() -> list[tuple[str, str, str]]:
    """(case, where, quoted text) for every error marker in the guide."""
    found = []
    for blocks in ALL_BLOCKS.values():
        for b in marked(blocks, "error"):
            found.append((b.arg.strip(), b.where, b.text))
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for m in _INLINE_ERROR.finditer(line):
                found.append((m.group(1), f"{page.name}:{n}", "inline:" + m.group(2)))
    return found


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_quoted_errors_are_what_the_code_says(tmp_path):
    quoted = _quoted_errors()
    used = {case for case, _, _ in quoted}
    assert used >= {"qcow2", "monolithic-sparse", "flat", "metadata", "truncated"}, used
    assert not used - ERROR_CASES.keys(), f"no producer for {used - ERROR_CASES.keys()}"
    messages: dict[str, str] = {}
    for case, where, text in quoted:
        if case not in messages:
            work = tmp_path / case
            work.mkdir()
            messages[case] = _squash(ERROR_CASES[case](work))
        actual = messages[case]
        if text.startswith("inline:"):
            assert _squash(text[len("inline:"):]) in actual, f"{where}: quote not in\n{actual}"
        else:
            assert _squash(text) == actual, f"{where}: quote differs from\n{actual}"


# --------------------------------------------------------------------------- links, options


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors = set()
    in_fence = False
    for line in page.read_text().splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def _prose(page: Path) -> str:
    """The page without fenced blocks (links and option names in code are not prose)."""
    out, in_fence = [], False
    for line in page.read_text().splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            out.append(line)
    return "\n".join(out)


def test_relative_links_resolve():
    checked = 0
    for page in PAGES:
        for target in _LINK.findall(_prose(page)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: link to {target} points to nothing"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"
            checked += 1
    assert checked >= 5


# Backticked snake_case words in the guide that are not options (image properties, API names).
NOT_OPTIONS = {
    "disk_format", "container_format", "vmware_disktype", "vmware_adaptertype", "vmware_ostype",
    "adapter_type", "resume_unfinished", "init_host", "REVERT_FAILURE",
    # architecture.md names code, not options
    "cached_shadow", "is_gone", "oslo_vmware",
    # concurrency.md names code, CPython internals and an environment variable
    "invoke_api", "release_owner", "HEAD_LOCK", "local_clear", "take_gil",
    "VSAN_FLOWS_STRESS_ROUNDS",
    # nova.md: environment variables requests (so nova's session) reads: CA bundle, proxy
    "REQUESTS_CA_BUNDLE", "https_proxy",
    # nova.md names nova's options, methods and task states
    "compute_driver", "get_info", "list_instances", "power_off", "manage_image_cache",
    "update_task_state", "image_pending_upload", "image_uploading", "ExtendVirtualDisk_Task",
    # Glance's own record fields and glance-api options
    "os_hash_value", "hashing_algorithm", "image_size_cap",
    # simulator-latency.md names the simulator's control API fields and vCenter's methods
    "methods_ms", "lease_init_ms", "nfc_bytes_per_second", "nfc_shared_bytes_per_second",
    "CloneVM_Task", "CreateSnapshot_Task", "RemoveSnapshot_Task", "ReconfigVM_Task",
    "PowerOnVM_Task", "PowerOffVM_Task", "Destroy_Task", "CreateVM_Task",
    # nova's own options, compared with ours in concurrency.md
    "max_concurrent_builds", "max_concurrent_snapshots", "connection_pool_size",
    # code names from the fencing and transfer sections of concurrency.md
    "run_iter", "READ_AHEAD", "CHUNK_SIZE", "verifies_hash",
    # architecture.md: TaskFlow's engine option an admin's revert runs with
    "never_resolve",
    # architecture.md: where re-logins are bounded (vsphere/session.py)
    "bound_logins", "create_session",
    # concurrency.md, CPU per SOAP call: what requests reads from the environment, code names
    "all_proxy", "no_proxy", "CURL_CA_BUNDLE", "trust_env", "get_child", "settle_environment",
    "process_time",
}


def _known_options() -> dict[str, set[str]]:
    known = {group: {opt.dest for opt in opts} for group, opts in vconf.list_opts()}
    for group, opts in vconf.list_nova_opts():  # what nova.conf gains (docs/nova.md)
        known.setdefault(group, set()).update(opt.dest for opt in opts)
    return known


def test_option_names_exist():
    known = _known_options()
    all_names = set().union(*known.values())
    seen = 0
    for page in PAGES:
        text = page.read_text()
        # "[group] name" and "[group] name / name2" anywhere, in code spans or prose
        for group, names in re.findall(r"\[(vmware|vsan_flows)\]\s+([\w ,/]+)", text):
            for name in re.findall(r"\w+", names.split("  ")[0]):
                if name in known[group]:
                    seen += 1
                    continue
                # text after the option name, e.g. "[vmware] cluster_name unset"
                if re.fullmatch(r"[a-z]+_[a-z_]+", name):
                    raise AssertionError(f"{page.name}: [{group}] {name} is not an option")
                break
        # ini blocks: keys under [vmware] / [vsan_flows]
        for b in ALL_BLOCKS[page.name]:
            if b.lang != "ini":
                continue
            group = None
            for line in b.text.splitlines():
                m = re.match(r"^\[(\w+)\]", line)
                if m:
                    group = m.group(1)
                    continue
                m = re.match(r"^#?\s*(\w+)\s*=", line)
                if m and group in known:
                    assert m.group(1) in known[group], \
                        f"{b.where}: {m.group(1)} is not an option of [{group}]"
                    seen += 1
        # every backticked snake_case word is an option or a known non-option
        for word in re.findall(r"`([A-Za-z]+_[A-Za-z_]+)`", _prose(page)):
            assert word in all_names or word in NOT_OPTIONS, (
                f"{page.name}: `{word}` is neither an option nor a known non-option name")
    assert seen >= 20
