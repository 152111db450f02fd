package simulator

// A latency profile for vsan-vcsim: how long a real vCenter takes.
//
// vcsim answers every call at once and runs tasks synchronously, so a client
// against it is pure CPU and concurrency has nothing to overlap.  A profile
// adds what a vCenter spends server-side:
//
//   - a per-method delay: a *_Task call returns its task at once, and the
//     task stays "running" for the delay before its (already computed) result
//     shows; any other call answers after the delay;
//   - a lease-initialisation delay: ImportVApp / ExportVm return a lease in
//     state "initializing" that turns "ready" after the delay (vCenter
//     creates the inventory objects first);
//   - NFC bandwidth: per transfer and shared by every transfer at once.
//
// "none" (the default) adds nothing.  "vcenter" holds figures taken from
// public sources; docs/simulator-latency.md says where each comes from.
// The profile is an environment property, not a fault knob: /reset leaves
// it alone.

import (
	"fmt"
	"log"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// LatencyProfile is what /latency shows and takes (durations in ms).
type LatencyProfile struct {
	Name         string           `json:"name"`
	Methods      map[string]int64 `json:"methods_ms"`
	LeaseInitMs  int64            `json:"lease_init_ms"`
	NFCBps       int64            `json:"nfc_bytes_per_second"`
	NFCSharedBps int64            `json:"nfc_shared_bytes_per_second"`
	Scale        float64          `json:"scale"`
}

const mib = 1024 * 1024

// latencyProfiles are the named profiles.  Figures: docs/simulator-latency.md.
var latencyProfiles = map[string]LatencyProfile{
	"none": {Name: "none", Methods: map[string]int64{}, Scale: 1},
	"vcenter": {
		Name: "vcenter",
		Methods: map[string]int64{
			"Login":                        250,
			"Logout":                       50,
			"RetrievePropertiesEx":         40,
			"ContinueRetrievePropertiesEx": 40,
			"RetrieveProperties":           40,
			"CreateContainerView":          30,
			"DestroyView":                  20,
			"CreateFilter":                 30,
			"WaitForUpdatesEx":             40,
			"FindAllByUuid":                40,
			"FindByInventoryPath":          40,
			"ImportVApp":                   400,
			"ExportVm":                     300,
			"HttpNfcLeaseProgress":         40,
			"HttpNfcLeaseComplete":         1000,
			"HttpNfcLeaseAbort":            500,
			"CloneVM_Task":                 3000,
			"CreateSnapshot_Task":          1500,
			"RemoveSnapshot_Task":          2000,
			"ReconfigVM_Task":              1000,
			"PowerOnVM_Task":               2500,
			"PowerOffVM_Task":              1500,
			"Destroy_Task":                 1500,
			"CreateVM_Task":                1500,
			"Rename_Task":                  500,
			"ExtendVirtualDisk_Task":       1000,
			"DeleteVirtualDisk_Task":       800,
			"DeleteDatastoreFile_Task":     500,
			"SearchDatastore_Task":         500,
			"MakeDirectory":                200,
			"SetCustomValue":               200,
			"MarkAsTemplate":               300,
		},
		LeaseInitMs:  2000,
		NFCBps:       100 * mib,
		NFCSharedBps: 400 * mib,
		Scale:        1,
	},
}

var (
	latencyMu sync.Mutex
	latency   = latencyProfiles["none"]
	// pendingLeases are leases held "initializing" by the profile.
	pendingLeases = map[types.ManagedObjectReference]*time.Timer{}
	// sharedNFCNext is when the shared NFC link is next free.
	sharedNFCNext time.Time
)

func currentLatency() LatencyProfile {
	latencyMu.Lock()
	defer latencyMu.Unlock()
	return latency
}

func (p LatencyProfile) scaled(ms int64) time.Duration {
	return time.Duration(float64(ms) * p.Scale * float64(time.Millisecond))
}

// latencyRequest is the /latency POST body: a named profile (default: the
// current one) and any fields to override.
type latencyRequest struct {
	Profile      *string          `json:"profile"`
	Methods      map[string]int64 `json:"methods_ms"`
	LeaseInitMs  *int64           `json:"lease_init_ms"`
	NFCBps       *int64           `json:"nfc_bytes_per_second"`
	NFCSharedBps *int64           `json:"nfc_shared_bytes_per_second"`
	Scale        *float64         `json:"scale"`
}

func profileNames() string {
	var names []string
	for n := range latencyProfiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// SetLatency applies a request and returns the profile now in force.
func SetLatency(req latencyRequest) (LatencyProfile, error) {
	base := currentLatency()
	if req.Profile != nil {
		p, ok := latencyProfiles[*req.Profile]
		if !ok {
			return base, fmt.Errorf("unknown latency profile %q (known: %s)", *req.Profile, profileNames())
		}
		base = p
	}
	p := base
	p.Methods = make(map[string]int64, len(base.Methods))
	for k, v := range base.Methods {
		p.Methods[k] = v
	}
	custom := false
	for method, ms := range req.Methods {
		if _, ok := types.TypeFunc()(method); !ok {
			return base, fmt.Errorf("unknown SOAP method %q in methods_ms", method)
		}
		if ms < 0 {
			return base, fmt.Errorf("methods_ms[%s] must be >= 0, not %d", method, ms)
		}
		p.Methods[method] = ms
		custom = true
	}
	for name, v := range map[string]*int64{"lease_init_ms": req.LeaseInitMs,
		"nfc_bytes_per_second": req.NFCBps, "nfc_shared_bytes_per_second": req.NFCSharedBps} {
		if v != nil && *v < 0 {
			return base, fmt.Errorf("%s must be >= 0 (0: none), not %d", name, *v)
		}
	}
	if req.LeaseInitMs != nil {
		p.LeaseInitMs, custom = *req.LeaseInitMs, true
	}
	if req.NFCBps != nil {
		p.NFCBps, custom = *req.NFCBps, true
	}
	if req.NFCSharedBps != nil {
		p.NFCSharedBps, custom = *req.NFCSharedBps, true
	}
	if req.Scale != nil {
		if *req.Scale < 0 || *req.Scale > 100 {
			return base, fmt.Errorf("scale must be between 0 and 100, not %g", *req.Scale)
		}
		p.Scale = *req.Scale
	}
	if custom {
		p.Name = base.Name + "+custom"
	}
	latencyMu.Lock()
	latency = p
	latencyMu.Unlock()
	log.Printf("latency profile %s (scale %g, lease init %d ms, nfc %d B/s per transfer, %d B/s shared)",
		p.Name, p.Scale, p.LeaseInitMs, p.NFCBps, p.NFCSharedBps)
	return p, nil
}

// latencyHandler serves GET/POST /latency (registered in NewControlHandler).
func (c *controlAPI) latency(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		serve(w, r, func(*http.Request) (interface{}, error) { return currentLatency(), nil })
	case http.MethodPost:
		serve(w, r, func(r *http.Request) (interface{}, error) {
			var req latencyRequest
			if err := decode(r, &req); err != nil {
				return nil, err
			}
			return SetLatency(req)
		})
	default:
		fail(w, http.StatusMethodNotAllowed, "%s needs GET or POST", r.URL.Path)
	}
}

// returnedRef is the managed object a call returned (a task, a lease), if any;
// vsan_rules.go's taskRef uses it too.
func returnedRef(res soap.HasFault) (types.ManagedObjectReference, bool) {
	v := reflect.ValueOf(res)
	if v.Kind() != reflect.Ptr || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return types.ManagedObjectReference{}, false
	}
	r := v.Elem().FieldByName("Res")
	if !r.IsValid() {
		return types.ManagedObjectReference{}, false
	}
	if r.Kind() == reflect.Interface {
		r = r.Elem()
	}
	if r.Kind() != reflect.Ptr || r.IsNil() {
		return types.ManagedObjectReference{}, false
	}
	rv := r.Elem().FieldByName("Returnval")
	if !rv.IsValid() {
		return types.ManagedObjectReference{}, false
	}
	ref, ok := rv.Interface().(types.ManagedObjectReference)
	return ref, ok
}

