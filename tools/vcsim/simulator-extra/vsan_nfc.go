package simulator

// HttpNfcLease and the /nfc/ file transfer endpoint, replacing vcsim's
// http_nfc_lease.go (which threw uploads away and could not serve
// downloads), plus VirtualMachine.ExportVm and the lease / NFC fault knobs.
//
// Leases live in the global registry (not the creating session), so they
// survive a session being terminated and stay listed until Complete/Abort.

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// HttpNfcLease is an import (ImportVApp) or export (ExportVm) lease.
type HttpNfcLease struct {
	mo.HttpNfcLease

	// files maps the last element of a device URL to the local file.
	files map[string]string
	// streams maps an export URL name to the streamOptimized VMDK made
	// from the disk's chain when the lease was created (a temporary file).
	streams map[string]string
	// bytes counts bytes transferred per URL name (last transfer).
	bytes  map[string]int64
	export bool
	// leaseFault is why the lease is in state error: "error" or "expire".
	leaseFault string
	created    time.Time
}

var (
	nfcLease  sync.Map // lease moref -> *HttpNfcLease, until Complete/Abort
	nfcPrefix = "/nfc/"
	nfcMu     sync.Mutex // guards the fields of every lease and the knobs below

	nextLeaseFault string // "", "error" or "expire": applied to the next lease

	nfcFaults []*nfcFault
)

type nfcFault struct {
	count     int
	cutAfter  int64 // -1: no cut
	bps       int64 // 0: no throttle
	direction string
}

// NewHttpNfcLease creates a lease on entity, registered globally.  An armed
// "next" lease fault puts it in state error straight away.
func NewHttpNfcLease(ctx *Context, entity types.ManagedObjectReference) *HttpNfcLease {
	lease := &HttpNfcLease{
		HttpNfcLease: mo.HttpNfcLease{
			Info: &types.HttpNfcLeaseInfo{
				Entity:       entity,
				LeaseTimeout: 300,
			},
			State:        types.HttpNfcLeaseStateReady,
			Mode:         string(types.HttpNfcLeaseModePushOrGet),
			Capabilities: types.HttpNfcLeaseCapabilities{CorsSupported: false},
		},
		files:   make(map[string]string),
		streams: make(map[string]string),
		bytes:   make(map[string]int64),
		created: time.Now(),
	}

	Map.Put(lease)
	lease.Info.Lease = lease.Self
	nfcLease.Store(lease.Reference(), lease)
	startLeaseTask(lease) // vsan_leases.go

	nfcMu.Lock()
	mode := nextLeaseFault
	nextLeaseFault = ""
	nfcMu.Unlock()
	if mode != "" {
		lease.leaseFault = mode
		lease.State = types.HttpNfcLeaseStateError
		lease.Error = leaseFaultFor(mode)
		finishLeaseTask(lease, lease.Error)
		log.Printf("lease %s created in state error (%s knob)", lease.Self.Value, mode)
		// An import is rolled back once the creating call has returned
		// (ImportVApp still fills in the lease from the VM).
		nfcMu.Lock()
		afterCall[ctx] = append(afterCall[ctx], lease)
		nfcMu.Unlock()
	}
	return lease
}

// afterCall holds leases created in state error by a SOAP call still in
// progress; runAfterCall rolls their imports back when it returns.
var afterCall = map[*Context][]*HttpNfcLease{}

func runAfterCall(ctx *Context) {
	nfcMu.Lock()
	leases := afterCall[ctx]
	delete(afterCall, ctx)
	nfcMu.Unlock()
	for _, l := range leases {
		l.rollbackImport()
	}
}

func leaseFaultFor(mode string) *types.LocalizedMethodFault {
	if mode == "expire" {
		return &types.LocalizedMethodFault{
			Fault:            &types.Timedout{},
			LocalizedMessage: "The lease timed out (vsan-vcsim lease knob)",
		}
	}
	return &types.LocalizedMethodFault{
		Fault:            &types.SystemError{Reason: "lease failed (vsan-vcsim lease knob)"},
		LocalizedMessage: "A general system error occurred: lease failed (vsan-vcsim lease knob)",
	}
}

