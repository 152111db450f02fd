package simulator

// The control API of vsan-vcsim: a plain-HTTP JSON server on 127.0.0.1 that
// tests use to look at the simulator (/status, /files) and to arm fault
// knobs (/fault/*, /sessions/terminate, /datastore, /reset).

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

type controlAPI struct {
	mux *http.ServeMux
}

// NewControlHandler returns the control API handler.
func NewControlHandler() http.Handler {
	c := &controlAPI{mux: http.NewServeMux()}
	c.mux.HandleFunc("/status", get(c.status))
	c.mux.HandleFunc("/files", get(c.files))
	c.mux.HandleFunc("/fault/method", post(c.faultMethod))
	c.mux.HandleFunc("/fault/lease", post(c.faultLease))
	c.mux.HandleFunc("/fault/nfc", post(c.faultNFC))
	c.mux.HandleFunc("/sessions/terminate", post(c.terminateSessions))
	c.mux.HandleFunc("/datastore", post(c.datastore))
	c.mux.HandleFunc("/reset", post(c.reset))
	c.mux.HandleFunc("/vm/write", post(c.guestWrite))
	c.mux.HandleFunc("/vm/read", c.guestRead)
	c.mux.HandleFunc("/export", post(c.export))
	c.mux.HandleFunc("/latency", c.latency) // vsan_latency.go
	c.mux.HandleFunc("/lease/timeout", post(c.leaseTimeout))
	c.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, "no such endpoint: %s", r.URL.Path)
	})
	return c
}

func (c *controlAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	if err != nil || ip == nil || !ip.IsLoopback() {
		fail(w, http.StatusForbidden, "control API is for loopback clients only")
		return
	}
	c.mux.ServeHTTP(w, r)
}

type jsonObj = map[string]interface{}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func fail(w http.ResponseWriter, status int, format string, args ...interface{}) {
	writeJSON(w, status, jsonObj{"ok": false, "error": fmt.Sprintf(format, args...)})
}

// handler answers with (status, body) or an error (400).
type handler func(r *http.Request) (interface{}, error)

func get(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			fail(w, http.StatusMethodNotAllowed, "%s needs GET", r.URL.Path)
			return
		}
		serve(w, r, h)
	}
}

func post(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			fail(w, http.StatusMethodNotAllowed, "%s needs POST", r.URL.Path)
			return
		}
		serve(w, r, h)
	}
}

type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func serve(w http.ResponseWriter, r *http.Request, h handler) {
	res, err := h(r)
	if err != nil {
		status := http.StatusBadRequest
		if he, ok := err.(*httpError); ok {
			status = he.status
		}
		fail(w, status, "%s", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// decode reads a JSON body into v; an empty body leaves v as it is.
func decode(r *http.Request, v interface{}) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && err.Error() != "EOF" {
		return fmt.Errorf("bad JSON body: %s", err)
	}
	return nil
}

// --- /status

type statusDisk struct {
	Key    int32   `json:"key"`
	File   string  `json:"file"`
	Parent *string `json:"parent"`
}

type statusVM struct {
	Name       string       `json:"name"`
	Moref      string       `json:"moref"`
	Path       string       `json:"path"`
	PowerState string       `json:"power_state"`
	Disks      []statusDisk `json:"disks"`
	Snapshots  int          `json:"snapshots"`
}

type statusLease struct {
	Moref       string           `json:"moref"`
	State       string           `json:"state"`
	Kind        string           `json:"kind"`
	Entity      string           `json:"entity"`
	Progress    int32            `json:"progress"`
	URLs        []string         `json:"urls"`
	Transferred map[string]int64 `json:"transferred"`
	Error       *string          `json:"error"`
}

func countSnapshots(tree []types.VirtualMachineSnapshotTree) int {
	n := 0
	for _, t := range tree {
		n += 1 + countSnapshots(t.ChildSnapshotList)
	}
	return n
}

func vmStatus(vm *VirtualMachine) statusVM {
	s := statusVM{
		Name:       vm.Name,
		Moref:      vm.Self.Value,
		PowerState: string(vm.Runtime.PowerState),
		Disks:      []statusDisk{},
	}
	if vm.Config != nil {
		s.Path = vm.Config.Files.VmPathName
		for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
			disk := d.(*types.VirtualDisk)
			sd := statusDisk{Key: disk.Key}
			if b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
				sd.File = b.GetVirtualDeviceFileBackingInfo().FileName
			}
			if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && b.Parent != nil {
				p := b.Parent.FileName
				sd.Parent = &p
			}
			s.Disks = append(s.Disks, sd)
		}
	}
	if vm.Snapshot != nil {
		s.Snapshots = countSnapshots(vm.Snapshot.RootSnapshotList)
	}
	return s
}

