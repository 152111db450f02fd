package simulator

// VM disk handling for vsan-vcsim: clones get their own copies of the
// source's devices, linked clones get child disks, full clones get the data,
// and Destroy_Task deletes what vCenter would delete.

import (
	"log"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// copyValue returns a copy of v sharing no pointers, slices or maps with it.
func copyValue(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Ptr:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		n := reflect.New(v.Type().Elem())
		n.Elem().Set(copyValue(v.Elem()))
		return n
	case reflect.Interface:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		n := reflect.New(v.Type()).Elem()
		n.Set(copyValue(v.Elem()))
		return n
	case reflect.Struct:
		n := reflect.New(v.Type()).Elem()
		n.Set(v) // unexported fields (e.g. time.Time) by value
		for i := 0; i < v.NumField(); i++ {
			if n.Field(i).CanSet() {
				n.Field(i).Set(copyValue(v.Field(i)))
			}
		}
		return n
	case reflect.Slice:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		n := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := 0; i < v.Len(); i++ {
			n.Index(i).Set(copyValue(v.Index(i)))
		}
		return n
	case reflect.Map:
		if v.IsNil() {
			return reflect.Zero(v.Type())
		}
		n := reflect.MakeMapWithSize(v.Type(), v.Len())
		iter := v.MapRange()
		for iter.Next() {
			n.SetMapIndex(iter.Key(), copyValue(iter.Value()))
		}
		return n
	default:
		return v
	}
}

func cloneDevices(devices []types.BaseVirtualDevice) []types.BaseVirtualDevice {
	if devices == nil {
		return nil
	}
	return copyValue(reflect.ValueOf(devices)).Interface().([]types.BaseVirtualDevice)
}

func isLinkedClone(req *types.CloneVM_Task) bool {
	return req.Spec.Location.DiskMoveType == string(types.VirtualMachineRelocateDiskMoveOptionsCreateNewChildDiskBacking)
}

// sourceDisk returns the disk with key as the clone reads it: from the
// snapshot named in the clone spec, else the VM's current one.
func (vm *VirtualMachine) sourceDisk(req *types.CloneVM_Task, key int32) *types.VirtualDisk {
	devices := vm.Config.Hardware.Device
	if req.Spec.Snapshot != nil {
		if snap, ok := Map.Get(*req.Spec.Snapshot).(*VirtualMachineSnapshot); ok && snap.Config.Hardware.Device != nil {
			devices = snap.Config.Hardware.Device
		}
	}
	if d, ok := object.VirtualDeviceList(devices).FindByKey(key).(*types.VirtualDisk); ok {
		return d
	}
	return nil
}

// cloneDiskBacking prepares disk (a copy of a source disk) for the clone:
// a new file under the clone's directory; for a linked clone a child whose
// parent is the source's (or the snapshot's) disk backing.
func (vm *VirtualMachine) cloneDiskBacking(disk *types.VirtualDisk, req *types.CloneVM_Task) {
	fb, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
	if !ok {
		return
	}
	fb.GetVirtualDeviceFileBackingInfo().FileName = ""
	b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok {
		return
	}
	b.Parent = nil
	b.Uuid = ""
	b.ChangeId = ""
	if !isLinkedClone(req) {
		return
	}
	src := vm.sourceDisk(req, disk.Key)
	if src == nil {
		return
	}
	if sb, ok := src.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
		b.Parent = copyValue(reflect.ValueOf(sb)).Interface().(*types.VirtualDiskFlatVer2BackingInfo)
	}
}

// cloneDiskData gives a full clone's disks the (flattened) source data.
func (vm *VirtualMachine) cloneDiskData(clone *VirtualMachine, req *types.CloneVM_Task) {
	if isLinkedClone(req) {
		return
	}
	for _, d := range object.VirtualDeviceList(clone.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		src := vm.sourceDisk(req, disk.Key)
		fb, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if src == nil || !ok {
			continue
		}
		to := clone.localPath(fb.GetVirtualDeviceFileBackingInfo().FileName)
		if to == "" {
			continue
		}
		diskMu.Lock()
		leaf, err := vm.leafData(src)
		if err == nil {
			err = makeBase(to, 0, leaf, "qcow2")
		}
		diskMu.Unlock()
		if err != nil {
			log.Printf("clone %s: copying the data of %s: %s", clone.Name, vm.Name, err)
		}
	}
}

func flatName(p string) string {
	return strings.TrimSuffix(p, ".vmdk") + "-flat.vmdk"
}

