#!/usr/bin/env python3
"""Smoke test for vsan-vcsim: build, start, and prove each promise once.

    /work/venv/bin/python tools/vcsim/smoke.py [--keep]

Needs pyVmomi and qemu-img.  Prints one line per check and exits non-zero
on the first failure.  Not part of the unit test suite; run it by hand after
changing anything under tools/vcsim/.
"""

import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from pyVim import connect
from pyVmomi import vim, vmodl

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PC = vmodl.query.PropertyCollector


def check(cond, what):
    print('{} {}'.format('ok  ' if cond else 'FAIL', what))
    if not cond:
        sys.exit(1)


class Sim:
    def __init__(self, binary, workdir):
        self.state_path = os.path.join(workdir, 'state.json')
        self.log = open(os.path.join(workdir, 'vcsim.log'), 'w')
        t0 = time.time()
        self.proc = subprocess.Popen([binary, '-state', self.state_path],
                                     stderr=self.log,
                                     stdout=subprocess.DEVNULL)
        while not os.path.exists(self.state_path):
            if self.proc.poll() is not None:
                sys.exit(f'vsan-vcsim exited: see {self.log.name}')
            time.sleep(0.01)
        self.start_time = time.time() - t0
        with open(self.state_path) as f:
            self.state = json.load(f)

    def ctl(self, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.state['control_url'] + path, data=data,
            method='POST' if body is not None else 'GET')
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def nfc(self, method, url, body=None):
        conn = http.client.HTTPSConnection(
            '127.0.0.1', self.state['port'],
            context=ssl._create_unverified_context())
        conn.request(method, url.split('*', 1)[1], body=body)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


def props(si, obj, paths):
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=obj)],
        propSet=[PC.PropertySpec(type=type(obj), pathSet=paths)])
    res = si.content.propertyCollector.RetrievePropertiesEx(
        [spec], PC.RetrieveOptions())
    return {p.name: p.val for p in res.objects[0].propSet}


def find_all(si, kind, paths):
    content = si.content
    view = content.viewManager.CreateContainerView(
        content.rootFolder, [kind], True)
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[
            PC.TraversalSpec(name='v', type=vim.view.ContainerView,
                             path='view', skip=False)])],
        propSet=[PC.PropertySpec(type=kind, pathSet=paths)])
    res = content.propertyCollector.RetrievePropertiesEx(
        [spec], PC.RetrieveOptions())
    view.Destroy()
    out = []
    for o in (res.objects if res else []):
        d = {p.name: p.val for p in o.propSet}
        d['obj'] = o.obj
        out.append(d)
    return out


def import_spec(name, ds='vsanDatastore'):
    dev = vim.vm.device
    ctrl = dev.VirtualDeviceSpec(operation='add', device=dev.VirtualLsiLogicController(
        key=-100, busNumber=0, sharedBus='noSharing'))
    disk = dev.VirtualDeviceSpec(operation='add', fileOperation='create', device=dev.VirtualDisk(
        key=-101, controllerKey=-100, unitNumber=0, capacityInKB=65536,
        backing=dev.VirtualDisk.FlatVer2BackingInfo(
            fileName=f'[{ds}]', diskMode='persistent', thinProvisioned=True)))
    cfg = vim.vm.ConfigSpec(name=name, guestId='otherGuest',
                            files=vim.vm.FileInfo(vmPathName=f'[{ds}]'),
                            deviceChange=[ctrl, disk])
    return vim.VirtualMachineImportSpec(configSpec=cfg)


def wait(si, task):
    while True:
        r = props(si, task, ['info.state', 'info.error', 'info.result'])
        if r['info.state'] == 'success':
            return r.get('info.result')
        if r['info.state'] == 'error':
            raise RuntimeError(r.get('info.error'))
        time.sleep(0.05)


