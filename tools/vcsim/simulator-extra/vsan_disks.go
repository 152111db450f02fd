package simulator

// Real virtual disks for vsan-vcsim.  What vSphere clients see does not
// change (a disk is "[ds] dir/X.vmdk", a linked child has a parent
// backing); on the datastore directory each disk X.vmdk is
//
//   X.vmdk        a text descriptor (what the datastore browser shows)
//   X-flat.vmdk   the data of a base disk          (qcow2, no backing file)
//   X-delta.vmdk  the data of a child (delta) disk (qcow2 backed by the
//                 parent's data file)
//
// so a VM's disk is a qemu-img backing chain.  ImportVApp's upload becomes
// the base (converted from the streamOptimized stream), a linked clone and
// a VM snapshot get real children, RemoveSnapshot commits the delta into
// its parent, and ExportVm converts the whole chain into a streamOptimized
// VMDK.  One mutex (diskMu) serialises every qemu operation: tests use small
// disks.  Lock order: a VM's registry lock, then diskMu, never the reverse
// (SOAP dispatch holds the VM's lock when ExportVm or CloneVM reach disks).

import (
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

var diskMu sync.Mutex

func deltaName(p string) string {
	return strings.TrimSuffix(p, ".vmdk") + "-delta.vmdk"
}

// dataFileRe matches the names of disk data files, which vSAN keeps in
// objects that only NFC (and the VM) can reach.
var dataFileRe = regexp.MustCompile(`-(flat|delta|sesparse)\.vmdk$`)

func isDataFile(p string) bool { return dataFileRe.MatchString(p) }

// runTool runs a qemu tool; the error is its first line of stderr.
func runTool(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		if msg == "" {
			msg = err.Error()
		}
		return string(out), fmt.Errorf("%s %s: %s", name, args[0], msg)
	}
	return string(out), nil
}

// dataFile returns the file holding the data of descriptor p, "" if none.
func dataFile(p string) string {
	for _, c := range []string{deltaName(p), flatName(p)} {
		if fi, err := os.Stat(c); err == nil && fi.Size() > 0 {
			return c
		}
	}
	return ""
}

// virtualSize is the guest-visible size of a data file (its whole chain).
func virtualSize(data string) (int64, error) {
	out, err := runTool("qemu-img", "info", "-U", "--output=json", data)
	if err != nil {
		return 0, err
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %s", data, err)
	}
	return info.VirtualSize, nil
}

func writeDescriptor(p, data, parent string, size int64) error {
	kind, extent := "vmfs", "VMFS"
	if parent != "" {
		kind, extent = "vmfsSparse", "VMFSSPARSE"
	}
	desc := fmt.Sprintf("# Disk DescriptorFile (vsan-vcsim)\nversion=1\nencoding=\"UTF-8\"\n"+
		"CID=fffffffe\nparentCID=ffffffff\ncreateType=%q\n", kind)
	if parent != "" {
		desc += fmt.Sprintf("parentFileNameHint=%q\n", parent)
	}
	desc += fmt.Sprintf("\n# Extent description\nRW %d %s %q\n", size/512, extent, path.Base(data))
	return os.WriteFile(p, []byte(desc), 0600)
}

// makeBase creates (or replaces) the base data of descriptor p: blank of
// size bytes, or converted from src (any format qemu-img reads) when set.
func makeBase(p string, size int64, src, srcFormat string) error {
	tmp := flatName(p) + ".new"
	var err error
	if src == "" {
		_, err = runTool("qemu-img", "create", "-q", "-f", "qcow2", tmp, fmt.Sprint(size))
	} else {
		_, err = runTool("qemu-img", "convert", "-U", "-f", srcFormat, "-O", "qcow2", src, tmp)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, flatName(p)); err != nil {
		return err
	}
	_ = os.Remove(deltaName(p))
	if size, err = virtualSize(flatName(p)); err != nil {
		return err
	}
	return writeDescriptor(p, flatName(p), "", size)
}

