// vsan-vcsim: VMware's vCenter simulator (govmomi's vcsim, patched by the
// files beside this one) with a vSAN-shaped inventory, a state file for the
// test harness and a control API for fault injection.  Build: build.sh.
package main

import (
	"bufio"
	"crypto/sha1"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

const prog = "vsan-vcsim"

type stateFile struct {
	Pid        int                       `json:"pid"`
	URL        string                    `json:"url"`
	Host       string                    `json:"host"`
	Port       int                       `json:"port"`
	Username   string                    `json:"username"`
	Password   string                    `json:"password"`
	Thumbprint string                    `json:"thumbprint"`
	ControlURL string                    `json:"control_url"`
	Tmpdir     string                    `json:"tmpdir"`
	Datastores []simulator.VsanDatastore `json:"datastores"`
}

var datastores = []simulator.VsanDatastoreSpec{
	{Name: "vsanDatastore", Type: "vsan"},
	{Name: "vsanDatastore-2", Type: "vsan"},
	{Name: "LocalDS_0", Type: "VMFS"},
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, prog+": "+format+"\n", args...)
	os.Exit(2)
}

// checkStateFile refuses to start over a state file: a live owner means
// another simulator, a dead one means a crash left it behind.
func checkStateFile(path string) {
	data, err := ioutil.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		die("cannot read state file %s: %s", path, err)
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil || st.Pid <= 0 {
		die("state file %s exists but is not a vsan-vcsim state file; delete it and start again", path)
	}
	if err := syscall.Kill(st.Pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
		die("already running as pid %d (state file %s); stop it first", st.Pid, path)
	}
	die("stale state file %s (pid %d is not running); delete it and start again", path, st.Pid)
}

// loopbackAddr validates a -listen/-control address: 127.0.0.1 only.
func loopbackAddr(flagName, addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		die("bad -%s %q: %s", flagName, addr, err)
	}
	if host != "127.0.0.1" {
		die("bad -%s %q: only 127.0.0.1 is allowed", flagName, addr)
	}
	if _, err := strconv.Atoi(port); err != nil {
		die("bad -%s %q: port must be a number", flagName, addr)
	}
	return addr
}

func listen(flagName, addr string) net.Listener {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		reason := err.Error()
		if errors.Is(err, syscall.EADDRINUSE) {
			reason = "address already in use"
		}
		die("cannot listen on %s: %s; pass -%s 127.0.0.1:0 for a free port", addr, reason, flagName)
	}
	return l
}