// failLease moves a ready lease to state error; an import lease's VM is
// deleted, as vCenter rolls back a failed import.
func (l *HttpNfcLease) failLease(mode string) {
	nfcMu.Lock()
	if l.State != types.HttpNfcLeaseStateReady {
		nfcMu.Unlock()
		return
	}
	l.leaseFault = mode
	nfcMu.Unlock()
	Map.WithLock(l, func() {
		Map.Update(l, []types.PropertyChange{
			{Name: "state", Val: types.HttpNfcLeaseStateError},
			{Name: "error", Val: leaseFaultFor(mode)},
		})
	})
	log.Printf("lease %s -> error (%s)", l.Self.Value, mode)
	l.rollbackImport()
	finishLeaseTask(l, leaseFaultFor(mode))
}

// rollbackImport destroys the VM an import lease created.
func (l *HttpNfcLease) rollbackImport() {
	if l.export || l.Info == nil {
		return
	}
	vm, ok := Map.Get(l.Info.Entity).(*VirtualMachine)
	if !ok {
		return
	}
	if err := destroyVM(vm); err != nil {
		log.Printf("lease %s: rolling back the import: destroying %s failed: %s", l.Self.Value, vm.Self.Value, err)
		return
	}
	log.Printf("lease %s: import rolled back, %s destroyed", l.Self.Value, vm.Self.Value)
}

// vsanContext is a context for internal calls.  (vcsim's internalContext
// keeps the registry of package init, replaced when the model is created.)
func vsanContext() *Context {
	return &Context{Context: context.Background(), Session: internalContext.Session, Map: Map}
}

// destroyVM runs Destroy_Task on vm (powered off first) and waits for it.
func destroyVM(vm *VirtualMachine) error {
	var res soap.HasFault
	Map.WithLock(vm, func() {
		vm.Runtime.PowerState = types.VirtualMachinePowerStatePoweredOff
		res = vm.DestroyTask(vsanContext(), &types.Destroy_Task{This: vm.Self})
	})
	ref := res.(*methods.Destroy_TaskBody).Res.Returnval
	if t, ok := Map.Get(ref).(*Task); ok && t.Info.Error != nil {
		return fmt.Errorf("%T", t.Info.Error.Fault)
	}
	return nil
}

func (l *HttpNfcLease) release() {
	finishLeaseTask(l, leaseEndFault(l))
	nfcLease.Delete(l.Self)
	Map.Remove(l.Self)
	nfcMu.Lock()
	for _, f := range l.streams {
		_ = os.Remove(f)
	}
	nfcMu.Unlock()
}

func (l *HttpNfcLease) stateFault() *soap.Fault {
	nfcMu.Lock()
	mode := l.leaseFault
	nfcMu.Unlock()
	if l.State == types.HttpNfcLeaseStateReady {
		return nil
	}
	if mode == "expire" {
		return Fault("The lease has timed out", &types.Timedout{})
	}
	return Fault(fmt.Sprintf("The lease is in state %s", l.State), &types.InvalidState{})
}

func (l *HttpNfcLease) HttpNfcLeaseComplete(ctx *Context, req *types.HttpNfcLeaseComplete) soap.HasFault {
	if f := l.stateFault(); f != nil {
		return &methods.HttpNfcLeaseCompleteBody{Fault_: f}
	}
	Map.Update(l, []types.PropertyChange{{Name: "state", Val: types.HttpNfcLeaseStateDone}})
	l.release()
	return &methods.HttpNfcLeaseCompleteBody{Res: new(types.HttpNfcLeaseCompleteResponse)}
}

func (l *HttpNfcLease) HttpNfcLeaseAbort(ctx *Context, req *types.HttpNfcLeaseAbort) soap.HasFault {
	if l.State == types.HttpNfcLeaseStateReady {
		l.rollbackImport()
	}
	Map.Update(l, []types.PropertyChange{{Name: "state", Val: types.HttpNfcLeaseStateError}})
	l.release()
	return &methods.HttpNfcLeaseAbortBody{Res: new(types.HttpNfcLeaseAbortResponse)}
}

func (l *HttpNfcLease) HttpNfcLeaseProgress(ctx *Context, req *types.HttpNfcLeaseProgress) soap.HasFault {
	if f := l.stateFault(); f != nil {
		return &methods.HttpNfcLeaseProgressBody{Fault_: f}
	}
	Map.Update(l, []types.PropertyChange{{Name: "transferProgress", Val: req.Percent}})
	renewLease(l.Self) // vsan_leases.go
	return &methods.HttpNfcLeaseProgressBody{Res: new(types.HttpNfcLeaseProgressResponse)}
}