// makeChild creates descriptor p as an empty child of parent's data, of
// size bytes.  The parent's own chain is not opened (qemu-img create -u):
// a chain with a missing file can still grow a child, as on vSphere; it is
// reading the chain (guest I/O, export) that fails.
func makeChild(p, parent string, size int64) error {
	pdata := dataFile(parent)
	if pdata == "" {
		return fmt.Errorf("parent disk %s has no data file", path.Base(parent))
	}
	if _, err := runTool("qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", pdata, "-F", "qcow2",
		deltaName(p), fmt.Sprint(size)); err != nil {
		return err
	}
	if fi, err := os.Stat(flatName(p)); err == nil && fi.Size() == 0 {
		_ = os.Remove(flatName(p)) // the empty file vcsim made
	}
	return writeDescriptor(p, deltaName(p), path.Base(parent), size)
}

func diskSize(disk *types.VirtualDisk) int64 {
	if disk.CapacityInBytes != 0 {
		return disk.CapacityInBytes
	}
	return disk.CapacityInKB * 1024
}

// materialiseDisk gives every new file of disk's chain (the empty
// descriptor vcsim created) its data, root first: a blank base of the
// disk's capacity, children backed by their parents.
func (vm *VirtualMachine) materialiseDisk(disk *types.VirtualDisk) error {
	chain := vm.diskChain(disk)
	for i := len(chain) - 1; i >= 0; i-- {
		p := chain[i]
		if fi, err := os.Stat(p); err != nil || fi.Size() != 0 {
			// Made already (a descriptor has text), or gone: a missing
			// file is never silently replaced by a blank one.
			continue
		}
		var err error
		if i == len(chain)-1 {
			if _, serr := os.Stat(path.Dir(p)); serr != nil {
				return fmt.Errorf("disk %s: %s", p, serr)
			}
			err = makeBase(p, diskSize(disk), "", "")
		} else {
			err = makeChild(p, chain[i+1], diskSize(disk))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// materialiseAll makes every disk of every VM real; run after each call
// that may have created disks.
func materialiseAll() {
	for _, e := range Map.All("VirtualMachine") {
		vm := e.(*VirtualMachine)
		Map.WithLock(vm, func() {
			chainMu.RLock() // a clone's devices are added under its source's lock, not its own
			defer chainMu.RUnlock()
			diskMu.Lock()
			defer diskMu.Unlock()
			if vm.Config == nil {
				return
			}
			for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
				if err := vm.materialiseDisk(d.(*types.VirtualDisk)); err != nil {
					log.Printf("disk of %s: %s", vm.Name, err)
				}
			}
		})
	}
}

var deltaSuffixRe = regexp.MustCompile(`-[0-9]{6}$`)

// nextDeltaName names a snapshot delta of disk file name in vm's
// directory the way vSphere does: <disk>-000001.vmdk, -000002, ...
func (vm *VirtualMachine) nextDeltaName(name string) string {
	var disk, vmx object.DatastorePath
	disk.FromString(name)
	vmx.FromString(vm.Config.Files.VmPathName)
	base := deltaSuffixRe.ReplaceAllString(strings.TrimSuffix(path.Base(disk.Path), ".vmdk"), "")
	for n := 1; ; n++ {
		p := object.DatastorePath{Datastore: vmx.Datastore,
			Path: path.Join(path.Dir(vmx.Path), fmt.Sprintf("%s-%06d.vmdk", base, n))}
		if local := vm.localPath(p.String()); local != "" {
			if _, err := os.Stat(local); os.IsNotExist(err) {
				return p.String()
			}
		}
	}
}

// snapshotDisks runs after CreateSnapshot: the snapshot keeps the disk
// files as they were; the VM goes on writing into a new child of each.
func snapshotDisks(vm *VirtualMachine) {
	Map.WithLock(vm, func() {
		chainMu.Lock()
		defer chainMu.Unlock()
		diskMu.Lock()
		defer diskMu.Unlock()
		for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
			disk := d.(*types.VirtualDisk)
			b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if !ok {
				continue
			}
			parent := copyValue(reflect.ValueOf(b)).Interface().(*types.VirtualDiskFlatVer2BackingInfo)
			name := vm.nextDeltaName(b.FileName)
			if err := makeChild(vm.localPath(name), vm.localPath(b.FileName), diskSize(disk)); err != nil {
				log.Printf("snapshot of %s: disk %d: %s", vm.Name, disk.Key, err)
				continue
			}
			b.FileName = name
			b.Parent = parent
			b.Uuid = ""
			b.ChangeId = ""
		}
		vm.updateDiskLayouts()
	})
}

// snapshotDiskFiles returns disk key -> file name of a snapshot's disks.
func snapshotDiskFiles(snap *VirtualMachineSnapshot) map[int32]string {
	out := map[int32]string{}
	for _, d := range object.VirtualDeviceList(snap.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		if b, ok := d.(*types.VirtualDisk).Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
			out[d.GetVirtualDevice().Key] = b.GetVirtualDeviceFileBackingInfo().FileName
		}
	}
	return out
}

