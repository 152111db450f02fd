package simulator

// The control API of vsan-vcsim: a plain-HTTP JSON server on 127.0.0.1 that
// tests use to look at the simulator and to arm fault knobs.

import (
	"encoding/json"
	"net"
	"net/http"
)

type controlAPI struct {
	mux *http.ServeMux
}

// NewControlHandler returns the control API handler.
func NewControlHandler() http.Handler {
	c := &controlAPI{mux: http.NewServeMux()}
	c.routes()
	return c
}

func (c *controlAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	if err != nil || ip == nil || !ip.IsLoopback() {
		writeJSON(w, http.StatusForbidden, map[string]interface{}{"ok": false, "error": "control API is for loopback clients only"})
		return
	}
	c.mux.ServeHTTP(w, r)
}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (c *controlAPI) routes() {
	c.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]interface{}{"ok": false, "error": "no such endpoint: " + r.URL.Path})
	})
}
