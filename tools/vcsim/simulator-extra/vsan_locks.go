package simulator

import "sync"

// The simulator's lock order.  vcsim locks the object a SOAP call is on
// (its "This") for the whole call, and the call then locks whatever else it
// changes; two calls that take two locks in opposite orders deadlock.  The
// order every call keeps:
//
//  1. the object the call is on when that is a lease or a task
//     (HttpNfcLeaseAbort, CancelTask roll an import back: they lock its VM);
//  2. VMs: the VM a call is on, or a VM being created (locked before it is
//     listed anywhere, so that lock is never contended) - one existing VM
//     at a time;
//  3. containers and other shared objects: folders, resource pools,
//     clusters, hosts, datastores, the EventManager - each locked on its own
//     under the VM, released before the next (folderPutChild / RemoveReference
//     / AppendReference); a container's lock is never held while a VM's is
//     waited for;
//  4. chainMu, then diskMu (below and vsan_disks.go).
//
// The two calls that create a VM on behalf of a container are therefore not
// run under that container's lock (lockedByMethod): CreateVM_Task used to
// hold its folder and then take the pool, ImportVApp held the pool and then
// took the folder, and the two together deadlocked (the resume benchmark's
// hang, docs/concurrency.md).  RegisterVM_Task stays under its folder's lock
// (its "already registered" check and the registration must be atomic); it
// takes only the new VM's uncontended lock and containers under it.
//
// Internal callers that run outside any SOAP call (the lease watcher, the
// after-call hooks, the control API) lock one object at a time.

// lockedByMethod names the methods the dispatcher runs without the lock of
// the object they are on: each locks what it changes itself, in the order
// above (patch 0106).
var lockedByMethod = map[string]bool{
	"CreateVM_Task": true, // Folder: the new VM, then the folder, then the pool
	"ImportVApp":    true, // ResourcePool: the same, through CreateVM_Task
}

// chainMu guards every VM's device list and disk backings (the disk
// chains) against readers that look at other VMs: the per-VM registry lock
// cannot, as a call holding its own VM's lock (Destroy_Task, consolidation
// after RemoveSnapshot) would have to take other VMs' locks, and two such
// calls deadlock.  Writers hold the VM's lock and chainMu.Lock
// (configureDevices via patch 0103, snapshotDisks, consolidate); whoever
// reads other VMs' chains (filesInUse) holds chainMu at least for reading.
// Lock order: a VM's registry lock, then chainMu, then diskMu; nothing that
// holds chainMu takes a VM's lock.
var chainMu sync.RWMutex