func (c *controlAPI) status(r *http.Request) (interface{}, error) {
	vms := []statusVM{}
	for _, e := range Map.All("VirtualMachine") {
		vm := e.(*VirtualMachine)
		Map.WithLock(vm, func() { vms = append(vms, vmStatus(vm)) })
	}
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })

	leases := []statusLease{}
	for _, l := range Leases() {
		nfcMu.Lock()
		sl := statusLease{
			Moref:       l.Self.Value,
			State:       string(l.State),
			Kind:        "import",
			Progress:    l.TransferProgress,
			URLs:        []string{},
			Transferred: map[string]int64{},
		}
		if l.export {
			sl.Kind = "export"
		}
		if l.Info != nil {
			sl.Entity = l.Info.Entity.Value
			for _, u := range l.Info.DeviceUrl {
				sl.URLs = append(sl.URLs, u.Url)
			}
		}
		for k, v := range l.bytes {
			sl.Transferred[k] = v
		}
		if l.Error != nil {
			msg := l.Error.LocalizedMessage
			sl.Error = &msg
		}
		nfcMu.Unlock()
		leases = append(leases, sl)
	}
	sort.Slice(leases, func(i, j int) bool { return leases[i].Moref < leases[j].Moref })

	sm := Map.SessionManager()
	sessionMutex.Lock()
	sessions := len(sm.sessions)
	sessionMutex.Unlock()

	return jsonObj{
		"vms":      vms,
		"leases":   leases,
		"sessions": sessions,
		"calls":    CallCounts(),
	}, nil
}

// --- /files

type fileEntry struct {
	Datastore string `json:"datastore"`
	Path      string `json:"path"`
	Size      int64  `json:"size"`
}

func (c *controlAPI) files(r *http.Request) (interface{}, error) {
	out := []fileEntry{}
	for _, e := range Map.All("Datastore") {
		ds := e.(*Datastore)
		root := ds.Info.GetDatastoreInfo().Url
		_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil || !fi.Mode().IsRegular() {
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			out = append(out, fileEntry{Datastore: ds.Name, Path: rel, Size: fi.Size()})
			return nil
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Datastore != out[j].Datastore {
			return out[i].Datastore < out[j].Datastore
		}
		return out[i].Path < out[j].Path
	})
	return out, nil
}

// --- knobs

func (c *controlAPI) faultMethod(r *http.Request) (interface{}, error) {
	var req struct {
		Method  string `json:"method"`
		Count   int    `json:"count"`
		Fault   string `json:"fault"`
		Message string `json:"message"`
		InTask  bool   `json:"in_task"`
	}
	req.Count = 1
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Fault == "" {
		return nil, fmt.Errorf("fault is required (a vim fault type, e.g. InvalidState)")
	}
	if err := ArmMethodFault(req.Method, req.Fault, req.Message, req.Count, req.InTask); err != nil {
		return nil, err
	}
	return jsonObj{"ok": true, "method": req.Method, "fault": req.Fault, "count": req.Count, "in_task": req.InTask}, nil
}

