package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/metadata"

	"github.com/quorumq/quorumq/transport/console"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// The admin HTTP server: /metrics, /healthz and /readyz, the readiness
// rule /readyz answers with, and the web console under /console/ (/
// redirects there).

// Readiness reports whether this node can serve: a leader is known, this
// node has applied every entry it knows to be committed and is within
// ReadyMaxLag entries of the leader's commit index (a follower whose
// appends fail, on a full disk, still hears heartbeats and still knows
// the leader, but falls behind), and its data dir has the free space
// --min-free-disk asks for (diskguard.go). The error says what is missing.
func (n *Node) Readiness() error {
	if n.closed.Load() {
		return errors.New("node is stopped")
	}
	if err := n.checkFreeDisk(); err != nil {
		return err
	}
	_, lid := n.raft.LeaderWithID()
	if lid == "" {
		return errors.New("no leader known")
	}
	applied := n.raft.AppliedIndex()
	commit, _ := strconv.ParseUint(n.raft.Stats()["commit_index"], 10, 64)
	if applied < commit {
		return fmt.Errorf("applied index %d is behind commit index %d", applied, commit)
	}
	if string(lid) == n.cfg.NodeID {
		return nil
	}
	id, api := n.leaderHint()
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.StatusTimeout)
	defer cancel()
	st := n.remoteStatus(ctx, id, api, "")
	if st.GetError() != "" {
		return fmt.Errorf("leader %s's commit index unknown: %s", id, st.GetError())
	}
	if lc := st.GetCommitIndex(); lc > applied+n.cfg.ReadyMaxLag {
		return fmt.Errorf("applied index %d lags the leader's commit index %d by %d entries, more than %d", applied, lc, lc-applied, n.cfg.ReadyMaxLag)
	}
	return nil
}

// checkFreeDisk refuses readiness while the data dir's file system has
// less free space than the threshold, or its free space is unknown.
func (n *Node) checkFreeDisk() error {
	low, unknown := n.disk.check()
	return errors.Join(low, unknown)
}

// startAdmin listens on AdminAddr (if set) and serves /metrics, /healthz,
// /readyz and the web console: over HTTPS with the API's certificate when
// the API has TLS, else over plain HTTP. The console asks for a token
// when tokens are on, and tokens are on only with TLS, so a token typed
// into it never crosses the network in clear.
func (n *Node) startAdmin() error {
	if n.cfg.AdminAddr == "" {
		return nil
	}
	con, err := n.newConsole()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", n.cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("admin listen on %q: %w", n.cfg.AdminAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle(console.Prefix(), con)
	mux.Handle("GET /{$}", http.RedirectHandler(console.Prefix(), http.StatusFound))
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{ErrorLog: nil}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if n.closed.Load() {
			http.Error(w, "stopped\n", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := n.Readiness(); err != nil {
			http.Error(w, "not ready: "+err.Error()+"\n", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	n.adminLn = ln
	// Every request is a small GET: a client that holds a connection
	// without finishing one, or idles on it, is cut off.
	n.admin = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	if n.cfg.APIServerTLS != nil {
		n.admin.TLSConfig = n.cfg.APIServerTLS.Clone()
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		var err error
		if n.admin.TLSConfig != nil {
			err = n.admin.ServeTLS(ln, "", "")
		} else {
			err = n.admin.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("admin HTTP server stopped", "err", err)
		}
		con.Close()
	}()
	return nil
}

// newConsole makes the web console: a client of this node's own API, so
// that a console user meets the API's token scopes, limits and leader
// forwarding like any other client.
func (n *Node) newConsole() (*console.Console, error) {
	cfg := console.Config{APIAddr: n.apiAddr, Logger: n.log, Local: n.consoleLocal}
	if n.cfg.APIServerTLS != nil {
		cfg.TLS = n.cfg.APIClientTLS
	}
	if tokens := n.cfg.tokens(); len(tokens) > 0 {
		cfg.Authorize = tokenAuth{tokens}.consoleAccess
	}
	return console.New(cfg)
}

// consoleAccess is what token may do in the console, decided by the API's
// own check against the methods behind the console's actions, so the
// console never shows a button the API would refuse.
func (a tokenAuth) consoleAccess(token string) (console.Access, bool) {
	md := metadata.Pairs("authorization", "Bearer "+token)
	switch {
	case a.check(md, quorumqpb.Queue_Purge_FullMethodName) == nil:
		return console.AccessAdmin, true
	case a.check(md, quorumqpb.Queue_Enqueue_FullMethodName) == nil && a.check(md, quorumqpb.Queue_Redrive_FullMethodName) == nil:
		return console.AccessWrite, true
	case a.check(md, quorumqpb.Queue_GetQueue_FullMethodName) == nil && a.check(md, quorumqpb.Cluster_Status_FullMethodName) == nil:
		return console.AccessRead, true
	}
	return console.AccessNone, false
}

// consoleLocal names the node that serves the console.
func (n *Node) consoleLocal() console.LocalInfo {
	return console.LocalInfo{NodeID: n.cfg.NodeID}
}

// buildVersion is the main module's version and VCS revision, as the Go
// toolchain stamped them into the binary.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
		if s.Key == "vcs.modified" && s.Value == "true" {
			v += "+dirty"
		}
	}
	return v
}

// AdminAddr is the bound admin HTTP address ("" when there is none).
func (n *Node) AdminAddr() string {
	if n.adminLn == nil {
		return ""
	}
	return n.adminLn.Addr().String()
}