// filesInUse returns the local files of every disk chain of every VM but
// skip (and of their snapshots), with their -flat companions.  The caller
// holds chainMu (read or write): the other VMs are not locked.
func filesInUse(skip types.ManagedObjectReference) map[string]bool {
	used := map[string]bool{}
	add := func(vm *VirtualMachine, devices []types.BaseVirtualDevice) {
		for _, d := range object.VirtualDeviceList(devices).SelectByType((*types.VirtualDisk)(nil)) {
			for _, p := range vm.diskChain(d.(*types.VirtualDisk)) {
				used[p] = true
				used[flatName(p)] = true
				used[deltaName(p)] = true
			}
		}
	}
	for _, e := range Map.All("VirtualMachine") {
		vm := e.(*VirtualMachine)
		if vm.Self == skip || vm.Config == nil {
			continue
		}
		add(vm, vm.Config.Hardware.Device)
	}
	for _, obj := range allObjects("VirtualMachineSnapshot") {
		snap := obj.(*VirtualMachineSnapshot)
		if snap.Vm == skip {
			continue
		}
		if vm, ok := Map.Get(snap.Vm).(*VirtualMachine); ok {
			add(vm, snap.Config.Hardware.Device)
		}
	}
	return used
}

// allObjects returns the registry's objects of one type (entities or not).
func allObjects(kind string) map[types.ManagedObjectReference]interface{} {
	out := map[types.ManagedObjectReference]interface{}{}
	Map.m.Lock()
	defer Map.m.Unlock()
	for ref, obj := range Map.objects {
		if ref.Type == kind {
			out[ref] = obj
		}
	}
	return out
}

// deleteFiles deletes vm's directory and its disks kept elsewhere, except
// files another VM's disk chain (or snapshot) still uses.
func (vm *VirtualMachine) deleteFiles(dc *Datacenter) {
	if vm.Config == nil {
		return
	}
	chainMu.RLock()
	used := filesInUse(vm.Self)
	chainMu.RUnlock()

	dirName := vm.Config.Files.LogDirectory
	if dirName == "" {
		var p object.DatastorePath
		if p.FromString(vm.Config.Files.VmPathName) {
			p.Path = filepath.Dir(p.Path)
			dirName = p.String()
		}
	}
	dir := vm.localPath(dirName)

	remove := func(p string) {
		if used[p] {
			log.Printf("destroy %s: keeping %s (used by another disk chain)", vm.Name, p)
			return
		}
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			log.Printf("destroy %s: %s", vm.Name, err)
		}
	}

	devices := vm.Config.Hardware.Device
	if vm.Snapshot != nil {
		for _, obj := range allObjects("VirtualMachineSnapshot") {
			if snap := obj.(*VirtualMachineSnapshot); snap.Vm == vm.Self {
				devices = append(append([]types.BaseVirtualDevice{}, devices...), snap.Config.Hardware.Device...)
			}
		}
	}
	for _, d := range object.VirtualDeviceList(devices).SelectByType((*types.VirtualDisk)(nil)) {
		fb, ok := d.(*types.VirtualDisk).Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			continue
		}
		p := vm.localPath(fb.GetVirtualDeviceFileBackingInfo().FileName)
		if p == "" || (dir != "" && strings.HasPrefix(p, dir+"/")) {
			continue // inside the VM directory: below
		}
		remove(p)
		remove(flatName(p))
		remove(deltaName(p))
	}

	if dir == "" || dir == filepath.Dir(dir) {
		return
	}
	if ds := dsOfPath(dir); ds == "" || ds == dir {
		return // never the datastore root itself
	}
	var dirs []string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		if fi.IsDir() {
			dirs = append(dirs, p)
			return nil
		}
		remove(p)
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(dirs[i]) // only if empty
	}
}

// dsOfPath returns the datastore directory that contains p, if any.
func dsOfPath(p string) string {
	for _, e := range Map.All("Datastore") {
		root := e.(*Datastore).Info.GetDatastoreInfo().Url
		if p == root || strings.HasPrefix(p, root+"/") {
			return root
		}
	}
	return ""
}

// vdmMissingFlat reports whether candidate is the -flat companion of disk
// name and does not exist (sparse and streamOptimized disks have none).
func vdmMissingFlat(dc *types.ManagedObjectReference, name, candidate string) bool {
	if candidate == name || dc == nil {
		return false
	}
	file, fault := Map.FileManager().resolve(dc, candidate)
	if fault != nil {
		return false
	}
	_, err := os.Stat(file)
	return os.IsNotExist(err)
}

// diskUsedElsewhere reports whether another VM's disk chain (or snapshot)
// uses the disk file name ("[ds] path"); such a file is never deleted.
// Called from configureDevices, which holds chainMu.
func (vm *VirtualMachine) diskUsedElsewhere(name string) bool {
	p := vm.localPath(name)
	return p != "" && filesInUse(vm.Self)[p]
}

// vdmDiskFiles are the files Delete/Move/CopyVirtualDisk act on for disk
// name: its data file (-flat for a base, -delta for a child) and itself.
func vdmDiskFiles(name string) []string {
	return []string{
		strings.Replace(name, ".vmdk", "-flat.vmdk", 1),
		strings.Replace(name, ".vmdk", "-delta.vmdk", 1),
		name,
	}
}