func (c *controlAPI) faultLease(r *http.Request) (interface{}, error) {
	var req struct {
		Mode  string `json:"mode"`
		Scope string `json:"scope"`
	}
	req.Scope = "next"
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	failed, err := ArmLeaseFault(req.Mode, req.Scope)
	if err != nil {
		return nil, err
	}
	if failed == nil {
		failed = []string{}
	}
	return jsonObj{"ok": true, "mode": req.Mode, "scope": req.Scope, "leases": failed}, nil
}

func (c *controlAPI) faultNFC(r *http.Request) (interface{}, error) {
	var req struct {
		Count          int    `json:"count"`
		CutAfterBytes  *int64 `json:"cut_after_bytes"`
		BytesPerSecond int64  `json:"bytes_per_second"`
		Direction      string `json:"direction"`
	}
	req.Count = 1
	req.Direction = "any"
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	cut := int64(-1)
	if req.CutAfterBytes != nil {
		if *req.CutAfterBytes < 0 {
			return nil, fmt.Errorf("cut_after_bytes must be >= 0")
		}
		cut = *req.CutAfterBytes
	}
	if req.CutAfterBytes != nil && req.BytesPerSecond > 0 {
		return nil, fmt.Errorf("give cut_after_bytes or bytes_per_second, not both")
	}
	if err := ArmNFCFault(req.Count, cut, req.BytesPerSecond, req.Direction); err != nil {
		return nil, err
	}
	return jsonObj{"ok": true, "count": req.Count, "direction": req.Direction,
		"cut_after_bytes": req.CutAfterBytes, "bytes_per_second": req.BytesPerSecond}, nil
}

func (c *controlAPI) terminateSessions(r *http.Request) (interface{}, error) {
	sm := Map.SessionManager()
	sessionMutex.Lock()
	n := len(sm.sessions)
	sm.sessions = make(map[string]Session)
	sessionMutex.Unlock()
	return jsonObj{"ok": true, "terminated": n}, nil
}

