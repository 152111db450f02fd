package simulator

// What a session that did not create a lease can see and do about it: the
// lease's import/export task, the lease timeout, and the VM operations a
// held lease blocks.  Without this, a lease whose creator died (killed after
// ImportVApp/ExportVm answered, before it saved the lease id) would stay
// ready for ever in the simulator and nothing could find it - more lenient
// and less helpful than vCenter at once.
//
// Modelled on what vCenter documents or was seen to do:
//
//   - "The client must call HttpNfcLeaseProgress periodically to keep the
//     lease alive and report progress to the corresponding import/export
//     task. Failure to do so causes the lease to time out and enter the error
//     state" (HttpNfcLease API reference); info.leaseTimeout is 300 s on
//     vCenter (pyvmomi-community-samples#417 prints "Lease timeout: 300").
//     A killed client's import task ends after ~5 minutes (govmomi#3173).
//   - The task is on the lease's entity: an active import lease's VM has
//     ResourcePool.ImportVAppLRO running in its recentTask (observed on
//     vCenter 8.0.2 by virtrigaud's ADR-0009 notes).  Cancelling that task
//     (vSphere Client "Cancel") ends the lease: the client then gets "The
//     task was canceled by a user" (govmomi#700).  Aborting or timing out an
//     import removes the VM it created (vsan_nfc.go rollbackImport).
//   - "While the lease is held, operations that alter the state of the
//     virtual machines covered by the lease are blocked. Examples of blocked
//     operations are PowerOn, Destroy, Migrate" (API reference); govmomi#3173
//     and cloudstack#3408 could not delete such a VM until the task ended.
//     Here a blocked call's task ends in TaskInProgress at once (vCenter may
//     queue it instead; either way the VM stays until the lease ends).
//
// The lease timeout of new leases is a knob (/lease/timeout) so a test can
// watch a lease expire in seconds; /reset puts vCenter's 300 s back.