// consolidate runs after RemoveSnapshot: the delta made when the snapshot
// was taken is committed into the snapshot's disk (writes made since then
// survive) and leaves the chain, unless another chain still uses that disk.
func consolidate(vm *VirtualMachine, snapFiles map[int32]string) {
	Map.WithLock(vm, func() {
		chainMu.Lock()
		defer chainMu.Unlock()
		diskMu.Lock()
		defer diskMu.Unlock()
		others := filesInUse(vm.Self)
		for _, obj := range allObjects("VirtualMachineSnapshot") {
			if snap := obj.(*VirtualMachineSnapshot); snap.Vm == vm.Self {
				for _, d := range object.VirtualDeviceList(snap.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
					for _, p := range vm.diskChain(d.(*types.VirtualDisk)) {
						others[p] = true
					}
				}
			}
		}
		for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
			disk := d.(*types.VirtualDisk)
			s := snapFiles[disk.Key]
			leaf, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			if s == "" || !ok {
				continue
			}
			var above, child *types.VirtualDiskFlatVer2BackingInfo
			for b := leaf; b != nil; b = b.Parent {
				if b.Parent != nil && b.Parent.FileName == s {
					child = b
					break
				}
				above = b
			}
			if child == nil {
				continue
			}
			sPath, cPath := vm.localPath(s), vm.localPath(child.FileName)
			if others[sPath] {
				log.Printf("remove snapshot of %s: %s is used by another chain; delta %s kept", vm.Name, s, child.FileName)
				continue
			}
			cData := dataFile(cPath)
			if cData == "" {
				log.Printf("remove snapshot of %s: delta %s has no data file", vm.Name, child.FileName)
				continue
			}
			if _, err := runTool("qemu-img", "commit", "-q", "-f", "qcow2", cData); err != nil {
				log.Printf("remove snapshot of %s: %s", vm.Name, err)
				continue
			}
			if above == nil {
				disk.Backing = child.Parent
			} else {
				if _, err := runTool("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", dataFile(sPath), "-F", "qcow2",
					dataFile(vm.localPath(above.FileName))); err != nil {
					log.Printf("remove snapshot of %s: %s", vm.Name, err)
				}
				above.Parent = child.Parent
			}
			for _, f := range []string{cPath, cData, flatName(cPath)} {
				_ = os.Remove(f)
			}
			log.Printf("remove snapshot of %s: %s committed into %s", vm.Name, child.FileName, s)
		}
		vm.updateDiskLayouts()
	})
}

// vmDisk finds a VM by name or moref and one of its disks (key 0: the
// first); errors are one line, for the control API.
func vmDisk(name string, key int32) (*VirtualMachine, *types.VirtualDisk, error) {
	var vm *VirtualMachine
	for _, e := range Map.All("VirtualMachine") {
		if v := e.(*VirtualMachine); v.Name == name || v.Self.Value == name {
			vm = v
			break
		}
	}
	if vm == nil {
		return nil, nil, &httpError{404, fmt.Sprintf("no VM named %q (never created, or destroyed)", name)}
	}
	var disk *types.VirtualDisk
	Map.WithLock(vm, func() {
		if vm.Config == nil {
			return
		}
		for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
			if key == 0 || d.GetVirtualDevice().Key == key {
				disk = d.(*types.VirtualDisk)
				break
			}
		}
	})
	if disk == nil {
		if key != 0 {
			return nil, nil, fmt.Errorf("VM %s has no virtual disk with key %d", vm.Name, key)
		}
		return nil, nil, fmt.Errorf("VM %s has no virtual disk", vm.Name)
	}
	return vm, disk, nil
}

