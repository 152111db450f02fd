package simulator

// Calls nova's VMware driver makes that vcsim 0.24.2 lacks, implemented as vCenter behaves:
//
//   - the service WSDL at /sdk/vimService.wsdl (nova's session has no WSDL option: it always
//     fetches it from the server, as a real vCenter serves it there);
//   - ExtensionManager (nova registers itself as "org.openstack.compute" at start-up);
//   - SearchIndex.FindAllByUuid (how nova finds an instance's VM by config.instanceUuid);
//   - VirtualDiskManager.ExtendVirtualDisk_Task (nova grows a root disk to the flavor's size).
//
//   - a disk's size in both capacityInKB and capacityInBytes, as vCenter reports it (vcsim
//     kept only what the client sent: a disk added with capacityInKB read as 0 bytes, and
//     oslo.vmware's transfer progress divides by that);
//   - keyed property paths such as config.extraConfig["nvp.vm-uuid"] (how nova lists its VMs
//     and finds VNC ports), via a one-line hook in fieldValue (patch 0101).
//
// Kept in a file of its own so it merges beside the other simulator work untouched.

import (
	"fmt"
	"net/http"
	"reflect"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// InstallNovaSupport registers the ExtensionManager and, when wsdlDir is set, serves every
// .wsdl/.xsd file in it under /sdk/ (the WSDL includes its schema files by relative name).
// Call it after the model is created and before NewServer.
func InstallNovaSupport(s *Service, wsdlDir string) error {
	prev := CallHook
	CallHook = func(ctx *Context, method *Method, next func() soap.HasFault) soap.HasFault {
		var res soap.HasFault
		if prev != nil {
			res = prev(ctx, method, next)
		} else {
			res = next()
		}
		if deviceChangingCalls[method.Name] {
			fillDiskCapacities()
		}
		return res
	}
	ref := Map.content().ExtensionManager
	if ref != nil {
		// vcsim names the manager in ServiceContent but registers no object for it.
		Map.Remove(*ref)
		Map.Put(&ExtensionManager{ExtensionManager: mo.ExtensionManager{Self: *ref}})
	}
	if wsdlDir == "" {
		return nil
	}
	entries, err := os.ReadDir(wsdlDir)
	if err != nil {
		return err
	}
	if s.ServeMux == nil {
		s.ServeMux = http.NewServeMux()
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".wsdl") && !strings.HasSuffix(name, ".xsd") {
			continue
		}
		path := filepath.Join(wsdlDir, name)
		s.ServeMux.HandleFunc(Map.Path+"/"+name, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/xml; charset=utf-8")
			http.ServeFile(w, r, path)
		})
	}
	return nil
}

// ExtensionManager keeps the extensions registered with this vCenter.
type ExtensionManager struct {
	mo.ExtensionManager
}

func (m *ExtensionManager) FindExtension(req *types.FindExtension) soap.HasFault {
	body := &methods.FindExtensionBody{Res: new(types.FindExtensionResponse)}
	for i := range m.ExtensionList {
		if m.ExtensionList[i].Key == req.ExtensionKey {
			e := m.ExtensionList[i]
			body.Res.Returnval = &e
			break
		}
	}
	return body
}

func (m *ExtensionManager) RegisterExtension(req *types.RegisterExtension) soap.HasFault {
	body := &methods.RegisterExtensionBody{}
	if req.Extension.Key == "" {
		body.Fault_ = Fault("", &types.InvalidArgument{InvalidProperty: "extension.key"})
		return body
	}
	for _, e := range m.ExtensionList {
		if e.Key == req.Extension.Key {
			// vCenter refuses a second registration of a key (callers FindExtension first).
			body.Fault_ = Fault("extension "+e.Key+" is already registered",
				&types.InvalidArgument{InvalidProperty: "extension.key"})
			return body
		}
	}
	m.ExtensionList = append(m.ExtensionList, req.Extension)
	body.Res = new(types.RegisterExtensionResponse)
	return body
}

func (m *ExtensionManager) UnregisterExtension(req *types.UnregisterExtension) soap.HasFault {
	body := &methods.UnregisterExtensionBody{}
	for i, e := range m.ExtensionList {
		if e.Key == req.ExtensionKey {
			m.ExtensionList = append(m.ExtensionList[:i], m.ExtensionList[i+1:]...)
			body.Res = new(types.UnregisterExtensionResponse)
			return body
		}
	}
	body.Fault_ = Fault("", &types.NotFound{})
	return body
}

// FindAllByUuid: every VM (or host) with that BIOS or instance uuid, optionally in one
// datacenter. nova asks with instanceUuid=true and expects one VM per instance.
func (s *SearchIndex) FindAllByUuid(req *types.FindAllByUuid) soap.HasFault {
	body := &methods.FindAllByUuidBody{Res: new(types.FindAllByUuidResponse)}

	Map.m.Lock()
	defer Map.m.Unlock()

	for ref, obj := range Map.objects {
		if req.VmSearch {
			vm, ok := asVirtualMachineMO(obj)
			if !ok || vm.Config == nil {
				continue
			}
			id := vm.Config.Uuid
			if req.InstanceUuid != nil && *req.InstanceUuid {
				id = vm.Config.InstanceUuid
			}
			if id == req.Uuid {
				body.Res.Returnval = append(body.Res.Returnval, ref)
			}
			continue
		}
		host, ok := asHostSystemMO(obj)
		if ok && host.Summary.Hardware != nil && host.Summary.Hardware.Uuid == req.Uuid {
			body.Res.Returnval = append(body.Res.Returnval, ref)
		}
	}
	return body
}

