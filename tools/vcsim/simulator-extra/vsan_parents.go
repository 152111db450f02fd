package simulator

// A linked disk needs its parent.  vCenter refuses to add a disk whose
// backing names a parent (a linked clone of a base disk, as nova's and
// vsan_flows' image caches make) when the parent disk does not exist: the
// CreateVM_Task / ReconfigVM_Task ends in FileNotFound naming the parent.
// Stock vcsim created the VM anyway (and vsan-vcsim then logged "parent disk
// ... has no data file" and left the VM with a disk no read could serve), so
// a client that links to a destroyed image-cache VM's disk never saw the
// failure it would see on vCenter.  The check runs before the call is
// dispatched, so a refused CreateVM_Task leaves no VM and no files behind
// (as on vCenter, which rolls a failed creation back).

import (
	"fmt"
	"os"
	"path"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// datastoreFile is the local path of "[ds] dir/file", "" if ds is unknown.
func datastoreFile(name string) string {
	var p object.DatastorePath
	if !p.FromString(name) {
		return ""
	}
	ds := datastoreByName(p.Datastore)
	if ds == nil {
		return ""
	}
	return path.Join(ds.Info.GetDatastoreInfo().Url, p.Path)
}

// missingParent returns the first file of the parent chain of a disk that
// changes adds which does not exist (its descriptor or its data), "" if
// every parent is there.
func missingParent(changes []types.BaseVirtualDeviceConfigSpec) string {
	for _, c := range changes {
		spec := c.GetVirtualDeviceConfigSpec()
		if spec.Operation != types.VirtualDeviceConfigSpecOperationAdd {
			continue
		}
		disk, ok := spec.Device.(*types.VirtualDisk)
		if !ok {
			continue
		}
		b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		for p := b.Parent; p != nil; p = p.Parent {
			local := datastoreFile(p.FileName)
			if local == "" {
				return p.FileName // a datastore vCenter does not know: not found either
			}
			if _, err := os.Stat(local); err != nil {
				return p.FileName
			}
			diskMu.Lock()
			data := dataFile(local)
			diskMu.Unlock()
			if data == "" {
				return p.FileName
			}
		}
	}
	return ""
}

// refuseMissingParent answers CreateVM_Task / ReconfigVM_Task with a task
// that ends in FileNotFound when a disk they add names a parent that is
// gone; nil lets the call through.
func refuseMissingParent(ctx *Context, method *Method) soap.HasFault {
	var changes []types.BaseVirtualDeviceConfigSpec
	switch req := method.Body.(type) {
	case *types.CreateVM_Task:
		changes = req.Config.DeviceChange
	case *types.ReconfigVM_Task:
		changes = req.Spec.DeviceChange
	default:
		return nil
	}
	missing := missingParent(changes)
	if missing == "" {
		return nil
	}
	return failTask(ctx, method, &types.FileNotFound{FileFault: types.FileFault{File: missing}},
		fmt.Sprintf("File %s was not found", missing))
}