// holdTask shows a finished task as running for d, then its real outcome.
func holdTask(ref types.ManagedObjectReference, d time.Duration) {
	t, ok := Map.Get(ref).(*Task)
	if !ok {
		return
	}
	held := false
	var state types.TaskInfoState
	var result, fault interface{} // untyped nil unless set: Update cannot take typed nils
	Map.WithLock(t, func() {
		if t.Info.State != types.TaskInfoStateSuccess && t.Info.State != types.TaskInfoStateError {
			return // still running by itself: nothing to hold
		}
		state = t.Info.State
		if t.Info.Result != nil {
			result = t.Info.Result
		}
		if t.Info.Error != nil {
			fault = *t.Info.Error
		}
		Map.Update(t, []types.PropertyChange{
			{Name: "info.state", Val: types.TaskInfoStateRunning},
			{Name: "info.result", Val: nil},
			{Name: "info.error", Val: nil},
		})
		held = true
	})
	if !held {
		return
	}
	time.AfterFunc(d, func() {
		Map.WithLock(t, func() {
			Map.Update(t, []types.PropertyChange{
				{Name: "info.completeTime", Val: time.Now()},
				{Name: "info.state", Val: state},
				{Name: "info.result", Val: result},
				{Name: "info.error", Val: fault},
			})
		})
	})
}

