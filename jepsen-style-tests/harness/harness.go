// Package harness holds what every test that runs quorumq as separate
// processes needs, once: the built binary (BuildBinary), free loopback
// ports (FreePorts), a server's command line (ServerArgs), the process
// that can be killed, paused and restarted with one log across its
// incarnations (Process), a cluster of such processes with its status,
// leader, convergence and membership calls (Cluster, cluster.go), and the
// registry that removes what a test set up when the test binary is
// interrupted (RegisterCleanup). The fault suite
// (package jepsen), the lazyfs power-cut tests, the server command's tests
// and the deployment test use it, so a fix (a port handed out twice, a
// build flag, a process left behind) reaches them all.
package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// FreePorts returns n distinct TCP ports that were free on loopback. Every
// listener stays open until all n are chosen, so the kernel cannot hand
// the same port out twice; they are closed on return, so another process
// may still take one before the caller binds it, and the server that
// fails to bind then says so.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free ports: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// BuildBinary builds the quorumq command into the file out. env is added
// to the environment of go build (e.g. "CGO_ENABLED=0") and flags to its
// arguments (e.g. "-tags", "fakeclock"). It names the command by import
// path, so it works from any directory of the module, as a test's is.
func BuildBinary(out string, env []string, flags ...string) error {
	args := append([]string{"build"}, flags...)
	args = append(args, "-o", out, "github.com/quorumq/quorumq/cmd/quorumq")
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// Server names one node of a cluster of server processes.
type Server struct {
	ID, DataDir       string
	API, Raft, Gossip string // host:port each
}

// ServerArgs is the command line of `quorumq server` for node s of
// cluster (s included): it joins the others' gossip addresses and
// bootstraps once bootstrapExpect servers see each other (0: it waits to be
// added to a running cluster). extra flags follow.
func ServerArgs(s Server, cluster []Server, bootstrapExpect int, extra ...string) []string {
	var join []string
	for _, o := range cluster {
		if o.ID != s.ID {
			join = append(join, o.Gossip)
		}
	}
	args := []string{"server",
		"--node-id", s.ID,
		"--data-dir", s.DataDir,
		"--api-addr", s.API,
		"--raft-addr", s.Raft,
		"--gossip-addr", s.Gossip,
		"--bootstrap-expect", strconv.Itoa(bootstrapExpect),
		"--join", strings.Join(join, ","),
	}
	return append(args, extra...)
}