// ExportVm: a lease whose device URLs serve the VM's disks.
func (vm *VirtualMachine) ExportVm(ctx *Context, req *types.ExportVm) soap.HasFault {
	body := new(methods.ExportVmBody)
	if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
		body.Fault_ = Fault("The attempted operation cannot be performed in the current state (Powered on).",
			&types.InvalidPowerState{
				RequestedState: types.VirtualMachinePowerStatePoweredOff,
				ExistingState:  vm.Runtime.PowerState,
			})
		return body
	}

	lease := NewHttpNfcLease(ctx, vm.Self)
	lease.export = true
	markExportTask(lease)

	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	announce := announceLength()
	var total int64
	var failure error
	n := 0
	for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		name := fmt.Sprintf("disk-%d.vmdk", n)
		key := fmt.Sprintf("/%s/%s:%d", vm.Self.Value, devices.Type(d), n)
		n++
		stream, err := vm.exportStream(disk, adapterOf(devices, disk))
		if err != nil {
			failure = fmt.Errorf("disk %d of %s: %s", disk.Key, vm.Name, err)
			break
		}
		var size int64
		if announce {
			if fi, err := os.Stat(stream); err == nil {
				size = fi.Size()
			}
		}
		lease.files[name] = stream
		lease.streams[name] = stream
		total += disk.CapacityInKB
		lease.Info.DeviceUrl = append(lease.Info.DeviceUrl, types.HttpNfcLeaseDeviceUrl{
			Key:       key,
			ImportKey: fmt.Sprintf("/%s/%s:%d", vm.Name, devices.Type(d), n-1),
			Url: (&url.URL{
				Scheme: "https",
				Host:   "*",
				Path:   nfcPrefix + path.Join(lease.Self.Value, name),
			}).String(),
			Disk:     types.NewBool(true),
			TargetId: name,
			FileSize: size,
		})
	}
	lease.Info.TotalDiskCapacityInKB = total
	if failure != nil {
		// The host cannot read the disk: the lease fails, it never serves
		// a short stream.
		msg := fmt.Sprintf("Cannot read the virtual disk: %s", failure)
		lease.Info.DeviceUrl = nil
		lease.State = types.HttpNfcLeaseStateError
		lease.Error = &types.LocalizedMethodFault{
			Fault:            &types.FileNotFound{FileFault: types.FileFault{File: failure.Error()}},
			LocalizedMessage: msg,
		}
		finishLeaseTask(lease, lease.Error)
		log.Printf("lease %s (export of %s) -> error: %s", lease.Self.Value, vm.Name, failure)
	}

	body.Res = &types.ExportVmResponse{Returnval: lease.Self}
	return body
}

// adapterOf names the disk's controller type as qemu-img's vmdk
// adapter_type does.
func adapterOf(devices object.VirtualDeviceList, disk *types.VirtualDisk) string {
	switch devices.FindByKey(disk.ControllerKey).(type) {
	case *types.VirtualIDEController:
		return "ide"
	case *types.VirtualBusLogicController:
		return "buslogic"
	}
	return "lsilogic"
}

// diskChain returns the local files of disk's backing chain, leaf first.
func (vm *VirtualMachine) diskChain(disk *types.VirtualDisk) []string {
	var chain []string
	b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok {
		if fb, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
			if p := vm.localPath(fb.GetVirtualDeviceFileBackingInfo().FileName); p != "" {
				chain = append(chain, p)
			}
		}
		return chain
	}
	for ; b != nil; b = b.Parent {
		if p := vm.localPath(b.FileName); p != "" {
			chain = append(chain, p)
		}
	}
	return chain
}