// leafData returns the data file at the top of disk's chain, checking
// that every file of the chain is there.
func (vm *VirtualMachine) leafData(disk *types.VirtualDisk) (string, error) {
	chain := vm.diskChain(disk)
	if len(chain) == 0 {
		return "", fmt.Errorf("VM %s: disk %d has no file", vm.Name, disk.Key)
	}
	for _, p := range chain {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("disk chain file %s is missing", filepath.Base(p))
		}
		if dataFile(p) == "" {
			return "", fmt.Errorf("disk chain file %s has no data file", filepath.Base(p))
		}
	}
	return dataFile(chain[0]), nil
}

// GuestWrite writes data at offset into the current (top) disk of a VM,
// as the guest would.
func GuestWrite(name string, key int32, offset int64, data []byte) (int64, error) {
	vm, disk, err := vmDisk(name, key)
	if err != nil {
		return 0, err
	}
	diskMu.Lock()
	defer diskMu.Unlock()
	leaf, err := vm.leafData(disk)
	if err != nil {
		return 0, err
	}
	size, err := virtualSize(leaf)
	if err != nil {
		return 0, err
	}
	if offset < 0 || offset+int64(len(data)) > size {
		return 0, fmt.Errorf("a write of %d bytes at offset %d does not fit the disk of VM %s (%d bytes)",
			len(data), offset, vm.Name, size)
	}
	if len(data) == 0 {
		return size, nil
	}
	tmp, err := os.CreateTemp("", "guest-write-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	out, err := runTool("qemu-io", "-f", "qcow2", "-c",
		fmt.Sprintf("write -q -s %s %d %d", tmp.Name(), offset, len(data)), leaf)
	if err == nil && strings.TrimSpace(out) != "" {
		err = fmt.Errorf("qemu-io write: %s", strings.TrimSpace(strings.SplitN(out, "\n", 2)[0]))
	}
	if err != nil {
		return 0, err
	}
	log.Printf("guest write %s disk %d: %d bytes at %d into %s", vm.Name, disk.Key, len(data), offset, filepath.Base(leaf))
	return size, nil
}

// FlattenDisk writes a raw image of a VM disk's whole chain to a new
// temporary file; the caller removes it.
func FlattenDisk(name string, key int32) (string, error) {
	vm, disk, err := vmDisk(name, key)
	if err != nil {
		return "", err
	}
	diskMu.Lock()
	defer diskMu.Unlock()
	leaf, err := vm.leafData(disk)
	if err != nil {
		return "", err
	}
	return convertTemp(leaf, "raw", "read-*.raw")
}

func convertTemp(leaf, format, pattern string, opts ...string) (string, error) {
	tmp, err := os.CreateTemp("", pattern)
	if err != nil {
		return "", err
	}
	_ = tmp.Close()
	args := []string{"convert", "-U", "-f", "qcow2", "-O", format}
	args = append(args, opts...)
	if _, err := runTool("qemu-img", append(args, leaf, tmp.Name())...); err != nil {
		_ = os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// exportStream converts a disk's chain into a streamOptimized VMDK in a
// temporary file (removed when the lease goes).
func (vm *VirtualMachine) exportStream(disk *types.VirtualDisk, adapter string) (string, error) {
	diskMu.Lock()
	defer diskMu.Unlock()
	leaf, err := vm.leafData(disk)
	if err != nil {
		return "", err
	}
	return convertTemp(leaf, "vmdk", "export-*.vmdk", "-o", "subformat=streamOptimized,adapter_type="+adapter)
}

// importUpload turns an uploaded stream into the base disk of descriptor p.
func importUpload(upload, p string) error {
	diskMu.Lock()
	defer diskMu.Unlock()
	if err := makeBase(p, 0, upload, "vmdk"); err != nil {
		return fmt.Errorf("the upload is not a VMDK this host can read: %s", err)
	}
	return nil
}

// exportAnnounceLength: when set, export leases give each disk's fileSize
// and downloads a Content-Length (vCenter gives neither: the stream is
// generated as it goes).
var exportAnnounceLength bool

func SetExportAnnounceLength(on bool) {
	nfcMu.Lock()
	exportAnnounceLength = on
	nfcMu.Unlock()
}

func announceLength() bool {
	nfcMu.Lock()
	defer nfcMu.Unlock()
	return exportAnnounceLength
}
