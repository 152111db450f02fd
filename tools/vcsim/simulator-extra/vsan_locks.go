package simulator

import "sync"

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