// localPath maps "[ds] dir/file" to the file under the datastore directory.
func (vm *VirtualMachine) localPath(name string) string {
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

func datastoreByName(name string) *Datastore {
	for _, e := range Map.All("Datastore") {
		if e.Entity().Name == name {
			return e.(*Datastore)
		}
	}
	return nil
}

func takeNFCFault(direction string) *nfcFault {
	nfcMu.Lock()
	defer nfcMu.Unlock()
	for i, f := range nfcFaults {
		if f.direction != "any" && f.direction != direction {
			continue
		}
		f.count--
		c := *f
		if f.count <= 0 {
			nfcFaults = append(nfcFaults[:i], nfcFaults[i+1:]...)
		}
		return &c
	}
	return nil
}

// ArmNFCFault makes the next count transfers in direction be cut after
// cutAfter bytes (>= 0) or throttled to bps bytes per second (> 0).
func ArmNFCFault(count int, cutAfter int64, bps int64, direction string) error {
	if direction == "" {
		direction = "any"
	}
	switch direction {
	case "upload", "download", "any":
	default:
		return fmt.Errorf("direction must be upload, download or any, not %q", direction)
	}
	if cutAfter < 0 && bps <= 0 {
		return fmt.Errorf("give cut_after_bytes (>= 0) or bytes_per_second (> 0)")
	}
	if count <= 0 {
		count = 1
	}
	nfcMu.Lock()
	nfcFaults = append(nfcFaults, &nfcFault{count: count, cutAfter: cutAfter, bps: bps, direction: direction})
	nfcMu.Unlock()
	return nil
}

// ArmLeaseFault: scope "next" makes the next lease start in state error;
// "open" fails every open (ready) lease now.  Returns the leases failed.
func ArmLeaseFault(mode, scope string) ([]string, error) {
	if mode != "error" && mode != "expire" {
		return nil, fmt.Errorf("mode must be error or expire, not %q", mode)
	}
	switch scope {
	case "next":
		nfcMu.Lock()
		nextLeaseFault = mode
		nfcMu.Unlock()
		return nil, nil
	case "open":
		var failed []string
		for _, l := range Leases() {
			if l.State == types.HttpNfcLeaseStateReady {
				l.failLease(mode)
				failed = append(failed, l.Self.Value)
			}
		}
		return failed, nil
	}
	return nil, fmt.Errorf("scope must be next or open, not %q", scope)
}

func resetLeaseFaults() {
	nfcMu.Lock()
	nextLeaseFault = ""
	nfcMu.Unlock()
}

func resetNFCFaults() {
	nfcMu.Lock()
	nfcFaults = nil
	nfcMu.Unlock()
}

// Leases returns every lease not yet completed or aborted.
func Leases() []*HttpNfcLease {
	var out []*HttpNfcLease
	nfcLease.Range(func(_, v interface{}) bool {
		out = append(out, v.(*HttpNfcLease))
		return true
	})
	return out
}

// transfersAborted, once set by AbortTransfers, ends every NFC transfer.
var transfersAborted int32

// AbortTransfers drops every NFC transfer in progress (used at shutdown).
func AbortTransfers() {
	atomic.StoreInt32(&transfersAborted, 1)
}

// errCut / errLeaseGone end a transfer with the connection dropped.
var (
	errCut       = fmt.Errorf("cut by the nfc knob")
	errLeaseGone = fmt.Errorf("lease is no longer ready")
)

// transfer copies src to dst honouring an NFC knob and the lease state.
func transfer(dst io.Writer, src io.Reader, plan *nfcFault, l *HttpNfcLease, flush func()) (int64, error) {
	buf := make([]byte, 64*1024)
	var n int64
	start := time.Now()
	pace := newNFCPacer() // the latency profile's bandwidth (vsan_latency.go)
	for {
		want := int64(len(buf))
		if plan != nil && plan.cutAfter >= 0 {
			if n >= plan.cutAfter {
				return n, errCut
			}
			if left := plan.cutAfter - n; left < want {
				want = left
			}
		}
		if plan != nil && plan.bps > 0 && plan.bps < want {
			want = plan.bps
			if want < 1 {
				want = 1
			}
		}
		r, rerr := src.Read(buf[:want])
		if r > 0 {
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			pace.wait(int64(w))
			if werr != nil {
				return n, werr
			}
			if flush != nil && plan != nil {
				flush()
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
		if l.State != types.HttpNfcLeaseStateReady || atomic.LoadInt32(&transfersAborted) != 0 {
			return n, errLeaseGone
		}
		if plan != nil && plan.bps > 0 {
			due := time.Duration(float64(n) / float64(plan.bps) * float64(time.Second))
			if d := due - time.Since(start); d > 0 {
				time.Sleep(d)
			}
		}
	}
}

func dropConnection(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
		}
	}
}

// ServeNFC handles uploads (PUT/POST to an import lease) and downloads (GET
// from an export lease) of the lease's disk files.
func ServeNFC(w http.ResponseWriter, r *http.Request) {
	p := strings.Split(strings.TrimPrefix(r.URL.Path, nfcPrefix), "/")
	if len(p) != 2 {
		http.NotFound(w, r)
		return
	}
	id, name := p[0], p[1]
	v, ok := nfcLease.Load(types.ManagedObjectReference{Type: "HttpNfcLease", Value: id})
	if !ok {
		log.Printf("nfc %s %s/%s: no such lease -> 404", r.Method, id, name)
		http.NotFound(w, r)
		return
	}
	l := v.(*HttpNfcLease)
	if l.State != types.HttpNfcLeaseStateReady {
		log.Printf("nfc %s %s/%s: lease in state %s -> 404", r.Method, id, name, l.State)
		http.NotFound(w, r)
		return
	}
	file, ok := l.files[name]
	if !ok {
		log.Printf("nfc %s %s/%s: no such device file -> 404", r.Method, id, name)
		http.NotFound(w, r)
		return
	}

	switch r.Method {
	case http.MethodPut, http.MethodPost:
		if l.export {
			http.Error(w, "export lease: GET only", http.StatusMethodNotAllowed)
			return
		}
		serveUpload(w, r, l, name, file)
	case http.MethodGet:
		if !l.export {
			http.Error(w, "import lease: PUT/POST only", http.StatusMethodNotAllowed)
			return
		}
		serveDownload(w, r, l, name)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func planDesc(plan *nfcFault) string {
	switch {
	case plan == nil:
		return ""
	case plan.cutAfter >= 0:
		return fmt.Sprintf(" (knob: cut after %d bytes)", plan.cutAfter)
	default:
		return fmt.Sprintf(" (knob: %d B/s)", plan.bps)
	}
}

func serveUpload(w http.ResponseWriter, r *http.Request, l *HttpNfcLease, name, file string) {
	plan := takeNFCFault("upload")
	start := time.Now()
	upload := file + ".upload"
	defer os.Remove(upload)
	f, err := os.OpenFile(upload, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0600)
	if err != nil {
		log.Printf("nfc %s %s: %s -> 500", r.Method, file, err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	n, err := transfer(f, r.Body, plan, l, nil)
	if err == nil && r.ContentLength >= 0 && n != r.ContentLength {
		err = fmt.Errorf("body ended after %d of %d bytes", n, r.ContentLength)
	}
	if serr := f.Sync(); err == nil && serr != nil {
		err = serr
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err == nil {
		err = importUpload(upload, file)
	}
	nfcMu.Lock()
	l.bytes[name] = n
	nfcMu.Unlock()
	secs := time.Since(start).Seconds()

	switch {
	case err == errCut || err == errLeaseGone:
		log.Printf("nfc %s %s bytes=%d status=dropped: %s%s", r.Method, file, n, err, planDesc(plan))
		dropConnection(w)
	case err != nil:
		log.Printf("nfc %s %s bytes=%d status=500: %s%s", r.Method, file, n, err, planDesc(plan))
		http.Error(w, err.Error(), http.StatusInternalServerError)
	default:
		log.Printf("nfc %s %s bytes=%d status=200 %.2fs%s", r.Method, file, n, secs, planDesc(plan))
		w.WriteHeader(http.StatusOK)
	}
}

func serveDownload(w http.ResponseWriter, r *http.Request, l *HttpNfcLease, name string) {
	file := l.streams[name]
	f, err := os.Open(file)
	if err != nil {
		log.Printf("nfc GET %s: %s -> 404", file, err)
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	var size int64 = -1
	if announceLength() {
		if fi, err := f.Stat(); err == nil {
			size = fi.Size()
		}
	}
	plan := takeNFCFault("download")
	start := time.Now()
	w.Header().Set("Content-Type", "application/octet-stream")
	if size >= 0 {
		w.Header().Set("Content-Length", fmt.Sprint(size))
	}
	w.WriteHeader(http.StatusOK)
	var flush func()
	if fl, ok := w.(http.Flusher); ok {
		flush = fl.Flush
		if size < 0 {
			flush() // chunked from the first byte: the length is not known up front
		}
	}
	n, err := transfer(w, f, plan, l, flush)
	nfcMu.Lock()
	l.bytes[name] = n
	nfcMu.Unlock()
	switch {
	case err == errCut || err == errLeaseGone:
		log.Printf("nfc GET %s bytes=%d status=dropped: %s%s", name, n, err, planDesc(plan))
		dropConnection(w)
	case err != nil:
		log.Printf("nfc GET %s bytes=%d status=failed: %s%s", name, n, err, planDesc(plan))
	default:
		log.Printf("nfc GET %s bytes=%d status=200 %.2fs%s", name, n, time.Since(start).Seconds(), planDesc(plan))
	}
}
