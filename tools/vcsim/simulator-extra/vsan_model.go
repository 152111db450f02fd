package simulator

// Inventory set-up for vsan-vcsim: one datacenter, one cluster, datastores
// with the names and summary.type nova's vSAN path looks for, and no VMs.

import (
	"fmt"
	"sort"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// VsanDatastoreSpec names a datastore to create and its summary.type.
type VsanDatastoreSpec struct {
	Name string
	Type string
}

// VsanDatastore describes a created datastore (written to the state file).
type VsanDatastore struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Moref string `json:"moref"`
	Path  string `json:"path"`
}

const (
	// DefaultVsanCapacity and DefaultVsanFree are what every datastore
	// reports until the control API changes them.
	DefaultVsanCapacity = int64(1) << 40   // 1 TiB
	DefaultVsanFree     = int64(900) << 30 // 900 GiB
)

var (
	// fixedSpace holds datastores whose capacity/free space we own; for
	// those RefreshDatastore must not overwrite summary with statfs values.
	fixedSpaceMu sync.Mutex
	fixedSpace   = map[types.ManagedObjectReference]bool{}
)

// refreshSpace is called by RefreshDatastore instead of stat().
func (ds *Datastore) refreshSpace() error {
	fixedSpaceMu.Lock()
	fixed := fixedSpace[ds.Self]
	fixedSpaceMu.Unlock()
	if fixed {
		return nil
	}
	return ds.stat()
}

// NewVsanModel returns a VPX model with one datacenter, one cluster of
// `hosts` hosts and nothing else; call CreateVsan on it.
func NewVsanModel(hosts int) *Model {
	m := VPX()
	m.Datacenter = 1
	m.Cluster = 1
	m.ClusterHost = hosts
	m.Host = 0
	m.Machine = 0
	m.Datastore = 0
	m.Pool = 0
	m.App = 0
	m.Pod = 0
	m.Folder = 0
	m.Autostart = false
	return m
}

// CreateVsan creates the model, then the given datastores mounted on every
// host, then removes any VM the model may have made.  Call before NewServer.
func (m *Model) CreateVsan(specs []VsanDatastoreSpec) ([]VsanDatastore, error) {
	if err := m.Create(); err != nil {
		return nil, err
	}

	dcs := Map.All("Datacenter")
	if len(dcs) != 1 {
		return nil, fmt.Errorf("expected 1 datacenter, have %d", len(dcs))
	}
	dcName := dcs[0].Entity().Name

	var hosts []*object.HostSystem
	for _, h := range Map.All("HostSystem") {
		hosts = append(hosts, object.NewHostSystem(m.Service.client, h.Reference()))
	}
	sort.Slice(hosts, func(i, j int) bool {
		return hosts[i].Reference().Value < hosts[j].Reference().Value
	})

	var out []VsanDatastore
	for _, spec := range specs {
		if err := m.createLocalDatastore(dcName, spec.Name, hosts); err != nil {
			return nil, fmt.Errorf("datastore %s: %s", spec.Name, err)
		}
		var ds *Datastore
		for _, e := range Map.All("Datastore") {
			if e.Entity().Name == spec.Name {
				ds = e.(*Datastore)
			}
		}
		if ds == nil {
			return nil, fmt.Errorf("datastore %s not found after creation", spec.Name)
		}
		info := ds.Info.GetDatastoreInfo()
		// Every host mounts it (vcsim keeps only the last host's mount).
		ds.Host = nil
		for _, h := range hosts {
			ds.Host = append(ds.Host, types.DatastoreHostMount{
				Key: h.Reference(),
				MountInfo: types.HostMountInfo{
					Path:       info.Url,
					AccessMode: string(types.HostMountModeReadWrite),
					Mounted:    types.NewBool(true),
					Accessible: types.NewBool(true),
				},
			})
		}
		ds.Summary.Type = spec.Type
		ds.Summary.Capacity = DefaultVsanCapacity
		ds.Summary.FreeSpace = DefaultVsanFree
		ds.Summary.Accessible = true
		ds.Summary.MaintenanceMode = string(types.DatastoreSummaryMaintenanceModeStateNormal)
		info.FreeSpace = DefaultVsanFree
		info.MaxFileSize = DefaultVsanFree
		info.MaxVirtualDiskCapacity = DefaultVsanFree
		fixedSpaceMu.Lock()
		fixedSpace[ds.Self] = true
		fixedSpaceMu.Unlock()

		out = append(out, VsanDatastore{
			Name:  spec.Name,
			Type:  spec.Type,
			Moref: ds.Self.Value,
			Path:  info.Url,
		})
	}

	// A clean inventory: no VM may be left from the model.
	for _, e := range Map.All("VirtualMachine") {
		if err := destroyVM(e.(*VirtualMachine)); err != nil {
			return nil, fmt.Errorf("cannot remove model VM %s: %s", e.Entity().Name, err)
		}
	}

	return out, nil
}

var (
	datastoreIDsMu sync.Mutex
	datastoreIDs   = map[string]string{}
)

// datastoreID maps vcsim's per-path datastore key (the same on every host
// that mounts it) to a vCenter-style moref value "datastore-N".
func datastoreID(key string) string {
	datastoreIDsMu.Lock()
	defer datastoreIDsMu.Unlock()
	id, ok := datastoreIDs[key]
	if !ok {
		id = fmt.Sprintf("datastore-%d", 1001+len(datastoreIDs))
		datastoreIDs[key] = id
	}
	return id
}