func (c *controlAPI) datastore(r *http.Request) (interface{}, error) {
	var req struct {
		Name            string  `json:"name"`
		FreeSpace       *int64  `json:"free_space"`
		Capacity        *int64  `json:"capacity"`
		Accessible      *bool   `json:"accessible"`
		MaintenanceMode *string `json:"maintenance_mode"`
		Type            *string `json:"type"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	ds := datastoreByName(req.Name)
	if ds == nil {
		return nil, &httpError{http.StatusNotFound, fmt.Sprintf("no datastore named %q", req.Name)}
	}
	if req.MaintenanceMode != nil {
		switch *req.MaintenanceMode {
		case "normal", "inMaintenance", "enteringMaintenance":
		default:
			return nil, fmt.Errorf("maintenance_mode must be normal or inMaintenance, not %q", *req.MaintenanceMode)
		}
	}
	Map.WithLock(ds, func() {
		var changes []types.PropertyChange
		if req.MaintenanceMode != nil {
			changes = append(changes, types.PropertyChange{Name: "summary.maintenanceMode", Val: *req.MaintenanceMode})
		}
		if req.FreeSpace != nil {
			changes = append(changes, types.PropertyChange{Name: "summary.freeSpace", Val: *req.FreeSpace})
			// info is an interface-typed property: update it in place.
			ds.Info.GetDatastoreInfo().FreeSpace = *req.FreeSpace
		}
		if req.Capacity != nil {
			changes = append(changes, types.PropertyChange{Name: "summary.capacity", Val: *req.Capacity})
		}
		if req.Type != nil {
			changes = append(changes, types.PropertyChange{Name: "summary.type", Val: *req.Type})
		}
		if req.Accessible != nil {
			host := make([]types.DatastoreHostMount, len(ds.Host))
			copy(host, ds.Host)
			for i := range host {
				host[i].MountInfo.Accessible = types.NewBool(*req.Accessible)
			}
			changes = append(changes,
				types.PropertyChange{Name: "summary.accessible", Val: *req.Accessible},
				types.PropertyChange{Name: "host", Val: host})
		}
		if len(changes) != 0 {
			Map.Update(ds, changes)
		}
	})
	s := ds.Summary
	return jsonObj{"ok": true, "name": ds.Name, "summary": jsonObj{
		"type": s.Type, "capacity": s.Capacity, "free_space": s.FreeSpace,
		"accessible": s.Accessible, "maintenance_mode": s.MaintenanceMode,
	}}, nil
}

// --- guest disk I/O

func (c *controlAPI) guestWrite(r *http.Request) (interface{}, error) {
	var req struct {
		VM     string `json:"vm"`
		Disk   int32  `json:"disk"`
		Offset *int64 `json:"offset"`
		Data   []byte `json:"data"` // base64 in JSON
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.VM == "" {
		return nil, fmt.Errorf("vm is required (a VM name or moref)")
	}
	if req.Offset == nil {
		return nil, fmt.Errorf("offset is required")
	}
	size, err := GuestWrite(req.VM, req.Disk, *req.Offset, req.Data)
	if err != nil {
		return nil, err
	}
	return jsonObj{"ok": true, "vm": req.VM, "offset": *req.Offset, "written": len(req.Data), "capacity": size}, nil
}

// guestRead answers GET /vm/read?vm=NAME[&disk=KEY][&offset=N&length=N]
// with the raw content of the disk's whole chain (or a range of it).
func (c *controlAPI) guestRead(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		fail(w, http.StatusMethodNotAllowed, "%s needs GET", r.URL.Path)
		return
	}
	q := r.URL.Query()
	num := func(name string, def int64) (int64, error) {
		v := q.Get(name)
		if v == "" {
			return def, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%s must be a whole number >= 0, not %q", name, v)
		}
		return n, nil
	}
	key, err := num("disk", 0)
	var offset, length int64
	if err == nil {
		offset, err = num("offset", 0)
	}
	if err == nil {
		length, err = num("length", -1)
	}
	if err == nil && q.Get("vm") == "" {
		err = fmt.Errorf("vm is required (a VM name or moref)")
	}
	var raw string
	if err == nil {
		raw, err = FlattenDisk(q.Get("vm"), int32(key))
	}
	if err != nil {
		status := http.StatusBadRequest
		if he, ok := err.(*httpError); ok {
			status = he.status
		}
		fail(w, status, "%s", err.Error())
		return
	}
	defer os.Remove(raw)
	f, err := os.Open(raw)
	if err != nil {
		fail(w, http.StatusInternalServerError, "%s", err.Error())
		return
	}
	defer f.Close()
	fi, _ := f.Stat()
	if offset > fi.Size() {
		fail(w, http.StatusBadRequest, "offset %d is beyond the end of the disk (%d bytes)", offset, fi.Size())
		return
	}
	if length < 0 || offset+length > fi.Size() {
		length = fi.Size() - offset
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", fmt.Sprint(length))
	w.Header().Set("X-Disk-Capacity", fmt.Sprint(fi.Size()))
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, io.NewSectionReader(f, offset, length))
}

func (c *controlAPI) export(r *http.Request) (interface{}, error) {
	var req struct {
		AnnounceLength *bool `json:"announce_length"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.AnnounceLength == nil {
		return nil, fmt.Errorf("announce_length (true or false) is required")
	}
	SetExportAnnounceLength(*req.AnnounceLength)
	return jsonObj{"ok": true, "announce_length": *req.AnnounceLength}, nil
}

func (c *controlAPI) reset(r *http.Request) (interface{}, error) {
	ResetKnobs()
	return jsonObj{"ok": true}, nil
}

// ResetKnobs clears every armed fault knob (not the inventory).
func ResetKnobs() {
	resetMethodFaults()
	resetLeaseFaults()
	resetNFCFaults()
	resetLeaseTimeout()
	SetExportAnnounceLength(false)
}