import (
	"fmt"
	"log"
	"net/http"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const defaultLeaseTimeout = 300 // seconds, as vCenter

var (
	leaseTaskMu  sync.Mutex
	leaseTimeout int32 = defaultLeaseTimeout
	// leaseTasks: lease moref -> its import/export task; taskLeases the reverse.
	leaseTasks  = map[string]*Task{}
	taskLeases  = map[string]*HttpNfcLease{}
	leaseRenews = map[string]time.Time{} // lease moref -> last keep-alive
	watchOnce   sync.Once
)

// SetLeaseTimeout sets info.leaseTimeout (seconds) of leases created from now on.
func SetLeaseTimeout(seconds int) error {
	if seconds < 1 || seconds > 86400 {
		return fmt.Errorf("seconds must be 1..86400, not %d", seconds)
	}
	leaseTaskMu.Lock()
	leaseTimeout = int32(seconds)
	leaseTaskMu.Unlock()
	return nil
}

func resetLeaseTimeout() {
	leaseTaskMu.Lock()
	leaseTimeout = defaultLeaseTimeout
	leaseTaskMu.Unlock()
}

// startLeaseTask gives a new lease its running task on the lease's entity and
// starts its keep-alive clock.  Called by NewHttpNfcLease.
func startLeaseTask(l *HttpNfcLease) {
	watchOnce.Do(func() { go watchLeaseTimeouts() })
	entity := l.Info.Entity
	obj := Map.Get(entity)
	if obj == nil {
		return
	}
	task := CreateTask(obj, "importVAppLROTask", func(*Task) (types.AnyType, types.BaseMethodFault) {
		return nil, nil
	})
	task.Info.DescriptionId = "ResourcePool.ImportVAppLRO"
	task.Info.Name = "ImportVApp"
	task.Info.Cancelable = true
	task.Info.State = types.TaskInfoStateRunning
	started := time.Now()
	task.Info.StartTime = &started

	leaseTaskMu.Lock()
	l.Info.LeaseTimeout = leaseTimeout
	leaseTasks[l.Self.Value] = task
	taskLeases[task.Self.Value] = l
	leaseRenews[l.Self.Value] = time.Now()
	leaseTaskMu.Unlock()

	// No Map.WithLock here or below: the caller may hold the VM's lock
	// (ExportVm is dispatched on the VM) and the registry's locks do not nest.
	if vm, ok := obj.(*VirtualMachine); ok {
		Map.Update(vm, []types.PropertyChange{
			{Name: "recentTask", Val: append(append([]types.ManagedObjectReference(nil), vm.RecentTask...), task.Self)},
		})
	}
}

// markExportTask names an ExportVm lease's task (called once lease.export is set).
func markExportTask(l *HttpNfcLease) {
	leaseTaskMu.Lock()
	defer leaseTaskMu.Unlock()
	if t := leaseTasks[l.Self.Value]; t != nil {
		t.Info.DescriptionId = "VirtualMachine.ExportVmLRO"
		t.Info.Name = "ExportVm"
	}
}

// finishLeaseTask ends the lease's task as the lease ended: success when it
// was completed, error (the lease's fault) otherwise.  Safe to call twice.
func finishLeaseTask(l *HttpNfcLease, fault *types.LocalizedMethodFault) {
	leaseTaskMu.Lock()
	task := leaseTasks[l.Self.Value]
	delete(leaseTasks, l.Self.Value)
	delete(leaseRenews, l.Self.Value)
	if task != nil {
		delete(taskLeases, task.Self.Value)
	}
	leaseTaskMu.Unlock()
	if task == nil {
		return
	}
	state := types.TaskInfoStateSuccess
	var errVal interface{}
	if fault != nil {
		state = types.TaskInfoStateError
		errVal = fault
	}
	Map.Update(task, []types.PropertyChange{
		{Name: "info.completeTime", Val: time.Now()},
		{Name: "info.state", Val: state},
		{Name: "info.error", Val: errVal},
		{Name: "info.cancelable", Val: false},
	})
	if vm, ok := Map.Get(l.Info.Entity).(*VirtualMachine); ok {
		var kept []types.ManagedObjectReference
		for _, r := range vm.RecentTask {
			if r != task.Self {
				kept = append(kept, r)
			}
		}
		Map.Update(vm, []types.PropertyChange{{Name: "recentTask", Val: kept}})
	}
}

// renewLease is HttpNfcLeaseProgress's keep-alive.
func renewLease(ref types.ManagedObjectReference) {
	leaseTaskMu.Lock()
	if _, ok := leaseRenews[ref.Value]; ok {
		leaseRenews[ref.Value] = time.Now()
	}
	leaseTaskMu.Unlock()
}

// watchLeaseTimeouts fails every ready lease not renewed within its timeout.
func watchLeaseTimeouts() {
	for range time.Tick(250 * time.Millisecond) {
		var expired []*HttpNfcLease
		now := time.Now()
		for _, l := range Leases() {
			leaseTaskMu.Lock()
			last, ok := leaseRenews[l.Self.Value]
			timeout := time.Duration(l.Info.LeaseTimeout) * time.Second
			leaseTaskMu.Unlock()
			if ok && now.Sub(last) > timeout {
				expired = append(expired, l)
			}
		}
		for _, l := range expired {
			log.Printf("lease %s: no HttpNfcLeaseProgress for %ds: timed out", l.Self.Value, l.Info.LeaseTimeout)
			l.failLease("expire")
		}
	}
}

// leaseHolding returns the task of an active lease on entity, if any.
func leaseHolding(entity types.ManagedObjectReference) *Task {
	leaseTaskMu.Lock()
	defer leaseTaskMu.Unlock()
	for _, task := range leaseTasks {
		if task.Info.Entity != nil && *task.Info.Entity == entity {
			return task
		}
	}
	return nil
}

// leaseBlocked answers a call a held lease blocks (see the file comment).
func leaseBlocked(ctx *Context, method *Method) soap.HasFault {
	switch method.Name {
	case "Destroy_Task", "PowerOnVM_Task", "RelocateVM_Task", "UnregisterVM":
	default:
		return nil
	}
	task := leaseHolding(method.This)
	if task == nil {
		return nil
	}
	msg := fmt.Sprintf("Another task is already in progress (%s %s holds an HttpNfcLease on %s).",
		task.Info.Name, task.Self.Value, method.This.Value)
	fault := &types.TaskInProgress{VimFault: types.VimFault{}, Task: task.Self}
	if method.Name == "UnregisterVM" {
		return &serverFaultBody{Reason: Fault(msg, fault)}
	}
	return failTask(ctx, method, fault, msg)
}

// CancelTask: a lease's task ends its lease (aborted, an import's VM
// removed); any other task here has already finished (vcsim runs tasks
// synchronously), which vCenter answers with InvalidState.
func (t *Task) CancelTask(ctx *Context, req *types.CancelTask) soap.HasFault {
	body := new(methods.CancelTaskBody)
	leaseTaskMu.Lock()
	l := taskLeases[t.Self.Value]
	leaseTaskMu.Unlock()
	if l == nil {
		body.Fault_ = Fault("The operation is not allowed in the current state.", &types.InvalidState{})
		return body
	}
	fault := &types.LocalizedMethodFault{
		Fault:            &types.RequestCanceled{},
		LocalizedMessage: "The task was canceled by a user.",
	}
	if l.State == types.HttpNfcLeaseStateReady {
		l.rollbackImport()
	}
	Map.Update(l, []types.PropertyChange{
		{Name: "state", Val: types.HttpNfcLeaseStateError},
		{Name: "error", Val: fault},
	})
	l.release() // ends the task with the lease's error
	log.Printf("lease %s: task %s canceled, lease aborted", l.Self.Value, t.Self.Value)
	body.Res = new(types.CancelTaskResponse)
	return body
}

// leaseEndFault is what a lease's task ends with when the lease is released.
func leaseEndFault(l *HttpNfcLease) *types.LocalizedMethodFault {
	if l.State == types.HttpNfcLeaseStateDone {
		return nil
	}
	if l.Error != nil {
		return l.Error
	}
	return &types.LocalizedMethodFault{
		Fault:            &types.RequestCanceled{},
		LocalizedMessage: "The operation was aborted by the client (HttpNfcLeaseAbort).",
	}
}

// --- /lease/timeout

func (c *controlAPI) leaseTimeout(r *http.Request) (interface{}, error) {
	var req struct {
		Seconds *int `json:"seconds"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Seconds == nil {
		return nil, fmt.Errorf("seconds is required")
	}
	if err := SetLeaseTimeout(*req.Seconds); err != nil {
		return nil, err
	}
	return jsonObj{"ok": true, "seconds": *req.Seconds}, nil
}
