package simulator

// SOAP call bookkeeping for vsan-vcsim: a per-method call counter, one log
// line per call, and armed method faults (the /fault/method knob).

import (
	"fmt"
	"log"
	"reflect"
	"strings"
	"sync"

	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

type methodFault struct {
	fault   string
	message string
	count   int
	inTask  bool
}

var (
	callsMu      sync.Mutex
	callCounts   = map[string]int64{}
	methodFaults = map[string]*methodFault{}
)

// genericBody carries a *<Method>Response built by reflection (see the
// response.MarshalXML patch), for calls we answer without dispatching.
type genericBody struct {
	Res    interface{}
	Fault_ *soap.Fault
}

func (b *genericBody) Fault() *soap.Fault { return b.Fault_ }

// CallCounts returns a copy of the per-method call counters.
func CallCounts() map[string]int64 {
	callsMu.Lock()
	defer callsMu.Unlock()
	out := make(map[string]int64, len(callCounts))
	for k, v := range callCounts {
		out[k] = v
	}
	return out
}

// NewMethodFault builds a vim fault by its wsdl type name, e.g. "InvalidState".
func NewMethodFault(name, message string) (types.BaseMethodFault, error) {
	rtype, ok := types.TypeFunc()(name)
	if !ok || rtype.Kind() != reflect.Struct {
		return nil, fmt.Errorf("unknown vim fault type %q", name)
	}
	val := reflect.New(rtype)
	fault, ok := val.Interface().(types.BaseMethodFault)
	if !ok {
		return nil, fmt.Errorf("%q is not a vim fault type", name)
	}
	switch f := fault.(type) {
	case *types.SystemError:
		f.Reason = message
	case *types.InvalidArgument:
		f.InvalidProperty = "vsan-vcsim"
	case *types.FileNotFound:
		f.File = message
	case *types.NoDiskSpace:
		f.Datastore = message
	case *types.InvalidPowerState:
		f.ExistingState = types.VirtualMachinePowerStatePoweredOn
		f.RequestedState = types.VirtualMachinePowerStatePoweredOff
	case *types.NotAuthenticated:
		f.PrivilegeId = "System.View"
	}
	return fault, nil
}

// ArmMethodFault makes the next count calls of method fail with fault.
func ArmMethodFault(method, fault, message string, count int, inTask bool) error {
	if method == "" {
		return fmt.Errorf("method is required")
	}
	if count <= 0 {
		count = 1
	}
	if _, err := NewMethodFault(fault, message); err != nil {
		return err
	}
	if inTask && !strings.HasSuffix(method, "_Task") {
		return fmt.Errorf("in_task needs a *_Task method, not %q", method)
	}
	if _, ok := types.TypeFunc()(method); !ok {
		return fmt.Errorf("unknown SOAP method %q", method)
	}
	callsMu.Lock()
	methodFaults[method] = &methodFault{fault: fault, message: message, count: count, inTask: inTask}
	callsMu.Unlock()
	return nil
}

func resetMethodFaults() {
	callsMu.Lock()
	methodFaults = map[string]*methodFault{}
	callsMu.Unlock()
}

func takeMethodFault(method string) *methodFault {
	callsMu.Lock()
	defer callsMu.Unlock()
	f := methodFaults[method]
	if f == nil {
		return nil
	}
	f.count--
	if f.count <= 0 {
		delete(methodFaults, method)
	}
	c := *f
	return &c
}

// failCall answers method with the armed fault, either directly or as a
// task that ends in state error.
func failCall(ctx *Context, method *Method, mf *methodFault) soap.HasFault {
	fault, _ := NewMethodFault(mf.fault, mf.message)
	msg := mf.message
	if msg == "" {
		msg = fmt.Sprintf("%s (injected by vsan-vcsim)", mf.fault)
	}
	if !mf.inTask {
		return &serverFaultBody{Reason: Fault(msg, fault)}
	}
	return failTask(ctx, method, fault, msg)
}

// taskResponse encodes as <{Method}Response><returnval type="Task">...;
// the generated *_TaskResponse types are not reachable by name.
type taskResponse struct {
	name      string
	Returnval types.ManagedObjectReference
}

func (t *taskResponse) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	start.Name.Local = t.name
	if err := e.EncodeToken(start); err != nil {
		return err
	}
	if err := e.EncodeElement(t.Returnval, xml.StartElement{Name: xml.Name{Local: "returnval"}}); err != nil {
		return err
	}
	return e.EncodeToken(start.End())
}

func faultName(f *soap.Fault) string {
	if f == nil {
		return ""
	}
	if f.Detail.Fault != nil {
		return reflect.TypeOf(f.Detail.Fault).Elem().Name()
	}
	return f.String
}

// taskError returns the fault type of a task the response refers to, if
// that task already ended in error (vcsim runs most tasks synchronously).
func taskError(res soap.HasFault) string {
	v := reflect.ValueOf(res)
	if v.Kind() != reflect.Ptr || v.Elem().Kind() != reflect.Struct {
		return ""
	}
	r := v.Elem().FieldByName("Res")
	if !r.IsValid() {
		return ""
	}
	if r.Kind() == reflect.Interface {
		r = r.Elem()
	}
	if r.Kind() != reflect.Ptr || r.IsNil() {
		return ""
	}
	rv := r.Elem().FieldByName("Returnval")
	if !rv.IsValid() {
		return ""
	}
	ref, ok := rv.Interface().(types.ManagedObjectReference)
	if !ok || ref.Type != "Task" {
		return ""
	}
	t, ok := Map.Get(ref).(*Task)
	if !ok || t.Info.Error == nil || t.Info.Error.Fault == nil {
		return ""
	}
	return reflect.TypeOf(t.Info.Error.Fault).Elem().Name()
}

// vsanCallHook is installed as CallHook by InstallVsanHooks.
func vsanCallHook(ctx *Context, method *Method, next func() soap.HasFault) soap.HasFault {
	if ctx.req == nil {
		return next() // in-process call (e.g. /folder datastore lookups)
	}
	callsMu.Lock()
	callCounts[method.Name]++
	callsMu.Unlock()

	var res soap.HasFault
	injected := ""
	if mf := takeMethodFault(method.Name); mf != nil {
		res = failCall(ctx, method, mf)
		injected = " (injected)"
	} else if refused := vsanRefuse(ctx, method); refused != nil {
		res = refused
		injected = " (vSAN rule)"
	} else if blocked := leaseBlocked(ctx, method); blocked != nil {
		res = blocked
		injected = " (held by a lease)"
	} else if refused := refuseMissingParent(ctx, method); refused != nil {
		res = refused
		injected = " (parent disk missing)"
	} else {
		after := diskPreCall(method)
		res = next()
		runAfterCall(ctx)
		diskPostCall(method, res, after)
	}

	status := "ok"
	if f := res.Fault(); f != nil {
		status = "fault " + faultName(f)
	} else if te := taskError(res); te != "" {
		status = "task error " + te
	}
	log.Printf("soap %s %s:%s %s%s", method.Name, method.This.Type, method.This.Value, status, injected)
	return res
}

// InstallVsanHooks wires the call hook; call once before serving.
func InstallVsanHooks() {
	CallHook = withLatency(vsanCallHook) // vsan_latency.go
}