// ExtendVirtualDiskTask grows a disk. A VM's view of a disk is its device's capacity, so every
// VM device backed by that file is grown; shrinking is refused (vCenter cannot shrink a disk),
// as is a file that does not exist.
func (m *VirtualDiskManager) ExtendVirtualDiskTask(_ *Context, req *types.ExtendVirtualDisk_Task) soap.HasFault {
	task := CreateTask(m, "extendVirtualDisk", func(*Task) (types.AnyType, types.BaseMethodFault) {
		fm := Map.FileManager()
		file, fault := fm.resolve(req.Datacenter, req.Name)
		if fault != nil {
			return nil, fault
		}
		if _, err := os.Stat(file); err != nil {
			return nil, fm.fault(req.Name, err, new(types.FileNotFound))
		}
		var disks []*types.VirtualDisk
		for _, obj := range Map.All("VirtualMachine") {
			vm := Map.Get(obj.Reference()).(*VirtualMachine)
			for _, d := range vm.Config.Hardware.Device {
				disk, ok := d.(*types.VirtualDisk)
				if !ok {
					continue
				}
				b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
				if ok && b.GetVirtualDeviceFileBackingInfo().FileName == req.Name {
					disks = append(disks, disk)
				}
			}
		}
		for _, disk := range disks {
			if req.NewCapacityKb < disk.CapacityInKB {
				return nil, &types.InvalidArgument{InvalidProperty: "newCapacityKb"}
			}
		}
		for _, disk := range disks {
			disk.CapacityInKB = req.NewCapacityKb
			disk.CapacityInBytes = req.NewCapacityKb * 1024
		}
		return nil, nil
	})

	return &methods.ExtendVirtualDisk_TaskBody{
		Res: &types.ExtendVirtualDisk_TaskResponse{
			Returnval: task.Run(),
		},
	}
}

// An element whose whole text is a date-time without a zone (xsd:dateTime allows that; nova's
// RegisterExtension sends lastHeartbeatTime so). Such values are read as UTC, as vCenter does.
var naiveDateTime = regexp.MustCompile(`>(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)</`)

func naiveDateTimesAsUTC(body []byte) []byte {
	return naiveDateTime.ReplaceAll(body, []byte(">${1}Z</"))
}

// A property path ending in a key: base["text"] or base[123].
var keyedPath = regexp.MustCompile(`^(.+)\[(?:"([^"]*)"|(-?\d+))\]$`)

// keyedFieldValue answers a keyed property path the way vCenter does: the element of the
// array at base whose key field equals the key; a key nobody has is an unset property (no
// value, no fault: nova reads nvp.vm-uuid of every VM, most of which have none). ok is false
// when p is not a keyed path.
func keyedFieldValue(rval reflect.Value, p string) (value interface{}, err error, ok bool) {
	m := keyedPath.FindStringSubmatch(p)
	if m == nil {
		return nil, nil, false
	}
	key := m[2]
	if m[3] != "" {
		key = m[3]
	}
	base, err := fieldValue(rval, m[1])
	if err != nil {
		return nil, err, true
	}
	list := reflect.ValueOf(base)
	for list.Kind() == reflect.Ptr || list.Kind() == reflect.Interface {
		list = list.Elem()
	}
	if list.Kind() == reflect.Struct && list.NumField() == 1 { // *types.ArrayOfX wrapper
		list = list.Field(0)
	}
	if list.Kind() != reflect.Slice {
		return nil, errMissingField, true
	}
	for i := 0; i < list.Len(); i++ {
		item := list.Index(i)
		elem := item
		for elem.Kind() == reflect.Interface || elem.Kind() == reflect.Ptr {
			if elem.IsNil() {
				break
			}
			elem = elem.Elem()
		}
		if elem.Kind() != reflect.Struct {
			continue
		}
		k := elem.FieldByName("Key")
		if k.IsValid() && fmt.Sprint(k.Interface()) == key {
			return item.Interface(), nil, true
		}
	}
	return nil, errEmptyField, true
}

// Calls after which a VM may have a disk whose size was given in one unit only.
var deviceChangingCalls = map[string]bool{
	"CreateVM_Task": true, "ReconfigVM_Task": true, "CloneVM_Task": true, "ImportVApp": true,
	"ExtendVirtualDisk_Task": true, "RelocateVM_Task": true, "HttpNfcLeaseComplete": true,
}

// fillDiskCapacities sets whichever of capacityInKB / capacityInBytes a disk lacks from the
// other (tasks run synchronously in vcsim, so their device changes are in place by now).
func fillDiskCapacities() {
	for _, obj := range Map.All("VirtualMachine") {
		vm, ok := Map.Get(obj.Reference()).(*VirtualMachine)
		if !ok {
			continue
		}
		Map.WithLock(vm, func() {
			// CreateVM/CloneVM add a new VM's devices under chainMu, not under that VM's lock.
			chainMu.Lock()
			defer chainMu.Unlock()
			if vm.Config == nil {
				return
			}
			for _, d := range vm.Config.Hardware.Device {
				disk, ok := d.(*types.VirtualDisk)
				if !ok {
					continue
				}
				if disk.CapacityInBytes == 0 && disk.CapacityInKB > 0 {
					disk.CapacityInBytes = disk.CapacityInKB * 1024
				} else if disk.CapacityInKB == 0 && disk.CapacityInBytes > 0 {
					disk.CapacityInKB = (disk.CapacityInBytes + 1023) / 1024
				}
			}
		})
	}
}