def main():
    keep = '--keep' in sys.argv
    work = tempfile.mkdtemp(prefix='vsan-vcsim-smoke-')
    t0 = time.time()
    subprocess.check_call([os.path.join(HERE, 'build.sh')])
    print('     build %.2fs' % (time.time() - t0))
    binary = os.path.join(REPO, '.build', 'vcsim', 'vsan-vcsim')

    raw, vmdk = os.path.join(work, 'r.img'), os.path.join(work, 's.vmdk')
    with open(raw, 'wb') as f:
        f.write(os.urandom(16 << 20))
    subprocess.check_call(['qemu-img', 'convert', '-O', 'vmdk', '-o',
                           'subformat=streamOptimized', raw, vmdk])
    with open(vmdk, 'rb') as f:
        data = f.read()

    sim = Sim(binary, work)
    st = sim.state
    print(f'     start {sim.start_time:.2f}s, state {json.dumps(st)}')
    check(st['url'] == f"https://127.0.0.1:{st['port']}/sdk", 'state file url')
    check(len(st['thumbprint'].split(':')) == 20, 'state file thumbprint')

    si = connect.SmartConnect(host='127.0.0.1', port=st['port'], user='user',
                              pwd='pass', disableSslCertValidation=True)
    dss = {d['name']: d for d in find_all(si, vim.Datastore, ['name', 'summary'])}
    check({n: d['summary'].type for n, d in dss.items()} ==
          {'vsanDatastore': 'vsan', 'vsanDatastore-2': 'vsan', 'LocalDS_0': 'VMFS'},
          'datastores and types')
    check(find_all(si, vim.VirtualMachine, ['name']) == [], 'no VMs at start')

    dc = si.content.rootFolder.childEntity[0]
    pool = find_all(si, vim.ClusterComputeResource, ['resourcePool'])[0]['resourcePool']

    # Import: PUT lands byte-identical in the VM's disk file.
    lease = pool.ImportVApp(import_spec('smoke'), folder=dc.vmFolder)
    info = props(si, lease, ['info'])['info']
    t0 = time.time()
    status, _ = sim.nfc('PUT', info.deviceUrl[0].url, data)
    rate = len(data) / (time.time() - t0) / 1e6
    lease.HttpNfcLeaseComplete()
    files = {f['path']: f['size'] for f in sim.ctl('/files')[1]}
    check(status == 200 and files.get('smoke/smoke.vmdk') == len(data),
          f'import PUT stored {len(data)} bytes ({rate:.0f} MB/s)')
    vm = info.entity

    # Export: GET returns the same bytes.
    lease = vm.ExportVm()
    info = props(si, lease, ['info'])['info']
    t0 = time.time()
    status, got = sim.nfc('GET', info.deviceUrl[0].url)
    rate = len(got) / (time.time() - t0) / 1e6
    lease.HttpNfcLeaseComplete()
    check(status == 200 and hashlib.sha256(got).digest() == hashlib.sha256(data).digest(),
          f'export GET identical ({rate:.0f} MB/s)')

    # Linked clone: child of the source disk; the source is untouched.
    wait(si, vm.CloneVM_Task(dc.vmFolder, 'smoke-lc', vim.vm.CloneSpec(
        location=vim.vm.RelocateSpec(diskMoveType='createNewChildDiskBacking', pool=pool),
        powerOn=False, template=False)))
    vms = {v['name']: v for v in sim.ctl('/status')[1]['vms']}
    check(vms['smoke-lc']['disks'][0]['parent'] == '[vsanDatastore] smoke/smoke.vmdk' and
          vms['smoke']['disks'][0]['file'] == '[vsanDatastore] smoke/smoke.vmdk',
          'linked clone chain, source untouched')

    # Knobs.
    sim.ctl('/fault/method', {'method': 'ImportVApp', 'fault': 'InvalidState'})
    try:
        pool.ImportVApp(import_spec('x'), folder=dc.vmFolder)
        check(False, 'method fault')
    except vim.fault.InvalidState:
        check(True, 'method fault')
    sim.ctl('/fault/lease', {'mode': 'expire', 'scope': 'next'})
    lease = pool.ImportVApp(import_spec('x'), folder=dc.vmFolder)
    check(props(si, lease, ['state'])['state'] == 'error', 'lease knob')
    lease.HttpNfcLeaseAbort()
    sim.ctl('/fault/nfc', {'cut_after_bytes': 1000, 'direction': 'download'})
    lease = vm.ExportVm()
    try:
        sim.nfc('GET', props(si, lease, ['info'])['info'].deviceUrl[0].url)
        check(False, 'nfc cut knob')
    except (http.client.IncompleteRead, ConnectionError, ssl.SSLError):
        check(True, 'nfc cut knob')
    lease.HttpNfcLeaseAbort()
    sim.ctl('/datastore', {'name': 'vsanDatastore-2', 'free_space': 1234})
    free = props(si, dss['vsanDatastore-2']['obj'], ['summary.freeSpace'])['summary.freeSpace']
    check(free == 1234, 'datastore knob')
    sim.ctl('/sessions/terminate', {})
    try:
        find_all(si, vim.VirtualMachine, ['name'])
        check(False, 'session knob')
    except vim.fault.NotAuthenticated:
        check(True, 'session knob')

    si = connect.SmartConnect(host='127.0.0.1', port=st['port'], user='user',
                              pwd='pass', disableSslCertValidation=True)
    # Linked clone first: a parent disk outlives its VM while a child uses
    # it, and is then left behind (as on vSphere).
    vms = find_all(si, vim.VirtualMachine, ['name'])
    for v in sorted(vms, key=lambda v: v['name'] != 'smoke-lc'):
        wait(si, v['obj'].Destroy_Task())
    status = sim.ctl('/status')[1]
    check(status['vms'] == [] and status['leases'] == [] and sim.ctl('/files')[1] == [],
          'destroy leaves no VM, lease or file')

    check(sim.stop() == 0, 'SIGTERM exits 0')
    check(not os.path.exists(sim.state_path) and
          not os.path.exists(st['tmpdir']), 'state file and datastores removed')
    if not keep:
        subprocess.call(['rm', '-rf', work])


if __name__ == '__main__':
    main()