// holdLease keeps a ready lease "initializing" for d.
func holdLease(ref types.ManagedObjectReference, d time.Duration) {
	l, ok := Map.Get(ref).(*HttpNfcLease)
	if !ok {
		return
	}
	held := false
	Map.WithLock(l, func() {
		if l.State == types.HttpNfcLeaseStateReady {
			Map.Update(l, []types.PropertyChange{{Name: "state", Val: types.HttpNfcLeaseStateInitializing}})
			held = true
		}
	})
	if !held {
		return
	}
	latencyMu.Lock()
	pendingLeases[ref] = time.AfterFunc(d, func() { readyLease(ref) })
	latencyMu.Unlock()
}

// readyLease ends a lease's initialisation (early, when it is aborted).
func readyLease(ref types.ManagedObjectReference) {
	latencyMu.Lock()
	timer, ok := pendingLeases[ref]
	delete(pendingLeases, ref)
	latencyMu.Unlock()
	if !ok {
		return
	}
	timer.Stop()
	l, ok := Map.Get(ref).(*HttpNfcLease)
	if !ok {
		return
	}
	Map.WithLock(l, func() {
		if l.State == types.HttpNfcLeaseStateInitializing {
			Map.Update(l, []types.PropertyChange{{Name: "state", Val: types.HttpNfcLeaseStateReady}})
		}
	})
}

// withLatency wraps a call hook with the profile's delays.
func withLatency(inner func(*Context, *Method, func() soap.HasFault) soap.HasFault) func(*Context, *Method, func() soap.HasFault) soap.HasFault {
	return func(ctx *Context, method *Method, next func() soap.HasFault) soap.HasFault {
		if ctx.req == nil {
			return inner(ctx, method, next)
		}
		p := currentLatency()
		if method.Name == "HttpNfcLeaseAbort" {
			// An abort while the lease initialises rolls the import back as
			// from a ready lease: end the initialisation first.
			readyLease(method.This)
		}
		d := p.scaled(p.Methods[method.Name])
		isTask := strings.HasSuffix(method.Name, "_Task")
		if d > 0 && !isTask {
			time.Sleep(d)
		}
		res := inner(ctx, method, next)
		if res.Fault() != nil {
			return res
		}
		ref, ok := returnedRef(res)
		switch {
		case !ok:
		case isTask && ref.Type == "Task" && d > 0:
			holdTask(ref, d)
		case ref.Type == "HttpNfcLease" && p.LeaseInitMs > 0:
			holdLease(ref, p.scaled(p.LeaseInitMs))
		}
		return res
	}
}

// nfcPacer paces one NFC transfer to the profile's bandwidth.
type nfcPacer struct {
	start time.Time
	bytes int64
}

func newNFCPacer() *nfcPacer { return &nfcPacer{start: time.Now()} }

// wait sleeps until n more bytes fit in both the transfer's own bandwidth
// and the link every transfer shares.
func (pc *nfcPacer) wait(n int64) {
	p := currentLatency()
	if n <= 0 || (p.NFCBps <= 0 && p.NFCSharedBps <= 0) {
		return
	}
	pc.bytes += n
	until := time.Now()
	if p.NFCBps > 0 {
		own := pc.start.Add(time.Duration(float64(pc.bytes) / float64(p.NFCBps) * float64(time.Second)))
		if own.After(until) {
			until = own
		}
	}
	if p.NFCSharedBps > 0 {
		latencyMu.Lock()
		slot := sharedNFCNext
		if now := time.Now(); slot.Before(now) {
			slot = now
		}
		sharedNFCNext = slot.Add(time.Duration(float64(n) / float64(p.NFCSharedBps) * float64(time.Second)))
		shared := sharedNFCNext
		latencyMu.Unlock()
		if shared.After(until) {
			until = shared
		}
	}
	if d := time.Until(until); d > 0 {
		time.Sleep(d)
	}
}
