package simulator

// vSAN's rule, enforced on datastores of type "vsan": a disk's data lives
// in vSAN objects that only NFC leases (and the VM) reach.  The datastore
// browser lists no -flat/-delta/-sesparse data file, /folder GET or PUT of
// such a path fails, and Copy/MoveVirtualDisk from one fails (FileNotFound:
// vSAN's namespace has no such file).  VMFS datastores are left alone.
//
// Also the disk bookkeeping around SOAP calls: after calls that may create
// disks, every disk gets its data; CreateSnapshot gives the VM new deltas;
// RemoveSnapshot consolidates.

import (
	"fmt"
	"log"
	"net/http"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func isVsan(ds *Datastore) bool {
	return ds != nil && ds.Summary.Type == "vsan"
}

// vsanDataPath reports whether "[ds] path" names a data file on a vsan
// datastore.
func vsanDataPath(name string) bool {
	var p object.DatastorePath
	if !p.FromString(name) {
		return false
	}
	return isDataFile(p.Path) && isVsan(datastoreByName(p.Datastore))
}

// vsanRefuse answers calls vSAN refuses, before they are dispatched.
func vsanRefuse(ctx *Context, method *Method) soap.HasFault {
	var source string
	switch req := method.Body.(type) {
	case *types.CopyVirtualDisk_Task:
		source = req.SourceName
	case *types.MoveVirtualDisk_Task:
		source = req.SourceName
	default:
		return nil
	}
	if !vsanDataPath(source) {
		return nil
	}
	msg := fmt.Sprintf("File %s was not found (a vSAN datastore keeps disk data in objects, not files; name the disk's descriptor)", source)
	return failTask(ctx, method, &types.FileNotFound{FileFault: types.FileFault{File: source}}, msg)
}

// failTask answers a *_Task call with a task that ended in fault.
func failTask(ctx *Context, method *Method, fault types.BaseMethodFault, msg string) soap.HasFault {
	obj := ctx.Map.Get(method.This)
	if obj == nil {
		return &serverFaultBody{Reason: Fault("managed object not found", &types.ManagedObjectNotFound{Obj: method.This})}
	}
	name := strings.TrimSuffix(method.Name, vTaskSuffix)
	name = strings.ToLower(name[:1]) + name[1:] + sTaskSuffix
	task := CreateTask(obj, name, func(*Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	task.Info.Error.LocalizedMessage = msg
	return &genericBody{Res: &taskResponse{name: method.Name + "Response", Returnval: ref}}
}

// diskPreCall captures what a call's disk bookkeeping needs from before it
// runs (a removed snapshot's disks are gone afterwards).
func diskPreCall(method *Method) func() {
	switch method.Name {
	case "RemoveSnapshot_Task":
		snap, ok := Map.Get(method.This).(*VirtualMachineSnapshot)
		if !ok {
			return nil
		}
		files := snapshotDiskFiles(snap)
		vmRef := snap.Vm
		return func() {
			if vm, ok := Map.Get(vmRef).(*VirtualMachine); ok {
				consolidate(vm, files)
			}
		}
	case "CreateSnapshot_Task":
		return func() {
			if vm, ok := Map.Get(method.This).(*VirtualMachine); ok {
				snapshotDisks(vm)
			}
		}
	case "CreateVM_Task", "ReconfigVM_Task", "CloneVM_Task", "ImportVApp":
		return materialiseAll
	case "CreateVirtualDisk_Task":
		req := method.Body.(*types.CreateVirtualDisk_Task)
		return func() { createStandaloneDisk(req) }
	}
	return nil
}

// diskPostCall runs the bookkeeping when the call succeeded.
func diskPostCall(method *Method, res soap.HasFault, after func()) {
	if res.Fault() != nil || taskError(res) != "" {
		return
	}
	if after != nil {
		after()
	}
	if method.Name == "SearchDatastore_Task" || method.Name == "SearchDatastoreSubFolders_Task" {
		hideDataFiles(res)
	}
}

// hideDataFiles removes vSAN data files from a datastore browser result.
func hideDataFiles(res soap.HasFault) {
	ref, ok := taskRef(res)
	if !ok {
		return
	}
	t, ok := Map.Get(ref).(*Task)
	if !ok {
		return
	}
	filter := func(r types.HostDatastoreBrowserSearchResults) types.HostDatastoreBrowserSearchResults {
		if r.Datastore == nil {
			return r
		}
		ds, _ := Map.Get(*r.Datastore).(*Datastore)
		if !isVsan(ds) {
			return r
		}
		var kept []types.BaseFileInfo
		for _, f := range r.File {
			if !isDataFile(f.GetFileInfo().Path) {
				kept = append(kept, f)
			}
		}
		r.File = kept
		return r
	}
	Map.WithLock(t, func() {
		switch r := t.Info.Result.(type) {
		case types.HostDatastoreBrowserSearchResults:
			t.Info.Result = filter(r)
		case types.ArrayOfHostDatastoreBrowserSearchResults:
			out := make([]types.HostDatastoreBrowserSearchResults, len(r.HostDatastoreBrowserSearchResults))
			for i, x := range r.HostDatastoreBrowserSearchResults {
				out[i] = filter(x)
			}
			t.Info.Result = types.ArrayOfHostDatastoreBrowserSearchResults{HostDatastoreBrowserSearchResults: out}
		}
	})
}

// taskRef returns the task a *_Task response refers to.
func taskRef(res soap.HasFault) (types.ManagedObjectReference, bool) {
	ref, ok := returnedRef(res) // vsan_latency.go
	return ref, ok && ref.Type == "Task"
}

// vsanFolderGuard runs first in /folder requests (see the patch to
// ServeDatastore); false means it answered the request.
func vsanFolderGuard(w http.ResponseWriter, r *http.Request, ds *Datastore, p string) bool {
	if !isVsan(ds) || !isDataFile(p) {
		return true
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		log.Printf("folder %s %s on vSAN datastore %s -> 404 (disk data is reachable through NFC only)", r.Method, r.URL.Path, ds.Name)
		http.Error(w, "404 Not Found: vSAN keeps disk data in objects, not datastore files", http.StatusNotFound)
	default:
		log.Printf("folder %s %s on vSAN datastore %s -> 403 (disk data files cannot be written)", r.Method, r.URL.Path, ds.Name)
		http.Error(w, "403 Forbidden: vSAN disk data files cannot be written through /folder", http.StatusForbidden)
	}
	return false
}

// createStandaloneDisk gives a disk made by CreateVirtualDisk (no VM) its
// blank base.
func createStandaloneDisk(req *types.CreateVirtualDisk_Task) {
	spec, ok := req.Spec.(*types.FileBackedVirtualDiskSpec)
	p := (&VirtualMachine{}).localPath(req.Name)
	if !ok || p == "" {
		return
	}
	diskMu.Lock()
	defer diskMu.Unlock()
	if err := makeBase(p, spec.CapacityKb*1024, "", ""); err != nil {
		log.Printf("CreateVirtualDisk %s: %s", req.Name, err)
	}
}