func writeStateFile(path string, st *stateFile) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.tmp.%d", path, os.Getpid())
	if err := ioutil.WriteFile(tmp, append(data, '\n'), 0600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

func thumbprint(der []byte) string {
	sum := sha1.Sum(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

var passwordRE = regexp.MustCompile(`(<password[^>]*>).*?(</password>)`)

// startTrace turns on vcsim's SOAP trace through a pipe that blanks
// passwords (Login bodies) before they reach stderr.
func startTrace() {
	r, w, err := os.Pipe()
	if err != nil {
		die("cannot start -trace: %s", err)
	}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
		for sc.Scan() {
			line := passwordRE.ReplaceAll(sc.Bytes(), []byte("${1}***${2}"))
			_, _ = os.Stderr.Write(append(line, '\n'))
		}
	}()
	simulator.TraceFile = w
	simulator.Trace = true
}

func main() {
	statePath := flag.String("state", "", "write the state file (JSON) here; required")
	listenAddr := flag.String("listen", "127.0.0.1:0", "SOAP/NFC server address (https)")
	controlAddr := flag.String("control", "127.0.0.1:0", "control API address (http)")
	tmpdir := flag.String("tmpdir", "", "directory for the datastore directories (default: <state>.d beside the state file)")
	trace := flag.Bool("trace", false, "dump SOAP traffic to stderr (passwords redacted)")
	certFile := flag.String("cert", "", "serve this TLS certificate (PEM; with -key) instead of a built-in self-signed one")
	keyFile := flag.String("key", "", "the private key (PEM) of -cert")
	wsdlDir := flag.String("wsdl", "", "serve the .wsdl/.xsd files of this directory under /sdk/ (as vCenter serves /sdk/vimService.wsdl)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s -state PATH [-listen 127.0.0.1:0] [-control 127.0.0.1:0] [-tmpdir DIR] [-wsdl DIR] [-trace]\n", prog)
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 0 {
		die("unexpected argument %q; see -h", flag.Arg(0))
	}
	if *statePath == "" {
		die("-state PATH is required")
	}
	state, err := filepath.Abs(*statePath)
	if err != nil {
		die("bad -state %q: %s", *statePath, err)
	}
	if fi, err := os.Stat(filepath.Dir(state)); err != nil || !fi.IsDir() {
		die("directory of state file %s does not exist", state)
	}
	checkStateFile(state)
	loopbackAddr("listen", *listenAddr)
	loopbackAddr("control", *controlAddr)

	log.SetPrefix(prog + ": ")
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	start := time.Now()

	// Probe the SOAP address (vcsim opens its own listener and panics if it
	// cannot); keep the control listener.
	probe := listen("listen", *listenAddr)
	_ = probe.Close()
	controlL := listen("control", *controlAddr)

	ownTmp := false
	dir := *tmpdir
	if dir == "" {
		dir = state + ".d"
		ownTmp = true
	}
	dir, _ = filepath.Abs(dir)
	if err := os.MkdirAll(dir, 0700); err != nil {
		die("cannot create -tmpdir %s: %s", dir, err)
	}
	os.Setenv("TMPDIR", dir) // vcsim's datastore directories land here

	if *trace {
		startTrace()
	}

	model := simulator.NewVsanModel(3)
	dss, err := model.CreateVsan(datastores)
	if err != nil {
		model.Remove()
		die("cannot create the inventory: %s", err)
	}

	simulator.InstallVsanHooks()
	if err := simulator.InstallNovaSupport(model.Service, *wsdlDir); err != nil {
		model.Remove()
		die("cannot serve the WSDL from %s: %s", *wsdlDir, err)
	}
	// With no explicit user, vcsim accepts ANY password; a real vCenter does not, and the
	// wrong-password tests must see InvalidLogin. vcsim only checks a login that is not its
	// own DefaultLogin pointer, so the same credentials are set as a new value.
	model.Service.Listen = &url.URL{Host: *listenAddr, User: url.UserPassword("user", "pass")}
	model.Service.TLS = new(tls.Config)
	if *certFile != "" || *keyFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			model.Remove()
			die("cannot load -cert/-key: %s", err)
		}
		model.Service.TLS.Certificates = []tls.Certificate{cert}
	}

	var server *simulator.Server
	func() {
		defer func() {
			if r := recover(); r != nil {
				model.Remove()
				msg := fmt.Sprint(r)
				if strings.Contains(msg, "address already in use") {
					die("cannot listen on %s: address already in use; pass -listen 127.0.0.1:0 for a free port", *listenAddr)
				}
				die("cannot start the SOAP server: %s", msg)
			}
		}()
		server = model.Service.NewServer()
	}()

	control := &http.Server{Handler: simulator.NewControlHandler()}
	go func() { _ = control.Serve(controlL) }()

	soapAddr := server.Listener.Addr().(*net.TCPAddr)
	user := simulator.DefaultLogin
	if model.Service.Listen.User != nil {
		user = model.Service.Listen.User
	}
	pass, _ := user.Password()
	st := &stateFile{
		Pid:        os.Getpid(),
		URL:        fmt.Sprintf("https://127.0.0.1:%d/sdk", soapAddr.Port),
		Host:       "127.0.0.1",
		Port:       soapAddr.Port,
		Username:   user.Username(),
		Password:   pass,
		Thumbprint: thumbprint(server.Certificate().Raw),
		ControlURL: "http://" + controlL.Addr().String(),
		Tmpdir:     dir,
		Datastores: dss,
	}
	if err := writeStateFile(state, st); err != nil {
		server.Close()
		model.Remove()
		die("cannot write state file %s: %s", state, err)
	}
	log.Printf("ready in %.2fs: url=%s control=%s state=%s pid=%d", time.Since(start).Seconds(), st.URL, st.ControlURL, state, st.Pid)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.Printf("%s: shutting down", s)

	simulator.AbortTransfers()
	done := make(chan struct{})
	go func() {
		_ = control.Close()
		server.Close() // waits for in-flight requests
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		log.Printf("in-flight requests did not finish within 5s; exiting anyway")
	}
	model.Remove()
	_ = os.Remove(state)
	if ownTmp {
		_ = os.RemoveAll(dir)
	}
	log.Printf("stopped")
	os.Exit(0)
}
